# The code of docs/howto/accumulate_gradients.md: the docs build runs
# it and shows each part ("# %%" starts one) with what it printed.

# %% part 1
import jax
import jax.numpy as jnp

import gradtx

keys = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(keys[0], (64, 10))
y = jnp.sin(x @ jax.random.normal(keys[1], (10,)))
params = {
    "w1": 0.5 * jax.random.normal(keys[2], (10, 32)),
    "w2": 0.5 * jax.random.normal(keys[3], (32,)),
}


def loss_fn(params, x, y):
    return jnp.mean((jnp.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2)


def make_step(tx):
    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    return step


def max_difference(a, b):
    return max(
        float(jnp.max(jnp.abs(u - v)))
        for u, v in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    )


# %% part 2
tx = gradtx.adam(1e-2)
big_step = make_step(tx)
big, big_state = big_step(params, tx.init(params), x, y)

k = 4
acc_tx = gradtx.accumulate_gradients(tx, every_k=k)
acc_step = make_step(acc_tx)
acc, acc_state = params, acc_tx.init(params)
for i in range(k):
    part = slice(16 * i, 16 * (i + 1))
    acc, acc_state = acc_step(acc, acc_state, x[part], y[part])
    moved = max_difference(acc, params)
    print(f"micro-step {i + 1}: params moved by {moved:.1e}")

gap = max_difference(big, acc)  # float32 round-off
print(f"big batch against accumulated, within 1e-6: {gap < 1e-6}")
print(f"inner steps taken: {int(acc_state.inner_state[0].count)}")


# %% part 3
@jax.jit
def train_step(params, state, x, y):
    micro_x = x.reshape(k, -1, *x.shape[1:])  # (k, 16, 10)
    micro_y = y.reshape(k, -1)

    def micro_step(carry, batch):
        params, state = carry
        grads = jax.grad(loss_fn)(params, *batch)
        updates, state = acc_tx.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), None

    batches = (micro_x, micro_y)
    (params, state), _ = jax.lax.scan(micro_step, (params, state), batches)
    return params, state


scanned, _ = train_step(params, acc_tx.init(params), x, y)
print(f"scanned against the loop: {max_difference(scanned, acc):.1e}")
