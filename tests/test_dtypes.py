"""Low-precision params, moment dtypes, and constants kept out of low precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx


def bf16(x):
    """Round float32 values to bfloat16, as a float32 array."""
    return np.asarray(jnp.asarray(np.float32(x), jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_moments_default_to_the_params_dtype(dtype):
    params = {"w": jnp.ones((2, 2), dtype), "f": jnp.ones(3, jnp.float32)}
    state = gradtx.scale_by_adam().init(params)
    assert state.mu["w"].dtype == dtype and state.nu["w"].dtype == dtype
    assert state.mu["f"].dtype == jnp.float32
    assert gradtx.scale_by_momentum().init(params).velocity["w"].dtype == dtype


def test_mu_dtype_overrides_the_first_moment_only():
    params = {"w": jnp.ones((2, 2), jnp.float32)}
    tx = gradtx.scale_by_adam(mu_dtype=jnp.bfloat16)
    state = tx.init(params)
    assert state.mu["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.float32
    updates, state = jax.jit(tx.update)({"w": jnp.full((2, 2), 0.3)}, state)
    assert updates["w"].dtype == jnp.float32
    assert state.mu["w"].dtype == jnp.bfloat16
    up = gradtx.scale_by_adam(mu_dtype=jnp.float32).init(
        {"w": jnp.ones(2, jnp.bfloat16)}
    )
    assert up.mu["w"].dtype == jnp.float32 and up.nu["w"].dtype == jnp.bfloat16


def test_accumulator_dtype_sets_the_momentum_buffer():
    tx = gradtx.scale_by_momentum(accumulator_dtype=jnp.float32)
    state = tx.init(jnp.ones(2, jnp.bfloat16))
    assert state.velocity.dtype == jnp.float32
    u, state = tx.update(jnp.ones(2, jnp.bfloat16), state)
    assert u.dtype == jnp.bfloat16 and state.velocity.dtype == jnp.float32


def test_adam_in_bfloat16_uses_full_precision_constants():
    # In bfloat16 arithmetic b2 = 0.999 rounds to 1.0: the bias correction
    # 1 - b2**t would be 0 and v would never decay. gradtx widens to float32,
    # so each stored value is the float32 result rounded once.
    g1, g2 = np.float32(0.75), np.float32(-1.5)
    tx = gradtx.scale_by_adam()
    state = tx.init(jnp.zeros(1, jnp.bfloat16))
    u1, state = tx.update(jnp.full(1, g1, jnp.bfloat16), state)
    assert u1.dtype == jnp.bfloat16
    assert float(u1[0]) == 1.0  # m_hat / sqrt(v_hat) = sign(g) exactly
    assert float(state.nu[0]) == bf16(np.float32(1 - 0.999) * g1 * g1)
    u2, state = tx.update(jnp.full(1, g2, jnp.bfloat16), state)
    nu2 = (
        np.float32(0.999) * bf16(np.float32(0.001) * g1 * g1)
        + np.float32(0.001) * g2 * g2
    )
    assert float(state.nu[0]) == bf16(nu2)
    m2 = np.float32(0.9) * bf16(np.float32(0.1) * g1) + np.float32(0.1) * g2
    want = (m2 / (1 - 0.9**2)) / (np.sqrt(nu2 / (1 - 0.999**2)) + 1e-8)
    np.testing.assert_allclose(float(u2[0]), want, rtol=2**-8)


def test_momentum_in_bfloat16_decays_by_the_exact_coefficient():
    # bfloat16(0.9) is 0.8984375; the buffer must use 0.9.
    tx = gradtx.scale_by_momentum(decay=0.9)
    state = tx.init(jnp.zeros((), jnp.bfloat16))
    _, state = tx.update(jnp.array(100.0, jnp.bfloat16), state)
    _, state = tx.update(jnp.array(0.0, jnp.bfloat16), state)
    assert float(state.velocity) == bf16(90.0)  # not 89.84375


def test_rms_in_float16_keeps_a_small_decay_complement():
    tx = gradtx.scale_by_rms(decay=0.9999)  # 1 - decay is 1e-4, far below fp16 eps
    state = tx.init(jnp.zeros(1, jnp.float16))
    u, state = tx.update(jnp.full(1, 2.0, jnp.float16), state)
    assert state.nu.dtype == jnp.float16
    np.testing.assert_allclose(float(state.nu[0]), 4e-4, rtol=1e-3)
    np.testing.assert_allclose(float(u[0]), 100.0, rtol=1e-3)


def test_learning_rate_is_applied_in_float32():
    # bfloat16(1e-3) is 0.00100040...; the product is rounded once instead.
    tx = gradtx.sgd(1e-3)
    g = jnp.array([3.0], jnp.bfloat16)
    u, _ = tx.update(g, tx.init(g))
    assert float(u[0]) == bf16(np.float32(-1e-3) * np.float32(3.0))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_optimizers_train_in_low_precision(dtype):
    target = jnp.linspace(-1, 1, 8)
    for tx in [gradtx.adamw(0.05), gradtx.sgd(0.1, momentum=0.9), gradtx.rmsprop(0.01)]:
        params = jnp.zeros(8, dtype)
        state = tx.init(params)

        @jax.jit
        def step(params, state, tx=tx):
            grads = jax.grad(lambda p: jnp.sum((p.astype(jnp.float32) - target) ** 2))(
                params
            )
            updates, state = tx.update(grads.astype(dtype), state, params)
            return gradtx.apply_updates(params, updates), state

        for _ in range(150):
            params, state = step(params, state)
        assert params.dtype == dtype
        np.testing.assert_allclose(params.astype(jnp.float32), target, atol=0.1)


def test_float64_under_x64_stays_float64():
    with jax.enable_x64(True):
        params = {"w": jnp.ones(3, jnp.float64)}
        tx = gradtx.adamw(1e-3)
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(
            {"w": jnp.full(3, 1e-3, jnp.float64)}, state, params
        )
        assert (
            updates["w"].dtype == jnp.float64 and state[0].nu["w"].dtype == jnp.float64
        )
        want = -1e-3 * (1e-3 / (1e-3 + 1e-8) + 1e-4)  # adam step + decay, exact
        np.testing.assert_allclose(updates["w"], want, rtol=1e-12)
