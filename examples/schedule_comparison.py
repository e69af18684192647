"""A learning-rate finder, then six learning-rate schedules side by side.

Part 1, the learning-rate range test (Smith, "Cyclical Learning Rates for
Training Neural Networks", 2017): train for a short run while the learning
rate grows exponentially, from far too small to far too large, and record the
loss at every step. The raw losses are noisy, so they are smoothed with a
bias-corrected exponential moving average. The smoothed loss falls, bottoms
out, then blows up; the learning rate where it bottoms out is the largest
that still helps, and one tenth of it (the usual rule of thumb) is taken as
the peak learning rate for part 2. The growing rate is an ordinary gradtx
schedule, `exponential_decay` with a `decay_rate` above 1.

Part 2: the same MLP, from the same initial weights and on the same
sequence of mini-batches, trained with SGD + momentum under six schedules
that share that peak: constant, cosine decay, warmup + cosine, one-cycle,
SGDR (cosine with warm restarts) and step decay. All six train at once in a
single compiled program: the optimizer is built with
`gradtx.inject_hyperparams`, so its learning rate is an array in its state;
each run's schedule is tabulated in advance, and at every step each run
writes its own entry into its state before the update. `jax.vmap` runs the
six, `jax.lax.scan` the steps.

Run it with `.venv/bin/python examples/schedule_comparison.py` once
`make demo` has installed the example extras (elsewhere,
`pip install -e '.[examples]'` first); it takes about 15 seconds on 2 CPU
cores, and `--peak-lr` overrides the finder's pick. It prints what the
finder saw and picked, then a table of the final training loss (on the
whole training set) and test accuracy per schedule, and writes two
figures to `runs/schedule_comparison/` (`--out-dir` to change):
`lr_finder.png` (loss against learning rate) and `schedules.png` (each
learning rate and its smoothed training loss against the step).

What it shows, honestly, on this small problem: every schedule reaches
about 0.99 test accuracy, within 0.3 percentage points of each other, and
the constant rate ends with the *lowest* training loss (about 0.005 against
0.012 for the others at the default peak of 0.11; the same order at
`--peak-lr 0.4` and for other seeds). Digits is easy and a thousand steps is
a short budget, so the loss is limited by how far the weights can travel,
not by gradient noise; the decaying schedules give up speed in their last
few hundred steps to anneal noise that is not the bottleneck here. The
finder's answer also moves with the seed (the minimum is at lr 1.1 for seed
0, 0.47 for seed 1): read it as an order of magnitude, not a number.
"""

import argparse
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from sklearn.datasets import load_digits

import gradtx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_data(seed=0):
    """The 1797 digit images as 64-vectors in [0, 1], split 80/20."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (jnp.asarray(x[:cut]), jnp.asarray(y[:cut])), (
        jnp.asarray(x[cut:]),
        jnp.asarray(y[cut:]),
    )


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
    return jnp.mean(jnp.argmax(predict(params, x), axis=1) == y)


def make_optimizer(learning_rate, momentum=0.9):
    return gradtx.sgd(learning_rate, momentum=momentum)


def batch_indices(n_train, steps, batch_size, seed):
    """The same mini-batch sequence for every run: (steps, batch_size) ints."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(
        np.stack([rng.choice(n_train, batch_size, replace=False) for _ in range(steps)])
    )


def smooth(values, beta=0.9):
    """Bias-corrected exponential moving average, as Adam corrects its moments."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return np.asarray(out)


# ----------------------------------------------------------------------------
# part 1: the learning-rate range test


class FinderResult(NamedTuple):
    learning_rates: np.ndarray  # the rate of each step
    losses: np.ndarray  # the raw mini-batch loss of each step
    smoothed: np.ndarray  # smoothed, cut where it blows up
    best_lr: float  # where the smoothed loss bottoms out
    blowup_lr: float  # where it exceeds `blowup` times its minimum (or the end)
    suggested_lr: float  # best_lr / 10


def find_learning_rate(
    data, steps=200, min_lr=1e-5, max_lr=10.0, batch_size=128, blowup=4.0, seed=0
):
    (x_train, y_train), _ = data
    growth = (max_lr / min_lr) ** (1 / (steps - 1))
    schedule = gradtx.exponential_decay(min_lr, transition_steps=1, decay_rate=growth)
    tx = make_optimizer(schedule)
    params = init_mlp(jax.random.key(seed))
    idx = batch_indices(x_train.shape[0], steps, batch_size, seed)

    @jax.jit
    def run(params):
        def one_step(carry, batch):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(
                params, x_train[batch], y_train[batch]
            )
            updates, state = tx.update(grads, state, params)
            return (gradtx.apply_updates(params, updates), state), loss

        _, losses = jax.lax.scan(one_step, (params, tx.init(params)), idx)
        return losses

    losses = np.asarray(run(params))
    lrs = np.asarray(jax.vmap(schedule)(jnp.arange(steps)))
    # Smooth, and stop reading at the first step where the smoothed loss is
    # no longer finite or climbs past `blowup` times the lowest so far.
    smoothed = smooth(np.where(np.isfinite(losses), losses, np.inf))
    end = len(smoothed)
    for i in range(len(smoothed)):
        if (
            not np.isfinite(smoothed[i])
            or smoothed[i] > blowup * smoothed[: i + 1].min()
        ):
            end = i
            break
    best = int(np.argmin(smoothed[:end]))
    blowup_lr = float(lrs[min(end, steps - 1)])
    return FinderResult(
        lrs, losses, smoothed[:end], float(lrs[best]), blowup_lr, float(lrs[best]) / 10
    )


# ----------------------------------------------------------------------------
# part 2: six schedules, one compiled program


def schedules(peak, steps):
    """Name -> schedule, all sharing the same peak learning rate."""
    return {
        "constant": gradtx.constant_schedule(peak),
        "cosine": gradtx.cosine_decay_schedule(peak, steps),
        "warmup-cosine": gradtx.warmup_cosine_decay_schedule(
            0.0, peak, max(steps // 10, 1), steps
        ),
        "one-cycle": gradtx.one_cycle_schedule(steps, peak),
        # periods of steps/7, 2 steps/7 and 4 steps/7, rounded up so that the
        # last one ends at or after the run's last step (no restart at the end)
        "sgdr": gradtx.sgdr_schedule(peak, -(-steps // 7), period_mult=2),
        "step decay": gradtx.piecewise_constant_schedule(
            peak, {steps // 2: 0.1, (3 * steps) // 4: 0.1}
        ),
    }


class ComparisonResult(NamedTuple):
    names: list[str]
    learning_rates: np.ndarray  # (runs, steps): the table the runs followed
    losses: np.ndarray  # (runs, steps): mini-batch loss at every step
    train_loss: np.ndarray  # (runs,): final loss on the whole training set
    test_accuracy: np.ndarray  # (runs,)


def compare_schedules(data, peak_lr, steps=1000, batch_size=128, seed=0):
    (x_train, y_train), (x_test, y_test) = data
    named = schedules(peak_lr, steps)
    names = list(named)
    table = jnp.stack([jax.vmap(s)(jnp.arange(steps)) for s in named.values()])
    table = table.astype(jnp.float32)

    # The learning rate is a number in the state, overwritten before each step.
    tx = gradtx.inject_hyperparams(make_optimizer)(learning_rate=0.0)
    params = init_mlp(jax.random.key(seed))  # the same start for every run
    idx = batch_indices(x_train.shape[0], steps, batch_size, seed)

    def train(lrs):
        def one_step(carry, inputs):
            params, state = carry
            lr, batch = inputs
            state = state._replace(
                hyperparams={**state.hyperparams, "learning_rate": lr}
            )
            loss, grads = jax.value_and_grad(loss_fn)(
                params, x_train[batch], y_train[batch]
            )
            updates, state = tx.update(grads, state, params)
            return (gradtx.apply_updates(params, updates), state), loss

        carry = (params, tx.init(params))
        (final, _), losses = jax.lax.scan(one_step, carry, (lrs, idx))
        return (
            losses,
            loss_fn(final, x_train, y_train),
            accuracy(final, x_test, y_test),
        )

    losses, train_loss, test_acc = jax.jit(jax.vmap(train))(table)
    return ComparisonResult(
        names,
        np.asarray(table),
        np.asarray(losses),
        np.asarray(train_loss),
        np.asarray(test_acc),
    )


# ----------------------------------------------------------------------------
# figures


def plot_finder(finder, path):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n = len(finder.smoothed)
    ax.plot(finder.learning_rates, finder.losses, color="0.75", lw=0.8, label="raw")
    ax.plot(finder.learning_rates[:n], finder.smoothed, color="C0", label="smoothed")
    ax.axvline(finder.best_lr, color="C3", ls="--", label=f"min {finder.best_lr:.2g}")
    ax.axvline(
        finder.suggested_lr,
        color="C2",
        ls="--",
        label=f"pick {finder.suggested_lr:.2g}",
    )
    ax.set_xscale("log")
    top = 2 * max(finder.smoothed[0], finder.losses[0])
    ax.set_ylim(0, top)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (mini-batch)")
    ax.set_title("Learning-rate range test, SGD + momentum 0.9")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(result, path):
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    steps = np.arange(1, result.losses.shape[1] + 1)
    for i, name in enumerate(result.names):
        top.plot(steps, result.learning_rates[i], label=name, color=f"C{i}")
        bottom.plot(steps, smooth(result.losses[i], 0.95), label=name, color=f"C{i}")
    top.set_ylabel("learning rate")
    top.set_title("Six schedules with the same peak, same model, seed and batches")
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    bottom.set_ylabel("training loss (smoothed)")
    bottom.legend(ncol=2, fontsize="small", loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Result(NamedTuple):
    finder: FinderResult
    comparison: ComparisonResult
    figures: list[pathlib.Path]


def main(
    out_dir="runs/schedule_comparison",
    steps=1000,
    finder_steps=200,
    batch_size=128,
    peak_lr=None,
    seed=0,
):
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(seed)

    finder = find_learning_rate(data, finder_steps, batch_size=batch_size, seed=seed)
    print(
        f"learning-rate finder over {finder_steps} steps: the smoothed loss "
        f"bottoms out at lr {finder.best_lr:.3g} and blows up at lr "
        f"{finder.blowup_lr:.3g}; suggested peak lr: {finder.suggested_lr:.3g} "
        "(a tenth of where it bottoms out)"
    )

    peak_lr = finder.suggested_lr if peak_lr is None else peak_lr
    result = compare_schedules(data, peak_lr, steps, batch_size, seed)
    print(f"\n{steps} steps of SGD + momentum at peak lr {peak_lr:.3g}")
    print(f"{'schedule':14s} {'final train loss':>16s} {'test accuracy':>14s}")
    for name, loss, acc in zip(
        result.names, result.train_loss, result.test_accuracy, strict=True
    ):
        print(f"{name:14s} {loss:16.5f} {acc:14.3f}")

    figures = [out_dir / "lr_finder.png", out_dir / "schedules.png"]
    plot_finder(finder, figures[0])
    plot_comparison(result, figures[1])
    print(f"\nwrote {figures[0]} and {figures[1]}")
    return Result(finder, result, figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/schedule_comparison")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--finder-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--peak-lr", type=float, default=None, help="default: the finder's pick"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        out_dir=args.out_dir,
        steps=args.steps,
        finder_steps=args.finder_steps,
        batch_size=args.batch_size,
        peak_lr=args.peak_lr,
        seed=args.seed,
    )
