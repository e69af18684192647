"""Schedule-free AdamW against AdamW with a tuned warmup + cosine schedule.

Schedule-free AdamW (`schedule_free_adamw`) needs no decay schedule and no
training length: it keeps a constant learning rate after a linear warmup and
evaluates at a running average of its iterates
(`schedule_free_eval_params`). The usual alternative is AdamW whose learning
rate warms up linearly and then follows a cosine down to 0 at the last
step, a schedule that must know the length of the run in advance.

Both train the same ReLU MLP (64-128-10, the digits network of
examples/study_problems.py) on scikit-learn's bundled 8x8 digits: 1000
training images, 300 for validation, the other 497 for the test. Each
method gets the same warmup (10% of the steps), the same decoupled weight
decay (1e-4), the same batches, and a sweep of four peak learning rates
(1e-3 to 3e-2); the best rate of each is chosen on the validation loss.
Schedule-free AdamW is measured at its evaluation point x, AdamW at its
params. The table also shows the training loss half-way through, where the
cosine schedule is still at half its peak and the schedule-free average is
already usable.

Run it with `.venv/bin/python examples/schedule_free.py` (about 20-40
seconds on 2 CPU cores; `--quick` runs 2 rates for 200 steps in a few
seconds). All learning rates of one method train together, under one
`jax.vmap`, so each method compiles once.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import gradtx

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by path (the tests), not as a script
    sys.path.insert(0, str(HERE))
import study_problems  # noqa: E402
from study_problems import error_rate, init_mlp, loss_fn, mlp_logits  # noqa: E402

try:  # exported at the top level once integrated
    schedule_free_adamw = gradtx.schedule_free_adamw  # type: ignore[attr-defined]
    schedule_free_eval_params = gradtx.schedule_free_eval_params  # type: ignore[attr-defined]
except AttributeError:
    from gradtx.schedule_free import schedule_free_adamw, schedule_free_eval_params

METHODS = ("adamw+cosine", "schedule_free_adamw")
PEAK_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
WEIGHT_DECAY = 1e-4


class Row(NamedTuple):
    method: str
    peak_lr: float
    initial_train_loss: float
    half_train_loss: float  # on the whole training set, half-way through
    train_loss: float  # at the end
    val_loss: float
    test_loss: float
    test_accuracy: float


class Result(NamedTuple):
    rows: list[Row]
    best: dict[str, Row]  # method -> the row with the lowest validation loss


def load_data(n_train: int, n_val: int, seed: int = 0):
    """Digits in [0, 1]: train, validation and test splits."""
    sizes = dataclasses.replace(study_problems.DIGITS_SIZES, n_train=n_train)
    train, (x_rest, y_rest) = study_problems.load_digits_data(sizes, seed)
    return train, (x_rest[:n_val], y_rest[:n_val]), (x_rest[n_val:], y_rest[n_val:])


def make_optimizer(method: str, peak: Any, steps: int, warmup: int):
    """The optimizer of `method` at peak learning rate `peak` (may be traced)."""
    if method == "adamw+cosine":
        unit = gradtx.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps)
        return gradtx.adamw(lambda t: peak * unit(t), weight_decay=WEIGHT_DECAY)
    return schedule_free_adamw(peak, warmup_steps=warmup, weight_decay=WEIGHT_DECAY)


def eval_point(method: str, state: Any, params: Any) -> Any:
    """Where a method's model is evaluated: x for schedule-free, else params."""
    if method == "schedule_free_adamw":
        return schedule_free_eval_params(state, params)
    return params


def train(method, peaks, data, steps, batch_size, hidden, seed):
    """Train one method at every peak rate together; losses at three points."""
    (x_train, y_train), _, _ = data
    warmup = max(1, steps // 10)
    batches = jax.random.randint(
        jax.random.PRNGKey(seed + 1), (steps, batch_size), 0, len(x_train)
    )
    start = init_mlp(jax.random.PRNGKey(seed), (64, hidden, 10))

    def loss(params, x, y):
        return loss_fn(mlp_logits, params, x, y)

    def run(peak):
        tx = make_optimizer(method, peak, steps, warmup)

        def step(carry, idx):
            params, state = carry
            grads = jax.grad(loss)(params, x_train[idx], y_train[idx])
            updates, state = tx.update(grads, state, params)
            return (gradtx.apply_updates(params, updates), state), None

        carry = (start, tx.init(start))
        half = steps // 2
        carry, _ = jax.lax.scan(step, carry, batches[:half])
        at_half = eval_point(method, carry[1], carry[0])
        carry, _ = jax.lax.scan(step, carry, batches[half:])
        return at_half, eval_point(method, carry[1], carry[0])

    return start, jax.jit(jax.vmap(run))(jnp.asarray(peaks, jnp.float32))


def measure(method, peaks, data, start, at_half, final) -> list[Row]:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data

    def losses(params):
        return (
            loss_fn(mlp_logits, params, x_train, y_train),
            loss_fn(mlp_logits, params, x_val, y_val),
            loss_fn(mlp_logits, params, x_test, y_test),
            1.0 - error_rate(mlp_logits, params, x_test, y_test),
        )

    initial = float(losses(start)[0])
    half_train = jax.vmap(losses)(at_half)[0]
    train_loss, val_loss, test_loss, accuracy = jax.vmap(losses)(final)
    return [
        Row(
            method,
            float(peak),
            initial,
            float(half_train[i]),
            float(train_loss[i]),
            float(val_loss[i]),
            float(test_loss[i]),
            float(accuracy[i]),
        )
        for i, peak in enumerate(peaks)
    ]


def format_table(result: Result, steps: int) -> str:
    header = (
        f"{'method':<20} {'peak lr':>8} {'train@50%':>10} {'train loss':>10} "
        f"{'val loss':>9} {'test loss':>9} {'test acc':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in result.rows:
        mark = " *" if result.best[r.method] is r else ""
        lines.append(
            f"{r.method:<20} {r.peak_lr:>8.0e} {r.half_train_loss:>10.4f} "
            f"{r.train_loss:>10.4f} {r.val_loss:>9.4f} {r.test_loss:>9.4f} "
            f"{r.test_accuracy:>8.3f}{mark}"
        )
    lines.append(
        f"(* best peak learning rate of each method, by validation loss; "
        f"{steps} steps, initial train loss "
        f"{result.rows[0].initial_train_loss:.4f})"
    )
    for method in METHODS:
        b = result.best[method]
        lines.append(
            f"best {method}: peak lr {b.peak_lr:.0e}, train loss {b.train_loss:.4f}, "
            f"test loss {b.test_loss:.4f}, test acc {b.test_accuracy:.3f}"
        )
    return "\n".join(lines)


def main(
    steps: int = 1500,
    peaks: tuple[float, ...] = PEAK_LRS,
    batch_size: int = 64,
    hidden: int = 128,
    n_train: int = 1000,
    n_val: int = 300,
    seed: int = 0,
) -> Result:
    data = load_data(n_train, n_val)
    rows: list[Row] = []
    for method in METHODS:
        start, (at_half, final) = train(
            method, peaks, data, steps, batch_size, hidden, seed
        )
        rows += measure(method, peaks, data, start, at_half, final)
    best = {
        m: min((r for r in rows if r.method == m), key=lambda r: r.val_loss)
        for m in METHODS
    }
    result = Result(rows, best)
    print(format_table(result, steps))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 learning rates, 200 steps"
    )
    args = parser.parse_args()
    if args.quick:
        main(steps=200, peaks=(3e-3, 1e-2), hidden=32)
    else:
        main()
