"""The linear scaling rule: k times the batch, k times the learning rate, with warmup.

Goyal et al. (2017) trained ResNet-50 on ImageNet with batches from 256 to
8192 and matched the small-batch accuracy by one rule: when the batch grows
k-fold, multiply the learning rate by k, and ramp it up to that value over
the first epochs (a warmup), because the full rate is too much for the
random initial weights. The reasoning: k steps of SGD with batch B and rate
lr move the weights by about lr times the sum of k mean gradients, and one
step with batch kB and rate k * lr does the same when the gradients change
little over those k steps.

This script tests the rule on a small MLP (the one of examples/quickstart.py)
on scikit-learn's bundled digits, with SGD and momentum 0.9. The batch grows
from B = 16 to 32, 64 and 128 through `gradtx.accumulate_gradients`: a step
with batch kB is k micro-batches of 16 whose gradients are averaged, so the
memory of the forward pass stays that of B. Every run sees the same
examples in the same order for the same number of epochs, so a batch k
times larger takes k times fewer optimizer steps. Each batch size is run
twice:

- "same lr": the rate of batch B, unchanged;
- "linear + warmup": peak rate k * lr, reached by a linear warmup from lr
  over the first epoch;

and for k > 1 a third time with the k-fold rate from the first step
("linear, no warmup"), to see what the warmup does. All follow a cosine
decay to zero, and each configuration is averaged over three seeds (the
initial weights; all seeds of a configuration run in one `jax.vmap`).

Before training it checks the premise: from the same start, one step of the
big batch and k accumulated micro-steps give the same parameters, to
float32 round-off.

What it shows: with the rate unchanged, the final training loss grows
several-fold as the batch grows, since the run takes k times fewer steps of
the same size; with the rate scaled, the curves stay together, and the test
accuracy with them. On this small problem the warmup changes little up to
k = 8: the k-fold rate is stable from the start (Goyal et al. needed it
from k = 8 on for ResNet-50, whose early steps are far more fragile).

Run it with `.venv/bin/python examples/batch_size_scaling.py` once
`make demo` has installed the example extras (elsewhere,
`pip install -e '.[examples]'` first); it takes about a minute on 2 CPU
cores. `--quick` runs 3 epochs and 2 seeds instead of 10 and 3 (about 20
seconds).

Reference: Goyal, Dollar, Girshick, Noordhuis, Wesolowski, Kyrola, Tulloch,
Jia and He, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
arXiv:1706.02677, 2017.
"""

import argparse
import pathlib
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradtx

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by path (the tests), not as a script
    sys.path.insert(0, str(HERE))
from quickstart import init_mlp, load_data, loss_fn, predict  # noqa: E402

SIZES = (64, 128, 10)  # the MLP: 64 pixels, 128 hidden units, 10 classes
RULES = ("same lr", "linear + warmup", "linear, no warmup")


class Row(NamedTuple):
    batch: int  # examples per optimizer step: k micro-batches of B
    rule: str  # one of RULES
    learning_rate: float  # the peak rate
    steps: int  # optimizer steps over the whole run
    losses: list[float]  # training loss after each epoch, mean over seeds
    test_accuracy: float  # mean over seeds


class Result(NamedTuple):
    first_step_gap: dict[int, float]  # k -> max |big-batch - accumulated|
    first_step_size: float  # max |parameter change| of that first step
    rows: list[Row]


def make_optimizer(k, init_lr, peak_lr, warmup_steps, total_steps):
    """SGD with momentum, a warmup from init_lr to peak_lr, a cosine decay,
    its gradients averaged over k micro-batches."""
    schedule = gradtx.warmup_cosine_decay_schedule(
        init_value=init_lr,
        peak_value=peak_lr,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
    )
    return gradtx.accumulate_gradients(gradtx.sgd(schedule, momentum=0.9), every_k=k)


def max_abs_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def first_step_gap(k, micro_batch, base_lr, data, seed=0):
    """One step on k * micro_batch examples against k accumulated micro-steps."""
    (x_train, y_train), _ = data
    x = jnp.asarray(x_train[: k * micro_batch])
    y = jnp.asarray(y_train[: k * micro_batch])
    params = init_mlp(jax.random.key(seed), SIZES)

    def step(tx, params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    big_tx = gradtx.sgd(k * base_lr, momentum=0.9)
    big, _ = jax.jit(step, static_argnums=0)(big_tx, params, big_tx.init(params), x, y)
    acc_tx = gradtx.accumulate_gradients(big_tx, every_k=k)
    acc_step = jax.jit(step, static_argnums=0)
    acc, state = params, acc_tx.init(params)
    for i in range(k):
        part = slice(i * micro_batch, (i + 1) * micro_batch)
        acc, state = acc_step(acc_tx, acc, state, x[part], y[part])
    return max_abs_diff(big, acc), max_abs_diff(big, params)


def epoch_order(n_examples, epochs, micro_steps, micro_batch, seed=0):
    """Example indices, (epochs, micro_steps, micro_batch): one permutation
    per epoch, the remainder of each dropped; the same for every run."""
    rng = np.random.default_rng(seed)
    used = micro_steps * micro_batch
    order = [rng.permutation(n_examples)[:used] for _ in range(epochs)]
    return jnp.asarray(np.stack(order).reshape(epochs, micro_steps, micro_batch))


def make_runs(k, order, data, warmup_epochs):
    """A compiled function training every (rule, seed) pair for one k.

    It takes the rules' initial and peak rates (one entry per rule) and the
    seeds' keys, and returns the training loss after each epoch and the test
    accuracy, (rules, seeds, epochs) and (rules, seeds).
    """
    (x_train, y_train), (x_test, y_test) = data
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    epochs, micro_steps, _ = order.shape
    steps_per_epoch = micro_steps // k
    total_steps = epochs * steps_per_epoch
    warmup_steps = max(1, round(warmup_epochs * steps_per_epoch))

    def run(init_lr, peak_lr, key):
        tx = make_optimizer(k, init_lr, peak_lr, warmup_steps, total_steps)
        params = init_mlp(key, SIZES)

        def micro_step(carry, batch):
            params, state = carry
            grads = jax.grad(loss_fn)(params, x_train[batch], y_train[batch])
            updates, state = tx.update(grads, state, params)
            return (gradtx.apply_updates(params, updates), state), None

        def epoch(carry, batches):
            carry, _ = jax.lax.scan(micro_step, carry, batches)
            return carry, loss_fn(carry[0], x_train, y_train)

        (params, _), losses = jax.lax.scan(epoch, (params, tx.init(params)), order)
        correct = jnp.argmax(predict(params, x_test), axis=1) == y_test
        return losses, jnp.mean(correct)

    over_seeds = jax.vmap(run, in_axes=(None, None, 0))
    return jax.jit(jax.vmap(over_seeds, in_axes=(0, 0, None))), total_steps


def rates(rule, k, base_lr):
    """(initial, peak) learning rate of a rule at k micro-batches per step."""
    return {
        "same lr": (base_lr, base_lr),  # warmup from lr to lr: a constant
        "linear + warmup": (base_lr, k * base_lr),
        "linear, no warmup": (k * base_lr, k * base_lr),
    }[rule]


def table(rows, epochs_shown):
    """One line per run, grouped by rule; the batch-B run heads every group."""
    losses_head = "".join(f"  loss ep{e:<2d}" for e in epochs_shown)
    lines = [f"batch  rule               peak lr  steps{losses_head}  test acc"]
    reference = [row for row in rows if row.batch == min(r.batch for r in rows)]
    for rule in RULES:
        lines.append("")
        group = reference[:1] + [r for r in rows if r.rule == rule]
        group = sorted({r.batch: r for r in group}.values(), key=lambda r: r.batch)
        for row in group:
            losses = "".join(f"  {row.losses[e - 1]:9.3f}" for e in epochs_shown)
            lines.append(
                f"{row.batch:5d}  {rule:17s}  {row.learning_rate:7.2f}  "
                f"{row.steps:5d}{losses}  {row.test_accuracy:8.3f}"
            )
    return "\n".join(lines)


def main(
    epochs=10,
    seeds=3,
    micro_batch=16,
    ks=(1, 2, 4, 8),
    base_lr=0.05,
    warmup_epochs=1.0,
):
    data = load_data(0)
    (x_train, _), (x_test, _) = data
    largest = max(ks)
    micro_steps = (len(x_train) // (micro_batch * largest)) * largest
    print(
        f"digits: {len(x_train)} training and {len(x_test)} test images; "
        f"MLP {'-'.join(map(str, SIZES))}; SGD, momentum 0.9, cosine decay"
    )
    print(
        f"B = {micro_batch}, base lr {base_lr} at batch B; {epochs} epochs of "
        f"{micro_steps * micro_batch} examples; {seeds} seeds; warmup "
        f"{warmup_epochs:g} epoch(s)\n"
    )

    gaps, size = {}, 0.0
    for k in ks:
        if k > 1:
            gaps[k], size = first_step_gap(k, micro_batch, base_lr, data)
    print(
        "first step from the same start: one batch of k*B against k "
        f"accumulated micro-batches of B (the step moves params by {size:.1e})"
    )
    for k, gap in gaps.items():
        print(f"  k={k}: max |difference| {gap:.1e}")
    print()

    order = epoch_order(len(x_train), epochs, micro_steps, micro_batch)
    keys = jax.random.split(jax.random.key(0), seeds)
    rows = []
    for k in ks:
        rules = RULES[:1] if k == 1 else RULES
        run, steps = make_runs(k, order, data, warmup_epochs)
        init_lr, peak_lr = zip(*(rates(r, k, base_lr) for r in rules), strict=True)
        losses, accuracy = run(jnp.asarray(init_lr), jnp.asarray(peak_lr), keys)
        losses = np.asarray(losses).mean(axis=1)
        accuracy = np.asarray(accuracy).mean(axis=1)
        for i, rule in enumerate(rules):
            rows.append(
                Row(
                    batch=k * micro_batch,
                    rule=rule,
                    learning_rate=float(peak_lr[i]),
                    steps=steps,
                    losses=[float(v) for v in losses[i]],
                    test_accuracy=float(accuracy[i]),
                )
            )
    shown = sorted({1, 2, (epochs + 1) // 2, epochs})
    print(table(rows, shown))
    return Result(gaps, size, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 epochs and 2 seeds (about 20 s)"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--base-lr", type=float, default=0.05)
    args = parser.parse_args()
    epochs = args.epochs or (3 if args.quick else 10)
    seeds = args.seeds or (2 if args.quick else 3)
    main(epochs=epochs, seeds=seeds, base_lr=args.base_lr)
