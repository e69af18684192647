import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as R

import gradtx

RTOL = 1e-4

EQUATION_CASES = {
    "clip": (gradtx.clip(0.7), R.clip(0.7)),
    "clip_by_global_norm/active": (
        gradtx.clip_by_global_norm(1.0),
        R.clip_by_global_norm(1.0),
    ),
    "clip_by_global_norm/mostly_inactive": (
        gradtx.clip_by_global_norm(8.0),
        R.clip_by_global_norm(8.0),
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    tx, ref = EQUATION_CASES[case]
    got, want = R.run_side_by_side(tx, ref)
    assert R.max_relative_error(got, want) < RTOL


def test_global_norm_spans_every_leaf():
    tree = {"a": jnp.array([3.0]), "b": [jnp.array([[4.0, 0.0]]), jnp.array(12.0)]}
    assert float(gradtx.global_norm(tree)) == 13.0


def test_clipped_tree_has_the_bound_as_norm_and_keeps_direction():
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}
    tx = gradtx.clip_by_global_norm(2.6)
    u, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(gradtx.global_norm(u), 2.6, rtol=1e-6)
    np.testing.assert_allclose(u["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(u["b"], [[2.4]], rtol=1e-6)


def test_updates_within_the_bound_are_untouched():
    grads = {"a": jnp.array([0.3, -0.4])}
    tx = gradtx.clip_by_global_norm(0.5)
    u, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_array_equal(u["a"], grads["a"])


@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_zero_gradients_stay_finite(max_norm):
    tx = gradtx.clip_by_global_norm(max_norm)
    u, _ = jax.jit(tx.update)(jnp.zeros(3), tx.init(None))
    np.testing.assert_array_equal(u, 0.0)


def test_zero_bound_zeroes_the_updates():
    tx = gradtx.clip_by_global_norm(0.0)
    u, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(None))
    np.testing.assert_array_equal(u, 0.0)


def test_clip_bounds_each_element():
    tx = gradtx.clip(0.5)
    u, _ = tx.update(jnp.array([-2.0, -0.25, 0.0, 0.5, 9.0]), tx.init(None))
    np.testing.assert_array_equal(u, [-0.5, -0.25, 0.0, 0.5, 0.5])


def test_negative_bounds_raise_at_construction():
    with pytest.raises(
        ValueError,
        match=r"clip_by_global_norm: max_norm must be in \[0, inf\], got -1.0",
    ):
        gradtx.clip_by_global_norm(-1.0)
    with pytest.raises(ValueError, match=r"clip: max_delta must be in \[0, inf\]"):
        gradtx.clip(-0.1)


def test_clipping_a_tree_whose_norm_overflows_float32():
    # The norm itself (4.2e38) is beyond float32; the clip must still give a
    # step of norm max_norm in the gradient's direction, not zero.
    grads = {"a": jnp.array([3e38, -3e38]), "b": jnp.array([1.0])}
    tx = gradtx.clip_by_global_norm(2.0)
    u, _ = jax.jit(tx.update)(grads, tx.init(None))
    np.testing.assert_allclose(u["a"], [np.sqrt(2.0), -np.sqrt(2.0)], rtol=1e-6)
    assert float(u["b"][0]) < 1e-37
    assert float(gradtx.global_norm(grads)) == np.inf


def _many_leaves(scale=1.0, seed=0):
    """Small leaves spanning several summation pieces, and large leaves of one
    shape (whose overflow fallback must not share a broadcast)."""
    rng = np.random.default_rng(seed)
    shapes = [(100,)] * 700 + [(3, 50)] * 40 + [(256, 256)] * 3
    return [jnp.asarray(rng.normal(size=s) * scale, jnp.float32) for s in shapes]


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_global_norm_of_many_leaves_is_exact(scale):
    tree = _many_leaves(scale)
    want = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in tree))
    np.testing.assert_allclose(jax.jit(gradtx.global_norm)(tree), want, rtol=2e-6)


@pytest.mark.parametrize("where", [0, 350, 699, 720, 741])
def test_a_nan_or_inf_in_any_piece_reaches_the_norm(where):
    tree = _many_leaves()
    norm = jax.jit(gradtx.global_norm)
    for bad, check in ((jnp.nan, np.isnan), (jnp.inf, np.isposinf)):
        hurt = list(tree)
        hurt[where] = hurt[where].at[(0,) * hurt[where].ndim].set(bad)
        assert check(float(norm(hurt))), (where, bad)


NO_ANNEX = pytest.mark.skipif(
    "fused_step" not in gradtx.__all__, reason="the fused annex is not installed"
)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=NO_ANNEX)])
@pytest.mark.filterwarnings("ignore:gradtx.fused_step:RuntimeWarning")  # no compiler
def test_clipped_step_needs_no_more_than_a_leaf_of_scratch(fused):
    # With params and state donated, the step needs no more than params,
    # grads and state: no copy of the clipped gradient, the small leaves
    # summed through one reused buffer, and no broadcast per leaf shape for
    # the overflow fallback. XLA decides its scratch, so the bound is half
    # the gradient's bytes, not an exact figure: a copy of the gradient, or
    # of its three large leaves, would exceed it.
    grads = _many_leaves()
    params = [jnp.zeros_like(g) for g in grads]
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3))

    def plain(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    step = gradtx.fused_step(tx) if fused else plain
    compiled = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, tx.init(params), grads)
        .compile()
    )
    memory = compiled.memory_analysis()
    extra = (
        memory.temp_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
    )
    grad_bytes = sum(g.size * 4 for g in grads)
    assert extra <= grad_bytes // 2


def test_global_norm_of_small_leaves_of_several_dtypes():
    # Each dtype's small leaves are summed in pieces of their own, chained one
    # after the other; the zero that chains them must add nothing.
    rng = np.random.default_rng(3)
    tree = {
        "f32": [jnp.asarray(rng.normal(size=300), jnp.float32) for _ in range(250)],
        "bf16": [jnp.asarray(rng.normal(size=300), jnp.bfloat16) for _ in range(250)],
        "c64": [
            jnp.asarray(rng.normal(size=300) + 1j * rng.normal(size=300), jnp.complex64)
            for _ in range(250)
        ],
    }
    want = np.sqrt(
        sum(
            np.sum(np.abs(np.asarray(x, np.complex128)) ** 2)
            for x in jax.tree.leaves(tree)
        )
    )
    np.testing.assert_allclose(jax.jit(gradtx.global_norm)(tree), want, rtol=2e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_gradient_is_not_hidden_by_the_clip(bad):
    # A NaN norm used to fail `norm > max_norm`, so the scale stayed 1 and
    # every finite leaf passed unclipped; optax and torch make it visible.
    tx = gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.freeze({"frozen": True, "w": False}),
        gradtx.sgd(1.0),
    )
    params = {"frozen": jnp.zeros(2), "w": jnp.zeros(2)}
    grads = {"frozen": jnp.array([bad, 0.0]), "w": jnp.array([1e6, -1e6])}
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    w = np.asarray(updates["w"])
    if np.isnan(bad):
        assert np.all(np.isnan(w))  # the fault shows in every leaf
    else:  # an inf norm clips every finite element to zero, as optax does
        np.testing.assert_array_equal(w, [0.0, 0.0])
    assert not np.any(np.abs(w) > 1.0)


def test_no_bound_is_an_infinite_bound():
    grads = jnp.array([3e30, -4e30])
    for tx in (gradtx.clip_by_global_norm(np.inf), gradtx.clip(np.inf)):
        np.testing.assert_array_equal(tx.update(grads, tx.init(grads))[0], grads)
