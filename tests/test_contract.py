"""The contract every public transformation keeps, checked on all of them.

`CONTRACT` maps each public factory to a way of building it. A new public
transformation is added here in the same commit as the transformation;
`test_every_public_name_is_covered` fails until it is.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

LR = 0.05


# name -> (factory, kwargs, descends): `descends` is True for optimizers; for
# transformations that do not flip the sign themselves it is the learning
# rate the contract chains them with (None: never moves, no quadratic check).
def _with_objective(tx):
    """`tx` with the contract's loss passed as value_fn= at every update.

    The line search of L-BFGS evaluates the objective along the direction;
    the contract's steps give only gradients. Keyword arguments of the
    factories stay floats, so that inject_hyperparams can hold them.
    """

    def update(updates, state, params=None, **extra):
        return tx.update(updates, state, params, value_fn=loss, **extra)

    return gradtx.GradientTransformation(tx.init, update)


CONTRACT = {
    "identity": (gradtx.identity, {}, LR),
    "set_to_zero": (gradtx.set_to_zero, {}, None),
    "scale": (gradtx.scale, {"factor": 0.5}, LR),
    "scale_by_learning_rate": (
        gradtx.scale_by_learning_rate,
        {"learning_rate": LR},
        True,
    ),
    "scale_by_schedule": (
        gradtx.scale_by_schedule,
        {"schedule": gradtx.exponential_decay(1.0, 10, 0.5)},
        LR,
    ),
    "scale_by_momentum": (
        gradtx.scale_by_momentum,
        {"decay": 0.9, "nesterov": True},
        LR,
    ),
    "scale_by_rms": (gradtx.scale_by_rms, {"centered": True}, LR),
    "scale_by_adagrad": (gradtx.scale_by_adagrad, {}, LR),
    "scale_by_adadelta": (gradtx.scale_by_adadelta, {"eps": 1e-3}, 1.0),
    "scale_by_adam": (gradtx.scale_by_adam, {"b2": 0.99}, LR),
    "add_decayed_weights": (gradtx.add_decayed_weights, {"weight_decay": 1e-2}, LR),
    "add_l1_penalty": (gradtx.add_l1_penalty, {"strength": 1e-3}, LR),
    "clip": (gradtx.clip, {"max_delta": 1.0}, LR),
    "clip_by_global_norm": (gradtx.clip_by_global_norm, {"max_norm": 1.0}, LR),
    "chain": (
        lambda: gradtx.chain(gradtx.clip(1.0), gradtx.scale_by_adam()),
        {},
        LR,
    ),
    "reduce_on_plateau": (gradtx.reduce_on_plateau, {"factor": 0.5, "patience": 2}, LR),
    "masked": (
        gradtx.masked,
        {"inner": gradtx.scale_by_adam(), "mask": {"w": True, "b": False, "s": True}},
        LR,
    ),
    "multi_transform": (
        gradtx.multi_transform,
        {
            "transforms": {
                "adam": gradtx.adam(LR),
                "sgd": gradtx.sgd(LR, momentum=0.9),
            },
            "labels": {"w": "adam", "b": "sgd", "s": "sgd"},
        },
        True,
    ),
    "freeze": (gradtx.freeze, {"mask": {"w": False, "b": True, "s": False}}, LR),
    "apply_if_finite": (
        gradtx.apply_if_finite,
        {"inner": gradtx.adam(LR), "max_consecutive_errors": 3},
        True,
    ),
    "accumulate_gradients": (
        gradtx.accumulate_gradients,
        {"inner": gradtx.adam(LR), "every_k": 2},
        True,
    ),
    "sgd": (gradtx.sgd, {"learning_rate": LR, "momentum": 0.9}, True),
    "rmsprop": (gradtx.rmsprop, {"learning_rate": LR, "momentum": 0.5}, True),
    "adagrad": (gradtx.adagrad, {"learning_rate": 0.5}, True),
    "adadelta": (gradtx.adadelta, {"learning_rate": 1.0, "eps": 1e-3}, True),
    "adam": (
        gradtx.adam,
        {
            "learning_rate": gradtx.cosine_decay_schedule(LR, 100),
            "mu_dtype": jnp.float32,
        },
        True,
    ),
    "adam_l2": (gradtx.adam_l2, {"learning_rate": LR, "weight_decay": 1e-2}, True),
    "adamw": (gradtx.adamw, {"learning_rate": LR, "weight_decay": 1e-2}, True),
    "adamw_multiplier": (
        gradtx.adamw_multiplier,
        {"learning_rate": LR, "weight_decay": 1e-3, "schedule": 0.5},
        True,
    ),
    "adamw_independent": (
        gradtx.adamw_independent,
        {"learning_rate": LR, "weight_decay": 1e-3},
        True,
    ),
    "sgd_l2": (gradtx.sgd_l2, {"learning_rate": LR, "momentum": 0.9}, True),
    "sgdw": (gradtx.sgdw, {"learning_rate": LR, "momentum": 0.9}, True),
    "scale_by_amsgrad": (gradtx.scale_by_amsgrad, {"b2": 0.99}, LR),
    "scale_by_adamax": (gradtx.scale_by_adamax, {}, LR),
    "scale_by_radam": (gradtx.scale_by_radam, {"b2": 0.99}, LR),
    "scale_by_nadam": (gradtx.scale_by_nadam, {"b2": 0.99}, LR),
    "scale_by_belief": (gradtx.scale_by_belief, {"nesterov": True}, LR),
    "scale_by_yogi": (gradtx.scale_by_yogi, {"b2": 0.99}, LR),
    "scale_by_adopt": (gradtx.scale_by_adopt, {"b2": 0.999}, LR),
    "scale_by_ademamix": (gradtx.scale_by_ademamix, {"b3": 0.999, "alpha": 2.0}, LR),
    "scale_by_sign": (gradtx.scale_by_sign, {}, LR),
    "scale_by_lion": (gradtx.scale_by_lion, {"b1": 0.9, "b2": 0.99}, LR),
    "scale_by_rprop": (gradtx.scale_by_rprop, {"learning_rate": 0.01}, 1.0),
    "scale_by_trust_ratio": (
        gradtx.scale_by_trust_ratio,
        {"trust_coefficient": 0.5},
        LR,
    ),
    "scale_by_novograd": (gradtx.scale_by_novograd, {"b2": 0.5}, LR),
    "scale_by_factored_rms": (
        gradtx.scale_by_factored_rms,
        {"min_dim_size_to_factor": 2},
        LR,
    ),
    "scale_by_param_block_rms": (
        gradtx.scale_by_param_block_rms,
        {"min_scale": 1e-3},
        LR,
    ),
    "clip_by_block_rms": (gradtx.clip_by_block_rms, {"threshold": 1.0}, LR),
    "adaptive_grad_clip": (gradtx.adaptive_grad_clip, {"clipping": 0.1}, LR),
    "proximal_l1": (
        # ISTA: the proximal step sits after the learning rate it thresholds by
        lambda **kw: gradtx.chain(
            gradtx.scale_by_learning_rate(kw["learning_rate"]), gradtx.proximal_l1(**kw)
        ),
        {"strength": 1e-2, "learning_rate": LR},
        True,
    ),
    "amsgrad": (
        gradtx.amsgrad,
        {"learning_rate": LR, "max_before_correction": True},
        True,
    ),
    "adamax": (gradtx.adamax, {"learning_rate": LR}, True),
    "adamaxw": (gradtx.adamaxw, {"learning_rate": LR, "weight_decay": 1e-2}, True),
    "radam": (gradtx.radam, {"learning_rate": LR, "eps_before_correction": True}, True),
    "nadam": (gradtx.nadam, {"learning_rate": LR, "momentum_decay": 4e-3}, True),
    "nadamw": (gradtx.nadamw, {"learning_rate": LR, "weight_decay": 1e-2}, True),
    "adabelief": (gradtx.adabelief, {"learning_rate": LR}, True),
    "yogi": (gradtx.yogi, {"learning_rate": LR}, True),
    "adopt": (gradtx.adopt, {"learning_rate": LR, "nesterov": True}, True),
    "ademamix": (
        gradtx.ademamix,
        {
            "learning_rate": LR,
            "b3": gradtx.linear_schedule(0.9, 0.999, 50),
            "weight_decay": 1e-2,
        },
        True,
    ),
    "sign_sgd": (gradtx.sign_sgd, {"learning_rate": LR}, True),
    "signum": (gradtx.signum, {"learning_rate": LR, "beta": 0.9}, True),
    "lion": (gradtx.lion, {"learning_rate": LR, "weight_decay": 1e-2}, True),
    "rprop": (gradtx.rprop, {"learning_rate": 0.01}, True),
    "lamb": (gradtx.lamb, {"learning_rate": 0.02, "weight_decay": 1e-3}, True),
    "lars": (
        gradtx.lars,
        {"learning_rate": 1.0, "weight_decay": 1e-4, "trust_coefficient": 0.02},
        True,
    ),
    "novograd": (
        gradtx.novograd,
        {"learning_rate": 0.05, "weight_decay": 1e-3},
        True,
    ),
    "adafactor": (
        gradtx.adafactor,
        {
            "learning_rate": LR,
            "min_dim_size_to_factor": 2,
            "momentum": 0.9,
            "weight_decay_rate": 1e-4,
        },
        True,
    ),
    # iterate averaging, slow weights and schedule-free (gradtx/averaging.py)
    "ema_params": (gradtx.ema_params, {"inner": gradtx.adam(LR), "decay": 0.9}, True),
    "swa_params": (
        gradtx.swa_params,
        {"inner": gradtx.sgd(LR, momentum=0.9), "every_k": 2},
        True,
    ),
    "lookahead": (
        gradtx.lookahead,
        {"inner": gradtx.adam(LR), "sync_period": 5, "slow_step_size": 0.5},
        True,
    ),
    "schedule_free": (
        gradtx.schedule_free,
        {"base_optimizer": gradtx.sgd(LR), "learning_rate": LR},
        True,
    ),
    "schedule_free_adamw": (
        gradtx.schedule_free_adamw,
        {"learning_rate": 0.05, "warmup_steps": 5, "weight_decay": 1e-3},
        True,
    ),
    "schedule_free_sgd": (
        gradtx.schedule_free_sgd,
        {"learning_rate": 0.1, "weight_decay": 1e-3},
        True,
    ),
    # Muon (gradtx/orthogonal.py)
    "muon": (gradtx.muon, {"learning_rate": 0.05}, True),
    "orthogonalize": (gradtx.orthogonalize, {}, 0.05),
    "scale_by_shape": (gradtx.scale_by_shape, {}, 0.05),
    "scale_by_muon_momentum": (gradtx.scale_by_muon_momentum, {"beta": 0.9}, 0.05),
    # Prodigy (gradtx/self_tuning.py) and SAM (gradtx/sharpness.py); the
    # contract's step passes no gradient function, which SAM needs only when
    # it takes its ascent step (sync_period >= 2): test_sam.py covers that.
    "scale_by_prodigy": (gradtx.scale_by_prodigy, {}, 1.0),
    "prodigy": (gradtx.prodigy, {"weight_decay": 1e-3}, True),
    "sam": (gradtx.sam, {"optimizer": gradtx.sgd(LR), "sync_period": 1}, True),
    # L-BFGS (gradtx/quasi_newton.py): the line search calls the objective,
    # which the contract's steps hand it as value_fn= (see _with_objective)
    "scale_by_lbfgs": (gradtx.scale_by_lbfgs, {"memory_size": 5}, 0.05),
    "scale_by_zoom_linesearch": (
        lambda **kw: _with_objective(
            gradtx.chain(gradtx.scale(-1.0), gradtx.scale_by_zoom_linesearch(**kw))
        ),
        {"slope_rtol": 1e-3},
        True,
    ),
    "lbfgs": (lambda **kw: _with_objective(gradtx.lbfgs(**kw)), {}, True),
}

# Public names that are not transformation factories.
NOT_FACTORIES = {
    "GradientTransformation",
    "EmptyState",
    "apply_updates",
    "describe",
    "global_norm",
    "inject_hyperparams",  # wraps factories: checked on every entry below
    "latest_learning_rate",
    "set_hyperparams",
    "abstract_state",  # sharding and checkpoints: test_sharding, test_checkpoint
    "state_shardings",
    "save_state",
    "restore_state",
    "check_state",
    "masks",  # a module of mask helpers, tested in test_masks.py
    "fused_step",  # a step function, not a transformation: test_fused.py
    "FusedStep",
    "fused",
    # read a params tree out of a state: tested with their wrappers
    "averaged_params",
    "lookahead_slow_params",
    "schedule_free_eval_params",
    # Muon's axis rule as data and as helpers: tested in test_muon.py
    "MuonDimensionNumbers",
    "muon_dimension_numbers",
    "muon_mask",
}
SCHEDULES = {
    n for n in gradtx.__all__ if n.endswith("_schedule") or n.endswith("_decay")
}
SCHEDULES.add("join_schedules")


def build(name, wrap=None):
    factory, kwargs, descends = CONTRACT[name]
    tx = (wrap(factory) if wrap else factory)(**kwargs)
    if descends is not True and descends is not None:
        tx = gradtx.chain(tx, gradtx.scale_by_learning_rate(descends))
    return tx


def make_params(dtype=jnp.float32):
    return {
        "w": jnp.linspace(-1.0, 2.0, 12, dtype=jnp.float32).reshape(4, 3).astype(dtype),
        "b": jnp.array([0.5, -1.5, 1.0], dtype),
        "s": jnp.array(-2.0, dtype),
    }


def loss(params):
    return sum(
        (
            jnp.sum(jnp.square(x.astype(jnp.float32) - 0.25))
            for x in jax.tree.leaves(params)
        ),
        jnp.zeros([], jnp.float32),  # a float even for a tree with no leaves
    )


@functools.cache
def plain_step(name):
    """`make_step(build(name))`, built and compiled once for all the tests."""
    tx = build(name)
    return tx, make_step(tx)


def make_step(tx):
    def step(params, state):
        grads = jax.grad(loss)(params)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, state = tx.update(grads, state, params, loss=loss(params))
        return gradtx.apply_updates(params, updates), state

    return jax.jit(step)


def test_every_public_name_is_covered():
    names = set(gradtx.__all__)
    states = {n for n in names if n.endswith("State")}
    missing = names - set(CONTRACT) - NOT_FACTORIES - SCHEDULES - states
    assert not missing, f"add these to CONTRACT: {sorted(missing)}"
    for name in states:
        assert issubclass(getattr(gradtx, name), tuple), name


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_state_keeps_its_tree_and_the_step_compiles_once(name):
    tx, step = plain_step(name)
    params = make_params()
    state = tx.init(params)
    new_params, new_state = step(params, state)
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == spec
    new_params, new_state = step(new_params, new_state)
    assert step._cache_size() == 1  # the second call reuses the first compile
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(new_state))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_low_precision_params_stay_low_precision(name, dtype):
    tx = build(name)
    params = make_params(dtype)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    updates, new_state = jax.jit(tx.update)(grads, state, params, loss=1.0)
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(
        lambda p: p.dtype, params
    )
    new_params = gradtx.apply_updates(params, updates)
    assert all(p.dtype == dtype for p in jax.tree.leaves(new_params))
    # moments default to the params' dtype (mu_dtype overrides: see test_dtypes)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
        lambda x: x.dtype, state
    )
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize(
    "name", sorted(n for n in CONTRACT if CONTRACT[n][2] is not None)
)
def test_shrinks_a_quadratic(name):
    tx, step = plain_step(name)
    params = make_params()
    state = tx.init(params)
    start = float(loss(params))
    for _ in range(100):
        params, state = step(params, state)
    assert float(loss(params)) < 0.5 * start


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_vmap_runs_a_batch_of_independent_problems(name):
    tx = build(name)
    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x, -x]), make_params())

    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params, loss=value)
        return gradtx.apply_updates(params, updates), state

    state = jax.vmap(tx.init)(batch)
    params = batch
    for _ in range(3):
        params, state = jax.jit(jax.vmap(step))(params, state)
    for i in range(3):
        alone = jax.tree.map(lambda x, i=i: x[i], batch)
        alone_state = tx.init(alone)
        for _ in range(3):
            alone, alone_state = jax.jit(step)(alone, alone_state)
        for got, want in zip(
            jax.tree.leaves(params), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(n for n in CONTRACT if n != "chain"))
def test_same_updates_under_inject_hyperparams(name):
    tx, step = plain_step(name)
    injected = build(name, wrap=gradtx.inject_hyperparams)
    injected_step = make_step(injected)
    params, state = make_params(), tx.init(make_params())
    params_i, state_i = make_params(), injected.init(make_params())
    for _ in range(5):
        params, state = step(params, state)
        params_i, state_i = injected_step(params_i, state_i)
    # float32 arrays instead of Python constants: a few ulps, not bits
    chex.assert_trees_all_close(params, params_i, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(
    "fused_step" not in gradtx.__all__, reason="the fused annex is not installed"
)
# Without a C++ compiler the chains the kernel runs take the plain step and
# say so; the others take it silently.
@pytest.mark.filterwarnings("ignore:gradtx.fused_step:RuntimeWarning")
@pytest.mark.parametrize("name", sorted(n for n in CONTRACT if CONTRACT[n][2] is True))
def test_fused_step_takes_every_optimizer(name):
    # The fused step runs what its kernel knows and the plain step for the
    # rest: the same numbers either way, within its documented bound.
    tx, step = plain_step(name)
    fused = gradtx.fused_step(tx)

    @jax.jit
    def fused_step(params, state):
        grads = jax.grad(loss)(params)
        return fused(params, state, grads, loss=loss(params))

    params, state = make_params(), tx.init(make_params())
    fused_params, fused_state = params, state
    for _ in range(3):
        fused_params, fused_state = fused_step(fused_params, fused_state)
        params, state = step(params, state)
    chex.assert_trees_all_close(fused_params, params, rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(fused_state) == jax.tree.structure(state)
