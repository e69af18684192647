# The code of docs/howto/skip_nonfinite.md: the docs build runs
# it and shows each part ("# %%" starts one) with what it printed.

# %% part 1
import jax
import jax.numpy as jnp

import gradtx

x = jax.random.normal(jax.random.key(0), (64, 4))
y = x @ jnp.array([1.0, -2.0, 3.0, 0.5])


def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] - y) ** 2)


tx = gradtx.apply_if_finite(gradtx.adam(0.1), max_consecutive_errors=3)


@jax.jit
def train_step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return gradtx.apply_updates(params, updates), state, loss


params = {"w": jnp.zeros(4)}
state = tx.init(params)
print("step     loss  finite  in a row  total  Adam's count")
for step in range(1, 8):
    bad = step in (3, 4)
    batch_x = x.at[0, 0].set(jnp.inf) if bad else x  # a corrupted batch
    params, state, loss = train_step(params, state, batch_x, y)
    row = (
        step,
        loss,
        bool(state.last_finite),
        state.notfinite_in_a_row,
        state.notfinite_total,
        state.inner_state[0].count,  # Adam's step count
    )
    print("{:4d} {:8.4f}  {!s:6}  {:8d}  {:5d}  {:12d}".format(*row))
print("params finite:", bool(jnp.all(jnp.isfinite(params["w"]))))

# %% part 2
tx = gradtx.apply_if_finite(gradtx.adam(0.1), max_consecutive_errors=2)
state = tx.init(params)
for step in range(1, 5):
    grads = {"w": jnp.full(4, jnp.nan)}
    updates, state = tx.update(grads, state, params)
    applied = bool(jnp.any(updates["w"] != 0))
    in_a_row = int(state.notfinite_in_a_row)
    print(f"step {step}  in a row {in_a_row}  update applied {applied}")
