"""Prodigy: equations, optax, hyperparameters, wrappers and the global estimate."""

import importlib
import inspect
import json
import math
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
from peers import gradtx_trajectory, max_relative_gap, optax_trajectory

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
RTOL_OPTAX = 2e-5
# optax takes Adam's bias corrections as 1 - b**t in float32, which for
# b2 = 0.999 is 1.3e-5 off at t = 1 (gradtx's `bias_correction` is exact to
# a few ulps). c_t = sqrt(1 - b2**t) / (1 - b1**t) multiplies every step
# and the numerator of d, and on R.make_grads (a drift the params can never
# cancel) d keeps growing, which amplifies the difference to 6e-5 over 100
# steps. With optax's rounding put back (test below) the gap is 1.1e-5.
RTOL_OPTAX_SHIPPED = 1e-4
MASK = {"w": True, "b": False, "s": True}


def warmup_cosine(t):
    """From 0 to 1 in 10 steps, then a cosine decay to 0.1 over 200."""
    t = jnp.asarray(t, jnp.float32)
    warm = t / 10
    cos = 0.1 + 0.45 * (1 + jnp.cos(jnp.pi * jnp.minimum(t - 10, 200) / 200))
    return jnp.where(t < 10, warm, cos)


# ----------------------------------------------------------------------------
# float64 reference, written from scale_by_prodigy's docstring


def ref_prodigy_link(
    learning_rate=1.0,
    betas=(0.9, 0.999),
    beta3=None,
    eps=1e-8,
    estim_lr0=1e-6,
    estim_lr_coef=1.0,
    weight_decay=0.0,
    safeguard_warmup=False,
):
    b1, b2 = betas
    b3 = math.sqrt(b2) if beta3 is None else beta3

    def init(params):
        zeros = {k: np.zeros_like(p) for k, p in params.items()}
        return {
            "t": 0,
            "m": dict(zeros),
            "v": dict(zeros),
            "s": dict(zeros),
            "p0": {k: p.copy() for k, p in params.items()},
            "d": estim_lr0,
            "r": 0.0,
        }

    def update(grads, st, params):
        t = st["t"] + 1
        lr = float(learning_rate(t - 1)) if callable(learning_rate) else learning_rate
        d = st["d"]
        c = math.sqrt(1 - b2**t) / (1 - b1**t)
        k = d if safeguard_warmup else d * lr * c
        m = {n: b1 * st["m"][n] + (1 - b1) * d * g for n, g in grads.items()}
        v = {n: b2 * st["v"][n] + (1 - b2) * (d * g) ** 2 for n, g in grads.items()}
        s = {n: b3 * st["s"][n] + (d / estim_lr0) * k * g for n, g in grads.items()}
        moved = sum(
            float(np.sum(g * (st["p0"][n] - params[n]))) for n, g in grads.items()
        )
        r = b3 * st["r"] + (d / estim_lr0) * d * lr * c * moved
        total = sum(float(np.sum(np.abs(x))) for x in s.values())
        d_new = max(d, estim_lr_coef * r / total) if total > 0 else d
        u = {
            n: d * c * (m[n] / (np.sqrt(v[n]) + d_new * eps) + weight_decay * params[n])
            for n in grads
        }
        return u, {"t": t, "m": m, "v": v, "s": s, "p0": st["p0"], "d": d_new, "r": r}

    return R.Ref(init, update)


def ref_prodigy(learning_rate=1.0, **kwargs):
    return R.chain(
        ref_prodigy_link(learning_rate, **kwargs),
        R.scale_by_learning_rate(learning_rate),
    )


EQUATION_CASES = {
    "scale_by_prodigy/options": (
        lambda: gradtx.scale_by_prodigy(
            0.5, (0.8, 0.99), 0.9, 1e-3, 1e-4, 0.5, 0.1, mu_dtype=jnp.float32
        ),
        lambda: ref_prodigy_link(0.5, (0.8, 0.99), 0.9, 1e-3, 1e-4, 0.5, 0.1),
    ),
    "prodigy": (gradtx.prodigy, ref_prodigy),
    "prodigy/weight_decay": (
        lambda: gradtx.prodigy(0.3, weight_decay=0.1),
        lambda: ref_prodigy(0.3, weight_decay=0.1),
    ),
    "prodigy/warmup_safeguard": (
        lambda: gradtx.prodigy(
            warmup_cosine,
            beta3=0.95,
            estim_lr0=1e-4,
            weight_decay=0.1,
            safeguard_warmup=True,
        ),
        lambda: ref_prodigy(
            warmup_cosine,
            beta3=0.95,
            estim_lr0=1e-4,
            weight_decay=0.1,
            safeguard_warmup=True,
        ),
    ),
    "prodigy/warmup_from_zero": (  # sum(|s_1|) = 0: d is kept
        lambda: gradtx.prodigy(warmup_cosine, (0.95, 0.98), eps=1e-6),
        lambda: ref_prodigy(warmup_cosine, betas=(0.95, 0.98), eps=1e-6),
    ),
}


def run_from_float32_params(tx, ref, steps=R.STEPS):
    """`R.run_side_by_side`, the reference stepping from float32's params.

    Prodigy's first steps are d_0 = 1e-6 on params of order 1, where one
    float32 ulp is 6e-8: float32 params cannot hold those steps to better
    than 6%, and d is estimated from p_0 - p_t, so a free-running float32
    run drifts from float64 by the params' own rounding (2e-2 over 120
    steps with the defaults), whatever the implementation. Here each step
    hands the reference the params gradtx holds (exact in float64), and the
    reference keeps its own state: what is compared is the arithmetic of
    each step, over the whole trajectory. The test below shows that a free
    run agrees too once the steps are representable (d_0 = 1e-2).
    """
    params32 = R.to_f32(R.make_params(0))
    state32 = tx.init(params32)
    state64 = ref.init(jax.tree.map(lambda x: np.asarray(x, np.float64), params32))
    update = jax.jit(tx.update)
    got, want = [], []
    for g in R.make_grads(steps, 1):
        params64 = {k: np.asarray(v, np.float64) for k, v in params32.items()}
        u32, state32 = update(R.to_f32(g), state32, params32)
        u64, state64 = ref.update(g, state64, params64)
        params32 = jax.tree.map(lambda p, u: p + u, params32, u32)
        got.append((jax.tree.map(np.asarray, u32), jax.tree.map(np.asarray, params32)))
        want.append((u64, {k: params64[k] + u64[k] for k in params64}))
    return got, want


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    make_tx, make_ref = EQUATION_CASES[case]
    got, want = run_from_float32_params(make_tx(), make_ref())
    error = R.max_relative_error(got, want)
    print(f"\n{case}: max relative error {error:.2e}")
    assert error < RTOL


def test_free_run_matches_float64_when_the_steps_are_representable():
    got, want = R.run_side_by_side(
        gradtx.prodigy(estim_lr0=1e-2), ref_prodigy(estim_lr0=1e-2)
    )
    error = R.max_relative_error(got, want)
    print(f"\nprodigy(estim_lr0=1e-2), free run: max relative error {error:.2e}")
    assert error < RTOL


# ----------------------------------------------------------------------------
# optax (torch.optim has no Prodigy)


OPTAX_CASES = {
    "prodigy": (gradtx.prodigy, optax.contrib.prodigy),
    "prodigy/weight_decay": (
        lambda: gradtx.prodigy(weight_decay=0.1),
        lambda: optax.contrib.prodigy(weight_decay=0.1),
    ),
    "prodigy/positional": (
        lambda: gradtx.prodigy(0.5, (0.8, 0.99), 0.9, 1e-6, 1e-4, 0.5, 0.05, True),
        lambda: optax.contrib.prodigy(
            0.5, (0.8, 0.99), 0.9, 1e-6, 1e-4, 0.5, 0.05, True
        ),
    ),
    "prodigy/schedule": (
        lambda: gradtx.prodigy(optax.linear_schedule(1.0, 0.1, 100)),
        lambda: optax.contrib.prodigy(optax.linear_schedule(1.0, 0.1, 100)),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_step_for_step_with_optax(case, monkeypatch):
    ours, theirs = OPTAX_CASES[case]
    their_run = optax_trajectory(theirs())
    shipped = max_relative_gap(gradtx_trajectory(ours()), their_run)
    # the same chain with optax's float32 rounding of 1 - b**t put back
    module = importlib.import_module(gradtx.scale_by_prodigy.__module__)
    monkeypatch.setattr(module, "bias_correction", lambda b, t: 1 - b**t)
    rounded = max_relative_gap(gradtx_trajectory(ours()), their_run)
    print(f"\noptax {case}: max relative gap {shipped:.2e} ({rounded:.2e} rounded)")
    assert rounded < RTOL_OPTAX
    assert shipped < RTOL_OPTAX_SHIPPED


def test_signature_is_optax():
    def params(f, drop=()):
        return [
            (p.name, p.kind, p.default)
            for p in inspect.signature(f).parameters.values()
            if p.name not in drop
        ]

    ours = params(gradtx.prodigy, drop={"mu_dtype", "nu_dtype"})
    assert ours == params(optax.contrib.prodigy)
    link = params(gradtx.scale_by_prodigy, drop={"mu_dtype", "nu_dtype"})
    assert link == params(optax.contrib.prodigy)


def test_optax_gives_nan_where_no_gradient_has_been_weighted_yet():
    # A learning rate of 0 at the first step (a warmup from 0) leaves
    # sum(|s_1|) = 0 and r_1 = 0: optax's d becomes 0/0; gradtx keeps d.
    params = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    theirs = optax.contrib.prodigy(warmup_cosine)
    _, their_state = theirs.update(g, theirs.init(params), params)
    assert bool(jnp.isnan(their_state.estim_lr))
    ours = gradtx.prodigy(warmup_cosine)
    _, state = ours.update(g, ours.init(params), params)
    assert float(state[0].estim_lr) == np.float32(1e-6)


# ----------------------------------------------------------------------------
# the estimate is global: one number for the whole tree


def split_runs():
    """The same numbers as one leaf of 10 and as leaves of 4 and 6, jitted."""
    rng = np.random.default_rng(3)
    start = rng.normal(size=10).astype(np.float32)
    grads = (0.3 + rng.normal(size=(25, 10))).astype(np.float32) * np.float32(0.5)
    tx = gradtx.prodigy(weight_decay=0.01)

    def run(split):
        def tree(x):
            return {"x": x[..., :4], "y": x[..., 4:]} if split else {"a": x}

        def step(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            return (gradtx.apply_updates(params, updates), state), None

        @jax.jit
        def steps(params, grads):
            (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), grads)
            return params, state[0].estim_lr

        params, d = steps(tree(jnp.asarray(start)), tree(jnp.asarray(grads)))
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)]), d

    return run(False), run(True)


def test_the_estimate_does_not_depend_on_how_the_tree_is_split():
    (whole, d_whole), (split, d_split) = split_runs()
    assert float(d_whole) > 10 * 1e-6  # it did grow
    np.testing.assert_allclose(d_split, d_whole, rtol=1e-6)
    np.testing.assert_allclose(split, whole, rtol=1e-6, atol=1e-7)


def sharded_check():
    """Prodigy on params split over 4 devices against the same on one device.

    Runs in a subprocess with 4 simulated CPU devices (the suite keeps one;
    see tests/test_sharding.py), so it imports what it needs itself and
    prints one JSON line. Both axis types are tried: with Auto, XLA places
    the two sums; with Explicit, `sum_over_leaves` adds each device's
    shards and reduces one scalar per sum across the devices.
    """
    import json

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P
    from sharding_checks import count_collectives

    import gradtx

    jax.config.update("jax_numpy_rank_promotion", "raise")
    n = jax.device_count()
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(2 * n, 3)), jnp.float32),
        "b": jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32),
        "s": jnp.float32(0.5),
    }
    grads = [
        jax.tree.map(lambda p, k=k: 0.2 * p + 0.5 - 0.05 * k, params) for k in range(8)
    ]
    tx = gradtx.prodigy(weight_decay=0.01)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s

    def run(params, grads):
        state = jax.jit(tx.init)(params)
        compiled = jax.jit(step).lower(params, state, grads[0]).compile()
        for g in grads:
            params, state = compiled(params, state, g)
        return params, state, compiled.as_text()

    def flat(tree):
        return [np.asarray(x).tolist() for x in jax.tree.leaves(tree)]

    want_params, want_state, _ = run(params, grads)
    report = {"devices": n, "d": float(want_state[0].estim_lr), "runs": {}}
    specs = {"w": P("data"), "b": P("data"), "s": P()}
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((n,), ("data",), axis_types=(axis_type,))

        def place(tree, mesh=mesh):
            return {
                k: jax.device_put(v, NamedSharding(mesh, specs[k]))
                for k, v in tree.items()
            }

        got_params, got_state, hlo = run(place(params), [place(g) for g in grads])
        placed = [
            got_state[0].exp_avg["w"].sharding,
            got_state[0].grad_sum["w"].sharding,
            got_state[0].params0["w"].sharding,
        ]
        report["runs"][axis_type.name] = {
            "d": float(got_state[0].estim_lr),
            "params": flat(got_params),
            "placed_like_params": all(
                s.is_equivalent_to(got_params["w"].sharding, 2) for s in placed
            ),
            "collectives": count_collectives(hlo)["main"],
        }
    report["params"] = flat(want_params)
    print(json.dumps(report))


def test_sharded_params_give_the_estimate_of_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
    tests = pathlib.Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tests), *filter(None, [env.get("PYTHONPATH")])]
    )
    code = f"{inspect.getsource(sharded_check)}\nsharded_check()\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    assert report["d"] > 3 * 1e-6  # the estimate did grow
    for name, run in report["runs"].items():
        print(f"\n{name}: d {run['d']:.6e} sharded, {report['d']:.6e} on one device")
        print(f"{name}: collectives {run['collectives']}")
        assert run["placed_like_params"], name
        np.testing.assert_allclose(run["d"], report["d"], rtol=1e-6, err_msg=name)
        for got, want in zip(run["params"], report["params"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
        # the sums are reductions of scalars: no leaf is gathered or reduced
        assert set(run["collectives"]) <= {"all-reduce"}, (name, run["collectives"])
        reduced = [
            part
            for shape in run["collectives"].get("all-reduce", [])
            for part in shape.strip("()").split(", ")
        ]
        assert all(part.endswith("[]") for part in reduced), (name, reduced)


# ----------------------------------------------------------------------------
# hand-worked cases, state and bad input


def test_first_step_is_d0_times_the_sign():
    tx = gradtx.prodigy(0.5)
    params = {"w": jnp.array([1.0, -1.0, 0.0])}
    g = {"w": jnp.array([4.0, -0.25, 0.0])}
    u, state = tx.update(g, tx.init(params), params)
    # m/sqrt(v) = sign(g) * (1 - b1) / sqrt(1 - b2), times c_1 = sqrt(1 - b2)/(1 - b1)
    np.testing.assert_allclose(u["w"], [-0.5e-6, 0.5e-6, 0.0], rtol=1e-5)
    assert float(state[0].numerator_weighted) == 0.0  # p = p_0 at the first step
    assert float(state[0].estim_lr) == np.float32(1e-6)


def test_state_is_named_and_holds_arrays_only():
    params = {"w": jnp.ones((2, 2), jnp.bfloat16), "b": jnp.zeros(2)}
    tx = gradtx.scale_by_prodigy(mu_dtype=jnp.float32)
    state = tx.init(params)
    assert type(state) is gradtx.ProdigyState
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert state.exp_avg["w"].dtype == jnp.float32
    assert state.exp_avg_sq["w"].dtype == jnp.bfloat16
    assert state.params0["w"].dtype == jnp.bfloat16
    assert state.estim_lr.dtype == jnp.float32  # never bfloat16
    assert state.numerator_weighted.dtype == jnp.float32


def test_float16_params_keep_the_sums_in_float32_and_take_small_steps():
    # In float16 (d * g)**2 = (1e-6 * g)**2 underflows to 0; kept in float16
    # the second moment would make the first steps m / (d * eps) ~ 0.1, not
    # d ~ 1e-6. By default the state is float32 for float16 params.
    params16 = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float16)}
    params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params16)
    grads = [jnp.array([0.5, -0.2, 0.1, 1.0, -2.0, 0.3]) * (1 + k) for k in range(3)]
    tx = gradtx.prodigy()
    state16 = tx.init(params16)
    assert state16[0].exp_avg["w"].dtype == jnp.float32
    assert state16[0].exp_avg_sq["w"].dtype == jnp.float32
    assert state16[0].grad_sum["w"].dtype == jnp.float32
    assert state16[0].params0["w"].dtype == jnp.float16
    step = jax.jit(tx.update)
    state32 = tx.init(params32)
    for g in grads:
        u16, state16 = step({"w": g.astype(jnp.float16)}, state16, params16)
        u32, state32 = step({"w": g}, state32, params32)
        assert u16["w"].dtype == jnp.float16
        assert bool(jnp.all(jnp.isfinite(u16["w"])))
        # float16 holds 1e-6 as a subnormal, to within 6e-8
        np.testing.assert_allclose(u16["w"], u32["w"], rtol=0.1, atol=6e-8)
    narrow = gradtx.prodigy(mu_dtype=jnp.float16, nu_dtype=jnp.float16)
    assert narrow.init(params16)[0].exp_avg_sq["w"].dtype == jnp.float16


def test_update_needs_params_of_the_same_tree():
    tx = gradtx.prodigy()
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="scale_by_prodigy reads the parameters"):
        tx.update(params, state)
    with pytest.raises(ValueError, match=r"scale_by_prodigy: .*'b'"):
        tx.update({"a": jnp.zeros(2)}, state, {"a": jnp.zeros(2)})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": -1.0}, r"learning_rate must be in \[0, inf\)"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\)"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
        ({"beta3": 1.0}, r"beta3 must be in \[0, 1\)"),
        ({"eps": -1e-8}, r"eps must be in \[0, inf\)"),
        ({"estim_lr0": 0.0}, r"estim_lr0 must be in \(0, inf\)"),
        ({"estim_lr_coef": float("nan")}, r"estim_lr_coef must be in"),
        ({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\)"),
        ({"mu_dtype": jnp.int32}, r"mu_dtype must be a floating"),
        ({"nu_dtype": "int8"}, r"nu_dtype must be a floating"),
    ],
)
@pytest.mark.parametrize("factory", ["prodigy", "scale_by_prodigy"])
def test_out_of_range_hyperparameters_raise_at_construction(factory, kwargs, message):
    with pytest.raises(ValueError, match=f"scale_by_prodigy: {message}"):
        getattr(gradtx, factory)(**kwargs)


def test_betas_must_be_a_pair_and_the_flag_a_bool():
    with pytest.raises(TypeError, match="betas must be a pair"):
        gradtx.prodigy(betas=0.9)
    with pytest.raises(TypeError, match="safeguard_warmup must be True or False"):
        gradtx.prodigy(safeguard_warmup=1)


# ----------------------------------------------------------------------------
# hyperparameters as arrays: inject_hyperparams and vmap


KWARGS = {"learning_rate": 0.8, "weight_decay": 0.05, "estim_lr0": 1e-5}


def grads_sequence(steps, dtype=jnp.float32):
    return [
        jax.tree.map(lambda x: x.astype(dtype), R.to_f32(g))
        for g in R.make_grads(steps, 1)
    ]


def run(tx, grads, params):
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), state, updates

    for g in grads:
        params, state, updates = step(params, state, g)
    return params, state, updates


def test_inject_hyperparams_bfloat16_and_same_numbers():
    injected = gradtx.inject_hyperparams(gradtx.prodigy)(**KWARGS)
    params32 = R.to_f32(R.make_params(0))
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32)
    p16, state16, u16 = run(injected, grads_sequence(6, jnp.bfloat16), params16)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(u16))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(p16))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(u16))
    assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(u16))
    assert set(state16.hyperparams) >= set(KWARGS)
    assert all(v.dtype == jnp.float32 for v in state16.hyperparams.values())
    assert state16.inner_state[0].estim_lr.dtype == jnp.float32
    got, _, _ = run(injected, grads_sequence(8), params32)
    want, _, _ = run(gradtx.prodigy(**KWARGS), grads_sequence(8), params32)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_vmap_over_the_learning_rate_equals_separate_runs():
    opt = gradtx.inject_hyperparams(gradtx.prodigy)(**KWARGS)
    params = R.to_f32(R.make_params(0))
    grads = grads_sequence(4)
    values = [0.25, 0.8, 1.0]

    def trajectory(value):
        state = opt.init(params)
        hyperparams = dict(state.hyperparams, learning_rate=value)
        state = state._replace(hyperparams=hyperparams)
        p = params
        for g in grads:
            updates, state = opt.update(g, state, p)
            p = gradtx.apply_updates(p, updates)
        return p

    batched = jax.jit(jax.vmap(trajectory))(jnp.array(values, jnp.float32))
    separate = jax.jit(trajectory)  # one compile for the three runs
    for i, value in enumerate(values):
        alone = separate(jnp.float32(value))
        for got, want in zip(
            jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# inside the wrappers


def small_params():
    return R.to_f32(R.make_params(0))


def test_masked_leaves_pass_through_and_the_estimate_is_over_the_rest():
    tx = gradtx.masked(gradtx.prodigy(**KWARGS), MASK)
    alone = gradtx.prodigy(**KWARGS)
    params = small_params()
    selected = {k: v for k, v in params.items() if MASK[k]}
    state, alone_state = tx.init(params), alone.init(selected)
    for g in grads_sequence(4):
        u, state = tx.update(g, state, params)
        want, alone_state = alone.update(
            {k: g[k] for k in selected}, alone_state, selected
        )
        np.testing.assert_array_equal(u["b"], g["b"])  # unselected: unchanged
        chex.assert_trees_all_close({k: u[k] for k in selected}, want, rtol=1e-6)
        params = gradtx.apply_updates(params, u)
        selected = {k: params[k] for k in selected}
    np.testing.assert_allclose(
        state.inner_state[0].estim_lr, alone_state[0].estim_lr, rtol=1e-6
    )


def test_multi_transform_group_equals_prodigy_alone():
    labels = {"w": "prodigy", "b": "sgd", "s": "prodigy"}
    tx = gradtx.multi_transform(
        {"prodigy": gradtx.prodigy(**KWARGS), "sgd": gradtx.sgd(0.1)}, labels
    )
    alone = gradtx.prodigy(**KWARGS)
    params = small_params()
    group = {k: params[k] for k in ("w", "s")}
    state, alone_state = tx.init(params), alone.init(group)
    for g in grads_sequence(4):
        u, state = tx.update(g, state, params)
        want, alone_state = alone.update({k: g[k] for k in group}, alone_state, group)
        np.testing.assert_allclose(u["b"], -0.1 * g["b"], rtol=1e-6)
        chex.assert_trees_all_close({k: u[k] for k in group}, want, rtol=1e-6)
        params = gradtx.apply_updates(params, u)
        group = {k: params[k] for k in group}


def test_apply_if_finite_skips_a_bad_step():
    tx = gradtx.apply_if_finite(gradtx.prodigy(**KWARGS), max_consecutive_errors=2)
    params = small_params()
    grads = grads_sequence(5)
    bad = dict(grads[1], s=jnp.float32(jnp.nan))
    update = jax.jit(tx.update)
    state, p = tx.init(params), params
    for g in [grads[0], bad, *grads[2:]]:
        u, state = update(g, state, p)
        if g is bad:
            assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
        p = gradtx.apply_updates(p, u)
    q, clean_state = params, tx.init(params)
    for g in [grads[0], *grads[2:]]:
        u, clean_state = update(g, clean_state, q)
        q = gradtx.apply_updates(q, u)
    assert int(state.notfinite_total) == 1
    assert bool(jnp.isfinite(state.inner_state[0].estim_lr))
    chex.assert_trees_all_close(p, q, rtol=1e-6)


def test_accumulating_two_micro_steps_is_one_step_on_their_mean():
    tx = gradtx.accumulate_gradients(gradtx.prodigy(**KWARGS), every_k=2)
    inner = gradtx.prodigy(**KWARGS)
    params = small_params()
    state, inner_state = tx.init(params), inner.init(params)
    p, q = params, params
    grads = grads_sequence(6)
    update, inner_update = jax.jit(tx.update), jax.jit(inner.update)
    for i in range(0, 6, 2):
        u, state = update(grads[i], state, p)
        assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
        u, state = update(grads[i + 1], state, p)
        p = gradtx.apply_updates(p, u)
        mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[i], grads[i + 1])
        v, inner_state = inner_update(mean, inner_state, q)
        q = gradtx.apply_updates(q, v)
        chex.assert_trees_all_close(p, q, rtol=1e-6)


# ----------------------------------------------------------------------------
# describe


def test_describe_shows_links_and_hyperparameters():
    tx = gradtx.prodigy(weight_decay=0.01)
    assert [link.name for link in tx.children] == [
        "scale_by_prodigy",
        "scale_by_learning_rate",
    ]
    text = gradtx.describe(tx)
    assert "scale_by_prodigy(learning_rate=1.0, betas=(0.9, 0.999), beta3=None" in text
    assert "estim_lr0=1e-06, estim_lr_coef=1.0, weight_decay=0.01" in text
    assert "safeguard_warmup=False, mu_dtype=None, nu_dtype=None)" in text
    assert "scale_by_learning_rate(learning_rate=1.0)" in text
