# The code of docs/howto/change_hyperparameters.md: the docs build runs
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


tx = gradtx.inject_hyperparams(gradtx.adamw)(
    learning_rate=0.3, weight_decay=1e-4
)

traces = 0


@jax.jit
def train_step(params, state):
    global traces
    traces += 1  # runs only when jax traces (compiles) the step
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return gradtx.apply_updates(params, updates), state, loss


params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
state = tx.init(params)
for name, value in state.hyperparams.items():
    print(f"{name}: {value!r}")

# %% part 2
for step in range(1, 201):
    if step == 101:
        state = gradtx.set_hyperparams(state, tx, learning_rate=0.03)
    params, state, loss = train_step(params, state)
    if step % 50 == 0:
        rate = state.hyperparams["learning_rate"]
        print(f"step {step}  learning rate {rate:.3f}  loss {loss:.5f}")

print(f"the step was compiled {traces} time(s)")

# %% part 3
import textwrap

for bad in (
    {"learning_rate": -1.0},
    {"weight_decay": float("nan")},
    {"learning_rat": 0.1},
):
    try:
        gradtx.set_hyperparams(state, tx, **bad)
    except ValueError as error:
        print(textwrap.fill(f"{bad}: {error}", 76, subsequent_indent="  "))

# %% part 4
tx = gradtx.apply_if_finite(
    gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.inject_hyperparams(gradtx.adamw)(
            learning_rate=1e-3, weight_decay=1e-4
        ),
    ),
    max_consecutive_errors=3,
)
state = tx.init(params)
state = gradtx.set_hyperparams(
    state, tx, learning_rate=5e-4, weight_decay=0.0
)
for name, value in state.inner_state[1].hyperparams.items():
    print(f"{name}: {value!r}")

# %% part 5
tx = gradtx.chain(
    gradtx.adamw(gradtx.cosine_decay_schedule(0.3, decay_steps=200)),
    gradtx.inject_hyperparams(gradtx.scale)(factor=1.0),
)
state = tx.init(params)
grads = jax.grad(loss_fn)(params, x, y)
full, _ = tx.update(grads, state, params)
# half the scheduled rate from now on
state = gradtx.set_hyperparams(state, tx, factor=0.5)
half, _ = tx.update(grads, state, params)
print(half["w"] / full["w"])
