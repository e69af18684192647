"""Gradient accumulation: k micro-batches make the same step as one big batch.

`gradtx.accumulate_gradients(tx, every_k=k)` wraps any optimizer. On each
call it adds the incoming gradient to a running sum and returns a zero
update; on every k-th call it hands the mean of the k gradients to `tx`,
which takes one real step. When the loss is a mean over examples and the k
micro-batches have the same size, the mean of their k mean-gradients is the
gradient of the big batch, so k accumulated micro-steps move the parameters
exactly as one step on the concatenated batch would, up to float32
round-off in the summation order.

Part 1 checks this: from the same start, a few steps of AdamW (and of SGD
with momentum) on batches of 256 examples against the same batches cut into
k = 8 micro-batches of 32, fed through `accumulate_gradients`. It prints the
largest difference between the two sets of parameters after every real step
(a few 1e-8, float32 round-off: the spacing of float32 numbers near 1 is
1.2e-7), against parameter changes of 3e-3 to 3e-2 per step, and checks
that the parameters do not move between real steps.

Part 2 trains the MLP with accumulation: micro-batches of 32, every_k = 4,
so each real step sees 128 examples, as if the batch were four times larger
than what fits at once. On memory: the wrapper keeps one accumulator buffer
shaped like the parameters, whatever k is, next to the optimizer's own state
(AdamW keeps two, its moments). What accumulation saves is the memory of the
forward and backward pass, which scales with the micro-batch, not with the
effective batch. Pass `accumulator_dtype=jnp.float32` to sum bfloat16
gradients in float32. The script prints the sizes.

Run it with `.venv/bin/python examples/gradient_accumulation.py` once
`make demo` has installed the example extras (elsewhere,
`pip install -e '.[examples]'` first); it takes about 10 seconds on 2 CPU
cores.
"""

import argparse
from typing import NamedTuple

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


def init_mlp(key, sizes=(64, 128, 10)):
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        w = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in)
        params.append({"w": w, "b": jnp.zeros(n_out)})
    return params


def predict(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
    return x @ params[-1]["w"] + params[-1]["b"][None, :]


def loss_fn(params, x, y):
    log_probs = jax.nn.log_softmax(predict(params, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


def accuracy(params, x, y):
    return float(jnp.mean(jnp.argmax(predict(params, x), axis=1) == y))


def max_abs_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    )


def make_step(tx):
    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, loss

    return step


# ----------------------------------------------------------------------------
# part 1: accumulated micro-batches against one big batch


def compare(tx, data, big_steps=3, big_batch=256, every_k=8, seed=0):
    """Max |params difference| after each real step, big batch vs accumulated."""
    (x_train, y_train), _ = data
    if big_batch % every_k:
        raise ValueError(
            f"big_batch {big_batch} is not a multiple of every_k {every_k}"
        )
    micro = big_batch // every_k
    acc_tx = gradtx.accumulate_gradients(tx, every_k=every_k)
    big_step, acc_step = make_step(tx), make_step(acc_tx)

    start = init_mlp(jax.random.key(seed))
    big, big_state = start, tx.init(start)
    acc, acc_state = start, acc_tx.init(start)
    rng = np.random.default_rng(seed)
    diffs, moved = [], 0.0
    for _ in range(big_steps):
        batch = rng.choice(len(x_train), size=big_batch, replace=False)
        before = big
        big, big_state, _ = big_step(big, big_state, x_train[batch], y_train[batch])
        for j in range(every_k):
            part = batch[j * micro : (j + 1) * micro]
            held = acc
            acc, acc_state, _ = acc_step(acc, acc_state, x_train[part], y_train[part])
            if j < every_k - 1 and max_abs_diff(held, acc) != 0.0:
                raise AssertionError("params moved before the k-th micro-step")
        diffs.append(max_abs_diff(big, acc))
        moved = max(moved, max_abs_diff(before, big))
    return diffs, moved


# ----------------------------------------------------------------------------
# part 2: training with accumulation


def tree_bytes(tree):
    return sum(x.nbytes for x in jax.tree.leaves(tree))


class Result(NamedTuple):
    max_diff: dict[str, list[float]]  # optimizer -> max |difference| per real step
    max_change: dict[str, float]  # optimizer -> largest parameter change per step
    losses: list[float]  # part 2: mean micro-batch loss of each real step
    test_accuracy: float
    bytes: dict[str, int]  # params, optimizer moments, accumulator


def main(
    steps=300,
    micro_batch=32,
    every_k=4,
    learning_rate=3e-3,
    check_steps=3,
    check_every_k=8,
    log_every=50,
    seed=0,
):
    data = load_data(seed)
    (x_train, y_train), (x_test, y_test) = data

    print(
        f"part 1: {check_steps} steps on batches of {check_every_k * 32} against "
        f"the same batches as {check_every_k} accumulated micro-batches of 32"
    )
    print(f"  (float32 spacing near 1.0: {np.finfo(np.float32).eps:.1e})")
    max_diff, max_change = {}, {}
    optimizers = {
        "adamw": gradtx.adamw(learning_rate, weight_decay=1e-4),
        "sgd+momentum": gradtx.sgd(0.1, momentum=0.9),
    }
    for name, tx in optimizers.items():
        diffs, moved = compare(
            tx, data, check_steps, check_every_k * 32, check_every_k, seed
        )
        max_diff[name], max_change[name] = diffs, moved
        print(
            f"  {name:13s} max |big - accumulated| per step: "
            + ", ".join(f"{d:.1e}" for d in diffs)
            + f"  (params move by up to {moved:.1e} a step)"
        )

    print(
        f"\npart 2: AdamW on micro-batches of {micro_batch}, every_k={every_k} "
        f"(effective batch {micro_batch * every_k}), {steps} real steps"
    )
    tx = gradtx.accumulate_gradients(
        gradtx.adamw(learning_rate, weight_decay=1e-4), every_k=every_k
    )
    params = init_mlp(jax.random.key(seed))
    state = tx.init(params)
    sizes = {
        "params": tree_bytes(params),
        "adam moments": tree_bytes(state.inner_state),
        "accumulator": tree_bytes(state.acc),
    }
    print(
        "  memory: "
        + ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in sizes.items())
    )
    step = make_step(tx)
    rng = np.random.default_rng(seed)
    losses = []
    for i in range(1, steps + 1):
        batch = rng.choice(len(x_train), size=micro_batch * every_k, replace=False)
        group = []
        for j in range(every_k):
            part = batch[j * micro_batch : (j + 1) * micro_batch]
            params, state, loss = step(params, state, x_train[part], y_train[part])
            group.append(float(loss))
        losses.append(float(np.mean(group)))
        if i % log_every == 0 or i == 1:
            print(
                f"  step {i:4d}  loss {losses[-1]:.4f}  "
                f"test accuracy {accuracy(params, x_test, y_test):.3f}"
            )
    test_accuracy = accuracy(params, x_test, y_test)
    print(f"  final test accuracy {test_accuracy:.3f}")
    return Result(max_diff, max_change, losses, test_accuracy, sizes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--every-k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        steps=args.steps,
        micro_batch=args.micro_batch,
        every_k=args.every_k,
        seed=args.seed,
    )
