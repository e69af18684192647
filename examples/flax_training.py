"""A flax nnx model trained with a gradtx optimizer through nnx's functional API.

A gradtx optimizer is a pair of pure functions, `init(params)` and
`update(grads, state, params)`; a flax nnx model is a Python object holding
`nnx.Variable`s. The bridge is nnx's functional API:

    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

`params` (an `nnx.State`, a pytree) is what the optimizer sees: its state is
built from it, the gradients come back with its structure, and
`gradtx.apply_updates(params, updates)` steps it. `batch_stats` (the
BatchNorm running averages) is not trained by gradients: the forward pass
updates it and the step hands the new values back. Inside the jitted step,
`nnx.merge(graphdef, params, batch_stats)` rebuilds a model to call, and
after training `nnx.update(model, params, batch_stats)` writes the results
back into the Python object. This script writes those lines out to show
what happens underneath; `nnx.Optimizer(model, tx, wrt=nnx.Param)` takes a
gradtx optimizer as it takes an optax one, and does the same for you (see
docs/coming_from_optax.md).

The model is a small CNN (conv, BatchNorm, conv, linear) on scikit-learn's
bundled 8x8 digits. The optimizer clips the gradient's global norm, then
applies AdamW with a warmup-cosine learning-rate schedule and no decay on
biases and norms:

    chain(clip_by_global_norm(1.0), adamw(warmup_cosine, mask=no_decay...))

Run it with `.venv/bin/python examples/flax_training.py` once `make demo`
has installed the example extras (elsewhere, `pip install -e '.[examples]'`
first); it takes about 10 seconds on 2 CPU cores. It prints the optimizer,
then the step, training loss, learning rate (read back with
`gradtx.latest_learning_rate`), gradient norm before clipping and test
accuracy; the learning rate climbs over the warmup and
decays to zero, and the test accuracy ends near 0.99. (The first step has
learning rate 0: the warmup starts from `init_value=0.0`.)
"""

import argparse
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits

import gradtx


def load_data(seed=0):
    """The 1797 digit images as (N, 8, 8) floats in [0, 1], split 80/20."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


class CNN(nnx.Module):
    """conv 3x3 -> BatchNorm -> relu -> conv 3x3 stride 2 -> relu -> linear."""

    def __init__(self, channels, rngs):
        self.conv1 = nnx.Conv(1, channels, (3, 3), rngs=rngs)
        self.norm1 = nnx.BatchNorm(channels, rngs=rngs)
        self.conv2 = nnx.Conv(channels, 2 * channels, (3, 3), strides=2, rngs=rngs)
        self.out = nnx.Linear(4 * 4 * 2 * channels, 10, rngs=rngs)

    def __call__(self, images):
        x = images[..., None]  # (N, 8, 8) -> (N, 8, 8, 1), channels last
        x = jax.nn.relu(self.norm1(self.conv1(x)))
        x = jax.nn.relu(self.conv2(x))  # (N, 4, 4, 2 * channels)
        return self.out(x.reshape(x.shape[0], -1))


def cross_entropy(logits, labels):
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def make_optimizer(steps, peak_lr=3e-3, warmup_steps=50, weight_decay=1e-4):
    schedule = gradtx.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup_steps,
        decay_steps=steps,
    )
    return gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.adamw(
            schedule,
            weight_decay=weight_decay,
            mask=gradtx.masks.no_decay_for_biases_and_norms,
        ),
    )


class Result(NamedTuple):
    losses: list[float]  # training loss at every step
    learning_rates: list[float]  # learning rate each step used
    test_accuracy: float
    model: Any  # the trained CNN, in eval mode


def main(
    steps=400,
    batch_size=128,
    channels=16,
    peak_lr=3e-3,
    warmup_steps=50,
    log_every=50,
    seed=0,
):
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    model = CNN(channels, nnx.Rngs(seed))

    # The functional view of the model: a static graph and two pytrees.
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    tx = make_optimizer(steps, peak_lr=peak_lr, warmup_steps=warmup_steps)
    print(tx)
    opt_state = tx.init(params)  # the optimizer sees the nnx.Param leaves only

    def loss_fn(params, batch_stats, x, y):
        # copy=True: fresh Variables at this trace level, so that BatchNorm
        # may write its running averages into them during the forward pass.
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        loss = cross_entropy(model(x), y)
        return loss, nnx.state(model, nnx.BatchStat)

    @jax.jit
    def train_step(params, batch_stats, opt_state, x, y):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, batch_stats), grads = grad_fn(params, batch_stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = gradtx.apply_updates(params, updates)
        lr = gradtx.latest_learning_rate(tx, opt_state)  # the rate just used
        return params, batch_stats, opt_state, loss, lr, gradtx.global_norm(grads)

    @jax.jit
    def test_accuracy(params, batch_stats):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        model.eval()  # BatchNorm uses its running averages
        return jnp.mean(jnp.argmax(model(x_test), axis=1) == y_test)

    rng = np.random.default_rng(seed)
    losses, lrs = [], []
    for i in range(1, steps + 1):
        batch = rng.choice(len(x_train), size=batch_size, replace=False)
        params, batch_stats, opt_state, loss, lr, grad_norm = train_step(
            params, batch_stats, opt_state, x_train[batch], y_train[batch]
        )
        losses.append(float(loss))
        lrs.append(float(lr))
        if i % log_every == 0 or i == 1:
            print(
                f"step {i:4d}  loss {loss:.4f}  lr {lr:.2e}  "
                f"grad norm {grad_norm:6.3f}  "
                f"test accuracy {test_accuracy(params, batch_stats):.3f}"
            )

    # Back to the object world: write the trained state into the model.
    nnx.update(model, params, batch_stats)
    model.eval()
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), axis=1) == y_test))
    print(f"final test accuracy {accuracy:.3f}")
    return Result(losses, lrs, accuracy, model)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--peak-lr", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        steps=args.steps,
        batch_size=args.batch_size,
        channels=args.channels,
        peak_lr=args.peak_lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
    )
