"""Adaptive gradient clipping (Brock et al., 2021): `adaptive_grad_clip`.

Checked against a float64 NumPy reference written here from the docstring,
against optax.adaptive_grad_clip (torch.optim has no AGC), and under
inject_hyperparams, jax.vmap and the wrappers.
"""

import math

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


# ----------------------------------------------------------------------------
# float64 reference


def unit_axes(shape, axis=None):
    """The docstring's units, written out case by case."""
    if axis is not None:
        return (axis,) if isinstance(axis, int) else tuple(axis)
    if len([n for n in shape if n != 1]) <= 1:  # scalars and vectors
        return tuple(range(len(shape)))
    if len(shape) in (2, 3):  # (in, out) and (in, heads, out)
        return (0,)
    return tuple(range(len(shape) - 1))  # (H, W, in, out), (D, H, W, in, out)


def ref_clip_leaf(g, p, clipping, eps, axis=None):
    axes = unit_axes(np.shape(g), axis)
    g_norm = np.sqrt(np.sum(np.square(g), axis=axes, keepdims=True))
    p_norm = np.sqrt(np.sum(np.square(p), axis=axes, keepdims=True))
    max_norm = clipping * np.maximum(p_norm, eps)
    clipped = g * max_norm / np.where(g_norm > 0, g_norm, 1.0)
    return np.where(g_norm <= max_norm, g, clipped)


def ref_agc(clipping, eps=1e-3, counter=None):
    def step(g, s, p, t):
        u = ref_clip_leaf(g, p, clipping, eps)
        if counter is not None:
            counter.append(not np.allclose(u, g))
        return u, None

    return R.per_leaf(lambda p: None, step)


@pytest.mark.parametrize("clipping, eps", [(0.05, 1e-3), (0.2, 1.5), (1.0, 1e-3)])
def test_matches_float64_equation(clipping, eps):
    clipped = []
    tx = gradtx.chain(gradtx.adaptive_grad_clip(clipping, eps), gradtx.sgd(0.1))
    ref = R.chain(ref_agc(clipping, eps, clipped), R.scale_by_learning_rate(0.1))
    error = R.max_relative_error(*R.run_side_by_side(tx, ref))
    print(f"agc({clipping}, {eps}): max relative error against float64 {error:.2e}")
    assert error < RTOL
    assert any(clipped) and not all(clipped)  # some leaves clip, some do not


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (
            gradtx.chain(gradtx.adaptive_grad_clip(0.05), gradtx.sgd(0.1)),
            optax.chain(optax.adaptive_grad_clip(0.05), optax.sgd(0.1)),
        ),
        (
            gradtx.chain(gradtx.adaptive_grad_clip(0.2, 0.5), gradtx.adam(0.01)),
            optax.chain(optax.adaptive_grad_clip(0.2, 0.5), optax.adam(0.01)),
        ),
    ],
)
def test_step_for_step_with_optax(ours, theirs):
    gap = max_relative_gap(gradtx_trajectory(ours), optax_trajectory(theirs))
    print(f"agc: max relative gap to optax {gap:.2e}")
    assert gap < RTOL_OPTAX


SHAPES = {
    "vector": (7,),
    "row": (1, 6),
    "linear": (5, 4),
    "multihead": (5, 3, 4),
    "conv": (3, 3, 4, 6),
    "conv_one_by_one": (1, 1, 4, 6),
    "conv3d": (2, 3, 3, 2, 5),
    "scalar": (),
}


def random_tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return R.to_f32({k: scale * rng.normal(size=shape) for k, shape in SHAPES.items()})


def test_units_are_optax_units_for_every_rank():
    params = random_tree(0)
    # gradients from 0.01 to 0.2 of the params' size along the last axis, so
    # that in every kernel some units clip at 0.05 and others do not
    grads = jax.tree.map(
        lambda g: (
            g * jnp.broadcast_to(jnp.linspace(0.01, 0.2, g.shape[-1]), g.shape)
            if g.ndim
            else g
        ),
        random_tree(1),
    )
    tx, theirs = gradtx.adaptive_grad_clip(0.05), optax.adaptive_grad_clip(0.05)
    ours = tx.update(grads, tx.init(params), params)[0]
    optax_updates = theirs.update(grads, theirs.init(params), params)[0]
    for k in SHAPES:
        want = ref_clip_leaf(
            np.asarray(grads[k], np.float64),
            np.asarray(params[k], np.float64),
            0.05,
            1e-3,
        )
        np.testing.assert_allclose(ours[k], want, rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(ours[k], optax_updates[k], rtol=1e-6, err_msg=k)
        changed = ~np.isclose(ours[k], grads[k])
        if k not in ("scalar", "vector", "row"):  # some units clip, some do not
            assert changed.any() and not changed.all(), k


def test_a_conv_kernel_has_one_unit_per_output_channel():
    params = jnp.ones((3, 3, 2, 4))  # each output channel's norm is sqrt(18)
    grads = jnp.ones((3, 3, 2, 4)).at[..., 0].set(0.01)
    tx = gradtx.adaptive_grad_clip(0.1)
    u = tx.update(grads, tx.init(params), params)[0]
    np.testing.assert_allclose(u[..., 0], 0.01)  # within 0.1 * sqrt(18)
    for c in range(1, 4):
        np.testing.assert_allclose(
            jnp.linalg.norm(u[..., c]), 0.1 * math.sqrt(18), rtol=1e-6
        )


def test_axis_names_the_units_of_every_leaf():
    rng = np.random.default_rng(3)
    params = {"a": rng.normal(size=(4, 5)), "b": rng.normal(size=(2, 3, 5))}
    grads = jax.tree.map(lambda p: 0.3 * rng.normal(size=p.shape), params)
    params, grads = R.to_f32(params), R.to_f32(grads)
    tx, theirs = (
        gradtx.adaptive_grad_clip(0.1, axis=-1),
        optax.adaptive_grad_clip(0.1, axis=-1),
    )
    ours = tx.update(grads, tx.init(params), params)[0]
    want = theirs.update(grads, theirs.init(params), params)[0]
    for k in params:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-6)
        np.testing.assert_allclose(
            ours[k],
            ref_clip_leaf(np.asarray(grads[k]), np.asarray(params[k]), 0.1, 1e-3, -1),
            rtol=1e-5,
        )


def test_a_leaf_of_more_than_five_axes_needs_an_axis():
    x = jnp.ones((2,) * 6)
    tx = gradtx.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match="axis"):
        tx.update(x, tx.init(x), x)
    u = gradtx.adaptive_grad_clip(0.1, axis=(0, 1)).update(x, None, x)[0]
    assert u.shape == x.shape


def test_zero_initialised_params_allow_clipping_times_eps():
    params, grads = jnp.zeros(4), jnp.full(4, 1.0)
    tx = gradtx.adaptive_grad_clip(0.5, eps=1e-2)
    u = tx.update(grads, tx.init(params), params)[0]
    np.testing.assert_allclose(jnp.linalg.norm(u), 0.5 * 1e-2, rtol=1e-6)


def test_a_bound_below_optax_guard_is_met_exactly():
    # optax divides by max(||g||, 1e-6): with a bound below 1e-6 it clips
    # further than the bound. gradtx clips a unit to the bound itself.
    params, grads = jnp.full(4, 1e-3), jnp.full(4, 1e-7)  # ||g|| = 2e-7
    tx = gradtx.adaptive_grad_clip(1e-7, eps=1e-5)  # bound 1e-7 * ||p|| = 2e-10
    u = tx.update(grads, tx.init(params), params)[0]
    np.testing.assert_allclose(jnp.linalg.norm(u), 2e-10, rtol=1e-5)
    theirs = optax.adaptive_grad_clip(1e-7, eps=1e-5)
    v = theirs.update(grads, theirs.init(params), params)[0]
    assert float(jnp.linalg.norm(v)) < 0.5 * 2e-10


def test_a_nan_gradient_makes_its_unit_nan_only():
    params = jnp.ones((3, 2))
    grads = jnp.ones((3, 2)).at[0, 0].set(jnp.nan)
    tx = gradtx.adaptive_grad_clip(0.1)
    u = tx.update(grads, tx.init(params), params)[0]
    assert bool(jnp.all(jnp.isnan(u[:, 0])))
    assert bool(jnp.all(jnp.isfinite(u[:, 1])))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"clipping": -0.1}, "clipping"),
        ({"clipping": math.nan}, "clipping"),
        ({"clipping": 0.1, "eps": -1e-3}, "eps"),
        ({"clipping": 0.1, "eps": math.inf}, "eps"),
    ],
)
def test_out_of_range_hyperparameters_raise_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gradtx.adaptive_grad_clip(**kwargs)


def test_infinite_clipping_passes_updates_through():
    params, grads = jnp.ones(3), jnp.array([1e30, -2.0, 3.0])
    tx = gradtx.adaptive_grad_clip(math.inf)
    np.testing.assert_array_equal(tx.update(grads, tx.init(params), params)[0], grads)


def test_needs_params():
    tx = gradtx.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(2), tx.init(None))


def test_describe_shows_the_hyperparameters():
    text = gradtx.describe(
        gradtx.chain(gradtx.adaptive_grad_clip(0.05), gradtx.sgd(0.1))
    )
    assert "adaptive_grad_clip(clipping=0.05, eps=0.001, axis=None)" in text


# ----------------------------------------------------------------------------
# inject_hyperparams, vmap and the wrappers


def bf16_values(tree):
    return jax.tree.map(
        lambda x: jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), tree
    )


PARAMS = bf16_values(R.to_f32(R.make_params(0)))
GRADS = [bf16_values(R.to_f32(g)) for g in R.make_grads(3, 1)]


def with_lr(tx):
    return gradtx.chain(tx, gradtx.scale_by_learning_rate(0.1))


def trajectory(tx, params, grads):
    @jax.jit
    def step(params, state, g):
        g = jax.tree.map(lambda g, p: g.astype(p.dtype), g, params)
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), state, updates

    state, out = tx.init(params), []
    for g in grads:
        params, state, updates = step(params, state, g)
        out.append((updates, params, state))
    return out


def close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7)


def test_inject_hyperparams_in_bfloat16():
    plain = trajectory(
        with_lr(gradtx.adaptive_grad_clip(0.05, eps=1e-2)), PARAMS, GRADS
    )
    injected = with_lr(
        gradtx.inject_hyperparams(gradtx.adaptive_grad_clip)(clipping=0.05, eps=1e-2)
    )
    for (u, p, _), (ui, pi, _) in zip(
        plain, trajectory(injected, PARAMS, GRADS), strict=True
    ):
        close((u, p), (ui, pi))
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    steps = trajectory(injected, low, GRADS)
    for updates, params, state in steps:
        for x in jax.tree.leaves((updates, params)):
            assert x.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(x)))
        assert {k: v.dtype for k, v in state[0].hyperparams.items()} == {
            "clipping": jnp.float32,
            "eps": jnp.float32,
        }
    for a, b in zip(
        jax.tree.leaves(steps[0][0]), jax.tree.leaves(plain[0][0]), strict=True
    ):  # two roundings to bfloat16: the clip's and the learning rate's
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=2 * 2**-8)


def test_vmap_over_clipping_equals_separate_runs():
    injected = with_lr(
        gradtx.inject_hyperparams(gradtx.adaptive_grad_clip)(clipping=0.05)
    )

    def run(clipping):
        state = injected.init(PARAMS)
        inner = state[0]._replace(hyperparams={"clipping": clipping})
        state = (inner, *state[1:])
        params = PARAMS
        for g in GRADS:
            updates, state = injected.update(g, state, params)
            params = gradtx.apply_updates(params, updates)
        return params

    values = jnp.array([0.01, 0.05, 0.5], jnp.float32)
    batched = jax.jit(jax.vmap(run))(values)
    separate = jax.jit(run)
    for i, value in enumerate(values):
        for got, want in zip(
            jax.tree.leaves(batched), jax.tree.leaves(separate(value)), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)
    assert not np.allclose(batched["w"][0], batched["w"][-1])


def test_inside_the_wrappers():
    mask = {"w": True, "b": False, "s": True}
    whole = trajectory(with_lr(gradtx.adaptive_grad_clip(0.05)), PARAMS, GRADS)
    inside = trajectory(
        gradtx.masked(with_lr(gradtx.adaptive_grad_clip(0.05)), mask), PARAMS, GRADS
    )
    groups = gradtx.multi_transform(
        {
            "agc": with_lr(gradtx.adaptive_grad_clip(0.05)),
            "frozen": gradtx.set_to_zero(),
        },
        {"w": "agc", "b": "frozen", "s": "agc"},
    )
    grouped = trajectory(groups, PARAMS, GRADS)
    for (u, _, _), (um, _, _), (ug, _, _), g in zip(
        whole, inside, grouped, GRADS, strict=True
    ):
        close((u["w"], u["s"]), (um["w"], um["s"]))
        close((u["w"], u["s"]), (ug["w"], ug["s"]))
        np.testing.assert_array_equal(um["b"], g["b"])
        np.testing.assert_array_equal(ug["b"], 0.0)

    mean = jax.tree.map(lambda a, b: (a + b) / 2, GRADS[0], GRADS[1])
    (u_mean, _, _), (u_next, _, _) = trajectory(
        with_lr(gradtx.adaptive_grad_clip(0.05)), PARAMS, [mean, GRADS[2]]
    )
    nan = jax.tree.map(lambda g: g * jnp.nan, GRADS[0])
    guarded = trajectory(
        gradtx.apply_if_finite(with_lr(gradtx.adaptive_grad_clip(0.05)), 3),
        PARAMS,
        [nan, mean, GRADS[2]],
    )
    for x in jax.tree.leaves(guarded[0][0]):
        np.testing.assert_array_equal(x, 0.0)
    close(guarded[1][0], u_mean)
    close(guarded[2][0], u_next)
    accumulated = trajectory(
        gradtx.accumulate_gradients(
            with_lr(gradtx.adaptive_grad_clip(0.05)), every_k=2
        ),
        PARAMS,
        GRADS[:2],
    )
    for x in jax.tree.leaves(accumulated[0][0]):
        np.testing.assert_array_equal(x, 0.0)
    close(accumulated[1][0], u_mean)
