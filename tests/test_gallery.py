"""The examples gallery (docs/examples.md) covers every example and is current."""

import pathlib
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS))
try:
    import gen_gallery
finally:
    sys.path.remove(str(DOCS))

EXAMPLES = gen_gallery.find_examples()
RUNNABLE = [e.name for e in EXAMPLES if e.runnable]


def test_the_examples_are_found():
    assert {"quickstart", "decay_study"} <= set(RUNNABLE)
    assert "study_problems" not in RUNNABLE  # shared code, no main guard


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_runnable_example_has_a_stored_output_and_an_entry(name):
    stored = gen_gallery.output_path(DOCS, name)
    assert stored.exists(), (
        f"examples/{name}.py has no stored output in docs/examples/{name}.txt: "
        f"run `{gen_gallery.REFRESH} {name}`"
    )
    assert stored.read_text().strip(), f"docs/examples/{name}.txt is empty"
    page = (DOCS / "examples.md").read_text()
    assert f"\n## {name}.py: " in page, (
        f"docs/examples.md has no entry for examples/{name}.py: run "
        "`.venv/bin/python docs/gen_gallery.py`"
    )
    assert stored.read_text().rstrip() in page


def test_every_entry_says_what_the_example_teaches():
    for example in EXAMPLES:
        assert example.doc, f"examples/{example.name}.py has no module docstring"


def test_modules_without_a_main_guard_are_listed_as_helpers():
    page = (DOCS / "examples.md").read_text()
    assert "## study_problems.py" not in page
    assert "- `study_problems.py`: " in page


def test_page_is_up_to_date():
    assert gen_gallery.render() == (DOCS / "examples.md").read_text(), (
        "docs/examples.md is behind examples/ or docs/examples/: run "
        "`.venv/bin/python docs/gen_gallery.py`"
    )


def test_no_stored_output_is_an_error_naming_the_example(tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "new_one.py").write_text(
        '"""A new example.\n\nIt teaches something."""\n\n'
        'if __name__ == "__main__":\n    print("hi")\n'
    )
    (examples / "helper.py").write_text('"""Shared code."""\n\nX = 1\n')
    with pytest.raises(gen_gallery.MissingOutput) as error:
        gen_gallery.render(tmp_path, examples)
    assert "new_one" in str(error.value)
    assert f"`{gen_gallery.REFRESH} new_one`" in str(error.value)
    gen_gallery.output_path(tmp_path, "new_one").write_text("hi\n")
    page = gen_gallery.render(tmp_path, examples)
    assert "## new_one.py: A new example." in page
    assert "It teaches something." in page
    assert "```text\nhi\n```" in page
    assert "- `helper.py`: Shared code." in page


def test_refresh_runs_the_example_and_stores_what_it_printed(tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "tiny.py").write_text(
        '"""A tiny example."""\n\n'
        'if __name__ == "__main__":\n    print()\n    print("done  ")\n'
    )
    gen_gallery.run_examples(["tiny"], docs_dir=tmp_path, examples_dir=examples)
    assert gen_gallery.output_path(tmp_path, "tiny").read_text() == "done\n"


def test_the_docs_build_does_not_run_the_examples(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the gallery ran a program")

    monkeypatch.setattr(subprocess, "run", refuse)
    written = gen_gallery.generate(tmp_path)
    assert written.read_text() == (DOCS / "examples.md").read_text()
