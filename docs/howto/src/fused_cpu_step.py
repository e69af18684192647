# The code of docs/howto/fused_cpu_step.md: the docs build runs
# it and shows each part ("# %%" starts one) with what it printed.

# %% part 1
import jax
import jax.numpy as jnp

import gradtx

keys = jax.random.split(jax.random.key(0), 5)
x = jax.random.normal(keys[0], (1024, 32))
y = jnp.tanh(x @ jax.random.normal(keys[1], (32,)))
y = y + 0.1 * jax.random.normal(
    keys[4], y.shape
)  # noise: the loss stays above 0
params = {
    "w1": 0.2 * jax.random.normal(keys[2], (32, 16)),
    "w2": 0.2 * jax.random.normal(keys[3], (16,)),
}


def loss_fn(params, x, y):
    return jnp.mean((jnp.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2)


tx = gradtx.chain(
    gradtx.clip_by_global_norm(1.0),
    gradtx.adamw(1e-2, weight_decay=1e-2),
)
step = gradtx.fused_step(tx)
print("this chain has a kernel:", step.fused)
print("the kernel could be built here:", gradtx.fused.kernel_available())


# %% part 2
@jax.jit
def plain_train_step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return gradtx.apply_updates(params, updates), state, loss


def fused_train_step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    params, state = step(params, state, grads)
    return params, state, loss


fused_train_step = jax.jit(fused_train_step, donate_argnums=(0, 1))


def max_gap(a, b):
    return max(float(jnp.max(jnp.abs(a[k] - b[k]))) for k in a)


plain, plain_state = params, tx.init(params)
fused, fused_state = jax.tree.map(jnp.copy, params), tx.init(params)
for i in range(1, 201):
    plain, plain_state, loss = plain_train_step(plain, plain_state, x, y)
    fused, fused_state, _ = fused_train_step(fused, fused_state, x, y)
    if i % 50 == 0:
        gap = max_gap(fused, plain)
        close = gap < 1e-6
        print(f"step {i}  loss {loss:.5f}  |fused - plain| < 1e-6: {close}")

# %% part 3
import textwrap

for name, other in {
    "sgd, Nesterov": gradtx.sgd(0.1, momentum=0.9, nesterov=True),
    "adam, bfloat16 moment": gradtx.adam(1e-3, mu_dtype=jnp.bfloat16),
    "rmsprop": gradtx.rmsprop(1e-3),
}.items():
    other_step = gradtx.fused_step(other)
    print(f"{name}: fused {other_step.fused}")
    if not other_step.fused:
        indent = {"initial_indent": "  ", "subsequent_indent": "  "}
        print(textwrap.fill(other_step.reason, 76, **indent))
