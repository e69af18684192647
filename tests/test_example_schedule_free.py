"""examples/schedule_free.py in its quick configuration."""

import contextlib
import importlib.util
import io
import pathlib
import re

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples/schedule_free.py"
PEAKS = (3e-3, 1e-2)


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("schedule_free_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(example):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = example.main(steps=150, peaks=PEAKS, hidden=32)
    return result, out.getvalue()


def test_the_docstring_says_how_to_run_it(example):
    assert ".venv/bin/python examples/schedule_free.py" in example.__doc__
    assert "--quick" in example.__doc__


def test_the_table_has_a_row_per_method_and_rate_and_a_best_line(example, run):
    _, text = run
    lines = text.strip().splitlines()
    assert lines[0].split() == [
        "method",
        "peak",
        "lr",
        "train@50%",
        "train",
        "loss",
        "val",
        "loss",
        "test",
        "loss",
        "test",
        "acc",
    ]
    number = r"\d+\.\d+"
    row = re.compile(rf"^(\S+)\s+(\de-\d\d)\s+{number}(?:\s+{number}){{4}}( \*)?$")
    rows = [m for m in map(row.match, lines) if m]
    assert [m.group(1) for m in rows] == [m for m in example.METHODS for _ in PEAKS]
    assert [float(m.group(2)) for m in rows] == list(PEAKS) * 2
    for method in example.METHODS:
        assert sum(1 for m in rows if m.group(1) == method and m.group(3)) == 1
        assert any(line.startswith(f"best {method}: peak lr ") for line in lines)


def test_both_methods_reduce_the_loss(run):
    result, _ = run
    for method, best in result.best.items():
        assert best.train_loss < 0.3 * best.initial_train_loss, method
        assert best.half_train_loss < best.initial_train_loss, method
        assert best.test_accuracy > 0.8, method
