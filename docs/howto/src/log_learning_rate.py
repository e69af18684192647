# The code of docs/howto/log_learning_rate.md: the docs build runs
# it and shows each part ("# %%" starts one) with what it printed.

# %% part 1
import jax
import jax.numpy as jnp

import gradtx

x = jax.random.normal(jax.random.key(0), (256, 8))
noise = jax.random.normal(jax.random.key(1), (256,))
y = x @ jnp.arange(1.0, 9.0) + 0.1 * noise


def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


schedule = gradtx.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=0.5, warmup_steps=10, decay_steps=100
)
tx = gradtx.chain(gradtx.clip_by_global_norm(10.0), gradtx.adam(schedule))


# %% part 2
@jax.jit
def train_step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    learning_rate = gradtx.latest_learning_rate(tx, state)  # this step's
    return gradtx.apply_updates(params, updates), state, loss, learning_rate


params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
state = tx.init(params)
for step in range(1, 101):
    params, state, loss, learning_rate = train_step(params, state, x, y)
    if step in (1, 2, 6, 11, 30, 60, 100):
        print(f"step {step:3d}  rate {learning_rate:.4f}  loss {loss:8.4f}")

# %% part 3
tx = gradtx.chain(
    gradtx.adam(0.1),
    gradtx.reduce_on_plateau(factor=0.5, patience=2),
)
state = tx.init(params)
for step in range(1, 11):
    grads = jax.grad(loss_fn)(params, x, y)
    _, state = tx.update(grads, state, params, loss=1.0)  # a flat loss
    rate = gradtx.latest_learning_rate(tx, state)
    print(f"step {step:2d}  learning rate {rate:.4f}")

# %% part 4
tx = gradtx.inject_hyperparams(gradtx.adamw)(
    learning_rate=schedule,
    weight_decay=gradtx.linear_schedule(1e-2, 1e-3, transition_steps=100),
)
state = tx.init(params)
for _ in range(20):
    grads = jax.grad(loss_fn)(params, x, y)
    _, state = tx.update(grads, state, params)

for name, value in state.hyperparams.items():
    print(f"{name}: {value:.5f}")
print(f"latest_learning_rate: {gradtx.latest_learning_rate(tx, state):.5f}")
