"""proximal_l1: soft thresholding after the step, exact zeros (ISTA)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as R

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
MASK = {"w": True, "b": False, "s": True}


def lr_schedule(t):
    return 0.05 * 0.98**t + 0.005


def strength_schedule(t):
    return 0.5 + 0.01 * t


def value_at(v, t):
    return float(v(t)) if callable(v) else v


# ----------------------------------------------------------------------------
# float64 reference, written from the docstring's equations
#
# Soft thresholding is continuous (a point just inside the threshold lands
# on zero, one just outside lands next to it), so, unlike the sign methods,
# float32 and float64 cannot part ways at a discontinuity.


def ref_proximal(strength, learning_rate, mask=None):
    def update(updates, state, params):
        t = state
        out = {}
        for k, u in updates.items():
            if mask is not None and not mask[k]:
                out[k] = u
                continue
            p = params[k]
            x = p + u
            threshold = value_at(learning_rate, t) * value_at(strength, t)
            out[k] = np.sign(x) * np.maximum(np.abs(x) - threshold, 0) - p
        return out, t + 1

    return R.Ref(lambda params: 0, update)


def ista(strength, learning_rate, mask=None):
    return gradtx.chain(
        gradtx.scale_by_learning_rate(learning_rate),
        gradtx.proximal_l1(strength, learning_rate, mask=mask),
    )


def ref_ista(strength, learning_rate, mask=None):
    return R.chain(
        R.scale_by_learning_rate(learning_rate),
        ref_proximal(strength, learning_rate, mask),
    )


EQUATION_CASES = {
    "ista": (ista(0.5, 0.05), ref_ista(0.5, 0.05)),
    "ista/strong": (ista(2.0, 0.05), ref_ista(2.0, 0.05)),
    "ista/schedules": (
        ista(strength_schedule, lr_schedule),
        ref_ista(strength_schedule, lr_schedule),
    ),
    "ista/mask": (ista(1.0, 0.05, MASK), ref_ista(1.0, 0.05, MASK)),
    "adam_then_proximal": (
        gradtx.chain(
            gradtx.scale_by_adam(),
            gradtx.scale_by_learning_rate(0.05),
            gradtx.proximal_l1(0.5, 0.05),
        ),
        R.chain(R.adam(), R.scale_by_learning_rate(0.05), ref_proximal(0.5, 0.05)),
    ),
}


def max_error_on_run_scale(got, want):
    """Worst error over steps and leaves, against each leaf's scale over the run.

    R.max_relative_error measures a parameter against the largest value its
    leaf takes over the run, since a parameter crossing zero has no
    meaningful relative error of its own. proximal_l1's update is such a
    quantity too: where the point survives it is u - sign(x) * threshold,
    which passes through zero when the incoming step nearly equals the
    threshold, and there the incoming step's own float32 round-off (1e-7 of
    it, Adam's included) is any multiple of the result. So updates are
    measured the same way as parameters; a wrong factor or term is still a
    relative error of order 1.
    """
    worst = 0.0
    for i in (0, 1):  # updates, then params
        for k in want[0][i]:
            scale = max(float(np.max(np.abs(w[i][k]))) for w in want)
            for g, w in zip(got, want, strict=True):
                err = float(np.max(np.abs(np.asarray(g[i][k], np.float64) - w[i][k])))
                worst = max(worst, err / scale if scale > 0 else err)
    return worst


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    tx, ref = EQUATION_CASES[case]
    got, want = R.run_side_by_side(tx, ref, steps=R.STEPS)
    error = max_error_on_run_scale(got, want)
    zeros = sum(int(np.sum(p[k] == 0)) for _, p in got for k in p)
    print(f"\n{case}: max relative error {error:.2e}; {zeros} exact zeros on the way")
    assert error < RTOL


# ----------------------------------------------------------------------------
# the point of it: exact zeros where the subgradient oscillates


def lasso_problem():
    rng = np.random.default_rng(3)
    n, d = 60, 20
    a = rng.normal(size=(n, d)) / np.sqrt(n)
    x_true = np.zeros(d)
    x_true[[1, 5, 9, 14]] = [1.5, -2.0, 1.0, -0.8]
    b = a @ x_true + 0.01 * rng.normal(size=n)
    return a.astype(np.float32), b.astype(np.float32)


def test_lasso_lands_on_exact_zeros_where_the_subgradient_oscillates():
    a, b = lasso_problem()
    lr, strength = 0.3, 0.1  # lr below 1 / ||a||_2**2 = 0.36

    # the lasso solution, by float64 ISTA run to convergence
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    x = np.zeros(20)
    for _ in range(3000):
        z = x - lr * a64.T @ (a64 @ x - b64)
        x = np.sign(z) * np.maximum(np.abs(z) - lr * strength, 0)
    support = x != 0
    assert int(np.sum(~support)) == 16

    def loss(params):
        r = jnp.asarray(a) @ params["x"] - jnp.asarray(b)
        return 0.5 * jnp.sum(r**2)

    def trajectory(tx, steps=400):
        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gradtx.apply_updates(params, updates)
            return (params, state), params["x"]

        params = {"x": jnp.zeros(20)}
        _, xs = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))(
            (params, tx.init(params))
        )
        return np.asarray(xs)

    proximal = trajectory(ista(strength, lr))
    subgradient = trajectory(
        gradtx.chain(gradtx.add_l1_penalty(strength), gradtx.scale_by_learning_rate(lr))
    )
    print(
        f"\nlasso: exact zeros after 400 steps: proximal {np.sum(proximal[-1] == 0)}"
        f", subgradient {np.sum(subgradient[-1] == 0)} (solution: 16)"
    )
    # proximal: every off-support coordinate sits exactly at zero, and has for
    # the last 100 steps; the support matches the float64 solution
    assert np.all(proximal[-100:, ~support] == 0)
    assert np.all(proximal[-1, support] != 0)
    np.testing.assert_allclose(proximal[-1], x, atol=1e-5)
    # subgradient: not one exact zero at any of the last 100 steps; the
    # off-support coordinates hop across zero instead of settling on it
    assert int(np.sum(subgradient[-100:] == 0)) == 0
    hops = np.sum(np.diff(np.sign(subgradient[-20:, ~support]), axis=0) != 0, 0)
    assert int(np.min(hops)) >= 5
    assert np.all(np.abs(subgradient[-1, ~support]) < 0.1)


# ----------------------------------------------------------------------------
# hand-worked cases


def test_a_scheduled_learning_rate_keeps_a_count_and_sets_the_threshold():
    tx = gradtx.proximal_l1(1.0, lambda t: 0.1 * (t + 1))
    params = jnp.array([1.0, -1.0, 0.05])
    state = tx.init(params)
    assert isinstance(state, gradtx.ProximalL1State)
    for _ in range(3):  # zero incoming updates: thresholds 0.1, 0.2, 0.3
        u, state = tx.update(jnp.zeros(3), state, params)
        params = gradtx.apply_updates(params, u)
    np.testing.assert_allclose(params, [0.4, -0.4, 0.0], rtol=1e-6)
    assert float(params[2]) == 0.0 and int(state.count) == 3


def test_a_scheduled_strength_keeps_a_count_too():
    tx = gradtx.proximal_l1(lambda t: 1.0 + t, 0.1)
    state = tx.init(jnp.zeros(1))
    params = jnp.array([1.0])
    for _ in range(2):  # thresholds 0.1, 0.2
        u, state = tx.update(jnp.zeros(1), state, params)
        params = gradtx.apply_updates(params, u)
    np.testing.assert_allclose(params, [0.7], rtol=1e-6)
    assert isinstance(gradtx.proximal_l1(0.1, 0.1).init(params), gradtx.EmptyState)


def test_the_mask_leaves_unselected_leaves_alone():
    tx = gradtx.proximal_l1(1.0, 0.5, mask={"w": True, "b": False})
    params = {"w": jnp.array([0.3, -2.0]), "b": jnp.array([0.3, -2.0])}
    incoming = {"w": jnp.array([0.1, 0.0]), "b": jnp.array([0.1, 0.0])}
    u, _ = tx.update(incoming, tx.init(params), params)
    np.testing.assert_array_equal(u["b"], incoming["b"])
    new = gradtx.apply_updates(params, u)
    np.testing.assert_allclose(new["w"], [0.0, -1.5])
    assert float(new["w"][0]) == 0.0


def test_a_zeroed_weight_stays_while_the_gradient_is_below_the_threshold():
    tx = ista(1.0, 0.1)  # threshold 0.1: |lr * g| must exceed it to move
    params = jnp.array([0.05, 0.0, 0.0])
    state = tx.init(params)
    for g in ([0.0, 0.5, 1.5], [0.0, -0.9, 1.5]):
        u, state = tx.update(jnp.array(g), state, params)
        params = gradtx.apply_updates(params, u)
    np.testing.assert_allclose(params, [0.0, 0.0, -0.1], atol=1e-7)
    assert float(params[0]) == 0.0 and float(params[1]) == 0.0


# ----------------------------------------------------------------------------
# dtypes and hyperparameters as arrays


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_stay_low_precision_and_reach_exact_zeros(dtype):
    tx = ista(1.0, 0.05)
    params = jax.tree.map(lambda x: x.astype(dtype), R.to_f32(R.make_params(0)))
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in R.make_grads(40, 1):
        g = jax.tree.map(lambda x: jnp.asarray(x, dtype), g)
        u, state = step(g, state, params)
        assert all(x.dtype == dtype for x in jax.tree.leaves(u))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
        params = gradtx.apply_updates(params, u)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    assert sum(int(jnp.sum(p == 0)) for p in jax.tree.leaves(params)) > 0


def test_inject_hyperparams_stores_float32_and_gives_the_same_numbers():
    def make(wrap, **kwargs):
        link = (wrap(gradtx.proximal_l1) if wrap else gradtx.proximal_l1)(**kwargs)
        return gradtx.chain(gradtx.scale_by_learning_rate(0.05), link)

    kwargs = {"strength": 0.5, "learning_rate": 0.05}
    injected = make(gradtx.inject_hyperparams, **kwargs)
    plain = make(None, **kwargs)

    def run(tx, params, dtype=jnp.float32, steps=6):
        state = tx.init(params)
        step = jax.jit(tx.update)
        for g in R.make_grads(steps, 1):
            g = jax.tree.map(lambda x: jnp.asarray(x, dtype), g)
            u, state = step(g, state, params)
            params = gradtx.apply_updates(params, u)
        return params, state, u

    params = R.to_f32(R.make_params(0))
    p16, state16, u16 = run(
        injected, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params), jnp.bfloat16
    )
    hyper = state16[1].hyperparams
    assert set(hyper) == {"strength", "learning_rate"}
    assert all(v.dtype == jnp.float32 for v in hyper.values())
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(u16))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(u16))
    got, _, _ = run(injected, params)
    want, _, _ = run(plain, params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_vmap_over_the_strength_equals_separate_runs():
    opt = gradtx.inject_hyperparams(gradtx.proximal_l1)(
        strength=0.0, learning_rate=0.05
    )
    params = R.to_f32(R.make_params(0))
    grads = [jax.tree.map(lambda x: -0.05 * x, R.to_f32(g)) for g in R.make_grads(5)]

    def trajectory(strength):
        state = opt.init(params)
        state = state._replace(hyperparams=dict(state.hyperparams, strength=strength))
        p = params
        for u in grads:
            u, state = opt.update(u, state, p)
            p = gradtx.apply_updates(p, u)
        return p

    strengths = [0.1, 1.0, 5.0]
    batched = jax.jit(jax.vmap(trajectory))(jnp.array(strengths))
    for i, strength in enumerate(strengths):
        tx, p = gradtx.proximal_l1(strength, 0.05), params
        for u in grads:
            u, _ = tx.update(u, tx.init(p), p)
            p = gradtx.apply_updates(p, u)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(p), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-7)


def test_works_inside_masked():
    tx = gradtx.masked(gradtx.proximal_l1(1.0, 0.5), {"w": True, "b": False})
    params = {"w": jnp.array([0.3, -2.0]), "b": jnp.array([0.3, -2.0])}
    incoming = {"w": jnp.array([0.1, 0.0]), "b": jnp.array([0.1, 0.0])}
    u, _ = jax.jit(tx.update)(incoming, tx.init(params), params)
    np.testing.assert_array_equal(u["b"], incoming["b"])
    np.testing.assert_allclose(gradtx.apply_updates(params, u)["w"], [0.0, -1.5])


# ----------------------------------------------------------------------------
# bad input and describe


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"strength": -0.1, "learning_rate": 0.1},
            r"proximal_l1: strength must be in \[0, inf\)",
        ),
        (
            {"strength": 0.1, "learning_rate": -0.1},
            r"proximal_l1: learning_rate must be in \[0, inf\)",
        ),
        ({"strength": float("nan"), "learning_rate": 0.1}, r"strength must be in"),
        ({"strength": 0.1, "learning_rate": float("inf")}, r"learning_rate must be"),
    ],
)
def test_out_of_range_hyperparameters_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradtx.proximal_l1(**kwargs)


def test_update_needs_params_and_a_matching_tree():
    tx = gradtx.proximal_l1(0.1, 0.1)
    with pytest.raises(ValueError, match="proximal_l1 reads the parameters"):
        tx.update(jnp.zeros(2), tx.init(None))
    with pytest.raises(ValueError, match=r"proximal_l1: .*'b'"):
        tx.update({"a": jnp.zeros(2)}, tx.init(None), {"a": jnp.zeros(2), "b": 0.0})


def test_describe_shows_the_link_and_its_hyperparameters():
    text = gradtx.describe(ista(0.5, 0.05, MASK))
    assert "scale_by_learning_rate(learning_rate=0.05)" in text
    assert "proximal_l1(strength=0.5, learning_rate=0.05, mask=" in text
