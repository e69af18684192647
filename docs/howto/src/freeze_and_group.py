# The code of docs/howto/freeze_and_group.md: the docs build runs
# it and shows each part ("# %%" starts one) with what it printed.

# %% part 1
import jax
import jax.numpy as jnp
import numpy as np

import gradtx
from gradtx import masks


def leaf_paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, _ in flat
    ]


def show_moved(before, after):
    olds, news = jax.tree.leaves(before), jax.tree.leaves(after)
    for name, old, new in zip(leaf_paths(before), olds, news, strict=True):
        moved = not np.array_equal(old, new)
        print(f"  {name:18s} {'moved' if moved else 'unchanged'}")


# %% part 2
from flax import nnx


class Classifier(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(16, 4, rngs=rngs)
        self.hidden = nnx.Linear(4 * 4, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens).reshape(tokens.shape[0], -1)
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def labels(params):
    frozen = masks.by_path("embed/*")(params)
    return jax.tree.map(lambda f: "frozen" if f else "train", frozen)


tx = gradtx.multi_transform(
    {
        "train": gradtx.adamw(
            1e-2,
            weight_decay=1e-2,
            mask=masks.no_decay_for_biases_and_norms,
        ),
        "frozen": gradtx.set_to_zero(),
    },
    labels,
)
model = Classifier(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
tokens = jnp.arange(32).reshape(8, 4) % 16
targets = jnp.arange(8) % 3


@nnx.jit
def train_step(model, optimizer):
    def loss_fn(model):
        log_probs = jax.nn.log_softmax(model(tokens))
        return -jnp.mean(log_probs[jnp.arange(8), targets])

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
train_step(model, optimizer)
show_moved(before, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
mu = optimizer.opt_state.inner_states["train"][0].mu
print("Adam's first moment is kept for:")
print("  " + ", ".join(leaf_paths(nnx.to_pure_dict(mu))))

# %% part 3
import flax.linen as nn


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8)(x))
        return nn.Dense(3)(x)


model = MLP()
x = jax.random.normal(jax.random.key(0), (8, 5))
params = model.init(jax.random.key(1), x)["params"]

tx = gradtx.chain(
    gradtx.adamw(1e-2, weight_decay=1e-2),
    gradtx.freeze(masks.by_path("Dense_0/*")),  # the body stays as trained
)
state = tx.init(params)


def loss_fn(params):
    return jnp.mean(model.apply({"params": params}, x) ** 2)


updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
show_moved(params, gradtx.apply_updates(params, updates))

# %% part 4
import equinox as eqx


class Net(eqx.Module):
    hidden: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(5, 8, key=k1)
        self.norm = eqx.nn.LayerNorm(8)
        self.out = eqx.nn.Linear(8, 3, key=k2)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


model = Net(jax.random.key(0))
params = eqx.filter(model, eqx.is_array)

tx = gradtx.chain(
    gradtx.masked(
        gradtx.add_decayed_weights(1e-1), masks.by_path("out/weight")
    ),
    gradtx.adam(1e-2),
)
state = tx.init(params)
zero_grads = jax.tree.map(jnp.zeros_like, params)  # only the decay is left
updates, state = tx.update(zero_grads, state, params)
show_moved(params, eqx.apply_updates(params, updates))
