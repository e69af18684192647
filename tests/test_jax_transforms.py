"""gradtx under jax.jit, jax.lax.scan and jax.grad (vmap: test_contract.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx


def loss(params, x, y):
    pred = x @ params["w"] + params["b"][None, :]
    return jnp.mean((pred - y) ** 2)


def data(seed=0, n=32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def init_params():
    return {"w": jnp.zeros((3, 1)), "b": jnp.zeros((1,))}


OPTIMIZERS = {
    "sgd": lambda lr: gradtx.sgd(lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda lr: gradtx.rmsprop(lr, centered=True),
    "adagrad": lambda lr: gradtx.adagrad(lr),
    "adadelta": lambda lr: gradtx.adadelta(lr),
    "adam": lambda lr: gradtx.adam(lr),
    "adam_l2": lambda lr: gradtx.adam_l2(lr, weight_decay=1e-3),
    "adamw": lambda lr: gradtx.adamw(lr, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_scan_runs_a_whole_training_loop_and_agrees_with_python_steps(name):
    tx = OPTIMIZERS[name](0.05)
    x, y = data()

    def step(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), value

    params = init_params()
    (scanned, _), losses = jax.jit(
        lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=60)
    )(params)
    assert losses.shape == (60,) and float(losses[-1]) < float(losses[0])

    carry = (params, tx.init(params))
    jitted = jax.jit(step)
    eager_losses = []
    for _ in range(60):
        carry, value = jitted(carry, None)
        eager_losses.append(float(value))
    for got, want in zip(
        jax.tree.leaves(scanned), jax.tree.leaves(carry[0]), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_jit_and_eager_agree(name):
    tx = OPTIMIZERS[name](0.05)
    x, y = data()
    params = init_params()
    state = tx.init(params)
    grads = jax.grad(loss)(params, x, y)
    eager = tx.update(grads, state, params)
    jitted = jax.jit(tx.update)(grads, state, params)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)


def test_gradient_with_respect_to_the_learning_rate_of_sgd_is_analytic():
    # After one step p1 = p0 - lr * g0, so d loss(p1) / d lr = -g0 . grad(p1).
    x, y = data()
    p0 = {"w": jnp.array([[0.1], [0.2], [-0.3]]), "b": jnp.array([0.05])}

    def after_one_step(lr):
        tx = gradtx.sgd(lr)
        g = jax.grad(loss)(p0, x, y)
        updates, _ = tx.update(g, tx.init(p0), p0)
        return loss(gradtx.apply_updates(p0, updates), x, y)

    lr = 0.1
    got = jax.grad(after_one_step)(lr)
    g0 = jax.grad(loss)(p0, x, y)
    p1 = jax.tree.map(lambda p, g: p - lr * g, p0, g0)
    g1 = jax.grad(loss)(p1, x, y)
    want = -sum(
        jnp.sum(a * b)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd"])
def test_gradient_through_unrolled_steps_matches_finite_differences(name):
    x, y = data()

    def final_loss(lr):
        tx = OPTIMIZERS[name](lr)
        params = jax.tree.map(lambda p: p + 0.1, init_params())
        state = tx.init(params)
        for _ in range(5):
            grads = jax.grad(loss)(params, x, y)
            updates, state = tx.update(grads, state, params)
            params = gradtx.apply_updates(params, updates)
        return loss(params, x, y)

    with jax.enable_x64(True):
        x, y = x.astype(jnp.float64), y.astype(jnp.float64)
        lr, h = 0.03, 1e-6
        got = jax.grad(final_loss)(jnp.float64(lr))
        want = (final_loss(lr + h) - final_loss(lr - h)) / (2 * h)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradient_with_respect_to_the_weight_decay():
    x, y = data()
    params = {"w": jnp.ones((3, 1)), "b": jnp.ones((1,))}

    def after(wd):
        tx = gradtx.adamw(0.1, weight_decay=wd)
        g = jax.grad(loss)(params, x, y)
        updates, _ = tx.update(g, tx.init(params), params)
        return loss(gradtx.apply_updates(params, updates), x, y)

    assert np.isfinite(float(jax.grad(after)(0.01)))
    assert float(jax.grad(after)(0.01)) != 0.0
