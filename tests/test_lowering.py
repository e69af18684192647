"""Every optimizer lowers for the CPU, CUDA and TPU, checked from a CPU host.

`jax.export` lowers a jitted function for platforms the process does not
have, so a TPU or GPU user is not the first to find that some operation
has no lowering there. Nothing is compiled or run for those platforms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_contract import CONTRACT, build

import gradtx

PLATFORMS = ("cpu", "cuda", "tpu")
PARAMS = {
    "w": jnp.ones((4, 3), jnp.float32),
    "b": jnp.zeros(3, jnp.float32),
    "s": jnp.ones((), jnp.float32),
}


def _step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, loss=jnp.float32(1.0))
        return gradtx.apply_updates(params, updates), state

    return step


def _export(fn, *args, platforms):
    return jax.export.export(jax.jit(fn), platforms=platforms)(*args)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_one_step_lowers_for_every_platform(name):
    tx = build(name)
    state = tx.init(PARAMS)
    exported = _export(_step(tx), PARAMS, state, PARAMS, platforms=PLATFORMS)
    assert exported.platforms == PLATFORMS
    # The CPU lowering inside the multi-platform module is the one this
    # process runs: calling it gives the plain step's numbers.
    got = exported.call(PARAMS, state, PARAMS)
    want = jax.jit(_step(tx))(PARAMS, state, PARAMS)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_injected_and_clipped_step_lowers_for_every_platform():
    tx = gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.inject_hyperparams(gradtx.adamw)(
            learning_rate=gradtx.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100),
            weight_decay=1e-2,
        ),
    )
    state = tx.init(PARAMS)
    exported = _export(_step(tx), PARAMS, state, PARAMS, platforms=PLATFORMS)
    assert exported.platforms == PLATFORMS
