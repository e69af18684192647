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
        match=r"clip_by_global_norm: max_norm must be in \[0, inf\), got -1.0",
    ):
        gradtx.clip_by_global_norm(-1.0)
    with pytest.raises(ValueError, match=r"clip: max_delta must be in \[0, inf\)"):
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
