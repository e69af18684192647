"""Parameter groups: AdamW without decay on biases and norms, and a frozen embedding.

A small flax nnx model reads scikit-learn's bundled 8x8 digits as 64 tokens,
one per pixel, whose values are the pixel intensities 0..16. A fixed random
embedding turns each token into a vector; a hidden layer with a LayerNorm and
an output layer classify the image. The optimizer has two groups:

- "train": AdamW on every leaf but the embedding, with weight decay on the
  kernels only (`masks.no_decay_for_biases_and_norms`);
- "frozen": the embedding, whose updates are zero and which has no
  optimizer state at all.

Run it with `.venv/bin/python examples/param_groups.py` once `make demo` has
installed the example extras (elsewhere, `pip install -e '.[examples]'`
first). It prints the optimizer, then the loss and test accuracy as training
goes, and at the end whether the embedding is still bit for bit as it was
initialised (it is: "embedding unchanged: True").
"""

import argparse
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits

import gradtx
from gradtx import masks
from gradtx.wrappers import multi_transform

LEVELS = 17  # pixel intensities in the digits data: 0..16


def load_data(seed=0):
    """The 1797 digit images as int32 tokens, split 80/20."""
    digits = load_digits()
    x = digits.data.astype(np.int32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


class PixelClassifier(nnx.Module):
    """Embed each pixel's intensity, then a LayerNorm MLP over the 64 pixels."""

    def __init__(self, embed_dim, hidden, rngs):
        self.embed = nnx.Embed(LEVELS, embed_dim, rngs=rngs)
        self.hidden = nnx.Linear(64 * embed_dim, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens).reshape(tokens.shape[0], -1)
        x = jax.nn.relu(self.norm(self.hidden(x)))
        return self.out(x)


def group_labels(params):
    """ "frozen" for the embedding, "train" for every other leaf."""
    frozen = masks.by_path("embed/*")(params)
    return jax.tree.map(lambda f: "frozen" if f else "train", frozen)


def make_optimizer(learning_rate=3e-3, weight_decay=1e-2):
    adamw = gradtx.adamw(
        learning_rate,
        weight_decay=weight_decay,
        mask=masks.no_decay_for_biases_and_norms,
    )
    return multi_transform(
        {"train": adamw, "frozen": gradtx.set_to_zero()}, group_labels
    )


class Result(NamedTuple):
    losses: list[float]  # training loss at every step
    test_accuracy: float
    initial: Any  # the params before training (an nnx.State)
    final: Any  # the params after training
    tx: gradtx.GradientTransformation


def main(steps=300, batch_size=128, embed_dim=4, hidden=64, log_every=100, seed=0):
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    model = PixelClassifier(embed_dim, hidden, nnx.Rngs(seed))
    graphdef, params = nnx.split(model)

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))

    def accuracy(params):
        logits = nnx.merge(graphdef, params)(x_test)
        return float(jnp.mean(jnp.argmax(logits, axis=1) == y_test))

    tx = make_optimizer()
    print(tx)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, loss

    initial = params
    rng = np.random.default_rng(seed)
    losses = []
    for i in range(1, steps + 1):
        batch = rng.choice(len(x_train), size=batch_size, replace=False)
        params, state, loss = step(params, state, x_train[batch], y_train[batch])
        losses.append(float(loss))
        if i % log_every == 0 or i == 1:
            print(
                f"step {i:4d}  train loss {loss:.4f}  "
                f"test accuracy {accuracy(params):.3f}"
            )
    # The frozen group's updates are zeros, so the embedding keeps its bits.
    unchanged = all(
        np.asarray(a).tobytes() == np.asarray(b).tobytes()
        for a, b in zip(
            jax.tree.leaves(initial["embed"]),
            jax.tree.leaves(params["embed"]),
            strict=True,
        )
    )
    print(f"embedding unchanged: {unchanged}")
    return Result(losses, accuracy(params), initial, params, tx)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
