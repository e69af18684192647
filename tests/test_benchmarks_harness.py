"""The benchmark harness works on tiny trees; nothing here asserts a speed."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness, report, trees  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.optimizers import (  # noqa: E402
    BYTES_PER_PARAM,
    FAMILY_LIBRARIES,
    FAMILY_OPTIMIZERS,
    METHOD_BYTES,
    TORCH_LIBRARIES,
)

# Without a C++ compiler the fused contenders run the plain step, and say so;
# the harness is tested all the same.
pytestmark = [
    pytest.mark.filterwarnings("ignore:gradtx.fused_step:RuntimeWarning"),
]

TINY_TREE = trees.Tree("tiny", "three leaves", ((3,), (4, 5), (7,)))
TINY = harness.Settings(rounds=2, warmup=1, sample_seconds=0.001)


@pytest.mark.parametrize(
    "name, leaves, params",
    [
        ("resnet50", 161, 25_557_032),
        ("gpt2-small", 148, 124_439_808),
        ("many-small", 2200, 2000 * 64 + 200 * 256 * 256),
        ("one-big", 1, 2**24),
        ("one-1b", 1, 2**30),
    ],
)
def test_trees_have_the_published_models_shapes(name, leaves, params):
    tree = trees.get_tree(name)
    assert len(tree.shapes) == leaves
    assert tree.n_params == params
    assert sorted(tree.keys()) == tree.keys()  # JAX's leaf order is torch's


def test_unknown_tree_is_refused():
    with pytest.raises(ValueError, match="unknown tree 'resnet51'"):
        trees.get_tree("resnet51")


def test_run_case_times_every_library():
    rows = harness.run_case(TINY_TREE, "clip_adamw", settings=TINY)

    assert [row["library"] for row in rows] == list(harness.LIBRARIES)
    for row in rows:
        name = row["library"]
        assert (row["tree"], row["optimizer"]) == ("tiny", "clip_adamw")
        assert row["ms"] > 0
        assert (row["vs_optax"] is None) == (name == "optax")
        assert (row["vs_torch"] is None) == (name == "torch-fused")
        for ratio in (row["vs_optax"], row["vs_torch"]):
            assert ratio is None or ratio > 0
        is_jax = name not in (harness.COPY, *TORCH_LIBRARIES)
        assert (row["compile_s"] is not None and row["compile_s"] > 0) == is_jax


def test_run_case_leaves_out_what_torch_rejects():
    libraries = ("optax", "torch-fused")
    rows = harness.run_case(TINY_TREE, "adamw_bf16", libraries, TINY)
    assert [(row["library"], row["vs_torch"]) for row in rows] == [("optax", None)]


def test_contenders_too_big_together_are_timed_one_after_another(monkeypatch):
    held = harness.bytes_held(TINY_TREE, "adamw")
    assert held == BYTES_PER_PARAM["adamw"] * TINY_TREE.n_params // 2
    monkeypatch.setattr(harness, "memory_available", lambda: 3 * held)
    assert harness.fits_together(TINY_TREE, "adamw", 2)
    assert not harness.fits_together(TINY_TREE, "adamw", 3)

    libraries = ("copy", "gradtx", "optax")
    logged = []
    rows = harness.run_case(TINY_TREE, "adamw", libraries, TINY, logged.append)
    assert logged == [
        "  timed one library after another: their buffers do not fit together"
    ]
    assert [row["library"] for row in rows] == list(libraries)
    ms = {row["library"]: row["ms"] for row in rows}
    for row in rows:
        assert row["interleaved"] is False
        if row["library"] != "optax":  # the ratio of the medians
            assert row["vs_optax"] == pytest.approx(
                ms[row["library"]] / ms["optax"], rel=1e-2, abs=1e-3
            )
    assert rows[1]["compile_s"] > 0 and rows[1]["state_mb"] is not None

    together = harness.run_case(TINY_TREE, "adamw", libraries, TINY, together=True)
    assert all("interleaved" not in row for row in together)


@pytest.mark.parametrize("optimizer", ["schedule_free_adamw", "ema_adam", "adamw"])
def test_a_built_step_donates_no_buffer_twice(optimizer):
    # schedule-free's z starts as the params, and so does the EMA: the
    # state must still hold buffers of its own
    params_np, grads_np = trees.make_data(TINY_TREE)
    grads = harness._private(grads_np)
    step = harness.build("gradtx", TINY_TREE, optimizer, params_np, grads_np, grads)
    held = jax.tree.leaves((step.params, step.state))
    pointers = [x.unsafe_buffer_pointer() for x in held]
    assert len(set(pointers)) == len(pointers)
    step.run(2)  # donating them all works


def _final_params(step) -> list[np.ndarray]:
    if isinstance(step, harness.TorchStep):
        return [p.detach().cpu().numpy() for p in step.params]
    return [np.asarray(x) for x in jax.tree.leaves(step.params)]


@pytest.mark.parametrize(
    "optimizer", [o for o in BYTES_PER_PARAM if o not in FAMILY_OPTIMIZERS]
)
def test_every_library_does_the_same_work(optimizer):
    params_np, grads_np = trees.make_data(TINY_TREE)
    grads = jax.tree.map(jax.numpy.asarray, grads_np)
    finals = {}
    for name in harness.LIBRARIES[1:]:
        try:
            step = harness.build(name, TINY_TREE, optimizer, params_np, grads_np, grads)
        except ValueError:
            assert optimizer == "adamw_bf16" and name in TORCH_LIBRARIES
            continue
        step.run(3)
        finals[name] = _final_params(step)
    # optax multiplies a bfloat16 first moment by b1 in bfloat16, gradtx in
    # float32: the two differ by bfloat16 roundings.
    tolerance = 1e-4 if optimizer == "adamw_bf16" else 1e-6
    for name, final in finals.items():
        for got, want in zip(final, finals["optax"], strict=True):
            np.testing.assert_allclose(got, want, atol=tolerance, err_msg=name)
        assert not np.allclose(final[0], params_np["0"])  # it did step


@pytest.mark.parametrize("optimizer", FAMILY_OPTIMIZERS)
def test_each_family_is_the_same_optimizer_in_gradtx_and_optax(optimizer):
    # The same call builds the same optimizer in both (gradtx follows optax's
    # definitions and defaults); torch runs its own form, so it only has to
    # step, and to keep some state.
    params_np, grads_np = trees.make_data(TINY_TREE)
    grads = jax.tree.map(jax.numpy.asarray, grads_np)
    finals, held = {}, {}
    for name in FAMILY_LIBRARIES[1:]:
        try:
            step = harness.build(name, TINY_TREE, optimizer, params_np, grads_np, grads)
        except ValueError:
            assert name in TORCH_LIBRARIES
            continue
        step.run(3)
        finals[name], held[name] = _final_params(step), step.state_bytes
    if optimizer != "rprop":  # optax 0.2.8 returns each Rprop step a step late
        for got, want in zip(finals["gradtx"], finals["optax"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for final in finals.values():
        assert not np.allclose(final[1], params_np["1"])  # it did step
    # a method may keep a scalar counter more than optax's side (EMA counts
    # steps and averages apart, for start_step), never a buffer more
    scalars = 8 if optimizer in METHOD_BYTES else 0
    assert held["gradtx"] <= held["optax"] + scalars


def test_family_rows_compare_with_torch_foreach():
    rows = harness.run_case(TINY_TREE, "nadam", FAMILY_LIBRARIES, TINY)
    by_library = {row["library"]: row for row in rows}
    assert list(by_library) == list(FAMILY_LIBRARIES)
    assert by_library["gradtx"]["vs_torch"] > 0
    assert by_library["torch-foreach"]["vs_torch"] is None
    assert by_library["gradtx"]["state_mb"] is not None  # MB: rounds to 0 here
    assert by_library["copy"]["state_mb"] is None


def _row(tree, optimizer, library, **values):
    row = {"tree": tree, "optimizer": optimizer, "library": library}
    return (
        row | {"ms": 1.5, "vs_optax": 0.5, "vs_torch": 2.0, "compile_s": 0.25} | values
    )


def test_summary_file_round_trips_and_a_run_replaces_only_its_cases(tmp_path):
    path = tmp_path / "device.json"
    head = {"device": "CPU x", "mode": "full", "torch_device": "cpu"}
    head["versions"] = {"jax": "1"}
    first = [_row("one-big", "adamw", "gradtx"), _row("one-big", "sgd", "gradtx")]
    report.save(path, {**head, "rows": first})
    assert json.loads(path.read_text()) == {**head, "rows": first}

    again = [_row("one-big", "sgd", "gradtx", ms=9.0), _row("one-big", "sgd", "optax")]
    report.save(path, {**head, "rows": again})
    assert json.loads(path.read_text())["rows"] == [first[0], *again]


def test_page_shows_every_column(tmp_path):
    rows = [
        _row("resnet50", "adamw", "gradtx-fused", ms=16.62, state_mb=204.456),
        _row("resnet50", "adamw", "optax", vs_optax=None, ms=39.2),
        _row("resnet50", "adamw", "copy", compile_s=None, vs_torch=0.004, ms=0.1234),
    ]
    summary = {"device": "CPU x (2 cores)", "mode": "full", "torch_device": "cpu"}
    summary |= {"versions": {"jax": "0.1"}, "rows": rows}
    (tmp_path / "cpu-x.json").write_text(report.dumps(summary))
    quick = {**summary, "device": "CPU x quick"}
    (tmp_path / "cpu-x-quick.json").write_text(report.dumps(quick))
    docs = tmp_path / "benchmarks.md"
    report.write_page(tmp_path, docs)

    page = docs.read_text()
    assert "Do not edit by hand" in page
    assert "## CPU x (2 cores)" in page and "CPU x quick" not in page
    assert "jax 0.1; torch on cpu." in page
    assert "| tree | optimizer | library | step (ms) | ÷ optax | ÷ torch " in page
    lines = [line for line in page.splitlines() if line.startswith("| ")][2:]
    assert lines == [  # in library order; the case is named once
        "| resnet50 | adamw | copy | 0.123 | 0.50x | 0.004x |  |  |",
        "|  |  | gradtx-fused | 16.6 | 0.50x | 2.00x | 0.25 | 204.5 |",
        "|  |  | optax | 39.2 |  | 2.00x | 0.25 |  |",
    ]
    assert "`resnet50`: the shapes of torchvision's ResNet-50, 161 leaves" in page
    assert "`one-big`" not in page  # only the trees with rows
    assert "† Timed one library after another" not in page


def test_page_marks_the_cases_timed_apart(tmp_path):
    rows = [
        _row("gpt2-small", "lbfgs_direction", "gradtx", interleaved=False),
        _row("gpt2-small", "lbfgs_direction", "optax", interleaved=False),
        _row("resnet50", "adamw", "optax"),
    ]
    summary = {"device": "CPU x (2 cores)", "mode": "full", "torch_device": "cpu"}
    summary |= {"versions": {"jax": "0.1"}, "rows": rows}
    (tmp_path / "cpu-x.json").write_text(report.dumps(summary))
    docs = tmp_path / "benchmarks.md"
    report.write_page(tmp_path, docs)

    page = docs.read_text()
    lines = [line for line in page.splitlines() if line.startswith("| ")][2:]
    assert lines == [
        "| resnet50 | adamw | optax | 1.50 | 0.50x | 2.00x | 0.25 |  |",
        "| gpt2-small | lbfgs_direction | gradtx | 1.50 † | 0.50x | 2.00x | 0.25 |  |",
        "|  |  | optax | 1.50 † | 0.50x | 2.00x | 0.25 |  |",
    ]
    assert "† Timed one library after another" in page


def test_command_line_saves_a_summary_and_writes_the_page(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(trees.TREES, "tiny", ("two leaves", lambda: [(3,), (4,)]))
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    cache = jax.config.jax_enable_compilation_cache
    docs = tmp_path / "benchmarks.md"
    argv = ["--trees", "tiny", "--optimizers", "adamw,sgd"]
    argv += ["--libraries", "copy,optax", "--rounds", "1", "--warmup", "1"]
    argv += ["--sample-seconds", "0.001", "--results-dir", str(tmp_path)]
    try:
        main([*argv, "--docs", str(docs)])
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)

    (path,) = tmp_path.glob("*.json")
    assert path.stem == harness.device_slug()
    summary = json.loads(path.read_text())
    assert summary["device"] == harness.device_name()
    assert summary["versions"]["jax"] == jax.__version__
    assert [(r["optimizer"], r["library"]) for r in summary["rows"]] == [
        (o, lib) for o in ("adamw", "sgd") for lib in ("copy", "optax")
    ]
    assert f"## {harness.device_name()}" in docs.read_text()
    assert "tiny / sgd" in capsys.readouterr().out
