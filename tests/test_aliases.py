import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as R

import gradtx

RTOL = 1e-4


def lr_schedule(t):
    return 0.05 * 0.98**t


OPTIMIZERS = {
    "sgd": (gradtx.sgd(0.05), R.scale_by_learning_rate(0.05)),
    "sgd/schedule": (gradtx.sgd(lr_schedule), R.scale_by_learning_rate(lr_schedule)),
    "sgd/momentum": (
        gradtx.sgd(0.05, momentum=0.9),
        R.chain(R.momentum(0.9), R.scale_by_learning_rate(0.05)),
    ),
    "sgd/nesterov": (
        gradtx.sgd(0.05, momentum=0.9, nesterov=True),
        R.chain(R.momentum(0.9, nesterov=True), R.scale_by_learning_rate(0.05)),
    ),
    "sgd/dampening": (
        gradtx.sgd(0.05, momentum=0.9, dampening=0.5),
        R.chain(R.momentum(0.9, dampening=0.5), R.scale_by_learning_rate(0.05)),
    ),
    "rmsprop": (
        gradtx.rmsprop(0.01),
        R.chain(R.rms(0.9), R.scale_by_learning_rate(0.01)),
    ),
    "rmsprop/centered_momentum": (
        gradtx.rmsprop(0.01, decay=0.95, centered=True, momentum=0.9),
        R.chain(
            R.rms(0.95, centered=True), R.momentum(0.9), R.scale_by_learning_rate(0.01)
        ),
    ),
    "rmsprop/eps_in_sqrt_nesterov": (
        gradtx.rmsprop(0.01, eps=1e-4, eps_in_sqrt=True, momentum=0.5, nesterov=True),
        R.chain(
            R.rms(0.9, eps=1e-4, eps_in_sqrt=True),
            R.momentum(0.5, nesterov=True),
            R.scale_by_learning_rate(0.01),
        ),
    ),
    "adagrad": (
        gradtx.adagrad(0.1),
        R.chain(R.adagrad(), R.scale_by_learning_rate(0.1)),
    ),
    "adadelta": (
        gradtx.adadelta(),
        R.chain(R.adadelta(), R.scale_by_learning_rate(1.0)),
    ),
    "adam": (gradtx.adam(0.01), R.chain(R.adam(), R.scale_by_learning_rate(0.01))),
    "adam/nesterov_schedule": (
        gradtx.adam(lr_schedule, b1=0.8, nesterov=True),
        R.chain(R.adam(b1=0.8, nesterov=True), R.scale_by_learning_rate(lr_schedule)),
    ),
    "adam_l2": (
        gradtx.adam_l2(0.01, weight_decay=0.1),
        R.chain(R.add_decayed_weights(0.1), R.adam(), R.scale_by_learning_rate(0.01)),
    ),
    "adamw": (
        gradtx.adamw(0.01, weight_decay=0.1),
        R.chain(R.adam(), R.add_decayed_weights(0.1), R.scale_by_learning_rate(0.01)),
    ),
    "adamw/mask_and_adam_args": (
        gradtx.adamw(
            0.01, weight_decay=0.1, mask={"w": True, "b": False, "s": False}, b2=0.99
        ),
        R.chain(
            R.adam(b2=0.99),
            R.add_decayed_weights(0.1, mask={"w": True, "b": False, "s": False}),
            R.scale_by_learning_rate(0.01),
        ),
    ),
    "adamw_multiplier": (
        gradtx.adamw_multiplier(0.01, weight_decay=0.05, schedule=lr_schedule),
        R.chain(
            R.adam(),
            R.scale(0.01),
            R.add_decayed_weights(0.05),
            R.scale_by_learning_rate(lr_schedule),
        ),
    ),
    "adamw_independent": (
        gradtx.adamw_independent(lr_schedule, weight_decay=0.01),
        R.chain(
            R.adam(),
            R.scale_by_schedule(lr_schedule),
            R.add_decayed_weights(0.01),
            R.scale(-1.0),
        ),
    ),
    "sgd_l2": (
        gradtx.sgd_l2(0.05, weight_decay=0.1, momentum=0.9),
        R.chain(
            R.add_decayed_weights(0.1), R.momentum(0.9), R.scale_by_learning_rate(0.05)
        ),
    ),
    "sgdw": (
        gradtx.sgdw(0.05, weight_decay=0.1, momentum=0.9, nesterov=True),
        R.chain(
            R.momentum(0.9, nesterov=True),
            R.add_decayed_weights(0.1),
            R.scale_by_learning_rate(0.05),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTIMIZERS))
def test_matches_float64_equation(case):
    tx, ref = OPTIMIZERS[case]
    got, want = R.run_side_by_side(tx, ref)
    assert R.max_relative_error(got, want) < RTOL


def _trajectory(tx, steps=50):
    params = R.to_f32(R.make_params(3))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    for g in R.make_grads(steps, 4):
        params, state = step(params, state, R.to_f32(g))
    return params


def _same(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))


def test_swapping_one_link_turns_adamw_into_adam_l2():
    lr, wd = 0.01, 0.1
    decoupled = gradtx.chain(
        gradtx.scale_by_adam(),
        gradtx.add_decayed_weights(wd),
        gradtx.scale_by_learning_rate(lr),
    )
    coupled = gradtx.chain(
        gradtx.add_decayed_weights(wd),
        gradtx.scale_by_adam(),
        gradtx.scale_by_learning_rate(lr),
    )
    assert _same(_trajectory(decoupled), _trajectory(gradtx.adamw(lr, weight_decay=wd)))
    assert _same(_trajectory(coupled), _trajectory(gradtx.adam_l2(lr, weight_decay=wd)))
    gap = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))),
        _trajectory(decoupled),
        _trajectory(coupled),
    )
    assert max(jax.tree.leaves(gap)) > 1e-3  # the two models of decay really differ


def test_decoupled_decay_shrinks_every_weight_by_the_same_fraction():
    # With zero gradients Adam's step is zero, so adamw only decays:
    # p <- p * (1 - lr * wd), whatever each weight's gradient history.
    lr, wd = 0.1, 0.5
    tx = gradtx.adamw(lr, weight_decay=wd)
    params = {"w": jnp.array([1.0, -4.0, 0.25])}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
    new = gradtx.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], params["w"] * (1 - lr * wd), rtol=1e-6)


def test_coupled_decay_is_rescaled_by_adam():
    # The same situation under adam_l2: the decay term goes through Adam, so
    # the first step is lr * sign(p), not proportional to p.
    tx = gradtx.adam_l2(0.1, weight_decay=0.5)
    params = {"w": jnp.array([1.0, -4.0, 0.25])}
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.sign(params["w"]), rtol=1e-5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: gradtx.sgd(0.1, nesterov=True),
        lambda: gradtx.sgd(0.1, dampening=0.5),
        lambda: gradtx.rmsprop(0.1, nesterov=True),
    ],
)
def test_momentum_options_without_momentum_raise(build):
    with pytest.raises(ValueError, match="need a momentum"):
        build()


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: gradtx.sgd(-0.1),
            r"scale_by_learning_rate: learning_rate must be in \[0, inf\)",
        ),
        (
            lambda: gradtx.sgd(0.1, momentum=1.0),
            r"scale_by_momentum: decay must be in \[0, 1\)",
        ),
        (
            lambda: gradtx.rmsprop(0.1, decay=2.0),
            r"scale_by_rms: decay must be in \[0, 1\)",
        ),
        (lambda: gradtx.adagrad(0.1, eps=-1.0), r"scale_by_adagrad: eps must be"),
        (lambda: gradtx.adadelta(rho=1.0), r"scale_by_adadelta: rho must be"),
        (lambda: gradtx.adam(1e-3, b1=1.0), r"scale_by_adam: b1 must be in \[0, 1\)"),
        (
            lambda: gradtx.adamw(1e-3, weight_decay=-1.0),
            r"weight_decay must be in \[0, inf\)",
        ),
        (
            lambda: gradtx.adam_l2(1e-3, b2=-0.5),
            r"scale_by_adam: b2 must be in \[0, 1\)",
        ),
    ],
)
def test_aliases_validate_through_their_links(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_unknown_adam_argument_is_rejected():
    with pytest.raises(TypeError, match="beta1"):
        gradtx.adamw(1e-3, beta1=0.9)


def test_four_decay_models_differ_only_in_how_the_decay_is_scaled():
    # With zero gradients Adam's step vanishes and only the decay moves p.
    lr, wd, eta = 0.1, 0.2, 0.5
    params = jnp.array([1.0, -2.0])
    zeros = jnp.zeros(2)

    def first_step(tx):
        updates, _ = tx.update(zeros, tx.init(params), params)
        return np.asarray(updates)

    np.testing.assert_allclose(
        first_step(gradtx.adamw(lr * eta, weight_decay=wd)), -lr * eta * wd * params
    )
    np.testing.assert_allclose(
        first_step(gradtx.adamw_multiplier(lr, weight_decay=wd, schedule=eta)),
        -eta * wd * params,
    )
    np.testing.assert_allclose(
        first_step(gradtx.adamw_independent(lr * eta, weight_decay=wd)), -wd * params
    )
    np.testing.assert_allclose(
        first_step(gradtx.adam_l2(lr * eta, weight_decay=wd)),
        -lr * eta * np.sign(params),
        rtol=1e-5,
    )


def test_adamw_multiplier_is_adamw_with_a_rescaled_decay():
    base = 0.01
    got = _trajectory(
        gradtx.adamw_multiplier(base, weight_decay=1e-3, schedule=lr_schedule)
    )
    want = _trajectory(
        gradtx.adamw(lambda t: base * lr_schedule(t), weight_decay=1e-3 / base)
    )
    chex.assert_trees_all_close(got, want, rtol=1e-5)


def test_sgd_l2_and_sgdw_coincide_without_momentum_and_differ_with_it():
    plain = [
        _trajectory(f(0.05, weight_decay=0.1)) for f in (gradtx.sgd_l2, gradtx.sgdw)
    ]
    assert _same(*plain)
    heavy = [
        _trajectory(f(0.05, weight_decay=0.1, momentum=0.9))
        for f in (gradtx.sgd_l2, gradtx.sgdw)
    ]
    assert not _same(*heavy)


def test_adamw_multiplier_rejects_a_schedule_as_learning_rate():
    with pytest.raises(TypeError, match="pass the schedule multiplier as schedule="):
        gradtx.adamw_multiplier(lr_schedule)
    with pytest.raises(
        ValueError, match=r"adamw_independent: weight_decay must be in \[0, 1\)"
    ):
        gradtx.adamw_independent(0.1, weight_decay=1.0)


# A call written in optax's positional order must mean what it means in
# optax, or fail: never set another hyperparameter silently.


def test_adam_takes_optax_positional_order():
    tx = gradtx.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, jnp.bfloat16)
    adam = tx.children[0].hyperparams
    assert adam["mu_dtype"] == jnp.bfloat16 and adam["nesterov"] is False
    assert tx.init(jnp.zeros(2, jnp.float32))[0].mu.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "build",
    [
        lambda: gradtx.adamw(1e-3, 0.9),
        lambda: gradtx.adam_l2(1e-3, 1e-2),
        lambda: gradtx.adamw_multiplier(1e-3, 1e-2),
        lambda: gradtx.adamw_independent(1e-3, 1e-2),
        lambda: gradtx.sgdw(1e-3, 1e-2),
        lambda: gradtx.sgd_l2(1e-3, 1e-2),
        lambda: gradtx.rmsprop(1e-3, 0.9, 1e-8, 0.0),
        lambda: gradtx.sgd(1e-3, 0.9, False, None),
    ],
)
def test_arguments_whose_position_differs_from_optax_are_keyword_only(build):
    with pytest.raises(TypeError, match="positional"):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: gradtx.adam(1e-3, nesterov=jnp.bfloat16),
        lambda: gradtx.sgd(1e-3, 0.9, 1),
        lambda: gradtx.scale_by_momentum(0.9, "yes"),
        lambda: gradtx.rmsprop(1e-3, centered=None),
    ],
)
def test_flags_must_be_booleans(build):
    with pytest.raises(TypeError, match="must be True or False"):
        build()


def test_every_alias_spells_out_its_arguments():
    import inspect

    for name in ["adam", "adam_l2", "adamw", "adamw_multiplier", "adamw_independent"]:
        parameters = inspect.signature(getattr(gradtx, name)).parameters
        assert {"b1", "b2", "eps", "eps_root", "mu_dtype", "nesterov"} <= set(
            parameters
        ), name
        assert all(p.kind is not p.VAR_KEYWORD for p in parameters.values()), name
