# The code of docs/howto/checkpointing.md: the docs build runs
# it and shows each part ("# %%" starts one) with what it printed.

# %% part 1
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import gradtx

DATA_KEY = jax.random.key(0)
TRUE_W = jnp.linspace(-1.0, 1.0, 16)


def batch(step):
    """The batch of step `step`, the same in every run."""
    x = jax.random.normal(jax.random.fold_in(DATA_KEY, step), (32, 16))
    return x, x @ TRUE_W


def loss_fn(params, x, y):
    hidden = jnp.tanh(x @ params["w1"])
    return jnp.mean((hidden @ params["w2"] - y) ** 2)


def make_tx():
    """Built the same way in every process that trains or resumes."""
    schedule = gradtx.warmup_cosine_decay_schedule(0.0, 3e-2, 10, 100)
    return gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.inject_hyperparams(gradtx.adamw)(
            learning_rate=schedule, weight_decay=1e-3
        ),
    )


def make_train_step(tx):
    @jax.jit
    def train_step(params, state, step):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch(step))
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, loss

    return train_step


tx = make_tx()
train_step = make_train_step(tx)


def train(params, state, start, stop):
    for step in range(start, stop):
        params, state, loss = train_step(params, state, step)
    return params, state


def bits_equal(a, b):
    """Whether two pytrees hold the same arrays, bit for bit."""
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.asarray(u).tobytes() == np.asarray(v).tobytes()
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


keys = jax.random.split(jax.random.key(1), 2)
initial = {
    "w1": 0.3 * jax.random.normal(keys[0], (16, 32)),
    "w2": 0.3 * jax.random.normal(keys[1], (32,)),
}

# %% part 2
final_params, final_state = train(initial, tx.init(initial), 0, 100)
print(f"loss after 100 steps: {loss_fn(final_params, *batch(100)):.6f}")

# %% part 3
folder = tempfile.mkdtemp()
params, state = train(initial, tx.init(initial), 0, 40)
gradtx.save_state(f"{folder}/params.npz", params)
gradtx.save_state(f"{folder}/opt_state.npz", state, tx=tx)

# %% part 4
tx = make_tx()
train_step = make_train_step(tx)
like_params = jax.eval_shape(lambda: initial)
like_state = jax.eval_shape(tx.init, like_params)
params = gradtx.restore_state(f"{folder}/params.npz", like_params)
state = gradtx.restore_state(f"{folder}/opt_state.npz", like_state, tx=tx)
print("schedule position:", int(state[1].count))

params, state = train(params, state, 40, 100)
print("parameters bit-identical:", bits_equal(params, final_params))
print("optimizer state bit-identical:", bits_equal(state, final_state))

# %% part 5
other = gradtx.chain(
    gradtx.clip_by_global_norm(1.0),
    gradtx.inject_hyperparams(gradtx.adamw)(
        learning_rate=1e-3, weight_decay=1e-3
    ),
)
try:
    gradtx.restore_state(f"{folder}/opt_state.npz", like_state, tx=other)
except ValueError as error:
    first, *differences = str(error).splitlines()[:3]
    print(textwrap.fill(first, 76))
    for line in differences:  # cut to the page's width
        print(line if len(line) <= 76 else line[:72] + " ...")

# %% part 6
import orbax.checkpoint as ocp

params, state = train(initial, tx.init(initial), 0, 40)
path = f"{folder}/orbax/step_40"
with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {"params": params, "opt_state": state})

# later, in a new process
tx = make_tx()
train_step = make_train_step(tx)
target = {
    "params": like_params,
    "opt_state": gradtx.abstract_state(tx, like_params),
}
with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path).item_metadata.tree
    gradtx.check_state(metadata["opt_state"], target["opt_state"])
    restored = checkpointer.restore(path, target)

params, state = train(restored["params"], restored["opt_state"], 40, 100)
print("parameters bit-identical:", bits_equal(params, final_params))
print("optimizer state bit-identical:", bits_equal(state, final_state))
