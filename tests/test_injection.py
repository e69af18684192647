import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
import torch

import gradtx

inject = gradtx.inject_hyperparams


def run(tx, steps=30, seed=0, **extra):
    """Jitted trajectory of the params on the reference gradient sequence."""
    params = R.to_f32(R.make_params(seed))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, **extra)
        return gradtx.apply_updates(params, updates), state

    for g in R.make_grads(steps, seed + 1):
        params, state = step(params, state, R.to_f32(g))
    return params, state


def assert_trees_close(a, b, rtol=0.0):
    if rtol == 0.0:
        chex.assert_trees_all_equal(a, b)
    else:
        chex.assert_trees_all_close(a, b, rtol=rtol, atol=rtol * 1e-2)


SCHEDULE = gradtx.warmup_cosine_decay_schedule(0.0, 0.05, 5, 30)

OPTIMIZERS = {
    "sgd": (gradtx.sgd, {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    "rmsprop": (
        gradtx.rmsprop,
        {"learning_rate": 0.01, "decay": 0.95, "centered": True},
    ),
    "adagrad": (
        gradtx.adagrad,
        {"learning_rate": 0.1, "initial_accumulator_value": 0.1},
    ),
    "adadelta": (gradtx.adadelta, {"learning_rate": 1.0, "rho": 0.95}),
    "adam": (gradtx.adam, {"learning_rate": SCHEDULE, "b1": 0.8, "eps": 1e-6}),
    "adam_l2": (gradtx.adam_l2, {"learning_rate": 0.01, "weight_decay": 0.1}),
    "adamw": (
        gradtx.adamw,
        {"learning_rate": SCHEDULE, "weight_decay": 0.1, "b2": 0.99},
    ),
    "clip_by_global_norm": (gradtx.clip_by_global_norm, {"max_norm": 1.5}),
    "scale_by_momentum": (gradtx.scale_by_momentum, {"decay": 0.5, "dampening": 0.5}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_injected_optimizer_gives_the_same_updates(name):
    factory, kwargs = OPTIMIZERS[name]
    # Injected constants are float32 arrays, so 1 - b1 and friends are
    # computed in float32 rather than from the double-precision constant:
    # agreement to a few ulps, not bits.
    want, _ = run(factory(**kwargs))
    got, state = run(inject(factory)(**kwargs))
    assert_trees_close(got, want, rtol=1e-6)
    assert isinstance(state, gradtx.InjectHyperparamsState)


def test_only_a_schedule_injected_is_bit_identical():
    want, _ = run(gradtx.adam(SCHEDULE))
    got, _ = run(inject(gradtx.adam)(learning_rate=SCHEDULE))
    assert_trees_close(got, want)


def test_state_records_the_values_of_the_latest_step():
    opt = inject(gradtx.adamw)(learning_rate=SCHEDULE, weight_decay=1e-3, b1=0.9)
    state = opt.init(jnp.zeros(2))
    assert sorted(state.hyperparams) == ["b1", "learning_rate", "weight_decay"]
    assert float(state.hyperparams["learning_rate"]) == 0.0  # what step 0 will use
    update = jax.jit(opt.update)
    for t in range(8):
        _, state = update(jnp.ones(2), state, jnp.zeros(2))
        np.testing.assert_allclose(
            state.hyperparams["learning_rate"], SCHEDULE(t), rtol=1e-7
        )
    assert int(state.count) == 8
    np.testing.assert_allclose(state.hyperparams["weight_decay"], 1e-3, rtol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_injected_values_live_in_float32_whatever_the_params(dtype):
    opt = inject(gradtx.adamw)(learning_rate=1e-3, weight_decay=1e-4, b2=0.999)
    params = jnp.ones(3, dtype)
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(jnp.ones(3, dtype), state, params)
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
    assert float(state.hyperparams["b2"]) == np.float32(0.999)  # not rounded to 1.0
    assert updates.dtype == dtype


def test_hyperparam_dtype_can_be_named():
    with jax.enable_x64(True):
        opt = inject(gradtx.sgd, hyperparam_dtype=jnp.float64)(learning_rate=0.1)
        state = opt.init(jnp.ones(2))
        assert state.hyperparams["learning_rate"].dtype == jnp.float64


def test_changing_a_value_in_the_state_takes_effect_without_recompiling():
    opt = inject(gradtx.sgd)(learning_rate=0.1, momentum=0.0)
    params = jnp.zeros(2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jnp.ones(2), state, params)
        return gradtx.apply_updates(params, updates), state

    params, state = step(params, state)
    np.testing.assert_allclose(params, -0.1)
    hyperparams = dict(state.hyperparams, learning_rate=jnp.asarray(0.5, jnp.float32))
    state = state._replace(hyperparams=hyperparams)
    params, state = step(params, state)
    np.testing.assert_allclose(params, -0.6, rtol=1e-6)
    assert float(state.hyperparams["learning_rate"]) == 0.5
    assert step._cache_size() == 1


def test_a_callable_mask_is_not_mistaken_for_a_schedule():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}

    def mask(p):
        return {"w": True, "b": False}

    opt = inject(gradtx.adamw)(learning_rate=0.1, weight_decay=0.5, mask=mask)
    state = opt.init(params)
    assert sorted(state.hyperparams) == ["learning_rate", "weight_decay"]
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.update)(zeros, state, params)
    np.testing.assert_allclose(updates["w"], -0.05)  # decayed: -lr * wd * p
    np.testing.assert_array_equal(updates["b"], 0.0)  # not selected by the mask


def test_booleans_dtypes_and_static_args_pass_through():
    opt = inject(gradtx.adam, static_args="eps")(
        learning_rate=0.1, nesterov=True, mu_dtype=jnp.bfloat16, eps=1e-3
    )
    state = opt.init(jnp.ones(2))
    assert sorted(state.hyperparams) == ["learning_rate"]
    assert state.inner_state[0].mu.dtype == jnp.bfloat16
    with pytest.raises(
        ValueError, match=r"inject_hyperparams\(adam\): static_args names unknown"
    ):
        inject(gradtx.adam, static_args=("epsilon",))


def test_integers_are_injected_only_where_numbers_are_declared():
    opt = inject(gradtx.sgd)(learning_rate=1)  # annotated ScalarOrSchedule
    assert opt.init(jnp.ones(1)).hyperparams["learning_rate"].dtype == jnp.float32

    def factory(every, learning_rate=0.1):
        assert isinstance(every, int)
        return gradtx.sgd(learning_rate)

    state = inject(factory)(every=3, learning_rate=0.2).init(jnp.ones(1))
    assert sorted(state.hyperparams) == ["learning_rate"]


def test_positional_arguments_are_accepted():
    opt = inject(gradtx.adam)(0.01, 0.5, eps=1e-6)
    assert sorted(opt.init(jnp.ones(1)).hyperparams) == ["b1", "eps", "learning_rate"]


def test_any_factory_of_pairs_can_be_injected():
    opt = inject(optax.adam)(learning_rate=SCHEDULE, b1=0.8)
    got, _ = run(opt)
    want, _ = run(optax.adam(SCHEDULE, b1=0.8))
    assert_trees_close(got, want, rtol=1e-6)
    clip = inject(gradtx.clip_by_global_norm)(
        max_norm=gradtx.linear_schedule(1.0, 0.1, 5)
    )
    state = clip.init(jnp.ones(2))
    for _ in range(6):
        u, state = clip.update(jnp.array([3.0, 4.0]), state)
    np.testing.assert_allclose(gradtx.global_norm(u), 0.1, rtol=1e-6)


def test_describe_shows_the_injected_factory():
    opt = inject(gradtx.adamw)(learning_rate=gradtx.cosine_decay_schedule(0.1, 100))
    assert repr(opt) == (
        "inject_hyperparams(adamw)(learning_rate=cosine_decay_schedule("
        "init_value=0.1, decay_steps=100, alpha=0.0))"
    )


def test_gradient_with_respect_to_an_injected_learning_rate():
    x = jnp.linspace(-1.0, 1.0, 16)[:, None] * jnp.array([[1.0, 2.0, -1.0]])
    y = x @ jnp.array([[0.5], [-0.2], [0.3]])

    def loss(p):
        return jnp.mean((x @ p - y) ** 2)

    def final_loss(lr, steps=10):
        opt = inject(gradtx.adam, hyperparam_dtype=jnp.float64)(learning_rate=lr)
        p = jnp.zeros((3, 1))
        state = opt.init(p)
        for _ in range(steps):
            updates, state = opt.update(jax.grad(loss)(p), state, p)
            p = gradtx.apply_updates(p, updates)
        return loss(p)

    with jax.enable_x64(True):
        x, y = x.astype(jnp.float64), y.astype(jnp.float64)
        g = jax.grad(final_loss)(jnp.float64(0.01))
        h = 1e-6
        fd = (final_loss(0.01 + h) - final_loss(0.01 - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_gradient_through_the_stored_hyperparameters():
    opt = inject(gradtx.sgd)(learning_rate=0.1)
    params = jnp.array([1.0, -2.0])
    state = opt.init(params)

    def after(lr):
        s = state._replace(hyperparams={"learning_rate": lr})
        updates, _ = opt.update(params, s, params)  # grads of 0.5 * ||p||^2
        return jnp.sum(gradtx.apply_updates(params, updates) ** 2)

    # d/dlr sum((p - lr p)^2) = -2 (1 - lr) ||p||^2
    np.testing.assert_allclose(
        jax.grad(after)(jnp.float32(0.1)), -2 * 0.9 * 5.0, rtol=1e-6
    )


def test_vmap_over_injected_hyperparameters():
    lrs = jnp.array([0.01, 0.05, 0.1])
    opt = inject(gradtx.adamw)(learning_rate=0.0, weight_decay=1e-2)
    params = R.to_f32(R.make_params(0))
    grads = [R.to_f32(g) for g in R.make_grads(10, 1)]

    def trajectory(lr):
        state = opt.init(params)
        state = state._replace(hyperparams=dict(state.hyperparams, learning_rate=lr))
        p = params
        for g in grads:
            updates, state = opt.update(g, state, p)
            p = gradtx.apply_updates(p, updates)
        return p

    batched = jax.jit(jax.vmap(trajectory))(lrs)
    for i, lr in enumerate(lrs):
        alone, _ = run(gradtx.adamw(float(lr), weight_decay=1e-2), steps=10)
        for got, want in zip(
            jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# reduce_on_plateau


LOSSES = [
    5.0,
    4.0,
    4.0,
    3.9999,
    4.1,
    3.0,
    3.0,
    3.01,
    2.99,
    3.2,
    3.3,
    3.4,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    0.9,
    0.95,
    0.97,
    0.98,
    0.99,
    1.5,
    1.6,
    1.7,
    1.8,
    1.9,
    2.0,
]


def gradtx_scales(tx, losses):
    state = tx.init(jnp.zeros(1))
    update = jax.jit(tx.update)
    scales = []
    for loss in losses:
        u, state = update(jnp.ones(1), state, loss=jnp.float32(loss))
        scales.append(float(u[0]))
    return np.array(scales)


def torch_scales(losses, **kwargs):
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **kwargs)
    scales = []
    for loss in losses:
        scheduler.step(loss)
        scales.append(opt.param_groups[0]["lr"])
    return np.array(scales)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ({"factor": 0.5, "patience": 1}, {"factor": 0.5, "patience": 1}),
        (
            {"factor": 0.1, "patience": 2, "cooldown": 2},
            {"factor": 0.1, "patience": 2, "cooldown": 2},
        ),
        (
            {"factor": 0.5, "patience": 0, "min_scale": 0.1},
            {"factor": 0.5, "patience": 0, "min_lr": 0.1},
        ),
        (
            {"factor": 0.5, "patience": 1, "rtol": 0.05},
            {"factor": 0.5, "patience": 1, "threshold": 0.05},
        ),
        (
            {"factor": 0.5, "patience": 1, "rtol": 0.0, "atol": 0.2},
            {"factor": 0.5, "patience": 1, "threshold": 0.2, "threshold_mode": "abs"},
        ),
    ],
)
def test_reduce_on_plateau_counts_like_torch(ours, theirs):
    got = gradtx_scales(gradtx.reduce_on_plateau(**ours), LOSSES)
    want = torch_scales(LOSSES, **theirs)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.min() < 1.0  # the script does trigger reductions


def test_reduce_on_plateau_averages_over_accumulation_size():
    tx = gradtx.reduce_on_plateau(factor=0.5, patience=0, accumulation_size=2)
    pairs = [(2.0, 4.0), (3.0, 3.5), (1.0, 1.0), (3.0, 3.0)]  # means 3, 3.25, 1, 3
    losses = [x for pair in pairs for x in pair]
    scales = gradtx_scales(tx, losses)
    want = torch_scales([np.mean(p) for p in pairs], factor=0.5, patience=0)
    np.testing.assert_allclose(scales[1::2], want)
    np.testing.assert_allclose(scales[0::2], np.concatenate([[1.0], want[:-1]]))


def test_reduce_on_plateau_in_a_jitted_training_step():
    tx = gradtx.chain(
        gradtx.adam(0.1), gradtx.reduce_on_plateau(factor=0.5, patience=0)
    )
    params = jnp.ones(2)
    state = tx.init(params)

    @jax.jit
    def step(params, state, loss):
        updates, state = tx.update(jnp.ones(2), state, params, loss=loss)
        return updates, state

    updates, state = step(params, state, 1.0)
    np.testing.assert_allclose(updates, -0.1, rtol=1e-5)
    updates, state = step(params, state, 2.0)  # worse: halve
    np.testing.assert_allclose(updates, -0.05, rtol=1e-5)
    np.testing.assert_allclose(gradtx.latest_learning_rate(tx, state), 0.05)


def test_reduce_on_plateau_needs_a_loss():
    tx = gradtx.reduce_on_plateau()
    with pytest.raises(ValueError, match="reduce_on_plateau reads the loss"):
        tx.update(jnp.ones(1), tx.init(jnp.ones(1)))


@pytest.mark.parametrize("factor", [0.0, 1.0, 1.5, -0.5])
def test_reduce_on_plateau_factor_must_be_in_the_open_unit_interval(factor):
    with pytest.raises(
        ValueError, match=r"reduce_on_plateau: factor must be in \(0, 1\)"
    ):
        gradtx.reduce_on_plateau(factor=factor)


# ----------------------------------------------------------------------------
# latest_learning_rate


def test_latest_learning_rate_reads_every_kind_of_chain():
    sched = gradtx.exponential_decay(0.1, 1, 0.5)
    for tx in [gradtx.adamw(sched), inject(gradtx.adamw)(learning_rate=sched)]:
        state = tx.init(jnp.ones(2))
        assert float(gradtx.latest_learning_rate(tx, state)) == np.float32(0.1)
        for _ in range(3):
            _, state = tx.update(jnp.ones(2), state, jnp.ones(2))
        np.testing.assert_allclose(
            gradtx.latest_learning_rate(tx, state), 0.025, rtol=1e-6
        )
    constant = gradtx.sgd(0.3)
    assert float(
        gradtx.latest_learning_rate(constant, constant.init(1.0))
    ) == np.float32(0.3)


def test_latest_learning_rate_without_one_raises():
    tx = gradtx.scale_by_adam()
    with pytest.raises(ValueError, match="latest_learning_rate: found no"):
        gradtx.latest_learning_rate(tx, tx.init(jnp.ones(1)))


def test_set_hyperparams_reaches_nested_injections_without_recompiling():
    tx = gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        inject(gradtx.sgd)(learning_rate=0.1, momentum=0.0),
    )
    params = jnp.zeros(2)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jnp.full(2, 0.5), state, params)
        return gradtx.apply_updates(params, updates), state

    state = tx.init(params)
    params, state = step(params, state)
    state = gradtx.set_hyperparams(state, learning_rate=1.0)
    params, state = step(params, state)
    np.testing.assert_allclose(params, -0.05 - 0.5, rtol=1e-6)
    assert step._cache_size() == 1
    with pytest.raises(ValueError, match=r"set_hyperparams: \['b1'\] not injected"):
        gradtx.set_hyperparams(state, b1=0.5)


def test_set_hyperparams_keeps_a_batch_of_values_batched():
    opt = inject(gradtx.adam)(learning_rate=0.1)
    state = jax.vmap(opt.init)(jnp.zeros((3, 2)))
    state = gradtx.set_hyperparams(state, learning_rate=jnp.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(state.hyperparams["learning_rate"], [0.1, 0.2, 0.3])
    state = gradtx.set_hyperparams(state, learning_rate=0.5)
    assert state.hyperparams["learning_rate"].shape == (3,)


def test_a_dtype_forwarded_through_kwargs_is_not_a_schedule():
    opt = inject(gradtx.adamw)(learning_rate=0.1, mu_dtype=jnp.bfloat16)
    state = opt.init({"w": jnp.zeros(2)})
    assert sorted(state.hyperparams) == ["learning_rate"]
    assert state.inner_state[0].mu["w"].dtype == jnp.bfloat16


# Concrete hyperparameters are checked by the factory's own checks, at
# construction and in set_hyperparams; only traced values go unchecked.
INJECT_REFUSED = [
    ({"learning_rate": -1e-3}, ValueError, "learning_rate must be in"),
    ({"learning_rate": 1e-3, "weight_decay": -0.5}, ValueError, "weight_decay"),
    ({"learning_rate": 1e-3, "b1": 1.0}, ValueError, r"b1 must be in \[0, 1\)"),
    ({"learning_rate": 1e-3, "b1": 1.5}, ValueError, "b1 must be in"),
    ({"learning_rate": 1e-3, "eps": -1.0}, ValueError, "eps must be in"),
    ({"learning_rate": 1e-3, "b2": 1 - 1e-9}, ValueError, "b2"),  # 1.0 in float32
    ({"learning_rate": np.nan}, ValueError, "learning_rate"),
    ({"learning_rate": np.inf}, ValueError, "learning_rate"),
    ({"learning_rate": True}, TypeError, "learning_rate"),
    ({"learning_rate": 1e-3 + 1j}, TypeError, "learning_rate"),
    ({"learning_rate": jnp.array(-1.0)}, ValueError, "learning_rate"),
    ({"learning_rate": lambda t: -1e-3 + 0.0 * t}, ValueError, "learning_rate"),
]


@pytest.mark.parametrize("kwargs, error, match", INJECT_REFUSED)
def test_injected_values_are_checked_as_the_factory_checks_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        gradtx.inject_hyperparams(gradtx.adamw)(**kwargs)


@pytest.mark.parametrize(
    "value, error",
    [(np.nan, ValueError), (np.inf, ValueError), (True, TypeError), ("0.1", TypeError)],
)
def test_set_hyperparams_refuses_what_no_hyperparameter_can_be(value, error):
    tx = gradtx.inject_hyperparams(gradtx.adamw)(learning_rate=1e-3)
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(error, match="learning_rate"):
        gradtx.set_hyperparams(state, learning_rate=value)


def test_set_hyperparams_with_the_optimizer_checks_its_ranges():
    tx = gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.inject_hyperparams(gradtx.adamw)(learning_rate=1e-3, b1=0.9),
    )
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="learning_rate must be in"):
        gradtx.set_hyperparams(state, tx, learning_rate=-1.0)
    with pytest.raises(ValueError, match="b1 must be in"):
        gradtx.set_hyperparams(state, tx, b1=1.0)
    new = gradtx.set_hyperparams(state, tx, learning_rate=5e-4)
    assert float(new[1].hyperparams["learning_rate"]) == np.float32(5e-4)


def test_traced_values_are_not_checked_at_construction():
    @jax.jit
    def first_update(lr):
        tx = gradtx.inject_hyperparams(gradtx.sgd)(learning_rate=lr)
        return tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))[0]

    np.testing.assert_allclose(first_update(-1.0), [1.0, 1.0])


def test_the_state_holds_copies_of_the_callers_arrays():
    # The same array given twice must not be donated twice, and the caller's
    # array must survive a donated step (it used to become an invalid buffer).
    rate = jnp.asarray(1e-3, jnp.float32)
    tx = gradtx.inject_hyperparams(gradtx.adamw)(learning_rate=rate, weight_decay=rate)
    params = {"w": jnp.ones(3)}

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params, state = step(params, tx.init(params), {"w": jnp.ones(3)})
    params, state = step(params, state, {"w": jnp.ones(3)})
    assert float(rate) == np.float32(1e-3)  # still readable
    tx.init({"w": jnp.ones(3)})  # and usable again
    new = gradtx.set_hyperparams(state, learning_rate=rate)
    params, state = step(params, new, {"w": jnp.ones(3)})
    assert float(rate) == np.float32(1e-3)


def test_optax_can_inject_a_gradtx_optimizer():
    tx = optax.inject_hyperparams(gradtx.adamw)(learning_rate=1e-2, weight_decay=1e-2)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.ones(2)}, state, params)
    want, _ = gradtx.adamw(1e-2, weight_decay=1e-2).update(
        {"w": jnp.ones(2)}, gradtx.adamw(1e-2, weight_decay=1e-2).init(params), params
    )
    np.testing.assert_allclose(updates["w"], want["w"], rtol=1e-6)
    assert set(state.hyperparams) >= {"learning_rate", "weight_decay", "b1", "b2"}
