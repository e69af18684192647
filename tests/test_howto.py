"""The how-to guides: every snippet runs and its page shows its code and output."""

import concurrent.futures
import functools
import pathlib
import re
import sys
import warnings

import pytest

import gradtx

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS))
try:
    import gen_howto
finally:
    sys.path.remove(str(DOCS))

SOURCES = gen_howto.sources()


def page(source):
    return gen_howto.page_of(source).read_text()


def codes(source):
    return [code for _, code in gen_howto.parts(source.read_text())]


@pytest.fixture(scope="module")
def printed():
    """What each snippet prints, every snippet run in its own process.

    Two at a time: most of each run is starting Python and importing jax.
    """
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outputs = pool.map(gen_howto.run_source, SOURCES)
        return dict(zip([s.stem for s in SOURCES], outputs, strict=True))


def test_there_are_the_guides_and_an_index():
    names = {s.stem for s in SOURCES}
    assert {
        "log_learning_rate",
        "change_hyperparameters",
        "checkpointing",
        "freeze_and_group",
        "accumulate_gradients",
        "skip_nonfinite",
        "sharded_training",
        "fused_cpu_step",
    } <= names
    assert (gen_howto.PAGES / "index.md").exists()


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_each_page_shows_its_snippet_part_by_part(source):
    shown = gen_howto.shown(page(source))
    assert [code for code, _ in shown] == codes(source), (
        f"docs/howto/{source.stem}.md is behind its snippet: run "
        f"`.venv/bin/python docs/gen_howto.py {source.stem}`"
    )
    assert any(output for _, output in shown), "a guide shows some output"


# The fused-step guide shows a machine with a C++ compiler. Without one its
# snippet says so in these lines (and the step warns once); every other line
# it prints must still be the page's.
NEEDS_COMPILER = {
    "fused_cpu_step": (
        "the kernel could be built here:",
        "RuntimeWarning: gradtx.fused_step: the CPU kernel is unavailable",
    )
}


@functools.cache
def kernel_here():
    """Whether the fused kernel builds here (quietly: without one it warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return gradtx.fused.kernel_available()


def as_this_machine_shows(stem, outputs):
    """The outputs less the lines that say whether a compiler is here."""
    if stem not in NEEDS_COMPILER or kernel_here():
        return outputs
    prefixes = NEEDS_COMPILER[stem]
    return [
        "".join(
            line
            for line in output.splitlines(keepends=True)
            if not line.startswith(prefixes)
        )
        for output in outputs
    ]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_each_snippet_prints_what_its_page_shows(source, printed):
    # The numbers printed are rounded so that they do not depend on the CPU.
    shown = [output for _, output in gen_howto.shown(page(source))]
    stem = source.stem
    assert as_this_machine_shows(stem, printed[stem]) == as_this_machine_shows(
        stem, shown
    ), (
        f"docs/howto/{stem}.md shows other outputs than its snippet "
        f"prints: run `.venv/bin/python docs/gen_howto.py {stem}`"
    )


def test_the_fused_guide_reports_the_compiler_it_finds(printed):
    first = printed["fused_cpu_step"][0]
    found = kernel_here()
    assert f"the kernel could be built here: {found}\n" in first
    assert ("the CPU kernel is unavailable" in "".join(printed["fused_cpu_step"])) is (
        not found
    )


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_the_page_is_what_the_build_writes(source, printed, tmp_path, monkeypatch):
    outputs = dict(printed)
    if as_this_machine_shows(source.stem, printed[source.stem]) != printed[source.stem]:
        # no compiler here: the page's own outputs (the test above compares
        # them with what the snippet printed)
        outputs[source.stem] = [o for _, o in gen_howto.shown(page(source))]
    monkeypatch.setattr(gen_howto, "run_source", lambda s: outputs[s.stem])
    written = gen_howto.build(source, tmp_path)
    assert written == tmp_path / "howto" / f"{source.stem}.md"
    assert written.read_text() == page(source)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_code_and_output_fit_the_page_width(source):
    # The site shows about 76 characters of code before it scrolls.
    long = [
        line
        for code, output in gen_howto.shown(page(source))
        for line in (code + output).splitlines()
        if len(line) > 76
    ]
    assert long == []


def test_every_gradtx_name_the_guides_use_exists():
    used = set()
    for source in SOURCES:
        used |= set(re.findall(r"\bgradtx\.(\w+)", source.read_text()))
    # hasattr, not dir(): the annex's names are loaded on first use
    assert {name for name in used if not hasattr(gradtx, name)} == set()
    assert "fused" in used  # the annex, loaded on first use
    assert used - {"fused", "masks"} <= set(gradtx.__all__)


def test_the_nav_lists_every_guide_and_the_index_links_each():
    # mkdocs.yml's nav section, read without a YAML parser (not a test extra)
    text = (DOCS.parent / "mkdocs.yml").read_text()
    section = text.split("\n  - How-to guides:\n", 1)[1]
    entries = re.findall(r"^      - (?:[^:\n]+: )?(\S+)$", section, re.M)
    listed = entries[: len(SOURCES) + 1]
    assert listed[0] == "howto/index.md"
    assert sorted(listed[1:]) == [f"howto/{s.stem}.md" for s in SOURCES]
    index = (gen_howto.PAGES / "index.md").read_text()
    for source in SOURCES:
        assert f"]({source.stem}.md)" in index


def test_parts_are_cut_at_cell_lines_and_keep_their_line_numbers():
    text = "# header\n\n# %% one\nx = 1\n\n\n# %%\n\n\nprint(x)\n\n"
    assert gen_howto.parts(text) == [(4, "x = 1\n"), (10, "print(x)\n")]


def test_a_page_whose_regions_do_not_match_the_parts_is_refused():
    page = "# P\n\n<!-- snippet 1 -->\n<!-- /snippet -->\n"
    assert gen_howto.render("p", page, ["x = 1\n"], ["\n"]) == (
        "# P\n\n<!-- snippet 1 -->\n```python\nx = 1\n```\n<!-- /snippet -->\n"
    )
    with pytest.raises(gen_howto.SnippetError, match=r"numbered \[1\].*2 parts"):
        gen_howto.render("p", page, ["x = 1\n", "y = 2\n"], ["", ""])


def test_a_failing_snippet_stops_the_build_naming_file_part_and_line(tmp_path):
    source = tmp_path / "broken.py"
    source.write_text(
        "# header\n# %%\nprint('fine')\n\n# %%\nx = 1\nraise ValueError('bad')\n"
    )
    with pytest.raises(gen_howto.SnippetError) as error:
        gen_howto.run_source(source, timeout=60)
    message = str(error.value)
    assert "broken.py, part 2 (line 6)" in message
    assert "ValueError: bad" in message
    assert 'broken.py", line 7' in message  # the traceback's line


def test_a_snippet_that_runs_too_long_is_stopped(tmp_path):
    source = tmp_path / "slow.py"
    source.write_text("# %%\nimport time\n\ntime.sleep(30)\n")
    with pytest.raises(gen_howto.SnippetError, match="slow.py: ran longer than 1 s"):
        gen_howto.run_source(source, timeout=1)


def test_outputs_and_warnings_are_captured_per_part(tmp_path):
    source = tmp_path / "page.py"
    source.write_text(
        "# %%\nimport warnings\nprint('a')  \n"
        "# %%\nx = 2\n"
        "# %%\nwarnings.warn('careful', RuntimeWarning)\nprint(x)\n"
    )
    outputs = gen_howto.run_source(source, timeout=60)
    assert outputs == ["a\n", "", "2\nRuntimeWarning: careful\n"]
    regions = "".join(f"<!-- snippet {i} -->\n<!-- /snippet -->\n" for i in (1, 2, 3))
    written = gen_howto.render("page", "# Page\n\n" + regions, codes(source), outputs)
    assert [out for _, out in gen_howto.shown(written)] == outputs
    assert [code for code, _ in gen_howto.shown(written)] == codes(source)
    assert written.count(gen_howto.OUTPUT_FENCE) == 2  # none for a silent part
