"""Adafactor's links and optimizer: equations, peers, conventions, sharding.

The float64 references below are written from the equations in the
docstrings of gradtx/factored.py. Peer parity: optax's definition is the
default, torch.optim.Adafactor's is `convention="torch"`.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
import torch
from peers import (
    gradtx_trajectory,
    max_relative_gap,
    optax_trajectory,
    torch_trajectory,
)

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS = 120 steps
RTOL_OPTAX = 2e-5
RTOL_TORCH = 1e-5
F32_EPS = float(np.finfo(np.float32).eps)  # torch's eps1 for float32 params


def report(kind, case, value):
    print(f"[factored] {kind} {case}: {value:.3g}")


def schedule(t):
    return 0.05 * 0.98**t + 0.01


def rising_cap(t):
    return 0.3 + 0.001 * t


# ----------------------------------------------------------------------------
# float64 references, one line per equation


def factored_axes(shape, min_size, last_axes):
    if len(shape) < 2:
        return None
    if last_axes:
        a, b = len(shape) - 2, len(shape) - 1
    else:
        order = np.argsort(shape)
        a, b = sorted((int(order[-2]), int(order[-1])))
    return (a, b) if min(shape[a], shape[b]) >= min_size else None


def ref_factored_rms(
    decay_rate=0.8,
    step_offset=0,
    min_size=128,
    epsilon=1e-30,
    factored=True,
    last_axes=False,
    floor=False,
):
    def init(p):
        axes = factored_axes(np.shape(p), min_size, last_axes) if factored else None
        if axes is None:
            return None, None, np.zeros_like(p)
        a, b = axes
        return (
            np.zeros(np.mean(p, axis=b).shape),
            np.zeros(np.mean(p, axis=a).shape),
            None,
        )

    def step(g, s, p, t):
        r, c, v = s
        beta = 1 - max(t - step_offset, 1) ** (-decay_rate)
        sq = g**2 if floor else g**2 + epsilon
        if v is None:
            axes = factored_axes(np.shape(p), min_size, last_axes)
            a, b = axes
            r = beta * r + (1 - beta) * np.mean(sq, axis=b)
            c = beta * c + (1 - beta) * np.mean(sq, axis=a)
            norm = np.mean(r, axis=a, keepdims=True)
            if floor:
                norm = np.maximum(norm, epsilon)
            v_hat = np.expand_dims(r / norm, b) * np.expand_dims(c, a)
        else:
            v = beta * v + (1 - beta) * sq
            v_hat = v
        root = np.sqrt(v_hat)
        u = g / (np.maximum(root, epsilon) if floor else root)
        return u, (r, c, v)

    return R.per_leaf(init, step)


def ref_clip_by_block_rms(threshold):
    def step(g, s, p, t):
        return g / max(1.0, np.sqrt(np.mean(g**2)) / threshold), None

    return R.per_leaf(lambda p: None, step)


def value_at(v, t):
    """A hyperparameter at step t (the count of updates already applied)."""
    return float(v(t)) if callable(v) else v


def ref_param_block_rms(min_scale=1e-3, max_relative_step=None):
    def step(g, s, p, t):
        u = max(np.sqrt(np.mean(p**2)), min_scale) * g
        if max_relative_step is not None:
            cap = value_at(max_relative_step, t - 1)
            u = min(cap, 1 / np.sqrt(t)) * u
        return u, None

    return R.per_leaf(lambda p: None, step)


def ema(decay):
    return R.momentum(decay, dampening=decay)


def ref_adafactor(lr, min_size=128, momentum=None, wd=None, **factored):
    refs = [ref_factored_rms(min_size=min_size, **factored), ref_clip_by_block_rms(1.0)]
    refs += [R.scale_by_schedule(lr), ref_param_block_rms()]
    refs += [ema(momentum)] if momentum is not None else []
    refs += [R.add_decayed_weights(wd)] if wd is not None else []
    return R.chain(*refs, R.scale(-1.0))


def ref_adafactor_torch(lr=0.01, d=1.0, wd=None, eps1=F32_EPS, eps2=1e-3, beta=0.8):
    refs = [
        ref_factored_rms(beta, 0, 0, eps1, last_axes=True, floor=True),
        ref_clip_by_block_rms(d),
        ref_param_block_rms(eps2, max_relative_step=lr),
    ]
    refs += [R.add_decayed_weights(lr * wd)] if wd is not None else []
    return R.chain(*refs, R.scale(-1.0))


EQUATION_CASES = {
    "scale_by_factored_rms": (
        lambda: gradtx.scale_by_factored_rms(min_dim_size_to_factor=2),
        lambda: ref_factored_rms(min_size=2),
    ),
    "scale_by_factored_rms/offset_eps": (
        lambda: gradtx.scale_by_factored_rms(
            True, 0.5, 3, 2, 1e-3, factor_last_axes=True
        ),
        lambda: ref_factored_rms(0.5, 3, 2, 1e-3, last_axes=True),
    ),
    "scale_by_factored_rms/torch_form": (
        lambda: gradtx.scale_by_factored_rms(
            min_dim_size_to_factor=0,
            epsilon=None,
            factor_last_axes=True,
            epsilon_as_floor=True,
        ),
        lambda: ref_factored_rms(0.8, 0, 0, F32_EPS, last_axes=True, floor=True),
    ),
    "clip_by_block_rms": (
        lambda: gradtx.clip_by_block_rms(1.5),
        lambda: ref_clip_by_block_rms(1.5),
    ),
    "scale_by_param_block_rms": (  # scaled down, or the params blow up
        lambda: gradtx.chain(gradtx.scale_by_param_block_rms(0.5), gradtx.scale(0.02)),
        lambda: R.chain(ref_param_block_rms(0.5), R.scale(0.02)),
    ),
    # the cap binds until t = 10, then 1/sqrt(t) does
    "scale_by_param_block_rms/relative_step": (
        lambda: gradtx.scale_by_param_block_rms(max_relative_step=rising_cap),
        lambda: ref_param_block_rms(max_relative_step=rising_cap),
    ),
    "adafactor": (
        lambda: gradtx.adafactor(0.05, min_dim_size_to_factor=2),
        lambda: ref_adafactor(0.05, min_size=2),
    ),
    "adafactor/schedule_momentum_decay": (
        lambda: gradtx.adafactor(
            schedule, 2, momentum=0.9, weight_decay_rate=1e-3, decay_offset=2
        ),
        lambda: ref_adafactor(schedule, 2, momentum=0.9, wd=1e-3, step_offset=2),
    ),
    "adafactor/torch_decay_relative_step": (
        lambda: gradtx.adafactor(
            0.3,
            decay_rate=0.5,
            clipping_threshold=2.0,
            weight_decay_rate=0.1,
            eps=1e-6,
            min_scale=1e-2,
            convention="torch",
        ),
        lambda: ref_adafactor_torch(0.3, 2.0, 0.1, 1e-6, 1e-2, 0.5),
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    make_tx, make_ref = EQUATION_CASES[case]
    got, want = R.run_side_by_side(make_tx(), make_ref(), steps=R.STEPS)
    error = R.max_relative_error(got, want)
    report("float64 error", case, error)
    assert error < RTOL


# ----------------------------------------------------------------------------
# peers, step for step


OPTAX_CASES = {
    "scale_by_factored_rms": (
        lambda: gradtx.chain(
            gradtx.scale_by_factored_rms(min_dim_size_to_factor=2),
            gradtx.scale_by_learning_rate(0.05),
        ),
        lambda: optax.chain(
            optax.scale_by_factored_rms(min_dim_size_to_factor=2), optax.scale(-0.05)
        ),
    ),
    "clip_by_block_rms": (
        lambda: gradtx.chain(
            gradtx.clip_by_block_rms(1.5), gradtx.scale_by_learning_rate(0.05)
        ),
        lambda: optax.chain(optax.clip_by_block_rms(1.5), optax.scale(-0.05)),
    ),
    "scale_by_param_block_rms": (
        lambda: gradtx.chain(
            gradtx.scale_by_param_block_rms(0.5), gradtx.scale_by_learning_rate(0.05)
        ),
        lambda: optax.chain(optax.scale_by_param_block_rms(0.5), optax.scale(-0.05)),
    ),
    "adafactor": (
        lambda: gradtx.adafactor(0.05, min_dim_size_to_factor=2),
        lambda: optax.adafactor(0.05, min_dim_size_to_factor=2),
    ),
    "adafactor/defaults": (  # min_dim_size_to_factor=128: nothing factored here
        lambda: gradtx.adafactor(0.05),
        lambda: optax.adafactor(0.05),
    ),
    "adafactor/positional": (  # decay_offset=0: see test_decay_offset_...
        lambda: gradtx.adafactor(
            schedule, 2, 0.6, 0, True, 1.5, 0.8, jnp.float32, 1e-3, 1e-20, True
        ),
        lambda: optax.adafactor(
            schedule, 2, 0.6, 0, True, 1.5, 0.8, jnp.float32, 1e-3, 1e-20, True
        ),
    ),
    "adafactor/unfactored_no_scale_no_clip_masked_decay": (
        lambda: gradtx.adafactor(
            0.02,
            2,
            factored=False,
            multiply_by_parameter_scale=False,
            clipping_threshold=None,
            weight_decay_rate=1e-2,
            weight_decay_mask={"w": True, "b": False, "s": True},
        ),
        lambda: optax.adafactor(
            0.02,
            2,
            factored=False,
            multiply_by_parameter_scale=False,
            clipping_threshold=None,
            weight_decay_rate=1e-2,
            weight_decay_mask={"w": True, "b": False, "s": True},
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_step_for_step_with_optax(case):
    ours, theirs = OPTAX_CASES[case]
    gap = max_relative_gap(gradtx_trajectory(ours()), optax_trajectory(theirs()))
    report("optax gap", case, gap)
    assert gap < RTOL_OPTAX


TORCH_CASES = {
    "Adafactor": (
        lambda: gradtx.adafactor(convention="torch"),
        lambda p: torch.optim.Adafactor(p),
    ),
    # lr = 0.3 caps the relative step for t < 12 only; then 1/sqrt(t) rules.
    # torch takes the step size in double precision, gradtx in float32: the
    # gap (3e-6) stays under the tolerance.
    "Adafactor/all_arguments": (
        lambda: gradtx.adafactor(
            0.3,
            decay_rate=0.5,
            clipping_threshold=2.0,
            weight_decay_rate=0.1,
            eps=1e-6,
            min_scale=1e-2,
            convention="torch",
        ),
        lambda p: torch.optim.Adafactor(
            p, lr=0.3, beta2_decay=-0.5, d=2.0, weight_decay=0.1, eps=(1e-6, 1e-2)
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_step_for_step_with_torch(case):
    ours, theirs = TORCH_CASES[case]
    gap = max_relative_gap(gradtx_trajectory(ours()), torch_trajectory(theirs))
    report("torch gap", case, gap)
    assert gap < RTOL_TORCH


# ----------------------------------------------------------------------------
# leaves of three and four axes, against the reference and both peers

SHAPES_ND = {"t3": (6, 2, 5), "t4": (5, 2, 3, 4), "m": (3, 7)}


def nd_problem(steps):
    rng = np.random.default_rng(3)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES_ND.items()}
    grads = [
        {k: (0.4 + rng.normal(size=s)).astype(np.float32) for k, s in SHAPES_ND.items()}
        for _ in range(steps)
    ]
    return params, grads


def jax_run(tx, steps, apply=gradtx.apply_updates):
    params, grads = nd_problem(steps)
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return apply(params, updates), state

    out = []
    for g in grads:
        params, state = step(params, state, g)
        out.append(jax.tree.map(np.asarray, params))
    return out, state


def reference_run(ref, steps):
    params, grads = nd_problem(steps)
    params = {k: v.astype(np.float64) for k, v in params.items()}
    state = ref.init(params)
    out = []
    for g in grads:
        g = {k: v.astype(np.float64) for k, v in g.items()}
        u, state = ref.update(g, state, params)
        params = {k: params[k] + u[k] for k in params}
        out.append(params)
    return out


def torch_run(make_opt, steps):
    params, grads = nd_problem(steps)
    keys = sorted(params)
    tensors = [torch.tensor(params[k], requires_grad=True) for k in keys]
    opt = make_opt(tensors)
    out = []
    for g in grads:
        for t, k in zip(tensors, keys, strict=True):
            t.grad = torch.tensor(g[k])
        opt.step()
        out.append(
            {k: t.detach().numpy().copy() for k, t in zip(keys, tensors, strict=True)}
        )
    return out


def test_leaves_of_three_and_four_axes():
    steps = 40
    # optax's rule: the two largest axes, here not the last two
    ours, state = jax_run(gradtx.adafactor(0.05, min_dim_size_to_factor=2), steps)
    assert state[0].v_row["t3"].shape == (6, 2)  # (6, 2, 5): axes 0 and 2
    assert state[0].v_col["t3"].shape == (2, 5)
    assert state[0].v_row["t4"].shape == (5, 2, 3)  # (5, 2, 3, 4): axes 0 and 3
    assert state[0].v_col["t4"].shape == (2, 3, 4)
    theirs, _ = jax_run(
        optax.adafactor(0.05, min_dim_size_to_factor=2), steps, optax.apply_updates
    )
    want = reference_run(ref_adafactor(0.05, min_size=2), steps)
    gaps = {
        "float64": max_relative_gap(ours, want),
        "optax": max_relative_gap(ours, theirs),
    }
    # torch's rule: the last two axes of every leaf
    ours_t, state_t = jax_run(gradtx.adafactor(convention="torch"), steps)
    assert state_t[0].v_col["t3"].shape == (6, 5)  # axes 1 and 2
    assert state_t[0].v_col["t4"].shape == (5, 2, 4)  # axes 2 and 3
    gaps["torch"] = max_relative_gap(ours_t, torch_run(torch.optim.Adafactor, steps))
    gaps["torch float64"] = max_relative_gap(
        ours_t, reference_run(ref_adafactor_torch(), steps)
    )
    for name, gap in gaps.items():
        report("n-d leaves", name, gap)
    assert gaps["float64"] < RTOL and gaps["torch float64"] < RTOL
    assert gaps["optax"] < RTOL_OPTAX and gaps["torch"] < RTOL_TORCH


# ----------------------------------------------------------------------------
# where optax and torch differ (one test per row of docs/conventions.md)


def scaled_grads_trajectory(tx, scale, steps=30):
    params = R.to_f32(R.make_params(0))
    state = tx.init(params)
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (gradtx.apply_updates(p, u), s))(
            *tx.update(g, s, p)
        )
    )
    out = []
    for g in R.make_grads(steps, 1):
        params, state = step(
            params, state, R.to_f32({k: v * scale for k, v in g.items()})
        )
        out.append(jax.tree.map(np.asarray, params))
    return out


def scaled_torch_trajectory(make_opt, scale, steps=30):
    start = R.make_params(0)
    keys = sorted(start)
    tensors = [
        torch.tensor(start[k], dtype=torch.float32, requires_grad=True) for k in keys
    ]
    opt = make_opt(tensors)
    out = []
    for g in R.make_grads(steps, 1):
        for t, k in zip(tensors, keys, strict=True):
            t.grad = torch.tensor(g[k] * scale, dtype=torch.float32)
        opt.step()
        out.append(
            {k: t.detach().numpy().copy() for k, t in zip(keys, tensors, strict=True)}
        )
    return out


def test_torch_learning_rate_caps_a_relative_step():
    # optax multiplies the step by lr; torch by min(lr, 1/sqrt(t)). With
    # lr = 1 the two agree at t = 1 only. (Against torch itself: the parity
    # case "Adafactor/all_arguments", where lr = 0.3 binds until t = 11.)
    torch_form = gradtx.adafactor(1.0, convention="torch")
    optax_form = gradtx.adafactor(1.0, min_dim_size_to_factor=1)
    params = {"w": jnp.array([[3.0, -1.0], [1.0, 2.0]])}
    grads = {"w": jnp.array([[1.0, 2.0], [-1.0, 0.5]])}

    @jax.jit
    def four_steps(params, grads):
        out = {}
        for name, tx in (("torch", torch_form), ("optax", optax_form)):
            state, out[name] = tx.init(params), []
            for _ in range(4):
                u, state = tx.update(grads, state, params)
                out[name].append(u["w"])
        return out

    steps = four_steps(params, grads)
    for t in range(4):
        ratio = steps["torch"][t] / steps["optax"][t]
        np.testing.assert_allclose(ratio, 1 / np.sqrt(t + 1), rtol=1e-5)


def test_torch_factors_the_last_two_axes_of_every_matrix():
    params = {"w": jnp.zeros((3, 7, 2)), "small": jnp.zeros((4, 3))}
    optax_state = gradtx.adafactor().init(params)[0]
    torch_state = gradtx.adafactor(convention="torch").init(params)[0]
    # optax: the two largest axes, each at least 128 long: nothing here
    assert optax_state.v["w"].shape == (3, 7, 2)
    assert optax_state.v["small"].shape == (4, 3)
    # torch: the last two axes, whatever their sizes
    assert torch_state.v_row["w"].shape == (3, 7)
    assert torch_state.v_col["w"].shape == (3, 2)
    assert torch_state.v_row["small"].shape == (4,)
    assert torch_state.v["small"].shape == (0,)
    with pytest.raises(ValueError, match="min_dim_size_to_factor"):
        gradtx.adafactor(min_dim_size_to_factor=2, convention="torch")


def test_torch_eps_is_a_floor_of_the_divisors():
    # Gradients of 1e-9: torch floors sqrt(v) at eps1 = 1.2e-7, so the steps
    # shrink with the gradient (to about 1e-9 / 1.2e-7 of their usual size);
    # optax adds 1e-30 to g**2 and normalises them to the usual size.
    scale = 1e-9
    ours = scaled_grads_trajectory(gradtx.adafactor(convention="torch"), scale)
    theirs = scaled_torch_trajectory(torch.optim.Adafactor, scale)
    assert max_relative_gap(ours, theirs) < RTOL_TORCH
    start = R.to_f32(R.make_params(0))
    moved_torch = abs(float(ours[-1]["s"]) - float(start["s"]))
    optax_form = scaled_grads_trajectory(gradtx.adafactor(0.01), scale)
    moved_optax = abs(float(optax_form[-1]["s"]) - float(start["s"]))
    assert moved_torch < 0.02 * moved_optax
    # an explicit eps is torch's eps1
    ours = scaled_grads_trajectory(
        gradtx.adafactor(eps=1e-10, convention="torch"), scale
    )
    theirs = scaled_torch_trajectory(
        lambda p: torch.optim.Adafactor(p, eps=(1e-10, 1e-3)), scale
    )
    assert max_relative_gap(ours, theirs) < RTOL_TORCH


def test_torch_weight_decay_is_scaled_by_the_learning_rate():
    # zero gradients: only the decay moves the params
    params = {"w": jnp.array([1.0, -2.0])}
    zero = {"w": jnp.zeros(2)}
    for convention, want in (("optax", 0.1), ("torch", 0.05 * 0.1)):
        tx = gradtx.adafactor(0.05, weight_decay_rate=0.1, convention=convention)
        u, _ = tx.update(zero, tx.init(params), params)
        np.testing.assert_allclose(u["w"], -want * params["w"], rtol=1e-6)
    p = [torch.tensor([1.0, -2.0], requires_grad=True)]
    p[0].grad = torch.zeros(2)
    torch.optim.Adafactor(p, lr=0.05, weight_decay=0.1).step()
    np.testing.assert_allclose(p[0].detach().numpy(), [1 - 0.005, -2 + 0.01], rtol=1e-6)


def test_default_learning_rates():
    # optax: None, no scaling at all (the step is rms(p) per element);
    # torch: 0.01, the relative step's cap.
    params = {"w": jnp.array([3.0, -4.0])}
    g = {"w": jnp.array([1.0, 1.0])}
    for convention, lr in (("optax", 1.0), ("torch", 0.01)):
        tx = gradtx.adafactor(convention=convention)
        u, _ = tx.update(g, tx.init(params), params)
        np.testing.assert_allclose(u["w"], [-lr * np.sqrt(12.5)] * 2, rtol=1e-6)


def test_decay_offset_restarts_the_schedule_where_optax_gives_nan():
    # The intended use: a state restored at step 5 with decay_offset=5 starts
    # the schedule of beta_t again, as in optax. On a fresh state optax's
    # beta_t is undefined while t <= decay_offset and its first update is
    # NaN; here beta_t is 0 until then (each update uses its own gradient).
    params = small_params()
    g = grads_at(params, 0)
    ours = gradtx.scale_by_factored_rms(step_offset=5, min_dim_size_to_factor=2)
    theirs = optax.scale_by_factored_rms(step_offset=5, min_dim_size_to_factor=2)
    fresh = gradtx.scale_by_factored_rms(min_dim_size_to_factor=2)
    five = jnp.array(5, jnp.int32)

    @jax.jit
    def updates(g):
        want = fresh.update(g, fresh.init(params))[0]
        restored = ours.update(g, ours.init(params)._replace(count=five))[0]
        optax_restored = theirs.update(
            g, theirs.init(params)._replace(count=five), params
        )[0]
        first = ours.update(g, ours.init(params))[0]
        optax_first = theirs.update(g, theirs.init(params), params)[0]
        return want, restored, optax_restored, first, optax_first

    want, restored, optax_restored, first, optax_first = updates(g)
    chex_close(restored, want)
    chex_close(optax_restored, want, rtol=1e-5)
    chex_close(first, want)
    assert not any(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(optax_first))


# ----------------------------------------------------------------------------
# construction


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: gradtx.adafactor(-0.1), "learning_rate"),
        (lambda: gradtx.adafactor(min_dim_size_to_factor=-1), "min_dim_size_to_factor"),
        (lambda: gradtx.adafactor(decay_rate=-0.5), "decay_rate"),
        (lambda: gradtx.adafactor(decay_offset=-1), "decay_offset"),
        (lambda: gradtx.adafactor(clipping_threshold=0.5), "clipping_threshold"),
        (lambda: gradtx.adafactor(momentum=1.0), "momentum"),
        (lambda: gradtx.adafactor(weight_decay_rate=-1e-3), "weight_decay_rate"),
        (lambda: gradtx.adafactor(eps=-1e-30), "eps"),
        (lambda: gradtx.adafactor(min_scale=-1.0), "min_scale"),
        (lambda: gradtx.adafactor(convention="keras"), "convention"),
        (
            lambda: gradtx.adafactor(
                multiply_by_parameter_scale=False, convention="torch"
            ),
            "multiply_by_parameter_scale",
        ),
        (lambda: gradtx.scale_by_factored_rms(decay_rate=float("nan")), "decay_rate"),
        (lambda: gradtx.scale_by_factored_rms(step_offset=-2), "step_offset"),
        (lambda: gradtx.scale_by_factored_rms(epsilon=-1.0), "epsilon"),
        (
            lambda: gradtx.scale_by_factored_rms(min_dim_size_to_factor=-3),
            "min_dim_size_to_factor",
        ),
        (lambda: gradtx.clip_by_block_rms(0.0), "threshold"),
        (lambda: gradtx.clip_by_block_rms(-1.0), "threshold"),
        (lambda: gradtx.scale_by_param_block_rms(-1e-3), "min_scale"),
        (
            lambda: gradtx.scale_by_param_block_rms(max_relative_step=-0.1),
            "max_relative_step",
        ),
    ],
)
def test_out_of_range_hyperparameters_are_refused(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_flags_and_sizes_are_typed():
    with pytest.raises(TypeError, match="factored"):
        gradtx.adafactor(factored=1)
    with pytest.raises(TypeError, match="min_dim_size_to_factor"):
        gradtx.adafactor(min_dim_size_to_factor=2.5)
    with pytest.raises(TypeError, match="multiply_by_parameter_scale"):
        gradtx.adafactor(multiply_by_parameter_scale="yes")
    with pytest.raises(TypeError):  # optax has 12 arguments; the rest are keywords
        gradtx.adafactor(
            None,
            128,
            0.8,
            0,
            True,
            1.0,
            None,
            jnp.float32,
            None,
            1e-30,
            True,
            None,
            1e-3,
        )


def test_a_wrong_tree_is_named():
    tx = gradtx.scale_by_factored_rms(min_dim_size_to_factor=2)
    state = tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match="'w'"):
        tx.update({"w": jnp.zeros((4, 5)), "b": jnp.zeros(3)}, state)
    with pytest.raises(ValueError, match="structure"):
        tx.update({"w": jnp.zeros((4, 3))}, state)
    with pytest.raises(ValueError, match="params"):
        gradtx.scale_by_param_block_rms().update(
            {"w": jnp.ones(2)}, gradtx.EmptyState()
        )


# ----------------------------------------------------------------------------
# dtypes, inject_hyperparams, vmap


def small_params(dtype=jnp.float32):
    return {
        "w": jnp.linspace(-1.0, 2.0, 12, dtype=jnp.float32).reshape(4, 3).astype(dtype),
        "b": jnp.array([0.5, -1.5, 1.0], dtype),
        "s": jnp.array(-2.0, dtype),
    }


def grads_at(params, k):
    return jax.tree.map(
        lambda p: (jnp.sin(p.astype(jnp.float32) * (k + 1.5)) * 2).astype(p.dtype),
        params,
    )


def run_steps(tx, params, steps=5):
    @jax.jit
    def step(params, state, k):
        updates, state = tx.update(grads_at(params, k), state, params)
        return gradtx.apply_updates(params, updates), state, updates

    state = tx.init(params)
    for k in range(steps):
        params, state, updates = step(params, state, k)
    return params, state, updates


HYPERPARAMS = {
    "learning_rate": 0.05,
    "min_dim_size_to_factor": 2,
    "factored": True,
    "decay_rate": 0.7,
    "decay_offset": 1,
    "clipping_threshold": 1.5,
    "momentum": 0.9,
    "weight_decay_rate": 1e-3,
    "eps": 1e-30,
    "multiply_by_parameter_scale": True,
    "min_scale": 1e-3,
}
NUMERIC = {
    "learning_rate",
    "decay_rate",
    "decay_offset",
    "clipping_threshold",
    "momentum",
    "weight_decay_rate",
    "eps",
    "min_scale",
}


def test_inject_hyperparams_traces_with_sizes_and_flags_given():
    # optax issue 412: optax.inject_hyperparams(optax.adafactor) turns
    # min_dim_size_to_factor and factored into arrays, and the update fails
    # to trace. Here ints and bools stay static.
    injected = gradtx.inject_hyperparams(gradtx.adafactor)(**HYPERPARAMS)
    bf16, _, updates = run_steps(injected, small_params(jnp.bfloat16))
    state = injected.init(small_params(jnp.bfloat16))
    assert set(state.hyperparams) == NUMERIC
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
    assert state.inner_state[0].v_row["w"].dtype == jnp.bfloat16
    assert state.inner_state[0].v_row["w"].shape == (4,)  # factored: static 2
    for u in jax.tree.leaves(updates) + jax.tree.leaves(bf16):
        assert u.dtype == jnp.bfloat16
        assert bool(jnp.all(jnp.isfinite(u)))
    plain, plain_state, _ = run_steps(gradtx.adafactor(**HYPERPARAMS), small_params())
    same, _, _ = run_steps(injected, small_params())
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    torch_form = gradtx.inject_hyperparams(gradtx.adafactor)(
        learning_rate=0.05, weight_decay_rate=0.1, convention="torch"
    )
    a, _, _ = run_steps(torch_form, small_params())
    b, _, _ = run_steps(
        gradtx.adafactor(0.05, weight_decay_rate=0.1, convention="torch"),
        small_params(),
    )
    chex_close(a, b)


def chex_close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize(
    ("dtype", "tx"),
    [
        (jnp.bfloat16, gradtx.adafactor(0.05, min_dim_size_to_factor=2, momentum=0.9)),
        (jnp.float16, gradtx.adafactor(convention="torch")),
    ],
    ids=["bfloat16", "float16/torch"],
)
def test_low_precision_params(dtype, tx):
    params, state, updates = run_steps(tx, small_params(dtype), steps=3)
    for leaf in jax.tree.leaves(params) + jax.tree.leaves(updates):
        assert leaf.dtype == dtype and bool(jnp.all(jnp.isfinite(leaf)))
    assert state[0].v_row["w"].dtype == dtype


def test_vmap_over_hyperparameters_equals_separate_runs():
    opt = gradtx.inject_hyperparams(gradtx.adafactor)(
        learning_rate=0.05, decay_rate=0.8, min_dim_size_to_factor=2, momentum=0.5
    )
    params = small_params()
    lrs = jnp.array([0.01, 0.05, 0.2])
    decays = jnp.array([0.5, 0.8, 1.0])

    def run(lr, decay):
        state = opt.init(params)
        state = state._replace(
            hyperparams={**state.hyperparams, "learning_rate": lr, "decay_rate": decay}
        )
        p = params
        for k in range(2):
            u, state = opt.update(grads_at(p, k), state, p)
            p = gradtx.apply_updates(p, u)
        return p

    batched = jax.jit(jax.vmap(run))(lrs, decays)
    run_alone = jax.jit(run)
    for i in range(3):
        alone = run_alone(lrs[i], decays[i])
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# inside the wrappers


def test_inside_masked_multi_transform_apply_if_finite_accumulate():
    params = small_params()
    tx = gradtx.adafactor(0.05, min_dim_size_to_factor=2, momentum=0.9)
    masked = gradtx.masked(tx, {"w": True, "b": False, "s": True})
    groups = gradtx.multi_transform(
        {"ada": tx, "sgd": gradtx.sgd(0.1)}, {"w": "ada", "b": "sgd", "s": "ada"}
    )
    guarded = gradtx.apply_if_finite(tx, max_consecutive_errors=3)
    acc = gradtx.accumulate_gradients(tx, every_k=2)

    @jax.jit
    def everything(g1, g2):
        out = {"plain": tx.update(g1, tx.init(params), params)[0]}
        mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
        out["plain_mean"] = tx.update(mean, tx.init(params), params)[0]
        out["masked"] = masked.update(g1, masked.init(params), params)[0]
        out["groups"] = groups.update(g1, groups.init(params), params)[0]
        # a NaN step is skipped: the next step is as without it
        bad = jax.tree.map(lambda x: x * jnp.nan, g1)
        out["skipped"], state = guarded.update(bad, guarded.init(params), params)
        out["guarded"] = guarded.update(g1, state, params)[0]
        # every_k=2 is one step on the mean of two gradients
        out["acc1"], state = acc.update(g1, acc.init(params), params)
        out["acc2"] = acc.update(g2, state, params)[0]
        return out

    g1, g2 = grads_at(params, 0), grads_at(params, 1)
    out = everything(g1, g2)
    np.testing.assert_array_equal(out["masked"]["b"], g1["b"])  # unchanged
    chex_close({k: out["masked"][k] for k in "ws"}, {k: out["plain"][k] for k in "ws"})
    np.testing.assert_allclose(out["groups"]["b"], -0.1 * g1["b"], rtol=1e-6)
    chex_close({k: out["groups"][k] for k in "ws"}, {k: out["plain"][k] for k in "ws"})
    for zero in ("skipped", "acc1"):
        assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(out[zero]))
    chex_close(out["guarded"], out["plain"])
    chex_close(out["acc2"], out["plain_mean"])


def test_describe_names_links_and_hyperparameters():
    text = gradtx.describe(
        gradtx.adafactor(0.01, min_dim_size_to_factor=2, weight_decay_rate=1e-3)
    )
    for part in (
        "scale_by_factored_rms(",
        "min_dim_size_to_factor=2",
        "decay_rate=0.8",
        "clip_by_block_rms(threshold=1.0)",
        "scale(factor=0.01)",
        "scale_by_param_block_rms(min_scale=0.001, max_relative_step=None)",
        "add_decayed_weights(weight_decay=0.001",
        "scale(factor=-1.0)",
    ):
        assert part in text, text
    text = gradtx.describe(gradtx.adafactor(0.02, convention="torch"))
    assert "factor_last_axes=True" in text and "epsilon_as_floor=True" in text
    assert "max_relative_step=0.02" in text


# ----------------------------------------------------------------------------
# state size and sharding


def test_state_on_gpt2_small_is_under_one_percent_of_adamw_second_moment():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from benchmarks.trees import get_tree

    tree = get_tree("gpt2-small")
    params = {
        k: jax.ShapeDtypeStruct(s, jnp.float32)
        for k, s in zip(tree.keys(), tree.shapes, strict=True)
    }

    def nbytes(state):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))

    ours = nbytes(gradtx.abstract_state(gradtx.adafactor(1e-2), params))
    adamw = gradtx.abstract_state(gradtx.adamw(1e-3), params)
    second_moment = nbytes(adamw[0].nu)
    fraction = ours / second_moment
    report("state bytes / adamw nu", "gpt2-small", fraction)
    assert fraction < 0.01


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import gradtx

    rng = np.random.default_rng(0)
    shapes = {"w": (16, 8), "t": (4, 8, 6), "b": (16,)}
    host = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [
        {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        for _ in range(3)
    ]
    tx = gradtx.adafactor(0.05, min_dim_size_to_factor=2, momentum=0.9)

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), state

    def run(params, place=lambda t: t):
        state = jax.jit(tx.init)(params)
        init_state = state
        for g in grads:
            params, state = jax.jit(step)(params, state, place(g))
        return params, init_state, state

    want, _, _ = run(jax.tree.map(jnp.asarray, host))
    layouts = {
        "fsdp": ((8,), ("x",), {"w": P("x", None), "t": P(None, "x"), "b": P("x")}),
        "2d": ((4, 2), ("x", "y"), {"w": P("x", "y"), "t": P(None, "x", "y"),
                                    "b": P("y")}),
    }
    # what each statistic must be: the leaf's spec without the reduced axis
    expected = {
        "fsdp": {"v_row/w": P("x"), "v_col/w": P(), "v_row/t": P(None, "x"),
                 "v_col/t": P(), "v/b": P("x")},
        "2d": {"v_row/w": P("x"), "v_col/w": P("y"), "v_row/t": P(None, "x"),
               "v_col/t": P(None, "y"), "v/b": P("y")},
    }
    out = {"devices": jax.device_count(), "problems": [], "gaps": {}}
    for axis_type, layout in ((AxisType.Auto, "fsdp"), (AxisType.Explicit, "2d")):
        mesh_shape, names, specs = layouts[layout]
        kinds = (axis_type,) * len(names)
        mesh = jax.make_mesh(mesh_shape, names, axis_types=kinds)
        def place(tree):
            return {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
                    for k, v in tree.items()}
        sds = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                       sharding=NamedSharding(mesh, specs[k]))
               for k, v in host.items()}
        predicted = gradtx.abstract_state(tx, sds)
        eager = tx.init(place(host))
        got, init_state, state = run(place(host), place)
        where = f"{axis_type.name}/{layout}"
        for name, spec in expected[layout].items():
            field, leaf = name.split("/")
            want_sharding = NamedSharding(mesh, spec)
            for stage, st in (("eager init", eager), ("jitted init", init_state),
                              ("step", state), ("abstract", predicted)):
                s = getattr(st[0], field)[leaf].sharding
                ndim = len(getattr(st[0], field)[leaf].shape)
                if not s.is_equivalent_to(want_sharding, ndim):
                    out["problems"].append(f"{where} {stage} {name}: {s.spec}")
        out["gaps"][where] = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))
        )
    print(json.dumps(out))
    """
)


def test_statistics_follow_the_sharding_of_their_leaf():
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert not result["problems"], result["problems"]
    for where, gap in result["gaps"].items():
        report("sharded - unsharded params", where, gap)
        assert gap < 1e-6, (where, gap)
