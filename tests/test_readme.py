"""The code shown in README.md runs and prints what the README says."""

import contextlib
import doctest
import functools
import io
import pathlib
import re

import pytest

import gradtx

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
SNIPPETS = [b for b in BLOCKS if ">>>" not in b]


@functools.cache
def run_snippet(block):
    """Execute a README block in a fresh namespace; return what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


def test_readme_repr_block_is_a_passing_doctest():
    (block,) = [b for b in BLOCKS if b.startswith(">>>")]
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize(
    "block", SNIPPETS, ids=[f"block{i}" for i in range(len(SNIPPETS))]
)
def test_every_readme_snippet_runs_as_written(block):
    run_snippet(block)


def test_readme_training_loop_trains():
    (block,) = [b for b in SNIPPETS if "def step(" in b]
    printed = run_snippet(block)
    losses = [float(v) for v in re.findall(r"loss (\S+)", printed)]
    assert len(losses) >= 2, printed
    # The text under the snippet says: about 10 at step 1, below 1e-6 at 200.
    assert 5.0 < losses[0] < 20.0, printed
    assert losses[-1] < 1e-6, printed


def test_every_public_name_is_in_the_readme_table():
    section = README.split("## What is in the box", 1)[1].split("\n## ", 1)[0]
    quoted = set(re.findall(r"`([^`\n]+)`", section))
    missing = [
        name
        for name in gradtx.__all__
        if name not in quoted and f"gradtx.{name}" not in quoted
    ]
    assert missing == []
