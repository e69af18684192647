"""An equinox model trained with a gradtx optimizer, weight decay on weights only.

An equinox model is itself a pytree: its arrays are leaves, and everything
else (activation functions, sizes) sits beside them. A gradtx optimizer
needs a tree of arrays, so it is given the model filtered down to them:

    params = eqx.filter(model, eqx.is_array)   # the model with None for non-arrays
    opt_state = tx.init(params)

`eqx.filter_value_and_grad` differentiates with respect to the same array
leaves and returns gradients with that structure, so in the step

    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    model = eqx.apply_updates(model, updates)

and `eqx.filter_jit` compiles it, tracing the arrays and keeping the rest
static. No wrapper class is needed.

The model is an MLP with a LayerNorm on scikit-learn's bundled 8x8 digits.
The optimizer is AdamW with a cosine schedule whose weight decay applies to
the weight matrices only, never to biases or the LayerNorm's scale and
offset, chosen by `gradtx.masks.no_decay_for_biases_and_norms`, which reads
the model's structure (paths and shapes), so it works on equinox modules as
it does on dicts.

Run it with `.venv/bin/python examples/equinox_training.py` once `make demo`
has installed the example extras (elsewhere, `pip install -e '.[examples]'`
first); it takes about 5 seconds on 2 CPU cores. It prints the optimizer
and which leaves are decayed, then the training loss and test accuracy as
training goes (about 0.99 at the end).
"""

import argparse
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import gradtx


def load_data(seed=0):
    """The 1797 digit images as 64-vectors in [0, 1], split 80/20."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


class MLP(eqx.Module):
    """linear -> LayerNorm -> relu -> linear, on one image (vmap for a batch)."""

    hidden: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    out: eqx.nn.Linear

    def __init__(self, width, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(64, width, key=k1)
        self.norm = eqx.nn.LayerNorm(width)
        self.out = eqx.nn.Linear(width, 10, key=k2)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def loss_fn(model, x, y):
    log_probs = jax.nn.log_softmax(jax.vmap(model)(x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


@eqx.filter_jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(jax.vmap(model)(x), axis=1) == y)


def make_optimizer(steps, learning_rate=3e-3, weight_decay=1e-2):
    return gradtx.adamw(
        gradtx.cosine_decay_schedule(learning_rate, steps),
        weight_decay=weight_decay,
        mask=gradtx.masks.no_decay_for_biases_and_norms,
    )


def decayed_leaves(model):
    """The path of every array leaf, and whether the optimizer decays it."""
    params = eqx.filter(model, eqx.is_array)
    mask = gradtx.masks.no_decay_for_biases_and_norms(params)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): decays
        for path, decays in flat
    }


class Result(NamedTuple):
    losses: list[float]  # training loss at every step
    test_accuracy: float
    initial: Any  # the model before training
    final: Any  # the model after training
    tx: gradtx.GradientTransformation


def main(
    steps=500, batch_size=128, width=128, learning_rate=3e-3, log_every=100, seed=0
):
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    model = MLP(width, jax.random.key(seed))
    initial = model

    tx = make_optimizer(steps, learning_rate)
    print(tx)
    for path, decays in decayed_leaves(model).items():
        print(f"  {path:14s} {'decayed' if decays else 'not decayed'}")
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        params = eqx.filter(model, eqx.is_array)
        updates, opt_state = tx.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    losses = []
    for i in range(1, steps + 1):
        batch = rng.choice(len(x_train), size=batch_size, replace=False)
        model, opt_state, loss = train_step(
            model, opt_state, x_train[batch], y_train[batch]
        )
        losses.append(float(loss))
        if i % log_every == 0 or i == 1:
            print(
                f"step {i:4d}  loss {loss:.4f}  "
                f"test accuracy {accuracy(model, x_test, y_test):.3f}"
            )
    test_accuracy = float(accuracy(model, x_test, y_test))
    print(f"final test accuracy {test_accuracy:.3f}")
    return Result(losses, test_accuracy, initial, model, tx)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(steps=args.steps, batch_size=args.batch_size, width=args.width, seed=args.seed)
