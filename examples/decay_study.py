"""Coupled versus decoupled weight decay: a learning-rate x decay grid study.

Loshchilov and Hutter (Decoupled Weight Decay Regularization, ICLR 2019)
found that with L2 folded into the gradient the best learning rate and decay
lie on a diagonal of the grid, while decoupled decay makes them nearly
separable, and that AdamW generalises better than Adam with L2. This script
repeats the experiment on a small scale: a grid of learning rates x decay
strengths for each way of applying weight decay, several seeds per cell.
Every grid is one `jax.vmap` over optimizers whose learning rate and decay
live in their state (`inject_hyperparams`). It runs on three problems
(examples/study_problems.py):

- `--problem digits` (the default; `make demo`): an MLP on scikit-learn's
  bundled 8x8 digits, six variants, cosine schedule, 3 seeds. About 2-4
  minutes on 2 CPU cores, `--quick` under a minute. Results go to
  runs/decay_study/: summary.json, heatmaps.png and shrinkage.png.
- `--problem noisy_digits` (`make study`): the digits with 30% of the
  training labels replaced by random ones, and an MLP with two hidden
  layers that can memorise all of them; the variants of the AdamW, SGDW
  and Lion families and the paper's normalised decay, under a cosine and a
  constant schedule, 5 seeds, with Adam without decay as the reference that
  shows whether the network overfits. Up to 30 minutes on 2 CPU cores,
  `--quick` a few. Results go to runs/decay_study_noisy_digits/:
  summary.json, heatmaps of the test error and of the train-test gap per
  schedule, the slopes with their bootstrap intervals, and the no-decay
  curves; the verdicts on the paper's two claims are printed.
- `--problem mnist1d`: the same study with a small 1-D CNN on MNIST-1D,
  generated on the machine by the `mnist1d` package (about 20 minutes);
  results in runs/decay_study_mnist1d/.

`--families adamw,lion,...` picks the families (adamw: Adam + L2 and the
three decoupled AdamW forms; adamw_normalized; sgdw: SGD + L2 and SGDW;
lion: Lion + L2 and Lion), each variant on its own learning-rate x decay
grid. `--docs` also writes the problem's section of docs/decay_study.md and
its figures; `--docs-only` rewrites it from the last run's files, and
`--replot` redraws the last run's figures from its summary.json (with
`--docs`, then rewrites the page), neither of them training. Install
the extras first with `pip install -e '.[examples]'` (the make targets do).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from scipy import stats
from tqdm import tqdm

import gradtx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # loaded by path (the tests), not as a script
    sys.path.insert(0, str(HERE))
import study_problems  # noqa: E402
from study_problems import error_rate, loss_fn  # noqa: E402

SCHEDULES = ("cosine", "constant")
# Which variants each `--families` name runs: the coupled form first, then
# the decoupled ones.
FAMILIES = {
    "adamw": ("adam_l2", "adamw", "adamw_multiplier", "adamw_independent"),
    "adamw_normalized": ("adamw_normalized",),
    "sgdw": ("sgd_l2", "sgdw"),
    "lion": ("lion_l2", "lion"),
}
# Each decoupled variant against the coupled one of its family.
COUPLED = {
    "adamw": "adam_l2",
    "adamw_multiplier": "adam_l2",
    "adamw_independent": "adam_l2",
    "adamw_normalized": "adam_l2",
    "sgdw": "sgd_l2",
    "lion": "lion_l2",
}
BOOTSTRAP = 1000
# A basin counts as nearly separable when the 95% interval of its valley
# slope lies within +-SEPARABLE: the best decay then moves by less than a
# factor of 10**0.5 when the learning rate moves by a factor of 10.
SEPARABLE = 0.5
# A training loss counts as about zero below this: about 2% of ln(10), the
# loss of a network that guesses among the ten classes.
NEAR_ZERO_LOSS = 0.05
# Networks evaluated at once by lax.map (bounds the evaluation's memory).
EVAL_BATCH = 16


# ----------------------------------------------------------------------------
# the variants: each maps (base learning rate, decay) to an optimizer


def variants(
    steps: int,
    schedule: str = "cosine",
    families=("adamw", "sgdw"),
    ranges=None,
) -> dict[str, dict]:
    """Name -> factory, label, what the decay means, and the grid ranges.

    `schedule` is the multiplier eta_t of every learning rate: "cosine"
    decays it from 1 to 0 over `steps`, "constant" keeps it at 1. `ranges`
    maps a variant to its (log10 learning rates, log10 decays); the digits
    problem's by default.
    """
    ranges = study_problems.DIGITS.ranges if ranges is None else ranges
    if schedule == "cosine":
        eta = gradtx.cosine_decay_schedule(1.0, steps)
    elif schedule == "constant":
        eta = gradtx.constant_schedule(1.0)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")

    def times_eta(learning_rate):
        return lambda t: learning_rate * eta(t)

    def adam_l2(learning_rate, weight_decay):
        return gradtx.adam_l2(times_eta(learning_rate), weight_decay=weight_decay)

    def adamw(learning_rate, weight_decay):
        return gradtx.adamw(times_eta(learning_rate), weight_decay=weight_decay)

    def adamw_multiplier(learning_rate, weight_decay):
        return gradtx.adamw_multiplier(
            learning_rate, weight_decay=weight_decay, schedule=eta
        )

    def adamw_independent(learning_rate, weight_decay):
        return gradtx.adamw_independent(
            times_eta(learning_rate), weight_decay=weight_decay
        )

    # The paper's normalised decay (its Section 3): lambda = lambda_norm *
    # sqrt(b / (B T)) for batch size b, B training examples and T epochs.
    # B T / b is the number of steps, so lambda = lambda_norm / sqrt(steps).
    normaliser = 1.0 / np.sqrt(steps)

    def adamw_normalized(learning_rate, weight_decay):
        return gradtx.adamw_multiplier(
            learning_rate, weight_decay=weight_decay * normaliser, schedule=eta
        )

    def sgd_l2(learning_rate, weight_decay):
        return gradtx.sgd_l2(
            times_eta(learning_rate), weight_decay=weight_decay, momentum=0.9
        )

    def sgdw(learning_rate, weight_decay):
        return gradtx.sgdw(
            times_eta(learning_rate), weight_decay=weight_decay, momentum=0.9
        )

    def lion_pair():
        # Looked up now rather than when the first Lion grid is traced, so
        # that a gradtx without Lion stops the study before it trains.
        scale_by_lion, lion_alias = gradtx.scale_by_lion, gradtx.lion

        def lion_l2(learning_rate, weight_decay):
            return gradtx.chain(
                gradtx.add_decayed_weights(weight_decay),
                scale_by_lion(),
                gradtx.scale_by_learning_rate(times_eta(learning_rate)),
            )

        def lion(learning_rate, weight_decay):
            return lion_alias(times_eta(learning_rate), weight_decay=weight_decay)

        return lion_l2, lion

    lion_l2, lion = lion_pair() if "lion" in families else (None, None)
    table = {
        "adam_l2": (
            adam_l2,
            "Adam + L2 (coupled)",
            "L2 coefficient, added to the gradient",
        ),
        "adamw": (
            adamw,
            "AdamW, decay x learning rate (torch, optax)",
            "per step: lr_t * wd",
        ),
        "adamw_multiplier": (
            adamw_multiplier,
            "AdamW, decay x schedule (paper, Alg. 2)",
            "per step: eta_t * wd",
        ),
        "adamw_independent": (
            adamw_independent,
            "Adam, independent decay",
            "per step: wd",
        ),
        "adamw_normalized": (
            adamw_normalized,
            "AdamW, normalised decay (paper, Alg. 2)",
            "per step: eta_t * wd / sqrt(steps)",
        ),
        "sgd_l2": (
            sgd_l2,
            "SGD momentum + L2 (coupled)",
            "L2 coefficient, added to the gradient",
        ),
        "sgdw": (sgdw, "SGDW, decay x learning rate", "per step: lr_t * wd"),
        "lion_l2": (
            lion_l2,
            "Lion + L2 (coupled)",
            "L2 coefficient, added to the gradient",
        ),
        "lion": (lion, "Lion, decay x learning rate", "per step: lr_t * wd"),
    }
    specs = {}
    for family in families:
        if family not in FAMILIES:
            raise ValueError(
                f"unknown family {family!r}; the families are {sorted(FAMILIES)}"
            )
        for name in FAMILIES[family]:
            factory, label, decay = table[name]
            if name not in ranges:
                raise ValueError(f"this problem has no grid ranges for {name!r}")
            lrs, wds = ranges[name]
            specs[name] = dict(
                factory=factory,
                label=label,
                decay=decay,
                lrs=lrs,
                wds=wds,
            )
    return specs


# ----------------------------------------------------------------------------
# training: one grid, every (learning rate, decay, seed) at once under vmap


class Trainer:
    """What every grid of one study shares: problem, data, sizes, clocks.

    (A plain class: the tests load this file by path, outside sys.modules,
    where a dataclass cannot resolve its annotations.)
    """

    def __init__(self, problem, sizes, data, steps, chunk, progress=None):
        self.problem, self.sizes, self.data = problem, sizes, data
        self.steps, self.chunk, self.progress = steps, chunk, progress
        self.timing = {
            "initialise": 0.0,
            "compile": 0.0,
            "train": 0.0,
            "evaluate": 0.0,
        }
        self._evaluate = None

    def evaluate(self, params):
        """Test and train error and loss of every network in a grid."""
        if self._evaluate is None:
            (x_train, y_train), (x_test, y_test) = self.data
            logits = self.problem.logits

            def one(p):
                return {
                    "test_error": error_rate(logits, p, x_test, y_test),
                    "test_loss": loss_fn(logits, p, x_test, y_test),
                    "train_error": error_rate(logits, p, x_train, y_train),
                    "train_loss": loss_fn(logits, p, x_train, y_train),
                }

            self._evaluate = jax.jit(
                lambda ps: jax.lax.map(one, ps, batch_size=EVAL_BATCH)
            )
        started = time.perf_counter()
        out = {k: np.asarray(v) for k, v in self._evaluate(params).items()}
        self.timing["evaluate"] += time.perf_counter() - started
        return out

    def run_grid(self, spec, lrs, wds, seeds, steps=None, curves=False, name=""):
        """Train every (lr, wd, seed) of a grid; return its final metrics.

        Metrics are arrays of shape (len(lrs), len(wds), len(seeds)); with
        `curves`, also every `chunk` steps, stacked on a leading axis. Seed s
        fixes the initialisation and the sequence of batches, so that every
        variant sees the same ones.
        """
        steps = steps or self.steps
        chunk = self.chunk
        (x_train, y_train), _ = self.data
        batch_size = self.sizes.batch_size
        problem, sizes = self.problem, self.sizes
        opt = gradtx.inject_hyperparams(spec["factory"])(
            learning_rate=0.0, weight_decay=0.0
        )
        grid_lr, grid_wd, grid_seed = (
            a.ravel() for a in np.meshgrid(lrs, wds, seeds, indexing="ij")
        )

        def grad_fn(params, x, y):
            return jax.grad(lambda p: loss_fn(problem.logits, p, x, y))(params)

        def init_run(lr, wd, seed):
            params = problem.init_params(jax.random.key(seed), sizes)
            state = opt.init(params)
            hyperparams = {"learning_rate": lr, "weight_decay": wd}
            return params, state._replace(hyperparams=hyperparams)

        def train_steps(params, state, seed, first_step):
            def one_step(carry, t):
                params, state = carry
                key = jax.random.fold_in(jax.random.key(seed + 1000), t)
                idx = jax.random.randint(key, (batch_size,), 0, x_train.shape[0])
                grads = grad_fn(params, x_train[idx], y_train[idx])
                updates, state = opt.update(grads, state, params)
                return (gradtx.apply_updates(params, updates), state), None

            ts = first_step + jnp.arange(chunk)
            (params, state), _ = jax.lax.scan(one_step, (params, state), ts)
            return params, state

        as_f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        seeds_arr = jnp.asarray(grid_seed, jnp.int32)
        started = time.perf_counter()
        # Op by op, not jitted: its compiled kernels are cached across grids.
        params, state = jax.vmap(init_run)(as_f32(grid_lr), as_f32(grid_wd), seeds_arr)
        jax.block_until_ready(params)
        self.timing["initialise"] += time.perf_counter() - started
        started = time.perf_counter()
        train = (
            jax.jit(
                jax.vmap(train_steps, in_axes=(0, 0, 0, None)), donate_argnums=(0, 1)
            )
            .lower(params, state, seeds_arr, 0)
            .compile()
        )
        self.timing["compile"] += time.perf_counter() - started
        history = []
        for first in range(0, steps, chunk):
            started = time.perf_counter()
            params, state = train(params, state, seeds_arr, first)
            jax.block_until_ready(params)
            self.timing["train"] += time.perf_counter() - started
            if self.progress is not None:
                self.progress.set_postfix_str(
                    f"{name}, {len(seeds)} seeds at once, step {first + chunk}/{steps}",
                    refresh=False,
                )
                self.progress.update(chunk)
            if curves:
                history.append(self.evaluate(params))
        final = history[-1] if curves else self.evaluate(params)
        shape = (len(lrs), len(wds), len(seeds))
        result = {k: v.reshape(shape) for k, v in final.items()}
        if curves:
            result["curves"] = {
                k: np.stack([h[k].reshape(shape) for h in history]) for k in final
            }
            result["curve_steps"] = list(range(chunk, steps + 1, chunk))
        return result, params, state


# ----------------------------------------------------------------------------
# statistics


def usable_rows(mean_error):
    """Rows (learning rates) whose best cell is within twice the grid's best.

    Rows where training diverged or crawled say nothing about the decay.
    """
    best = mean_error.min()
    return [i for i in range(mean_error.shape[0]) if mean_error[i].min() <= 2 * best]


def tilt(lrs, wds, mean_error):
    """How diagonal the basin is: the slope d log(wd*) / d log(lr) of its valley.

    A quadratic surface in (log lr, log wd) is fitted by least squares to the
    log test error of the usable rows; along its valley the best decay for a
    learning rate x is y*(x) = -(c + f x) / (2 e), so the slope is -f / (2 e).
    0 means separable (the best decay does not depend on the learning rate),
    -1 a diagonal on which lr * wd is constant, +1 one on which wd / lr is.
    The fit smooths the seed noise that makes a row-by-row argmin jumpy.
    """
    rows = usable_rows(mean_error)
    if len(rows) < 3:
        return None
    x, y = np.meshgrid(np.log10(lrs)[rows], np.log10(wds), indexing="ij")
    z = np.log(np.maximum(mean_error[rows], 1e-6))
    x, y, z = x.ravel(), y.ravel(), z.ravel()
    design = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)
    coef = np.linalg.lstsq(design, z, rcond=None)[0]
    e, f = coef[4], coef[5]
    if e <= 0:  # no valley along the decay axis
        return None
    return float(-f / (2 * e))


def breakdown_slope(lrs, wds, mean_error):
    """Slope of log(wd) where the decay starts to hurt, against log(lr).

    For each usable row, the smallest decay whose error exceeds 1.5 times the
    row's best (interpolated in log wd). Where too much decay begins is the
    sharpest feature of these grids, and the least noisy.
    """
    xs, ys = [], []
    for i in usable_rows(mean_error):
        row = mean_error[i]
        j0 = int(np.argmin(row))
        limit = 1.5 * row[j0]
        above = [j for j in range(j0 + 1, len(wds)) if row[j] > limit]
        if not above:
            continue
        j = above[0]
        lo, hi = np.log10(wds[j - 1]), np.log10(wds[j])
        frac = (limit - row[j - 1]) / (row[j] - row[j - 1])
        xs.append(np.log10(lrs[i]))
        ys.append(lo + frac * (hi - lo))
    if len(xs) < 2:
        return None
    return float(np.polyfit(xs, ys, 1)[0])


def mean_interval(values, level=0.95):
    """Mean of `values` and its t interval: (mean, low, high)."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1)
    half /= np.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)


def bootstrap_indices(n_seeds, n_resamples=None, seed=0):
    """Seed indices drawn with replacement, one row per bootstrap resample."""
    n_resamples = n_resamples or BOOTSTRAP
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, size=(n_resamples, n_seeds))


def percentile_interval(samples, level=0.95):
    """(low, high) of the finite samples, or (None, None) if too few."""
    samples = np.asarray([s for s in samples if s is not None], np.float64)
    if len(samples) < 20:
        return None, None
    tail = 100 * (1 - level) / 2
    return float(np.percentile(samples, tail)), float(
        np.percentile(samples, 100 - tail)
    )


def bootstrap_slopes(lrs, wds, errors, indices):
    """Valley and breakdown slopes of each resample of the seeds."""
    valley, breakdown = [], []
    for idx in indices:
        mean = errors[:, :, idx].mean(axis=2)
        valley.append(tilt(lrs, wds, mean))
        breakdown.append(breakdown_slope(lrs, wds, mean))
    return valley, breakdown


def summarise_grid(spec, lrs, wds, result, indices):
    """One variant's summary: means, best cell with its interval, slopes."""
    errors = result["test_error"]
    grid = len(lrs)
    mean, std = errors.mean(axis=2), errors.std(axis=2)
    i, j = np.unravel_index(np.argmin(mean), mean.shape)
    gap = result["test_error"] - result["train_error"]
    _, low, high = mean_interval(errors[i, j])
    valley, breakdown = bootstrap_slopes(lrs, wds, errors, indices)
    return {
        "label": spec["label"],
        "decay_meaning": spec["decay"],
        "learning_rates": lrs.tolist(),
        "weight_decays": wds.tolist(),
        "test_error_mean": mean.tolist(),
        "test_error_std": std.tolist(),
        "train_loss_mean": result["train_loss"].mean(axis=2).tolist(),
        "train_error_mean": result["train_error"].mean(axis=2).tolist(),
        "gap_mean": gap.mean(axis=2).tolist(),
        "test_error_per_seed": errors.tolist(),
        "best": {
            "learning_rate": float(lrs[i]),
            "weight_decay": float(wds[j]),
            "lr_index": int(i),
            "wd_index": int(j),
            "test_error_mean": float(mean[i, j]),
            "test_error_std": float(std[i, j]),
            "test_error_ci95": [low, high],
            "train_loss_mean": float(result["train_loss"][i, j].mean()),
            "gap_mean": float(gap[i, j].mean()),
            "at_grid_edge": bool(j in (0, grid - 1) or i in (0, grid - 1)),
        },
        "tilt": tilt(lrs, wds, mean),
        "tilt_ci95": list(percentile_interval(valley)),
        "breakdown_slope": breakdown_slope(lrs, wds, mean),
        "breakdown_ci95": list(percentile_interval(breakdown)),
        "best_decay_per_lr": [float(wds[int(np.argmin(r))]) for r in mean],
    }


def paired_best(entry_a, entry_b):
    """Test error of a's best cell minus b's, seed by seed: mean and interval.

    Seed s gives both the same initialisation and batches, so the pairs
    share everything but the optimizer.
    """
    a, b = (
        np.asarray(e["test_error_per_seed"])[
            e["best"]["lr_index"], e["best"]["wd_index"]
        ]
        for e in (entry_a, entry_b)
    )
    mean, low, high = mean_interval(a - b)
    return {"difference": mean, "ci95": [low, high], "per_seed": (a - b).tolist()}


def paired_slope_gap(coupled, decoupled, lrs_wds, indices):
    """|valley slope| of the coupled basin minus the decoupled one's.

    Positive: decoupling made the basin more separable. The interval
    resamples the seeds of both grids together (they share the seeds).
    """
    (lrs_c, wds_c), (lrs_d, wds_d) = lrs_wds
    err_c = np.asarray(coupled["test_error_per_seed"])
    err_d = np.asarray(decoupled["test_error_per_seed"])
    gaps = []
    for idx in indices:
        sc = tilt(lrs_c, wds_c, err_c[:, :, idx].mean(axis=2))
        sd = tilt(lrs_d, wds_d, err_d[:, :, idx].mean(axis=2))
        gaps.append(None if sc is None or sd is None else abs(sc) - abs(sd))
    point = (
        None
        if coupled["tilt"] is None or decoupled["tilt"] is None
        else abs(coupled["tilt"]) - abs(decoupled["tilt"])
    )
    return {"difference": point, "ci95": list(percentile_interval(gaps))}


# ----------------------------------------------------------------------------
# the verdicts


def _fmt_interval(ci, scale=1.0, digits=2):
    if ci is None or ci[0] is None:
        return "n/a"
    return f"[{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]"


def _fmt_slope(value, ci):
    if value is None:
        return "n/a"
    return f"{value:+.2f} {_fmt_interval(ci)}"


def separability_verdict(coupled, decoupled, gap):
    """Claim 1 for one decoupled form: 'holds', 'fails' or 'unsettled'."""
    low, high = decoupled["tilt_ci95"]
    g_low, g_high = gap["ci95"]
    if decoupled["tilt"] is None or low is None or g_low is None:
        return "unsettled"
    if -SEPARABLE < low and high < SEPARABLE and g_low > 0:
        return "holds"
    if g_high < 0 or low > SEPARABLE or high < -SEPARABLE:
        return "fails"
    c_low, c_high = coupled["tilt_ci95"]
    if c_low is not None and -SEPARABLE < c_low and c_high < SEPARABLE:
        return "fails"  # the coupled basin is nearly separable already
    return "unsettled"


def generalisation_verdict(paired):
    """Claim 2 for one decoupled form; paired = coupled minus decoupled."""
    low, high = paired["ci95"]
    if low is None:
        return "unsettled"
    if low > 0:
        return "holds"
    if high < 0:
        return "fails"
    return "unsettled"


VERDICT_WORDS = {
    "holds": "holds",
    "fails": "does not hold",
    "unsettled": "is not settled by this run",
}
VERDICT_SHORT = {"holds": "holds", "fails": "does not hold", "unsettled": "unsettled"}


def claims(schedules_summary, indices):
    """Both claims, per decoupled variant and schedule, with their numbers."""
    out = {}
    for schedule, block in schedules_summary.items():
        entries = block["variants"]
        per = {}
        for name, coupled_name in COUPLED.items():
            if name not in entries or coupled_name not in entries:
                continue
            coupled, decoupled = entries[coupled_name], entries[name]
            gap = paired_slope_gap(
                coupled,
                decoupled,
                [
                    (np.asarray(e["learning_rates"]), np.asarray(e["weight_decays"]))
                    for e in (coupled, decoupled)
                ],
                indices,
            )
            paired = paired_best(coupled, decoupled)
            per[name] = {
                "coupled": coupled_name,
                "separability": {
                    "verdict": separability_verdict(coupled, decoupled, gap),
                    "abs_slope_difference": gap,
                },
                "generalisation": {
                    "verdict": generalisation_verdict(paired),
                    "coupled_minus_decoupled": paired,
                },
            }
        out[schedule] = per
    return out


def claim_sentence(summary, claim, name):
    """One sentence: does `claim` hold for variant `name`, with the numbers."""
    parts, verdicts = [], []
    for schedule, per in summary["claims"].items():
        if name not in per:
            continue
        entries = summary["schedules"][schedule]["variants"]
        decoupled, coupled = entries[name], entries[per[name]["coupled"]]
        verdict = per[name][claim]["verdict"]
        verdicts.append(verdict)
        if claim == "separability":
            parts.append(
                f"{schedule}: valley slope "
                f"{_fmt_slope(decoupled['tilt'], decoupled['tilt_ci95'])} against "
                f"{_fmt_slope(coupled['tilt'], coupled['tilt_ci95'])} for "
                f"{coupled['label']}, {VERDICT_WORDS[verdict]}"
            )
        else:
            paired = per[name][claim]["coupled_minus_decoupled"]
            parts.append(
                f"{schedule}: {100 * coupled['best']['test_error_mean']:.2f}% against "
                f"{100 * decoupled['best']['test_error_mean']:.2f}%, difference "
                f"{100 * paired['difference']:+.2f} points "
                f"{_fmt_interval(paired['ci95'], 100)}, {VERDICT_WORDS[verdict]}"
            )
    if not parts:
        return "not run"
    if len(set(verdicts)) > 1:
        return f"depends on the schedule ({'; '.join(parts)})"
    parts = [p.rsplit(", ", 1)[0] for p in parts]  # the verdict is said once
    if len(verdicts) == 1:
        lead = VERDICT_WORDS[verdicts[0]]
    else:
        lead = {
            "holds": "holds under both schedules",
            "fails": "does not hold under either schedule",
            "unsettled": "is not settled by this run under either schedule",
        }[verdicts[0]]
    return f"{lead} ({'; '.join(parts)})"


def overfitting(baseline):
    """The no-decay reference where it fits its training set: does it overfit?

    Read at the learning rate that ends with the lowest test error among
    those whose training loss ends below NEAR_ZERO_LOSS, or, where none
    does, at the one that ends with the lowest training loss: the training
    loss at the end, and how far the test error and loss end above the
    lowest point of their seed-mean curves (paired over seeds). The learning
    rate with the lowest final test error overall is reported beside it.
    """
    curves = {k: np.asarray(v) for k, v in baseline["curves"].items()}
    final_error = curves["test_error"][-1].mean(axis=-1)[:, 0]  # per lr
    final_loss = curves["train_loss"][-1].mean(axis=-1)[:, 0]
    fits = np.flatnonzero(final_loss < NEAR_ZERO_LOSS)
    if fits.size:
        i = int(fits[np.argmin(final_error[fits])])
    else:
        i = int(np.nanargmin(final_loss))
    out = {"learning_rate": baseline["learning_rates"][i], "lr_index": i}
    out["train_loss_end"] = float(curves["train_loss"][-1, i, 0].mean())
    out["train_error_end"] = float(curves["train_error"][-1, i, 0].mean())
    for key in ("test_error", "test_loss"):
        per_seed = curves[key][:, i, 0, :]  # (evaluations, seeds)
        low = int(np.argmin(per_seed.mean(axis=1)))
        rise = per_seed[-1] - per_seed[low]
        mean, lo, hi = mean_interval(rise)
        out[key] = {
            "lowest": float(per_seed[low].mean()),
            "lowest_step": baseline["curve_steps"][low],
            "end": float(per_seed[-1].mean()),
            "rise": mean,
            "rise_ci95": [lo, hi],
        }
    out["train_loss_near_zero"] = out["train_loss_end"] < NEAR_ZERO_LOSS
    # The learning rate that ends with the lowest test error, for contrast.
    k = int(np.argmin(final_error))
    out["best_final"] = {
        "learning_rate": baseline["learning_rates"][k],
        "train_loss_end": float(final_loss[k]),
        "test_error_end": float(final_error[k]),
    }
    lo = out["test_error"]["rise_ci95"][0]
    out["test_error_rises"] = lo is not None and lo > 0
    lo = out["test_loss"]["rise_ci95"][0]
    out["test_loss_rises"] = lo is not None and lo > 0
    return out


def decay_gain(baseline, entry):
    """Best no-decay Adam cell minus the variant's best cell, paired by seed."""
    curves = np.asarray(baseline["curves"]["test_error"])[-1][:, 0, :]  # (lr, seed)
    i = int(np.argmin(curves.mean(axis=1)))
    best = np.asarray(entry["test_error_per_seed"])[
        entry["best"]["lr_index"], entry["best"]["wd_index"]
    ]
    mean, low, high = mean_interval(curves[i] - best)
    return {"difference": mean, "ci95": [low, high]}


def overfitting_sentence(summary):
    """One sentence per schedule on the two facts the study depends on."""
    lines = []
    for schedule, block in summary["schedules"].items():
        if "overfitting" not in block:
            continue
        o = block["overfitting"]
        err, loss = o["test_error"], o["test_loss"]
        fit = (
            f"goes to about zero (below {NEAR_ZERO_LOSS})"
            if o["train_loss_near_zero"]
            else f"does not go to about zero (it stays above {NEAR_ZERO_LOSS})"
        )
        rises = "rises" if o["test_error_rises"] else "does not rise measurably"
        loss_rises = "rises" if o["test_loss_rises"] else "does not rise measurably"
        lines.append(
            f"- **{schedule} schedule**, learning rate {o['learning_rate']:.1e}: "
            f"the training loss {fit}: {o['train_loss_end']:.1e} at the end, "
            f"training error {100 * o['train_error_end']:.1f}%. The test error "
            f"{rises}: {100 * err['lowest']:.2f}% at step {err['lowest_step']}, "
            f"its lowest, and {100 * err['end']:.2f}% at the end, a change of "
            f"{100 * err['rise']:+.2f} points {_fmt_interval(err['rise_ci95'], 100)}. "
            f"The test loss {loss_rises}: from {loss['lowest']:.2f} at step "
            f"{loss['lowest_step']} to {loss['end']:.2f}, "
            f"{loss['rise']:+.2f} {_fmt_interval(loss['rise_ci95'])}."
        )
        best = o.get("best_final")
        if best and best["learning_rate"] != o["learning_rate"]:
            lines[-1] += (
                f" The learning rate that ends with the lowest test error, "
                f"{best['learning_rate']:.1e}, ends with a training loss of "
                f"{best['train_loss_end']:.1e} and a test error of "
                f"{100 * best['test_error_end']:.2f}%."
            )
    return "\n".join(lines)


def decay_matters_sentence(summary):
    """Per schedule: the best decayed Adam cell against Adam without decay."""
    lines = []
    for schedule, block in summary["schedules"].items():
        gains = block.get("decay_gain")
        if not gains:
            continue
        entries = block["variants"]
        name = min(gains, key=lambda n: entries[n]["best"]["test_error_mean"])
        gain = gains[name]
        low, high = gain["ci95"]
        if low is not None and low > 0:
            verdict = "the decay matters"
        elif high is not None and high < 0:
            verdict = "the decay hurts"
        else:
            verdict = "no difference is detectable"
        lines.append(
            f"- **{schedule} schedule**: `{name}` at its best cell, "
            f"{100 * entries[name]['best']['test_error_mean']:.2f}%, against "
            f"{100 * block['overfitting']['best_final']['test_error_end']:.2f}% "
            "without "
            f"decay: {100 * gain['difference']:+.2f} points "
            f"{_fmt_interval(gain['ci95'], 100)} in favour of the decay; "
            f"{verdict}."
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# figures


# Figure sizes: every figure is 7 inches wide, about the width of a page's
# text column (640 to 700 px), so that text of 10 points reads at 12 to 14 px
# there; it is saved at 150 dpi (1050 px wide) and each page links the figure
# to itself, so that a click opens it at that larger size.
FIG_WIDTH = 7.0
FIG_DPI = 150
FONT = {"tick": 10.0, "label": 10.0, "title": 10.5, "suptitle": 11.5}
SLOPE_CAPTION = (
    "Valley slope: d log(best decay) / d log(learning rate) along the valley "
    "of a quadratic surface fitted to the log test error (rows whose best "
    "cell is within 2x the grid's best). 0: the best decay does not move "
    "with the learning rate (separable); -1: lr x wd is what matters; "
    "+1: wd / lr is."
)


def _sci(value):
    """Two significant digits, as in the tables: 2.7e-02."""
    return f"{value:.1e}"


def _wrap(text, width):
    """Lines of at most `width` characters, broken before a bracket if one is."""
    if len(text) <= width or " (" not in text:
        return textwrap.fill(text, width)
    head, tail = text.rsplit(" (", 1)
    return _wrap(head, width) + "\n(" + tail


def _caption(fig, text, width=84):
    """Text under the panels, wrapped to the figure's width."""
    fig.text(
        0.5,
        0.0,
        textwrap.fill(text, width),
        ha="center",
        va="top",
        fontsize=FONT["label"],
        color="0.15",
    )


def plot_heatmaps(entries, path, title, key="test_error_mean", kind="error"):
    """One panel per variant over its lr x wd grid, two panels to a row.

    kind "error": one log colour scale for every panel, from the best cell
    of all grids to three times that; "gap": a linear one from 0. Ticks
    carry two significant digits, as the tables do, the colour bar's the
    tables' decimals, and a caption under the panels says what the marks
    and the valley slope mean.
    """
    names = list(entries)
    values = [np.array(entries[n][key]) for n in names]
    if kind == "error":
        low = max(min(v.min() for v in values), 1e-3)
        high = 3 * low
        norm, cmap = LogNorm(vmin=low, vmax=high), "viridis_r"
        label = "test error, mean over seeds (darkest: 3x the best or worse)"
        ticks, decimals = np.geomspace(low, high, 5), 2
    else:
        low, high = 0.0, max(max(v.max() for v in values), 1e-3)
        norm, cmap = Normalize(vmin=low, vmax=high), "magma"
        label = "test error - training error, mean over seeds"
        ticks, decimals = np.linspace(low, high, 5), 1
    cols = 2
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(FIG_WIDTH, 3.35 * rows + 1.0),
        dpi=FIG_DPI,
        layout="constrained",
        squeeze=False,
    )
    image = None
    for index, (ax, name, value) in enumerate(
        zip(axes.ravel(), names, values, strict=False)
    ):
        entry = entries[name]
        image = ax.imshow(
            np.clip(value, low, high),
            origin="lower",
            cmap=cmap,
            norm=norm,
            aspect="auto",
        )
        lrs, wds = entry["learning_rates"], entry["weight_decays"]
        ax.set_xticks(
            range(len(wds)),
            [_sci(w) for w in wds],
            rotation=45,
            ha="right",
            rotation_mode="anchor",
            fontsize=FONT["tick"],
        )
        ax.set_yticks(range(len(lrs)), [_sci(v) for v in lrs], fontsize=FONT["tick"])
        ax.set_xlabel(
            _wrap(f"weight decay ({entry['decay_meaning']})", 40),
            fontsize=FONT["label"],
        )
        if index % cols == 0:
            ax.set_ylabel("base learning rate", fontsize=FONT["label"])
        tilt_text = "n/a" if entry["tilt"] is None else f"{entry['tilt']:+.2f}"
        ax.set_title(
            f"{name}: valley slope {tilt_text}\n{_wrap(entry['label'], 40)}",
            fontsize=FONT["title"],
        )
        best = entry["best"]
        ax.plot(
            best["wd_index"],
            best["lr_index"],
            marker="*",
            color="red",
            mec="white",
            mew=0.8,
            ms=16,
        )
        mean = np.array(entry["test_error_mean"])
        for i in range(len(lrs)):
            j = int(np.argmin(mean[i]))
            ax.plot(j, i, marker="o", mfc="none", mec="white", mew=1.5, ms=7, lw=0)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    bar = fig.colorbar(
        image,
        ax=axes.ravel().tolist(),
        extend="max" if kind == "error" else "neither",
        location="bottom",
        shrink=0.7,
        aspect=35,
        pad=0.01,
    )
    bar.set_ticks(ticks, labels=[f"{100 * t:.{decimals}f}%" for t in ticks])
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=FONT["tick"])
    bar.set_label(label, fontsize=FONT["label"])
    fig.suptitle(textwrap.fill(title, 75), fontsize=FONT["suptitle"])
    _caption(
        fig,
        "Red star: the cell with the lowest mean test error. White circles: "
        "in each row (each learning rate), the decay with the lowest mean "
        "test error. " + SLOPE_CAPTION,
    )
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_slopes(summary, path):
    """Valley and breakdown slopes with their bootstrap intervals."""
    schedules = list(summary["schedules"])
    n_variants = max(len(b["variants"]) for b in summary["schedules"].values())
    fig, axes = plt.subplots(
        1,
        len(schedules),
        figsize=(FIG_WIDTH, 1.4 + 0.42 * n_variants),
        dpi=FIG_DPI,
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, schedule in zip(axes[0], schedules, strict=True):
        entries = summary["schedules"][schedule]["variants"]
        names = list(entries)
        ax.axvspan(-SEPARABLE, SEPARABLE, color="0.92", zorder=0)
        for x in (-1, 0, 1):
            ax.axvline(x, color="0.6", lw=0.8, ls="--" if x else "-")
        # no legend, which would hide some interval: the caption names colours
        for key, ci_key, colour, offset in (
            ("tilt", "tilt_ci95", "tab:blue", -0.15),
            ("breakdown_slope", "breakdown_ci95", "tab:orange", 0.15),
        ):
            for row, name in enumerate(names):
                value, ci = entries[name][key], entries[name][ci_key]
                if value is None:
                    continue
                err = None
                if ci[0] is not None:
                    err = [[max(value - ci[0], 0)], [max(ci[1] - value, 0)]]
                ax.errorbar(
                    value,
                    row + offset,
                    xerr=err,
                    fmt="o",
                    color=colour,
                    capsize=3,
                )
        ax.set_yticks(range(len(names)), names, fontsize=FONT["tick"])
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=FONT["tick"])
        ax.set_xlabel("d log(best decay) / d log(lr)", fontsize=FONT["label"])
        ax.set_title(f"{schedule} schedule", fontsize=FONT["title"])
    fig.suptitle(
        "Slopes of the basins, 95% bootstrap intervals over seeds",
        fontsize=FONT["suptitle"],
    )
    _caption(
        fig,
        "Blue: valley slope; orange: breakdown slope. "
        f"Grey band: within +-{SEPARABLE}, nearly separable. -1: lr x wd "
        "fixed; +1: wd / lr fixed. " + SLOPE_CAPTION.split(". 0:")[0] + ". "
        "Breakdown slope: the same derivative for the smallest decay whose "
        "error passes 1.5x the row's best.",
    )
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_curves(summary, path):
    """The no-decay reference at its best learning rate, per schedule."""
    fig, axes = plt.subplots(
        1, 3, figsize=(FIG_WIDTH, 3.2), dpi=FIG_DPI, layout="constrained"
    )
    keys = (
        ("train_loss", "training loss", True),
        ("test_error", "test error", False),
        ("test_loss", "test loss", False),
    )
    for schedule, colour in zip(SCHEDULES, ("tab:blue", "tab:orange"), strict=True):
        block = summary["schedules"].get(schedule)
        if block is None or "baseline" not in block:
            continue
        base, o = block["baseline"], block["overfitting"]
        steps = base["curve_steps"]
        for ax, (key, title, log) in zip(axes, keys, strict=True):
            values = np.asarray(base["curves"][key])[:, o["lr_index"], 0, :]
            ax.plot(
                steps,
                values.mean(axis=1),
                color=colour,
                label=f"{schedule}, lr {_sci(o['learning_rate'])}",
            )
            ax.fill_between(
                steps, values.min(axis=1), values.max(axis=1), color=colour, alpha=0.2
            )
            ax.set_title(title, fontsize=FONT["title"])
            ax.set_xlabel("step", fontsize=FONT["label"])
            ax.tick_params(labelsize=FONT["tick"] - 1)
            if log:
                ax.set_yscale("log")
    axes[0].legend(fontsize=FONT["tick"] - 1)
    fig.suptitle(
        textwrap.fill(
            "Adam without weight decay where it fits its training set (the "
            "learning rate in the legend): mean over seeds, band from the "
            "lowest to the highest seed",
            75,
        ),
        fontsize=FONT["suptitle"],
    )
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_shrinkage(shrink, path):
    """Per-weight fraction removed by the decay in one step, coupled vs not.

    The per-weight values are saved beside the figure (shrinkage.npz), so
    that `--replot` can redraw it without training.
    """
    path = pathlib.Path(path)
    np.savez(
        path.with_suffix(".npz"),
        coupled=np.asarray(shrink["coupled"]),
        decoupled=shrink["decoupled"],
        learning_rate=shrink["learning_rate"],
        weight_decay=shrink["weight_decay"],
    )
    fig, ax = plt.subplots(figsize=(FIG_WIDTH, 3.6), dpi=FIG_DPI, layout="constrained")
    coupled = np.asarray(shrink["coupled"])
    bins = np.logspace(np.log10(coupled.min()), np.log10(coupled.max()), 60)
    ax.hist(
        coupled, bins=bins, color="tab:orange", alpha=0.8, label="Adam + L2 (coupled)"
    )
    ax.axvline(
        float(shrink["decoupled"]), color="tab:blue", lw=2.5, label="AdamW (decoupled)"
    )
    ax.set_xscale("log")
    ax.tick_params(labelsize=FONT["tick"])
    ax.set_xlabel(
        "decay step relative to the weight, lr * wd / (sqrt(v_hat) + eps)",
        fontsize=FONT["label"],
    )
    ax.set_ylabel("number of weights", fontsize=FONT["label"])
    ax.set_title(
        f"Learning rate {_sci(float(shrink['learning_rate']))}, "
        f"decay {_sci(float(shrink['weight_decay']))}: "
        "coupled L2 shrinks each weight\nby a different amount",
        fontsize=FONT["title"],
    )
    ax.legend(fontsize=FONT["tick"])
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_digits(summary, out):
    """The digits heatmaps (the shrinkage figure is drawn from its own data)."""
    plot_heatmaps(
        summary["variants"],
        out / "heatmaps.png",
        f"Test error on digits, {summary['seeds']} seeds, {summary['steps']} "
        "steps, cosine schedule",
    )


def replot(out):
    """Redraw a finished run's figures from its files in `out`; trains nothing."""
    out = pathlib.Path(out)
    summary = json.loads((out / "summary.json").read_text())
    if summary["problem"] == "digits":
        plot_digits(summary, out)
        saved = out / "shrinkage.npz"
        if saved.exists():
            with np.load(saved) as data:
                plot_shrinkage(dict(data), out / "shrinkage.png")
        else:
            print(f"{saved} missing (an older run): shrinkage.png kept as drawn")
    else:
        refresh_overfitting(summary)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        write_figures(summary, out)
    return summary


def refresh_overfitting(summary):
    """Recompute each schedule's overfitting check from its stored curves.

    The check reads only the no-decay curves saved in the summary, so that a
    summary written by an older version of it is brought up to date
    without training.
    """
    for block in summary.get("schedules", {}).values():
        if "baseline" in block:
            block["overfitting"] = overfitting(block["baseline"])
    return summary


def shrinkage(trainer, spec_coupled, lr, wd):
    """Train Adam + L2 at one (lr, wd) and read each weight's decay per step.

    Under Adam + L2 the decay term wd * p passes through Adam's division, so
    weight i loses lr * wd / (sqrt(v_hat_i) + eps) of itself per step; under
    AdamW every weight loses lr * wd, by construction. Evaluated at the base
    learning rate with the second moments at the middle of training.
    """
    chunk = trainer.chunk
    half = (trainer.steps // 2 // chunk) * chunk or chunk
    _, _, state = trainer.run_grid(
        spec_coupled, [lr], [wd], [0], steps=half, name="shrinkage"
    )
    adam_state = state.inner_state[1]  # chain(add_decayed_weights, scale_by_adam, lr)
    t = float(adam_state.count[0])
    nu_hat = [leaf[0] / (1 - 0.999**t) for leaf in jax.tree.leaves(adam_state.nu)]
    coupled = np.concatenate([np.ravel(lr * wd / (np.sqrt(n) + 1e-8)) for n in nu_hat])
    return {
        "coupled": coupled,
        "decoupled": lr * wd,
        "learning_rate": lr,
        "weight_decay": wd,
    }


# ----------------------------------------------------------------------------
# main


def run_variants(trainer, specs, grid, seed_list, indices, schedule, total):
    """Every variant's grid under one schedule."""
    entries = {}
    for k, (name, spec) in enumerate(specs.items()):
        if trainer.progress is not None:
            trainer.progress.set_description(f"grid {k + 1 + total[0]}/{total[1]}")
        lrs = np.logspace(*spec["lrs"], grid)
        wds = np.logspace(*spec["wds"], grid)
        result, _, _ = trainer.run_grid(
            spec, lrs, wds, seed_list, name=f"{schedule} {name}"
        )
        started = time.perf_counter()
        entries[name] = summarise_grid(spec, lrs, wds, result, indices)
        trainer.timing["analysis"] = (
            trainer.timing.get("analysis", 0.0) + time.perf_counter() - started
        )
    total[0] += len(specs)
    return entries


def main(
    quick=False,
    out_dir=None,
    docs=False,
    seeds=None,
    steps=None,
    grid=None,
    problem="digits",
    families=None,
    schedules=None,
):
    """Run the study on one problem; return its summary (also saved as json)."""
    study_started, cpu_started = time.perf_counter(), time.process_time()
    problem = study_problems.PROBLEMS[problem]
    sizes = problem.quick if quick else problem.sizes
    sizes = dataclasses.replace(
        sizes,
        seeds=seeds or sizes.seeds,
        steps=steps or sizes.steps,
        grid=grid or sizes.grid,
    )
    steps, grid = sizes.steps, sizes.grid
    chunk = sizes.eval_every if steps % sizes.eval_every == 0 else steps
    families = tuple(families or problem.families)
    schedules = tuple(schedules or problem.schedules)
    demo_ok = schedules == ("cosine",) and "adamw" in families
    if problem.name == "digits" and not demo_ok:
        raise ValueError(
            "the digits demo runs the cosine schedule and the adamw family (its "
            "shrinkage plot reads Adam + L2); other families may be added"
        )
    suffix = "" if problem.name == "digits" else f"_{problem.name}"
    out = pathlib.Path(out_dir or ROOT / "runs" / f"decay_study{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    all_specs = {s: variants(steps, s, families, problem.ranges) for s in schedules}
    data = problem.load_data(sizes)
    seed_list = list(range(sizes.seeds))
    indices = bootstrap_indices(sizes.seeds)
    summary = {
        "problem": problem.name,
        "title": problem.title,
        "dataset": problem.dataset(sizes),
        "model": problem.model(sizes),
        "seeds": sizes.seeds,
        "steps": steps,
        "batch_size": sizes.batch_size,
        "grid": grid,
        "families": list(families),
        "bootstrap_resamples": BOOTSTRAP,
    }
    n_grids = sum(len(v) for v in all_specs.values())
    n_references = len(schedules) if problem.curves else 0
    total_steps = (n_grids + n_references) * steps
    if problem.name == "digits":
        total_steps += (steps // 2 // chunk) * chunk or chunk
    progress = tqdm(total=total_steps, unit="step", unit_scale=True, smoothing=0.0)
    trainer = Trainer(problem, sizes, data, steps, chunk, progress)
    trainer.timing["data"] = time.perf_counter() - study_started
    counter = [0, n_grids + n_references]
    with progress:
        if problem.name == "digits":
            # The demo's layout: one schedule, the variants at the top.
            summary["schedule"] = (
                "cosine decay of the learning rate to 0 over all steps"
            )
            summary["variants"] = run_variants(
                trainer,
                all_specs["cosine"],
                grid,
                seed_list,
                indices,
                "cosine",
                counter,
            )
            best_adam = summary["variants"]["adam_l2"]["best"]
            shrink = shrinkage(
                trainer,
                all_specs["cosine"]["adam_l2"],
                best_adam["learning_rate"],
                best_adam["weight_decay"],
            )
        else:
            summary["schedules"] = {}
            for schedule in schedules:
                block = {}
                if problem.curves:
                    counter[0] += 1
                    progress.set_description(f"grid {counter[0]}/{counter[1]}")
                    block.update(
                        reference_run(trainer, problem, schedule, grid, seed_list)
                    )
                block["variants"] = run_variants(
                    trainer,
                    all_specs[schedule],
                    grid,
                    seed_list,
                    indices,
                    schedule,
                    counter,
                )
                if "baseline" in block:
                    block["decay_gain"] = {
                        name: decay_gain(block["baseline"], entry)
                        for name, entry in block["variants"].items()
                        if name.startswith("adam")
                    }
                summary["schedules"][schedule] = block
            summary["claims"] = claims(summary["schedules"], indices)
    started = time.perf_counter()
    if problem.name == "digits":
        summary["shrinkage"] = {
            "learning_rate": shrink["learning_rate"],
            "weight_decay": shrink["weight_decay"],
            "coupled_quantiles": np.quantile(
                shrink["coupled"], [0.05, 0.5, 0.95]
            ).tolist(),
            "decoupled": shrink["decoupled"],
        }
        plot_digits(summary, out)
        plot_shrinkage(shrink, out / "shrinkage.png")
    else:
        write_figures(summary, out)
    trainer.timing["figures"] = time.perf_counter() - started
    summary["timing"] = {k: round(v, 1) for k, v in trainer.timing.items()}
    summary["seconds"] = round(time.perf_counter() - study_started, 1)
    summary["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_table(summary)
    if docs:
        write_docs(summary, out)
    return summary


def reference_run(trainer, problem, schedule, grid, seed_list):
    """Adam without decay over the Adam learning rates, with its curves."""
    spec = variants(trainer.steps, schedule, ("adamw",), problem.ranges)["adamw"]
    lrs = np.logspace(*spec["lrs"], grid)
    result, _, _ = trainer.run_grid(
        spec, lrs, np.zeros(1), seed_list, curves=True, name=f"{schedule} no decay"
    )
    baseline = {
        "learning_rates": lrs.tolist(),
        "curve_steps": result["curve_steps"],
        "curves": {k: v.tolist() for k, v in result["curves"].items()},
        "test_error_mean": result["test_error"].mean(axis=(1, 2)).tolist(),
    }
    return {"baseline": baseline, "overfitting": overfitting(baseline)}


def write_figures(summary, out):
    """The MNIST-1D figures: heatmaps and gaps per schedule, slopes, curves."""
    for schedule, block in summary["schedules"].items():
        what = (
            f"{summary['seeds']} seeds, {summary['steps']} steps, {schedule} schedule"
        )
        plot_heatmaps(
            block["variants"],
            out / f"heatmaps_{schedule}.png",
            f"Test error on {summary['title']}, {what}",
        )
        plot_heatmaps(
            block["variants"],
            out / f"gap_{schedule}.png",
            f"Train-test gap on {summary['title']}, {what}",
            key="gap_mean",
            kind="gap",
        )
    plot_slopes(summary, out / "slopes.png")
    if any("baseline" in b for b in summary["schedules"].values()):
        plot_curves(summary, out / "curves.png")


def _signed(value):
    return "n/a" if value is None else f"{value:+.2f}"


def _error_cell(best, plus_minus="+-"):
    return (
        f"{100 * best['test_error_mean']:.2f} {plus_minus} "
        f"{100 * best['test_error_std']:.2f}"
    )


def print_table(summary):
    blocks = (
        {"cosine": summary["variants"]}
        if "variants" in summary
        else {s: b["variants"] for s, b in summary["schedules"].items()}
    )
    for schedule, entries in blocks.items():
        print()
        if "schedules" in summary:
            print(f"{schedule} schedule")
        print(
            f"{'variant':<18} {'best lr':>8} {'best wd':>8} {'test error %':>14} "
            f"{'valley':>7} {'breakdown':>9}"
        )
        for name, entry in entries.items():
            best = entry["best"]
            edge = "  (edge)" if best["at_grid_edge"] else ""
            print(
                f"{name:<18} {best['learning_rate']:>8.1e} "
                f"{best['weight_decay']:>8.1e} {_error_cell(best):>14} "
                f"{_signed(entry['tilt']):>7} "
                f"{_signed(entry['breakdown_slope']):>9}{edge}"
            )
    print(
        "valley: slope of log(best decay) against log(learning rate), from a "
        "quadratic fit;\nbreakdown: the same slope for the decay at which the "
        "error reaches 1.5x the row's best.\n0 = separable, -1 = lr * wd "
        "constant, +1 = wd / lr constant."
    )
    if "claims" in summary:
        print()
        print(overfitting_sentence(summary).replace("**", ""))
        print(decay_matters_sentence(summary).replace("**", ""))
        for name in ("adamw", "adamw_multiplier"):
            for claim, words in (
                ("separability", "claim 1, separable basins"),
                ("generalisation", "claim 2, better test error"),
            ):
                print(f"{name}, {words}: {claim_sentence(summary, claim, name)}")
    print(
        f"{summary['dataset']}; {summary['seeds']} seeds x {summary['steps']} steps; "
        f"{summary['seconds']} s ({timing_text(summary)})"
    )


def timing_text(summary):
    t = summary.get("timing", {})
    return ", ".join(f"{k} {v:.0f} s" for k, v in t.items())


# ----------------------------------------------------------------------------
# the page: docs/decay_study.md, one section per problem

# The template holds the digits page, then TEMPLATE_MARK and the template of
# one problem's section, then each problem's heading and introduction after
# an "intro" line. The page holds the digits part, then each other problem's
# section after its own mark, so that each run rewrites its own part and
# keeps the others.
TEMPLATE_MARK = (
    "<!-- problem section template: each problem's run writes one from it -->"
)
# The problems with a section of their own, in the page's order; `make study`
# runs the last.
SECTION_PROBLEMS = ("mnist1d", "noisy_digits")
MAKE_STUDY = "noisy_digits"


def section_mark(name):
    """The line that starts a problem's section on the page."""
    return (
        f"<!-- {name} section: written by "
        f"examples/decay_study.py --problem {name} --docs -->"
    )


def _read_template():
    """(digits part, section template, {problem: heading and introduction})."""
    text = (ROOT / "docs" / "decay_study_template.md").read_text()
    head, rest = text.split(TEMPLATE_MARK, 1)
    section, *blocks = rest.split("<!-- intro ")
    intros = {}
    for block in blocks:
        name, body = block.split(" -->", 1)
        intros[name.strip()] = body.strip("\n")
    return head, section, intros


def _split_page(text):
    """The page's digits part and each problem's section, by their marks."""
    marks = {name: section_mark(name) for name in SECTION_PROBLEMS}
    first = min(
        (text.index(mark) for mark in marks.values() if mark in text),
        default=len(text),
    )
    sections = {}
    for name, mark in marks.items():
        if mark in text:
            body = text.split(mark, 1)[1]
            ends = [body.index(m) for m in marks.values() if m in body]
            sections[name] = body[: min(ends, default=len(body))]
    return text[:first], sections


def not_run(name, intro):
    heading = intro.splitlines()[0]
    return (
        f"\n{heading}\n\nThis section is written by "
        f"`python examples/decay_study.py --problem {name} --docs`; it has not "
        "been run for this page yet.\n"
    )


def write_docs(summary, out, docs_dir=None):
    """The problem's part of docs/decay_study.md and its figures, from this run."""
    docs_dir = pathlib.Path(docs_dir or ROOT / "docs")
    head_template, section_template, intros = _read_template()
    page_path = docs_dir / "decay_study.md"
    old_head, sections = (
        _split_page(page_path.read_text()) if page_path.exists() else ("", {})
    )
    name = summary["problem"]
    refresh_overfitting(summary)
    if name == "digits":
        head = render_digits(summary, out, head_template, docs_dir)
    else:
        head = old_head if old_head.strip() else "# The weight-decay study\n\n"
        sections[name] = render_section(
            summary, out, section_template, intros[name], docs_dir
        )
    parts = [head.rstrip("\n") + "\n"]
    for problem in SECTION_PROBLEMS:
        body = sections.get(problem) or not_run(problem, intros[problem])
        parts.append(section_mark(problem) + "\n" + body.strip("\n") + "\n")
    page_path.write_text("\n".join(parts))


def render_digits(summary, out, template, docs_dir):
    image_dir = docs_dir / "img" / "decay_study"
    image_dir.mkdir(parents=True, exist_ok=True)
    for name in ("heatmaps.png", "shrinkage.png"):
        (image_dir / name).write_bytes((out / name).read_bytes())
    rows = []
    for name, entry in summary["variants"].items():
        best = entry["best"]
        rows.append(
            f"| `{name}` | {entry['label']} | {entry['decay_meaning']} | "
            f"{best['learning_rate']:.1e} | {best['weight_decay']:.1e} | "
            f"{_error_cell(best, '±')} | "
            f"{_signed(entry['tilt'])} | {_signed(entry['breakdown_slope'])} |"
        )
    slopes = {}
    for name, entry in summary["variants"].items():
        short = name.replace("adamw_", "")
        slopes[f"{short}_tilt"] = _signed(entry["tilt"])
        slopes[f"{short}_breakdown"] = _signed(entry["breakdown_slope"])
    return template.format(
        **slopes,
        table="\n".join(rows),
        dataset=summary["dataset"],
        model=summary["model"],
        seeds=summary["seeds"],
        steps=summary["steps"],
        seconds=summary["seconds"],
        shrink_lr=f"{summary['shrinkage']['learning_rate']:.1e}",
        shrink_wd=f"{summary['shrinkage']['weight_decay']:.1e}",
        shrink_low=f"{summary['shrinkage']['coupled_quantiles'][0]:.1e}",
        shrink_mid=f"{summary['shrinkage']['coupled_quantiles'][1]:.1e}",
        shrink_high=f"{summary['shrinkage']['coupled_quantiles'][2]:.1e}",
        shrink_decoupled=f"{summary['shrinkage']['decoupled']:.1e}",
        shrink_spread=_spread(summary["shrinkage"]["coupled_quantiles"]),
    )


def _spread(quantiles):
    """How many times the 95th percentile exceeds the 5th, to two digits."""
    ratio = float(f"{quantiles[2] / quantiles[0]:.2g}")
    return f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.1f}"


def results_table(summary, schedule):
    block = summary["schedules"][schedule]
    gains = block.get("decay_gain", {})
    rows = [
        "| variant | decay | best lr | best wd | test error % (mean, 95% interval) "
        "| train-test gap % | gain over no decay (points) | valley slope | "
        "breakdown slope |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in block["variants"].items():
        best = entry["best"]
        low, high = best["test_error_ci95"]
        ci = "" if low is None else f" [{100 * low:.2f}, {100 * high:.2f}]"
        edge = " (edge)" if best["at_grid_edge"] else ""
        gain = gains.get(name)
        gain_text = (
            ""
            if gain is None
            else f"{100 * gain['difference']:+.2f} {_fmt_interval(gain['ci95'], 100)}"
        )
        rows.append(
            f"| `{name}` | {entry['decay_meaning']} | {best['learning_rate']:.1e} | "
            f"{best['weight_decay']:.1e}{edge} | "
            f"{100 * best['test_error_mean']:.2f}{ci} | {100 * best['gap_mean']:.1f} | "
            f"{gain_text} | {_fmt_slope(entry['tilt'], entry['tilt_ci95'])} | "
            f"{_fmt_slope(entry['breakdown_slope'], entry['breakdown_ci95'])} |"
        )
    return "\n".join(rows)


def pairs_table(summary):
    rows = [
        "| schedule | decoupled | coupled | coupled minus decoupled, best test "
        "error (points, 95% interval) | decoupled generalises better | "
        "abs(coupled slope) minus abs(decoupled slope) | decoupling separates |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for schedule, per in summary["claims"].items():
        for name, c in per.items():
            paired = c["generalisation"]["coupled_minus_decoupled"]
            gap = c["separability"]["abs_slope_difference"]
            rows.append(
                f"| {schedule} | `{name}` | `{c['coupled']}` | "
                f"{100 * paired['difference']:+.2f} "
                f"{_fmt_interval(paired['ci95'], 100)} | "
                f"{VERDICT_SHORT[c['generalisation']['verdict']]} | "
                f"{_signed(gap['difference'])} {_fmt_interval(gap['ci95'])} | "
                f"{VERDICT_SHORT[c['separability']['verdict']]} |"
            )
    return "\n".join(rows)


def render_section(summary, out, template, intro, docs_dir):
    """A problem's section of the page, and its figures copied beside it."""
    name = summary["problem"]
    images = f"decay_study_{name}"
    image_dir = docs_dir / "img" / images
    image_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(out.glob("*.png")):
        (image_dir / path.name).write_bytes(path.read_bytes())
    schedules = list(summary["schedules"])
    figures = []
    for schedule in schedules:
        for stem, what in (("heatmaps", "Test error"), ("gap", "Train-test gap")):
            image = f"img/{images}/{stem}_{schedule}.png"
            # linked to itself: a click opens the figure at full size
            figures.append(
                f"[![{what} over the grids, {schedule} schedule]({image})]({image})"
            )
    tables = "\n\n".join(
        f"**{schedule} schedule**\n\n{results_table(summary, schedule)}"
        for schedule in schedules
    )
    names = ", ".join(
        f"`{n}`" for n in next(iter(summary["schedules"].values()))["variants"]
    )
    script = f"python examples/decay_study.py --problem {name} --docs"
    command = f"`make study` (or `{script}`)" if name == MAKE_STUDY else f"`{script}`"
    heading, _, intro = intro.partition("\n")
    return template.format(
        heading=heading,
        intro=intro.strip("\n"),
        command=command,
        sizes_name=f"{name.upper()}_SIZES",
        images=images,
        near_zero=NEAR_ZERO_LOSS,
        dataset=summary["dataset"],
        model=summary["model"],
        seeds=summary["seeds"],
        steps=summary["steps"],
        batch_size=summary["batch_size"],
        grid=summary["grid"],
        schedules=" and ".join(schedules),
        variants=names,
        seconds=summary["seconds"],
        minutes=f"{summary['seconds'] / 60:.0f}",
        timing=timing_text(summary),
        overfitting=overfitting_sentence(summary),
        decay_matters=decay_matters_sentence(summary),
        claim1_adamw=claim_sentence(summary, "separability", "adamw"),
        claim1_multiplier=claim_sentence(summary, "separability", "adamw_multiplier"),
        claim2_adamw=claim_sentence(summary, "generalisation", "adamw"),
        claim2_multiplier=claim_sentence(summary, "generalisation", "adamw_multiplier"),
        heatmaps="\n\n".join(figures),
        tables=tables,
        pairs=pairs_table(summary),
        separable=SEPARABLE,
        bootstrap=summary["bootstrap_resamples"],
        quick=quick_text(study_problems.PROBLEMS[summary["problem"]].quick),
    )


def quick_text(sizes):
    return (
        f"{sizes.grid} x {sizes.grid} grids, {sizes.seeds} seeds and "
        f"{sizes.steps} steps"
    )


def parse_list(text, allowed, what):
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {sorted(allowed)}")
    return items


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problem", choices=sorted(study_problems.PROBLEMS), default="digits"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller grids, fewer steps and seeds"
    )
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--grid", type=int, default=None, help="points per grid axis")
    parser.add_argument(
        "--families",
        default=None,
        help=f"comma-separated, from {', '.join(FAMILIES)} (default: the problem's)",
    )
    parser.add_argument(
        "--schedules",
        default=None,
        help="comma-separated, from cosine, constant (default: the problem's)",
    )
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument(
        "--docs", action="store_true", help="also write docs/decay_study.md"
    )
    parser.add_argument(
        "--docs-only",
        action="store_true",
        help="rewrite docs/decay_study.md from the last run's files, without training",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="redraw the last run's figures from its files, without training "
        "(with --docs, then rewrite docs/decay_study.md and its figures)",
    )
    args = parser.parse_args()
    if args.docs_only or args.replot:
        suffix = "" if args.problem == "digits" else f"_{args.problem}"
        out = pathlib.Path(args.out or ROOT / "runs" / f"decay_study{suffix}")
        if args.replot:
            replot(out)
        if args.docs_only or args.docs:
            write_docs(json.loads((out / "summary.json").read_text()), out)
    else:
        main(
            quick=args.quick,
            out_dir=args.out,
            docs=args.docs,
            seeds=args.seeds,
            steps=args.steps,
            grid=args.grid,
            problem=args.problem,
            families=args.families and parse_list(args.families, FAMILIES, "family"),
            schedules=args.schedules
            and parse_list(args.schedules, SCHEDULES, "schedule"),
        )
