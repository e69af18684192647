"""examples/batch_size_scaling.py in its quick configuration (3 epochs, 2 seeds)."""

import contextlib
import importlib.util
import io
import pathlib

import pytest

EXAMPLE = (
    pathlib.Path(__file__).resolve().parent.parent / "examples/batch_size_scaling.py"
)


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("batch_size_scaling_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(example):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = example.main(epochs=3, seeds=2)  # what --quick runs
    return result, out.getvalue()


def final_losses(result, rule):
    """{batch: final training loss} of one rule; batch 16 is shared by all."""
    base = {r.batch: r.losses[-1] for r in result.rows if r.rule == "same lr"}
    rows = {r.batch: r.losses[-1] for r in result.rows if r.rule == rule}
    return {16: base[16], **rows}


def test_the_docstring_says_how_to_run_it(example):
    assert ".venv/bin/python examples/batch_size_scaling.py" in example.__doc__
    assert "--quick" in example.__doc__
    assert "accumulate_gradients" in example.__doc__


def test_accumulation_equals_the_big_batch_on_the_first_step(run):
    result, text = run
    assert set(result.first_step_gap) == {2, 4, 8}
    assert result.first_step_size > 1e-2  # the step is not trivially small
    for k, gap in result.first_step_gap.items():
        assert gap < 1e-6, (k, gap)  # float32 round-off only
        assert f"k={k}: max |difference|" in text


def test_the_table_has_every_rule_and_batch(example, run):
    result, text = run
    assert text.count("\n") > 15
    assert "batch  rule" in text
    seen = {(r.batch, r.rule) for r in result.rows}
    assert (16, "same lr") in seen
    for rule in example.RULES:
        assert {(b, rule) for b in (32, 64, 128)} <= seen
    for row in result.rows:
        assert row.steps * row.batch == result.rows[0].steps * 16
        assert row.learning_rate == pytest.approx(
            0.05 if row.rule == "same lr" else 0.05 * row.batch / 16
        )


def test_same_lr_degrades_and_linear_scaling_keeps_the_loss(run):
    result, _ = run
    same = final_losses(result, "same lr")
    linear = final_losses(result, "linear + warmup")
    batches = sorted(same)
    # the rate unchanged: fewer steps of the same size, the loss grows
    assert all(same[a] < same[b] for a, b in zip(batches, batches[1:], strict=False))
    assert same[128] > 3 * same[16]
    # the rate scaled k-fold: the curves stay together
    assert all(linear[b] < 2 * linear[16] for b in batches)
    assert linear[128] < 0.5 * same[128]
    for row in result.rows:
        if row.rule != "same lr":
            assert row.test_accuracy > 0.93, row
