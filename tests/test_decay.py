import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as R

import gradtx

RTOL = 1e-4


def decay_schedule(t):
    return 0.05 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, 100) / 100)) / 2


def ref_decay_schedule(t):
    return 0.05 * (1 + np.cos(np.pi * min(t, 100) / 100)) / 2


MASK = {"w": True, "b": False, "s": True}

# Each transformation is followed by a small learning-rate step, so that the
# parameters it reads move along a trajectory of its own.
EQUATION_CASES = {
    "add_decayed_weights": (
        gradtx.add_decayed_weights(0.1),
        R.add_decayed_weights(0.1),
    ),
    "add_decayed_weights/schedule": (
        gradtx.add_decayed_weights(decay_schedule),
        R.add_decayed_weights(ref_decay_schedule),
    ),
    "add_decayed_weights/mask_tree": (
        gradtx.add_decayed_weights(0.3, mask=MASK),
        R.add_decayed_weights(0.3, mask=MASK),
    ),
    "add_decayed_weights/mask_callable": (
        gradtx.add_decayed_weights(0.3, mask=lambda p: {k: k != "b" for k in p}),
        R.add_decayed_weights(0.3, mask=MASK),
    ),
    "add_l1_penalty": (gradtx.add_l1_penalty(0.2), R.add_l1_penalty(0.2)),
    "add_l1_penalty/mask": (
        gradtx.add_l1_penalty(0.2, mask=MASK),
        R.add_l1_penalty(0.2, mask=MASK),
    ),
    "elastic_net": (
        gradtx.chain(gradtx.add_l1_penalty(0.1), gradtx.add_decayed_weights(0.2)),
        R.chain(R.add_l1_penalty(0.1), R.add_decayed_weights(0.2)),
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    tx, ref = EQUATION_CASES[case]
    tx = gradtx.chain(tx, gradtx.scale_by_learning_rate(0.05))
    ref = R.chain(ref, R.scale_by_learning_rate(0.05))
    got, want = R.run_side_by_side(tx, ref)
    assert R.max_relative_error(got, want) < RTOL


def test_decay_is_the_gradient_of_half_the_squared_norm():
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    penalty_grad = jax.grad(lambda p: 0.7 / 2 * jnp.sum(p["w"] ** 2))(params)
    tx = gradtx.add_decayed_weights(0.7)
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(u["w"], penalty_grad["w"], rtol=1e-7)


def test_mask_as_tree_and_as_callable_agree():
    params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    tree_mask = {"dense": {"kernel": True, "bias": False}}
    by_tree = gradtx.add_decayed_weights(0.5, mask=tree_mask)
    by_fn = gradtx.add_decayed_weights(
        0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    )
    u1, _ = jax.jit(by_tree.update)(grads, by_tree.init(params), params)
    u2, _ = jax.jit(by_fn.update)(grads, by_fn.init(params), params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), u1, u2))
    np.testing.assert_array_equal(u1["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(u1["dense"]["kernel"], 0.5)


def test_mask_may_be_a_prefix_of_the_params():
    params = {"encoder": {"w": jnp.ones(2), "b": jnp.ones(2)}, "head": jnp.ones(2)}
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = gradtx.add_decayed_weights(1.0, mask={"encoder": False, "head": True})
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(u["encoder"]["w"], 0.0)
    np.testing.assert_array_equal(u["encoder"]["b"], 0.0)
    np.testing.assert_array_equal(u["head"], 1.0)


def test_scheduled_decay_counts_steps():
    tx = gradtx.add_decayed_weights(lambda t: 0.1 * t)
    params = jnp.ones(2)
    state = tx.init(params)
    assert type(state) is gradtx.AddDecayedWeightsState
    outs = []
    for _ in range(3):
        u, state = tx.update(jnp.zeros(2), state, params)
        outs.append(float(u[0]))
    np.testing.assert_allclose(outs, [0.0, 0.1, 0.2], rtol=1e-6)
    assert isinstance(
        gradtx.add_l1_penalty(lambda t: 0.1).init(params), gradtx.AddL1PenaltyState
    )


def test_l1_subgradient_is_zero_at_zero():
    tx = gradtx.add_l1_penalty(1.0)
    params = jnp.array([-3.0, 0.0, 2.0])
    u, _ = tx.update(jnp.zeros(3), tx.init(params), params)
    np.testing.assert_array_equal(u, [-1.0, 0.0, 1.0])


@pytest.mark.parametrize("factory", [gradtx.add_decayed_weights, gradtx.add_l1_penalty])
def test_missing_params_name_the_transformation(factory):
    tx = factory(0.1)
    with pytest.raises(ValueError, match=rf"{factory.__name__} reads the parameters"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_missing_params_inside_an_optimizer_name_the_link():
    tx = gradtx.adamw(1e-3)
    with pytest.raises(ValueError, match="add_decayed_weights reads the parameters"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_negative_rates_raise_at_construction():
    with pytest.raises(
        ValueError, match=r"add_decayed_weights: weight_decay must be in \[0, inf\)"
    ):
        gradtx.add_decayed_weights(-1e-4)
    with pytest.raises(
        ValueError, match=r"add_l1_penalty: strength must be in \[0, inf\)"
    ):
        gradtx.add_l1_penalty(-1.0)


def test_mask_with_the_wrong_structure_names_the_path():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    tx = gradtx.add_decayed_weights(0.1, mask={"w": True, "bias": False})
    with pytest.raises(ValueError, match=r"add_decayed_weights: .*mask.*'bias'"):
        tx.update(params, tx.init(params), params)


def test_mask_leaves_must_be_static_bools():
    params = {"w": jnp.ones(2)}
    tx = gradtx.add_decayed_weights(0.1, mask={"w": jnp.array(True)})
    with pytest.raises(
        TypeError, match=r"mask leaves must be Python bools, got .* at 'w'"
    ):
        tx.update(params, tx.init(params), params)


def test_params_with_the_wrong_structure_are_named():
    tx = gradtx.add_decayed_weights(0.1)
    grads = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"'v' in params is missing from updates"):
        tx.update(grads, tx.init(grads), {"w": jnp.ones(2), "v": jnp.ones(2)})
