"""The documentation stays true to the code."""

import doctest
import inspect
import pathlib
import re
import sys

import gradtx

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_every_public_name_has_an_api_entry():
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: gradtx\.(\w+)$", api, flags=re.M))
    # The fused annex is documented from its own package (gradtx.fused.X):
    # its top-level names are resolved on first use, out of a static reader's
    # sight.
    annex = set(re.findall(r"^::: gradtx\.fused\.(\w+)$", api, flags=re.M))
    assert {"fused_step", "FusedStep"} <= annex
    documented |= (annex | {"fused"}) & set(gradtx.__all__)
    assert documented - set(gradtx.__all__) == set()


def test_schedule_gallery_is_up_to_date(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        import gen_schedules
    finally:
        sys.path.remove(str(DOCS))
    gen_schedules.generate(tmp_path)
    assert (tmp_path / "schedules.md").read_text() == (
        DOCS / "schedules.md"
    ).read_text()
    names = {name for name, *_ in gen_schedules.GALLERY}
    suffixes = ("_schedule", "_schedules", "_decay")
    schedules = {n for n in gradtx.__all__ if n.endswith(suffixes)} - {
        "scale_by_schedule"
    }
    assert schedules <= names


def test_getting_started_code_runs():
    text = (DOCS / "index.md").read_text()
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        if block.startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(
                block, namespace, "index", "index.md", 0
            )
            runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
            runner.run(test)
            assert runner.summarize(verbose=False).failed == 0
        else:
            exec(compile(block, "index.md", "exec"), namespace)


def _public_objects():
    for name in gradtx.__all__:
        obj = getattr(gradtx, name)
        if inspect.ismodule(obj):
            for member in obj.__dict__:
                value = getattr(obj, member)
                if not member.startswith("_") and inspect.isfunction(value):
                    if value.__module__ == obj.__name__:
                        yield f"{name}.{member}", value
        else:
            yield name, obj


def test_every_public_name_has_a_docstring_with_a_runnable_example():
    # The examples themselves run under pytest --doctest-modules gradtx.
    missing = [
        name
        for name, obj in _public_objects()
        if ">>>" not in (inspect.getdoc(obj) or "")
        or "Examples:" not in (inspect.getdoc(obj) or "")
    ]
    assert missing == []


def test_optimizer_pages_are_up_to_date_and_cover_every_optimizer(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        import gen_optimizers
    finally:
        sys.path.remove(str(DOCS))
    for path in gen_optimizers.generate(tmp_path):
        assert path.read_text() == (DOCS / "optimizers" / path.name).read_text()
    aliases = {
        name
        for name, value in vars(gradtx.aliases).items()
        if inspect.isfunction(value) and value.__module__ == "gradtx.aliases"
        if not name.startswith("_")
    }
    # every optimizer has a page; so do the wrappers that make one of another
    assert aliases <= set(gen_optimizers.OPTIMIZERS)
    assert set(gen_optimizers.OPTIMIZERS) <= set(gradtx.__all__)
