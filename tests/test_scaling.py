import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as R

import gradtx

RTOL = 1e-4  # float32 against float64 over 120 steps; observed errors are ~1e-6


def schedule(t):
    return 0.1 * 0.97**t + 0.01


EQUATION_CASES = {
    "scale": (gradtx.scale(-0.3), R.scale(-0.3)),
    "scale_by_learning_rate": (
        gradtx.scale_by_learning_rate(0.05),
        R.scale_by_learning_rate(0.05),
    ),
    "scale_by_learning_rate/schedule": (
        gradtx.scale_by_learning_rate(schedule),
        R.scale_by_learning_rate(schedule),
    ),
    "scale_by_schedule": (
        gradtx.scale_by_schedule(schedule),
        R.scale_by_schedule(schedule),
    ),
    "momentum/heavy_ball": (gradtx.scale_by_momentum(0.9), R.momentum(0.9)),
    "momentum/nesterov": (
        gradtx.scale_by_momentum(0.9, nesterov=True),
        R.momentum(0.9, nesterov=True),
    ),
    "momentum/dampened": (
        gradtx.scale_by_momentum(0.8, dampening=0.3),
        R.momentum(0.8, dampening=0.3),
    ),
    "momentum/ema": (
        gradtx.scale_by_momentum(0.9, dampening=0.9),
        R.momentum(0.9, dampening=0.9),
    ),
    "rms": (gradtx.scale_by_rms(0.9), R.rms(0.9)),
    "rms/eps_in_sqrt": (
        gradtx.scale_by_rms(0.99, eps=1e-3, eps_in_sqrt=True),
        R.rms(0.99, eps=1e-3, eps_in_sqrt=True),
    ),
    "rms/centered": (
        gradtx.scale_by_rms(0.95, centered=True),
        R.rms(0.95, centered=True),
    ),
    "rms/initial_scale": (
        gradtx.scale_by_rms(0.9, initial_scale=1.0, eps=1e-2),
        R.rms(0.9, initial_scale=1.0, eps=1e-2),
    ),
    "adagrad": (gradtx.scale_by_adagrad(), R.adagrad()),
    "adagrad/initial": (
        gradtx.scale_by_adagrad(initial_accumulator_value=0.1, eps=1e-3),
        R.adagrad(0.1, eps=1e-3),
    ),
    "adadelta": (gradtx.scale_by_adadelta(), R.adadelta()),
    "adadelta/rho": (
        gradtx.scale_by_adadelta(rho=0.95, eps=1e-4),
        R.adadelta(0.95, 1e-4),
    ),
    "adam": (gradtx.scale_by_adam(), R.adam()),
    "adam/betas": (
        gradtx.scale_by_adam(b1=0.5, b2=0.9, eps=1e-6),
        R.adam(b1=0.5, b2=0.9, eps=1e-6),
    ),
    "adam/eps_root": (gradtx.scale_by_adam(eps_root=1e-6), R.adam(eps_root=1e-6)),
    "adam/nesterov": (gradtx.scale_by_adam(nesterov=True), R.adam(nesterov=True)),
    "adam/b1_zero": (gradtx.scale_by_adam(b1=0.0), R.adam(b1=0.0)),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    tx, ref = EQUATION_CASES[case]
    got, want = R.run_side_by_side(tx, ref, steps=R.STEPS)
    assert R.max_relative_error(got, want) < RTOL


# ----------------------------------------------------------------------------
# small cases worked by hand


def test_adam_first_step_is_the_sign_of_the_gradient():
    # m_hat = g and v_hat = g**2 at t = 1, so u = g / (|g| + eps): to float32,
    # exactly the sign. A bias correction computed from a float32-rounded b2
    # misses this by 6.6e-6.
    tx = gradtx.scale_by_adam()
    g = jnp.array([0.5, -2.0, 1e-3, -7.0])
    u, state = jax.jit(tx.update)(g, tx.init(jnp.zeros(4)))
    np.testing.assert_array_equal(u[:2], [1.0, -1.0])
    np.testing.assert_allclose(u, np.sign(g), rtol=2e-5)
    assert int(state.count) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True),
        lambda: gradtx.rmsprop(0.01, momentum=0.9, centered=True),
        lambda: gradtx.adagrad(0.1),
        lambda: gradtx.adadelta(1.0),
        lambda: gradtx.adam(0.01),
        lambda: gradtx.adam(0.01, nesterov=True, eps_root=1e-12),
        lambda: gradtx.adamw(0.01, weight_decay=0.1),
    ],
    ids=["nesterov", "rmsprop", "adagrad", "adadelta", "adam", "nadam", "adamw"],
)
def test_a_leaf_moves_the_same_bits_whatever_else_is_in_the_tree(make):
    # A leaf's update is a function of that leaf alone; the compiled step of a
    # larger tree must not round it differently. (Written as `m / c1`, Adam's
    # bias corrections were folded by XLA one way on a one-leaf tree and
    # another on a tree of several leaves.)
    tx = make()
    rng = np.random.default_rng(5)
    alone = {"a": jnp.asarray(rng.normal(size=(33, 7)), jnp.float32)}
    tree = dict(alone, b=jnp.ones((5,)), c=jnp.asarray(rng.normal(size=(64,))))

    def run(params):
        step = jax.jit(
            lambda p, s, g: (lambda u, s: (gradtx.apply_updates(p, u), s))(
                *tx.update(g, s, p)
            )
        )
        state = tx.init(params)
        for k in range(6):
            grads = jax.tree.map(lambda x, f=k + 1.5: jnp.sin(x * f) * 3, params)
            params, state = step(params, state, grads)
        return params["a"]

    np.testing.assert_array_equal(run(alone), run(tree))


def test_momentum_sums_a_geometric_series():
    tx = gradtx.scale_by_momentum(decay=0.5)
    state = tx.init(jnp.zeros(()))
    outs = []
    for _ in range(4):
        u, state = tx.update(jnp.ones(()), state)
        outs.append(float(u))
    assert outs == [1.0, 1.5, 1.75, 1.875]


def test_nesterov_looks_ahead_by_one_decay():
    tx = gradtx.scale_by_momentum(decay=0.5, nesterov=True)
    state = tx.init(jnp.zeros(()))
    u1, state = tx.update(jnp.ones(()), state)
    u2, state = tx.update(jnp.ones(()), state)
    assert (float(u1), float(u2)) == (1.5, 1.75)  # g + 0.5 * v with v = 1, 1.5


def test_ema_momentum_is_a_moving_average():
    tx = gradtx.scale_by_momentum(decay=0.75, dampening=0.75)
    state = tx.init(jnp.zeros(()))
    u, state = tx.update(jnp.array(4.0), state)
    assert float(u) == 1.0  # (1 - 0.75) * 4


def test_adadelta_first_step_size_is_set_by_eps():
    tx = gradtx.scale_by_adadelta(rho=0.9, eps=1e-6)
    u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    want = np.sqrt(1e-6) / np.sqrt(0.1 * 4 + 1e-6) * 2.0
    np.testing.assert_allclose(u, [want], rtol=1e-6)


def test_centered_rms_never_takes_the_root_of_a_negative():
    # A constant gradient makes nu - mean**2 exactly zero in exact arithmetic;
    # in float32 it can come out a hair negative.
    tx = gradtx.scale_by_rms(decay=0.9, centered=True, eps=1e-8)
    state = tx.init(jnp.zeros(3))
    g = jnp.array([0.1, 3.3, 1e-3])
    update = jax.jit(tx.update)
    for _ in range(50):
        u, state = update(g, state)
        assert bool(jnp.all(jnp.isfinite(u)))


def test_schedule_sees_the_count_of_applied_updates():
    seen = []
    tx = gradtx.scale_by_schedule(lambda t: (seen.append(t), t * 1.0)[1])
    state = tx.init(None)
    for _ in range(3):
        u, state = tx.update(jnp.ones(()), state)
    assert [int(t) for t in seen] == [0, 1, 2]
    assert float(u) == 2.0
    assert int(state.count) == 3


def test_count_saturates_instead_of_wrapping():
    tx = gradtx.scale_by_adam()
    state = tx.init(jnp.zeros(2))
    top = np.iinfo(np.int32).max
    state = state._replace(count=jnp.array(top, jnp.int32))
    u, state = tx.update(jnp.ones(2), state)
    assert int(state.count) == top
    assert bool(jnp.all(jnp.isfinite(u)))


def test_state_types_are_named_and_hold_arrays_only():
    params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    expected = {
        gradtx.scale_by_momentum(): gradtx.ScaleByMomentumState,
        gradtx.scale_by_rms(): gradtx.ScaleByRmsState,
        gradtx.scale_by_adagrad(): gradtx.ScaleByAdagradState,
        gradtx.scale_by_adadelta(): gradtx.ScaleByAdadeltaState,
        gradtx.scale_by_adam(): gradtx.ScaleByAdamState,
        gradtx.scale_by_schedule(lambda t: 1.0): gradtx.ScaleByScheduleState,
        gradtx.scale_by_learning_rate(lambda t: 1.0): gradtx.ScaleByLearningRateState,
        gradtx.scale(2.0): gradtx.EmptyState,
        gradtx.scale_by_learning_rate(0.1): gradtx.EmptyState,
    }
    for tx, state_type in expected.items():
        state = tx.init(params)
        assert type(state) is state_type
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_centered_state_keeps_the_mean_only_when_asked():
    params = jnp.zeros(3)
    assert gradtx.scale_by_rms().init(params).mean is None
    assert gradtx.scale_by_rms(centered=True).init(params).mean.shape == (3,)


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (
            gradtx.scale_by_momentum,
            {"decay": 1.0},
            r"decay must be in \[0, 1\), got 1.0",
        ),
        (gradtx.scale_by_momentum, {"decay": -0.1}, r"decay must be in \[0, 1\)"),
        (
            gradtx.scale_by_momentum,
            {"dampening": 1.5},
            r"dampening must be in \[0, 1\)",
        ),
        (
            gradtx.scale_by_rms,
            {"decay": 1.0},
            r"scale_by_rms: decay must be in \[0, 1\)",
        ),
        (gradtx.scale_by_rms, {"eps": -1e-8}, r"eps must be in \[0, inf\)"),
        (gradtx.scale_by_rms, {"initial_scale": -1.0}, r"initial_scale must be in"),
        (gradtx.scale_by_adagrad, {"eps": -1.0}, r"scale_by_adagrad: eps must be"),
        (
            gradtx.scale_by_adagrad,
            {"initial_accumulator_value": -0.1},
            r"initial_accumulator_value must be in \[0, inf\)",
        ),
        (gradtx.scale_by_adadelta, {"rho": 1.0}, r"rho must be in \[0, 1\)"),
        (gradtx.scale_by_adadelta, {"eps": 0.0}, r"eps must be in \(0, inf\)"),
        (gradtx.scale_by_adam, {"b1": 1.0}, r"scale_by_adam: b1 must be in \[0, 1\)"),
        (gradtx.scale_by_adam, {"b2": 1.2}, r"b2 must be in \[0, 1\), got 1.2"),
        (gradtx.scale_by_adam, {"b2": float("nan")}, r"b2 must be in \[0, 1\)"),
        (gradtx.scale_by_adam, {"eps": -1e-8}, r"eps must be in \[0, inf\)"),
        (gradtx.scale_by_adam, {"eps_root": -1.0}, r"eps_root must be in"),
        (gradtx.scale_by_adam, {"mu_dtype": jnp.int32}, r"mu_dtype must be a floating"),
        (gradtx.scale_by_adam, {"mu_dtype": "nonsense"}, r"mu_dtype must be a dtype"),
        (
            gradtx.scale_by_learning_rate,
            {"learning_rate": -0.1},
            r"learning_rate must be",
        ),
    ],
)
def test_out_of_range_hyperparameters_raise_at_construction(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_schedule_must_be_callable_or_a_number():
    with pytest.raises(
        TypeError, match="scale_by_schedule: schedule must be a function"
    ):
        gradtx.scale_by_schedule("cosine")
    tx = gradtx.scale_by_schedule(0.5)
    u, state = tx.update(jnp.ones(2), tx.init(None))
    np.testing.assert_array_equal(u, 0.5)
    assert int(state.count) == 1


def test_mismatched_gradient_tree_names_the_first_differing_path():
    params = {"layer": {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}}
    tx = gradtx.scale_by_adam()
    state = tx.init(params)
    grads = {"layer": {"w": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"scale_by_adam: .*'layer/bias'.*'layer/b'"):
        tx.update(grads, state)


def test_missing_leaf_is_named():
    tx = gradtx.scale_by_momentum()
    state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"scale_by_momentum: .*'b' in state.velocity"):
        tx.update({"a": jnp.zeros(2)}, state)


def test_wrong_leaf_shape_is_named_instead_of_broadcast():
    tx = gradtx.scale_by_rms()
    state = tx.init({"w": jnp.zeros((3, 1))})
    with pytest.raises(ValueError, match=r"scale_by_rms: .*shape at 'w'"):
        tx.update({"w": jnp.zeros((3, 4))}, state)
