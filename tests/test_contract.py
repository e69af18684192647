"""The contract every public transformation keeps, checked on all of them.

`CONTRACT` maps each public factory to a way of building it. A new public
transformation is added here in the same commit as the transformation;
`test_every_public_name_is_covered` fails until it is.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

LR = 0.05

# name -> (build, descends): `descends` is True for optimizers; for
# transformations that do not flip the sign themselves it is the learning
# rate the contract chains them with.
CONTRACT = {
    "identity": (gradtx.identity, LR),
    "set_to_zero": (gradtx.set_to_zero, None),  # never moves: no quadratic check
    "scale": (lambda: gradtx.scale(0.5), LR),
    "scale_by_learning_rate": (lambda: gradtx.scale_by_learning_rate(LR), True),
    "scale_by_schedule": (lambda: gradtx.scale_by_schedule(lambda t: 0.9**t), LR),
    "scale_by_momentum": (lambda: gradtx.scale_by_momentum(0.9, nesterov=True), LR),
    "scale_by_rms": (lambda: gradtx.scale_by_rms(centered=True), LR),
    "scale_by_adagrad": (gradtx.scale_by_adagrad, LR),
    "scale_by_adadelta": (lambda: gradtx.scale_by_adadelta(eps=1e-3), 1.0),
    "scale_by_adam": (gradtx.scale_by_adam, LR),
    "add_decayed_weights": (lambda: gradtx.add_decayed_weights(1e-2), LR),
    "add_l1_penalty": (lambda: gradtx.add_l1_penalty(1e-3), LR),
    "clip": (lambda: gradtx.clip(1.0), LR),
    "clip_by_global_norm": (lambda: gradtx.clip_by_global_norm(1.0), LR),
    "chain": (lambda: gradtx.chain(gradtx.clip(1.0), gradtx.scale_by_adam()), LR),
    "sgd": (lambda: gradtx.sgd(LR, momentum=0.9), True),
    "rmsprop": (lambda: gradtx.rmsprop(LR, momentum=0.5), True),
    "adagrad": (lambda: gradtx.adagrad(0.5), True),
    "adadelta": (lambda: gradtx.adadelta(1.0, eps=1e-3), True),
    "adam": (lambda: gradtx.adam(LR, mu_dtype=jnp.float32), True),
    "adam_l2": (lambda: gradtx.adam_l2(LR, weight_decay=1e-2), True),
    "adamw": (lambda: gradtx.adamw(LR, weight_decay=1e-2), True),
}

# Public names that are not transformation factories.
NOT_FACTORIES = {
    "GradientTransformation",
    "EmptyState",
    "apply_updates",
    "describe",
    "global_norm",
}


def build(name):
    make, descends = CONTRACT[name]
    tx = make()
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
        jnp.sum(jnp.square(x.astype(jnp.float32) - 0.25))
        for x in jax.tree.leaves(params)
    )


def make_step(tx):
    def step(params, state):
        grads = jax.grad(loss)(params)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    return jax.jit(step)


def test_every_public_name_is_covered():
    names = set(gradtx.__all__)
    states = {n for n in names if n.endswith("State")}
    missing = names - set(CONTRACT) - NOT_FACTORIES - states
    assert not missing, f"add these to CONTRACT: {sorted(missing)}"
    for name in states:
        assert issubclass(getattr(gradtx, name), tuple), name


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_state_keeps_its_tree_and_the_step_compiles_once(name):
    tx = build(name)
    params = make_params()
    state = tx.init(params)
    step = make_step(tx)
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
    updates, new_state = jax.jit(tx.update)(grads, state, params)
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
    "name", sorted(n for n in CONTRACT if CONTRACT[n][1] is not None)
)
def test_shrinks_a_quadratic(name):
    tx = build(name)
    params = make_params()
    state = tx.init(params)
    step = make_step(tx)
    start = float(loss(params))
    for _ in range(100):
        params, state = step(params, state)
    assert float(loss(params)) < 0.5 * start


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_vmap_runs_a_batch_of_independent_problems(name):
    tx = build(name)
    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x, -x]), make_params())

    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
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
