"""The benchmark harness runs end to end on tiny trees and records every field.

Nothing here asserts anything about speed: timings are never tested.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness, report, run  # noqa: E402
from benchmarks.optimizers import OPTIMIZERS, OURS  # noqa: E402
from benchmarks.trees import custom_tree, get_tree  # noqa: E402

TINY = harness.Settings(rounds=2, warmup=1, sample_seconds=0.001)


@pytest.mark.parametrize(
    "name, leaves, params",
    [
        ("resnet50", 161, 25_557_032),
        ("gpt2-small", 148, 124_439_808),
        ("many-small", 2200, 2000 * 64 + 200 * 256 * 256),
        ("one-big", 1, 2**24),
        ("sweep-30", 30, 30 * 1024),
    ],
)
def test_tree_shapes_match_the_published_models(name, leaves, params):
    spec = get_tree(name)
    assert spec.n_leaves == leaves
    assert spec.n_params == params
    assert sorted(spec.keys()) == spec.keys()  # JAX's leaf order is ours


def test_unknown_tree_is_refused():
    with pytest.raises(ValueError, match="unknown tree 'resnet51'"):
        get_tree("resnet51")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_run_case_records_every_field(optimizer):
    spec = custom_tree("tiny", [(3,), (4, 5), (7,)])
    record = harness.run_case(spec, optimizer, TINY)

    assert record["key"] == f"tiny/{optimizer}"
    assert record["n_leaves"] == 3 and record["n_params"] == 30
    assert record["model_bytes_per_param"] == OPTIMIZERS[optimizer].bytes_per_param
    assert set(record["contenders"]) == set(harness.DEFAULT_CONTENDERS)
    for name, entry in record["contenders"].items():
        if name.startswith("torch-") and entry["status"] == "skipped":
            assert entry["reason"]  # an unsupported variant says why
            continue
        assert entry["status"] == "ok", entry
        assert len(entry["samples_s"]) == TINY.rounds
        assert entry["p25_s"] <= entry["median_s"] <= entry["p75_s"]
        assert entry["achieved_gbs"] > 0
    for name in ("gradtx", "optax", harness.IDENTITY):
        entry = record["contenders"][name]
        assert entry["lower_s"] > 0 and entry["compile_s"] > 0
        assert entry["lower_compile_s"] == pytest.approx(
            entry["lower_s"] + entry["compile_s"]
        )
        assert {"fusions", "scalar_fusions", "unfused_ops"} <= entry["hlo"].keys()
        assert entry["memory"]["argument_bytes"] > 0
        assert entry["warnings"] == []  # donation worked
    assert record["contenders"]["gradtx"]["hlo"]["fusions"] >= 1
    assert record["contenders"][harness.IDENTITY]["hlo"]["fusions"] == 0
    assert record["contenders"]["gradtx"]["bytes_per_param"] > 0
    torch_runs = optimizer != "adamw_bf16"  # torch.optim has no bfloat16 state
    if not torch_runs:
        for impl in ("torch-foreach", "torch-fused"):
            entry = record["contenders"][impl]
            assert entry["status"] == "skipped" and "dtype" in entry["reason"]
    for key in ("gradtx/optax", "gradtx/torch-foreach")[: 2 if torch_runs else 1]:
        assert record["ratios"][key]["paired_median"] > 0
    assert harness.IDENTITY not in " ".join(record["ratios"])
    # clip + AdamW also times each of our steps without the clip, paired
    if optimizer in harness.BASELINES:
        assert set(record["baselines"]) == set(OURS)
        for base in record["baselines"].values():
            assert base["optimizer"] == harness.BASELINES[optimizer]
            assert len(base["samples_s"]) == TINY.rounds
            assert base["paired_median"] > 0 and base["median_s"] > 0
        assert not any(":" in key for key in record["ratios"])
    else:
        assert record["baselines"] == {}
    # Every side ran the same steps from the same start, so they agree.
    agreement = record["agreement"]
    assert agreement["reference"] == "optax"
    assert agreement["steps"] >= 1 + TINY.warmup + TINY.rounds
    diffs = agreement["max_abs_diff"].values()
    if torch_runs:
        assert max(diffs) < 1e-5
    else:
        # with a bfloat16 first moment optax takes b1 * mu in bfloat16, gradtx
        # in float32: the two drift apart by bfloat16 roundings over the run's
        # (time-dependent) number of steps, while gradtx's steps stay together
        assert max(diffs) < 1e-3 and max(diffs) - min(diffs) < 1e-6


HLO = """\
HloModule jit_step, entry_computation_layout={(f32[8]{0})->(f32[8]{0}, s32[])}

%add_reducer (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add = f32[] add(%a, %b)
}

%fused_computation (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %multiply = f32[8]{0} multiply(%param_0, %param_0)
}

%fused_computation.1 (param_0.1: s32[]) -> s32[] {
  %param_0.1 = s32[] parameter(0)
  %constant = s32[] constant(1)
  ROOT %add.1 = s32[] add(%param_0.1, %constant)
}

ENTRY %main (p: f32[8], c: s32[]) -> (f32[8], s32[]) {
  %p = f32[8]{0} parameter(0)
  %c = s32[] parameter(1)
  %square_fusion = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_computation
  %count_fusion = s32[] fusion(%c), kind=kLoop, calls=%fused_computation.1
  %zero = f32[] constant(0)
  %sum = f32[] reduce(%square_fusion, %zero), dimensions={0}, to_apply=%add_reducer
  ROOT %tuple = (f32[8]{0}, s32[]) tuple(%square_fusion, %count_fusion)
}
"""


def test_analyse_hlo_counts_kernels_not_their_insides():
    counts = harness.analyse_hlo(HLO)
    assert counts["fusions"] == 2
    assert counts["fusion_kinds"] == {"kLoop": 2}
    assert counts["scalar_fusions"] == 1
    assert counts["unfused_op_kinds"] == {"reduce": 1}  # the reducer's add is not


LOOP_HLO = """\
HloModule jit_loop

%fused_body (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %sine = f32[8]{0} sine(%param_0)
}

%body (carry: (s32[], f32[8])) -> (s32[], f32[8]) {
  %carry = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%carry), index=0
  %x = f32[8]{0} get-tuple-element(%carry), index=1
  %sine_fusion = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_body
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[8]{0}) tuple(%next, %sine_fusion)
}

%cond (carry.1: (s32[], f32[8])) -> pred[] {
  %carry.1 = (s32[], f32[8]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%carry.1), index=0
  %three = s32[] constant(3)
  ROOT %less = pred[] compare(%i.1, %three), direction=LT
}

ENTRY %main (x.1: f32[8]) -> (s32[], f32[8]) {
  %x.1 = f32[8]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8]{0}) tuple(%zero, %x.1)
  ROOT %loop = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body
}
"""


def test_analyse_hlo_follows_loop_bodies():
    counts = harness.analyse_hlo(LOOP_HLO)
    assert counts["fusions"] == 1  # in the body, counted once
    assert counts["unfused_op_kinds"] == {"add": 1, "compare": 1}


def test_analyse_hlo_reads_a_real_module():
    def step(x):
        return jax.lax.fori_loop(0, 3, lambda i, y: jnp.sin(y) * 2.0 + y, x)

    text = jax.jit(step).lower(jnp.ones(1000)).compile().as_text()
    assert harness.analyse_hlo(text)["fusions"] >= 1


def test_measure_bandwidth_reports_a_limit():
    result = harness.measure_bandwidth(size=2**14, repeats=2)
    assert result["bytes_per_call"] == 8 * 2**14
    assert "jax x*a+b (donated)" in result["kernels"]
    assert result["limit_gbs"] > 0
    assert result["limit_kernel"] in result["kernels"]
    assert all(k["calls_per_sample"] >= 1 for k in result["kernels"].values())
    # the read-only kernels move 4 bytes per element and give the read limit
    reading = result["kernels"]["jax sum(x*x)"]
    assert reading["reads_only"] and reading["bytes_per_call"] == 4 * 2**14
    assert not result["kernels"][result["limit_kernel"]]["reads_only"]
    assert result["kernels"][result["read_kernel"]]["reads_only"]
    assert result["read_gbs"] > 0


def test_clip_target_shows_the_read_bound_floor():
    def case(optimizer, seconds):
        return {
            "key": f"one-big/{optimizer}",
            "tree": "one-big",
            "optimizer": optimizer,
            "run": "r",
            "n_leaves": 1,
            "n_params": 10**9,
            "largest_leaf_bytes": 4 * 10**9,
            "contenders": {"gradtx": {"status": "ok", "median_s": seconds}},
            "ratios": {},
        }

    bandwidth = {"limit_gbs": 80.0, "read_gbs": 40.0, "kernels": {}}
    run = {"machine": {"jax_platform": "cpu"}, "bandwidth": {"end": bandwidth}}
    records = [case("adamw", 0.4), case("clip_adamw", 0.6)]
    rows = {row[0]: row[1:] for row in report.target_rows(records, {"r": run})}
    # reading 4 GB at 40 GB/s takes 0.1 s: at best 1.25x a 0.4 s AdamW step
    assert rows["clip + AdamW one-big: gradtx over gradtx AdamW <= 1.2"] == [
        "1.50x (read-bound floor 1.25x)",
        "no",
    ]
    # a run from before the read kernels: no floor
    del bandwidth["read_gbs"]
    rows = {row[0]: row[1:] for row in report.target_rows(records, {"r": run})}
    assert rows["clip + AdamW one-big: gradtx over gradtx AdamW <= 1.2"] == [
        "1.50x",
        "no",
    ]
    # AdamW timed in the clipped case's own rounds: the paired ratio wins over
    # the medians of the two cases, and the floor uses that AdamW step
    bandwidth["read_gbs"] = 40.0
    records[1]["baselines"] = {
        "gradtx": {"optimizer": "adamw", "median_s": 0.5, "paired_median": 1.15}
    }
    rows = {row[0]: row[1:] for row in report.target_rows(records, {"r": run})}
    assert rows["clip + AdamW one-big: gradtx over gradtx AdamW <= 1.2"] == [
        "1.15x (paired; read-bound floor 1.20x)",
        "yes",
    ]


def test_command_line_writes_results_page_and_plots(tmp_path, capsys, monkeypatch):
    # main() sets these for the process it runs in; keep this one as it was.
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    cache = jax.config.jax_enable_compilation_cache
    results, docs = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    img = tmp_path / "docs" / "img"
    argv = ["--trees", "sweep", "--sweep", "2,4", "--optimizers", "adamw"]
    argv += ["--rounds", "2", "--warmup", "1", "--sample-seconds", "0.001"]
    argv += ["--bandwidth-size", str(2**14), "--contenders", "gradtx,optax"]
    argv += ["--results-dir", str(results), "--docs", str(docs)]
    argv += ["--img-dir", str(img)]
    try:
        run.main(argv)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)

    files = list(results.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert set(data["cases"]) == {"sweep-2/adamw", "sweep-4/adamw"}
    (run_record,) = data["runs"].values()
    assert {"start", "end"} <= run_record["bandwidth"].keys()
    assert run_record["machine"]["versions"]["jax"] == jax.__version__
    assert run_record["command"].startswith("python -m benchmarks --trees sweep")

    page = docs.read_text()
    assert "Do not edit by hand" in page
    assert "Leaf-count sweep" in page and "Growth exponents" in page
    assert "Bandwidth limit" in page
    assert "Leaf-count sweep" in capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    plots = list(img.glob("benchmarks_*.png"))
    assert [p.name for p in plots] == [f"benchmarks_{files[0].stem}_sweep.png"]
    assert f"img/{plots[0].name}" in page


def test_a_second_run_replaces_only_its_own_cases(tmp_path):
    path = tmp_path / "device.json"
    first = {"id": "a", "machine": {"device": "cpu"}}
    second = {"id": "b", "machine": {"device": "cpu"}}
    run.save(
        path, first, [{"key": "x/adamw", "run": "a"}, {"key": "y/sgd", "run": "a"}]
    )
    run.save(path, second, [{"key": "x/adamw", "run": "b"}])
    data = json.loads(path.read_text())
    assert data["cases"]["x/adamw"]["run"] == "b"
    assert data["cases"]["y/sgd"]["run"] == "a"
    assert set(data["runs"]) == {"a", "b"}
    run.save(path, second, [{"key": "y/sgd", "run": "b"}])
    assert set(json.loads(path.read_text())["runs"]) == {"b"}


def test_fit_exponent_recovers_a_power_law():
    ns = [10, 100, 1000, 10000]
    fit = report.fit_exponent(ns, [3e-3 * n**1.5 for n in ns])
    assert fit["exponent"] == pytest.approx(1.5)
    assert (fit["n_from"], fit["n_to"]) == (100, 10000)


def test_gpu_targets_are_read_against_the_runs_own_limit():
    def case(tree, gradtx_s, optax_s, ratio, run_id):
        return {
            "key": f"{tree}/adamw",
            "tree": tree,
            "optimizer": "adamw",
            "run": run_id,
            "n_leaves": 1,
            "largest_leaf_bytes": 4,
            "contenders": {
                "gradtx": {"status": "ok", "median_s": gradtx_s, "achieved_gbs": 90.0},
                "optax": {"status": "ok", "median_s": optax_s, "achieved_gbs": 80.0},
            },
            "ratios": {"gradtx/optax": {"paired_median": ratio}},
        }

    def a_run(platform, calls_per_sample=5):
        kernel = {"gbs": 100.0, "where": "device"}
        if calls_per_sample:
            kernel["calls_per_sample"] = calls_per_sample
        bandwidth = {"limit_gbs": 100.0, "limit_kernel": "k", "kernels": {"k": kernel}}
        return {"machine": {"jax_platform": platform}, "bandwidth": {"end": bandwidth}}

    records = [
        case("gpt2-small", 1.0, 1.1, 0.9, "g"),
        case("one-1b", 1.0, 1.0, 1.01, "g"),
    ]
    rows = {row[0]: row[1:] for row in report.target_rows(records, {"g": a_run("gpu")})}
    assert rows["GPU AdamW gpt2-small: gradtx at >= 85% of the bandwidth limit"] == [
        "90%",
        "yes",
    ]
    assert rows["GPU AdamW gpt2-small: gradtx / optax <= 1.00"] == ["0.90x", "yes"]
    assert rows["GPU AdamW one-1b: gradtx / optax <= 1.00"] == ["1.01x", "no"]
    # The same numbers from a CPU run carry no GPU target.
    rows = report.target_rows(records, {"g": a_run("cpu")})
    assert not any(row[0].startswith("GPU") for row in rows)
    # A GPU limit timed one call per sample reads low: it is not used.
    old_gpu = a_run("gpu", calls_per_sample=None)
    assert report.limit_gbs(old_gpu) is None
    assert report.limit_gbs(a_run("cpu", calls_per_sample=None)) == 100.0
    rows = {row[0] for row in report.target_rows(records, {"g": old_gpu})}
    assert "GPU AdamW gpt2-small: gradtx / optax <= 1.00" in rows
    assert not any("of the bandwidth limit" in row for row in rows)
