# The code of docs/howto/sharded_training.md: the docs build runs
# it and shows each part ("# %%" starts one) with what it printed.

# %% part 1
import functools

import jax

jax.config.update("jax_num_cpu_devices", 4)  # four simulated CPU devices

import jax.numpy as jnp
import numpy as np

import gradtx

print(jax.devices())

# %% part 2
mesh = jax.make_mesh((4,), ("data",))
rows = jax.NamedSharding(mesh, jax.P("data"))
replicated = jax.NamedSharding(mesh, jax.P())

rng = np.random.default_rng(0)
host_params = {
    "w": rng.normal(0.0, 0.1, (64, 16)).astype(np.float32),
    "b": np.zeros(16, np.float32),
}
host_x = rng.normal(size=(128, 64)).astype(np.float32)
host_y = rng.normal(size=(128, 16)).astype(np.float32)

params = {
    "w": jax.device_put(host_params["w"], rows),
    "b": jax.device_put(host_params["b"], replicated),
}
x, y = jax.device_put((host_x, host_y), rows)

tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-2))
shardings = gradtx.state_shardings(tx, params)
state = jax.jit(tx.init, out_shardings=shardings)(params)

for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    print(f"{name:10s} {str(leaf.shape):8s}  {leaf.sharding.spec}")


# %% part 3
def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def train_step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return gradtx.apply_updates(params, updates), state, loss


for step in range(1, 51):
    params, state, loss = train_step(params, state, x, y)
    if step % 10 == 0:
        print(f"step {step}  loss {loss:.4f}")
print("w:", params["w"].sharding.spec)
print("its second moment:", state[1][0].nu["w"].sharding.spec)

# %% part 4
one_device = jax.devices()[0]
params_1, x_1, y_1 = jax.device_put(
    (host_params, host_x, host_y), one_device
)
state_1 = tx.init(params_1)
for _ in range(50):
    params_1, state_1, _ = train_step(params_1, state_1, x_1, y_1)
gap = max(
    float(jnp.max(jnp.abs(params_1[k] - jax.device_get(params[k]))))
    for k in params
)
print(f"within 1e-6 of the sharded run: {gap < 1e-6}")

# %% part 5
abstract_params = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding),
    params,
)
target = gradtx.abstract_state(tx, abstract_params)
mu_w = target[1][0].mu["w"]
print(type(mu_w).__name__, mu_w.shape, mu_w.dtype, mu_w.sharding.spec)
