"""Optimizer state follows the params' sharding; steps need no all-gather.

The multi-device checks run in tests/sharding_checks.py, in a subprocess with
8 simulated CPU devices, so that the rest of the suite keeps one device; the
tests here read its JSON report. The single-device tests at the end run here.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P
from sharding_checks import count_collectives, unsharded_fingerprint
from test_contract import CONTRACT

import gradtx
from gradtx.sharding import abstract_state, state_shardings

SCRIPT = pathlib.Path(__file__).resolve().parent / "sharding_checks.py"


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_checks_ran_on_eight_devices(report):
    assert report["devices"] == 8
    names = {(r["axis_types"], r["layout"], r["tx"]) for r in report["placement"]}
    for axis_types in ("Auto", "Explicit"):
        for name in CONTRACT:  # every public transformation, on FSDP rows
            assert (axis_types, "fsdp", name) in names
        for layout in ("replicated", "2d"):
            assert (axis_types, layout, "inject_hyperparams(adamw)") in names
            assert (axis_types, layout, "masked") in names


@pytest.mark.parametrize("check", ["eager", "jit", "abstract", "out_shardings", "step"])
def test_state_is_placed_like_the_params(report, check):
    # eager: tx.init on sharded arrays; jit: jax.jit(tx.init); abstract:
    # abstract_state on ShapeDtypeStructs agrees with eval_shape and the
    # params; out_shardings: jit(init, out_shardings=state_shardings(...));
    # step: the state after a jitted update
    problems = [
        f"{r['axis_types']}/{r['layout']}/{r['tx']}: {problem}"
        for r in report["placement"]
        for problem in r[check]
    ]
    assert not problems, "\n".join(problems[:20])


def test_init_compiles_without_collectives(report):
    for program in report["placement_programs"]:
        if program["factored"]:
            continue  # next test
        assert program["init"] == {"main": {}, "branches": {}}, program


def test_factored_init_reduces_zeros_once_per_statistic_and_gathers_nothing(report):
    # Adafactor's statistics reduced over a sharded axis (FSDP rows: the
    # column statistics) are sums of placed zeros: all-reduces, no gather.
    programs = [p for p in report["placement_programs"] if p["factored"]]
    assert len(programs) == 2  # Auto and Explicit, FSDP layout
    for program in programs:
        assert set(program["init"]["main"]) <= {"all-reduce"}, program
        assert program["init"]["branches"] == {}, program


def test_no_step_gathers_or_reshuffles(report):
    programs = [p["step"] for p in report["placement_programs"]]
    programs += [s["collectives"] for s in report["steps"]]
    for collectives in programs:
        for where in ("main", "branches"):
            assert set(collectives[where]) <= {"all-reduce"}, collectives


def test_adamw_steps_need_no_collectives(report):
    for step in report["steps"]:
        if step["tx"] in ("adamw", "inject_hyperparams(adamw)"):
            assert step["collectives"] == {"main": {}, "branches": {}}, step


def clip_steps(report, axis_types):
    return {
        s["layout"]: s["collectives"]
        for s in report["steps"]
        if s["tx"] == "clip+adamw" and s["axis_types"] == axis_types
    }


def test_clipping_adds_one_all_reduce_of_a_scalar_with_explicit_sharding(report):
    steps = clip_steps(report, "Explicit")
    assert steps["replicated"] == {"main": {}, "branches": {}}  # nothing to add
    for layout in ("fsdp", "2d"):
        # one per step, plus one in the overflow fallback (a cond branch)
        assert steps[layout]["main"] == {"all-reduce": ["f32[]"]}, steps[layout]
        assert steps[layout]["branches"] == {"all-reduce": ["f32[]"]}


def test_clipping_reduces_scalars_only_with_auto_sharding(report):
    steps = clip_steps(report, "Auto")
    assert steps["replicated"] == {"main": {}, "branches": {}}
    # XLA partitions each reduction and adds the devices' partial sums:
    # all-reduces of scalars only (how many, it decides by what shares
    # devices), never a gather of the gradient.
    for collectives in steps.values():
        assert set(collectives["main"]) <= {"all-reduce"}, collectives
        for shape in collectives["main"].get("all-reduce", []):
            assert re.fullmatch(r"f32\[\]|\(f32\[\](, f32\[\])*\)", shape), shape


def test_sharded_steps_equal_the_single_device_run(report):
    for step in report["steps"]:
        assert not step["state_keeps_sharding"], step
        if step["tx"] == "clip+adamw":
            # the norm adds the same numbers in another order
            assert step["max_relative_difference"] < 1e-5, step
        else:
            assert step["bitwise_equal"], step


def test_the_same_arrays_give_the_same_bits_whatever_the_device_count(report):
    # Arrays on one device, in this 1-device process and in the 8-device one.
    assert jax.device_count() == 1
    assert report["unsharded_fingerprint"] == unsharded_fingerprint()


def test_huge_gradients_are_clipped_on_a_mesh(report):
    for result in report["huge"]:
        assert result["norm_after_clip"] == pytest.approx(1.0, rel=1e-6)


def test_sharded_state_restores_into_its_shards(report):
    assert len(report["checkpoint"]) == 2
    for result in report["checkpoint"]:
        assert not result["problems"], result


def test_count_collectives_reads_compiled_hlo():
    hlo = """HloModule step

%add (x: f32[], y: f32[]) -> f32[] {
  ROOT %a = f32[] add(f32[] %x, f32[] %y)
}

%fallback (p: f32[]) -> f32[] {
  %p = f32[] parameter(0)
  ROOT %r = f32[] all-reduce(f32[] %p), to_apply=%add
}

%fast (q: f32[]) -> f32[] {
  ROOT %q = f32[] parameter(0)
}

ENTRY %main (w: f32[2,4]) -> f32[] {
  %w = f32[2,4]{1,0} parameter(0)
  %t = (f32[], f32[]) all-reduce(f32[] %w, f32[] %w), to_apply=%add
  %g = f32[8,4]{1,0} all-gather(f32[2,4]{1,0} %w), dimensions={0}
  %s = f32[] all-reduce-start(f32[] %w), to_apply=%add
  %d = f32[] all-reduce-done(f32[] %s)
  ROOT %c = f32[] conditional(pred[] %x, f32[] %d, f32[] %d), \
branch_computations={%fast, %fallback}
}
"""
    assert count_collectives(hlo) == {
        "main": {"all-reduce": ["(f32[], f32[])", "f32[]"], "all-gather": ["f32[8,4]"]},
        "branches": {"all-reduce": ["f32[]"]},
    }


# ----------------------------------------------------------------------------
# one device, in this process


def test_abstract_state_on_one_device_matches_eval_shape():
    tx = gradtx.inject_hyperparams(gradtx.adamw)(learning_rate=1e-3)
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2, jnp.bfloat16)}
    predicted = abstract_state(tx, params)
    shapes = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(predicted) == jax.tree.structure(shapes)
    device = SingleDeviceSharding(jax.devices()[0])
    for p, s in zip(jax.tree.leaves(predicted), jax.tree.leaves(shapes), strict=True):
        assert (p.shape, p.dtype, p.weak_type) == (s.shape, s.dtype, s.weak_type)
        assert p.sharding == device


def test_numpy_params_give_state_on_the_default_device():
    params = {"w": np.ones((3, 2), np.float32)}
    shardings = state_shardings(gradtx.adam(1e-3), params)
    assert all(
        s == SingleDeviceSharding(jax.devices()[0]) for s in jax.tree.leaves(shardings)
    )


def test_state_shardings_build_the_state_in_place():
    mesh = jax.make_mesh((1,), ("data",))
    rows = NamedSharding(mesh, P("data"))
    params = {
        "w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=rows),
        "s": jax.ShapeDtypeStruct((), jnp.float32),  # no sharding: replicated
    }
    tx = gradtx.chain(
        gradtx.masked(gradtx.adam(1e-3), {"w": True, "s": False}),
        gradtx.inject_hyperparams(gradtx.sgd)(learning_rate=0.1, momentum=0.9),
    )
    shardings = state_shardings(tx, params)
    assert shardings[0].inner_state[0].mu["s"] is None  # unselected: no moment
    state = jax.jit(tx.init, out_shardings=shardings)(
        {"w": jnp.ones((4, 2)), "s": jnp.float32(1.0)}
    )
    assert state[0].inner_state[0].mu["w"].sharding.is_equivalent_to(rows, 2)
    assert state[1].hyperparams["learning_rate"].sharding.is_fully_replicated
    assert float(state[1].hyperparams["momentum"]) == pytest.approx(0.9)


def test_params_on_two_meshes_are_refused_naming_them():
    first = NamedSharding(jax.make_mesh((1,), ("data",)), P())
    second = NamedSharding(jax.make_mesh((1,), ("model",)), P())
    params = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=first),
        "b": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=second),
    }
    with pytest.raises(ValueError, match=r"state_shardings: .*'a' .*'b'"):
        state_shardings(gradtx.adam(1e-3), params)


def test_a_non_transformation_is_refused():
    with pytest.raises(
        TypeError, match=r"abstract_state: tx must be an \(init, update"
    ):
        abstract_state(gradtx.adam, {"w": jnp.ones(2)})
