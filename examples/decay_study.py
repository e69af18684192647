"""Coupled versus decoupled weight decay: a learning-rate x decay grid study.

Loshchilov and Hutter (Decoupled Weight Decay Regularization, ICLR 2019)
found that with L2 folded into the gradient the best learning rate and decay
lie on a diagonal of the grid, while decoupled decay makes them nearly
separable. This script repeats the experiment on a small scale: an MLP on
scikit-learn's bundled 8x8 digits, a grid of learning rates x decay
strengths for six ways of applying weight decay, several seeds each, with a
cosine learning-rate schedule. Every grid is one `jax.vmap` over optimizers
whose learning rate and decay live in their state (`inject_hyperparams`).

`make demo` installs the example extras and runs this script. To run it
again, `.venv/bin/python examples/decay_study.py` (about 2-4 minutes on 2 CPU
cores), or with `--quick` (under a minute); in another environment, install
the extras first with `pip install -e '.[examples]'`. Results go to
runs/decay_study/: summary.json, heatmaps.png and shrinkage.png; a table of
the best cell per variant is printed. `--docs` also writes
docs/decay_study.md and its figures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from tqdm import tqdm

import gradtx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------
# the six variants: each maps (base learning rate, decay) to an optimizer


def variants(steps: int) -> dict[str, dict]:
    """Name -> factory, label, what the decay means, and the grid ranges."""
    cosine = gradtx.cosine_decay_schedule(1.0, steps)

    def times_cosine(learning_rate):
        return lambda t: learning_rate * cosine(t)

    def adam_l2(learning_rate, weight_decay):
        return gradtx.adam_l2(times_cosine(learning_rate), weight_decay=weight_decay)

    def adamw(learning_rate, weight_decay):
        return gradtx.adamw(times_cosine(learning_rate), weight_decay=weight_decay)

    def adamw_multiplier(learning_rate, weight_decay):
        return gradtx.adamw_multiplier(
            learning_rate, weight_decay=weight_decay, schedule=cosine
        )

    def adamw_independent(learning_rate, weight_decay):
        return gradtx.adamw_independent(
            times_cosine(learning_rate), weight_decay=weight_decay
        )

    def sgd_l2(learning_rate, weight_decay):
        return gradtx.sgd_l2(
            times_cosine(learning_rate), weight_decay=weight_decay, momentum=0.9
        )

    def sgdw(learning_rate, weight_decay):
        return gradtx.sgdw(
            times_cosine(learning_rate), weight_decay=weight_decay, momentum=0.9
        )

    # Log10 ranges, chosen so that every grid runs from "no visible effect"
    # to "decay too strong" at every learning rate, and the learning rates
    # from too slow to the edge of divergence.
    adam_lrs = (-3.0, -1.0)
    sgd_lrs = (-2.0, -0.25)
    return {
        "adam_l2": dict(
            factory=adam_l2,
            label="Adam + L2 (coupled)",
            decay="L2 coefficient, added to the gradient",
            lrs=adam_lrs,
            wds=(-5.0, -0.5),
        ),
        "adamw": dict(
            factory=adamw,
            label="AdamW, decay x learning rate (torch, optax)",
            decay="per step: lr_t * wd",
            lrs=adam_lrs,
            wds=(-2.0, 1.5),
        ),
        "adamw_multiplier": dict(
            factory=adamw_multiplier,
            label="AdamW, decay x schedule (paper, Alg. 2)",
            decay="per step: eta_t * wd",
            lrs=adam_lrs,
            wds=(-5.0, -0.5),
        ),
        "adamw_independent": dict(
            factory=adamw_independent,
            label="Adam, independent decay",
            decay="per step: wd",
            lrs=adam_lrs,
            wds=(-5.5, -1.0),
        ),
        "sgd_l2": dict(
            factory=sgd_l2,
            label="SGD momentum + L2 (coupled)",
            decay="L2 coefficient, added to the gradient",
            lrs=sgd_lrs,
            wds=(-5.0, -0.5),
        ),
        "sgdw": dict(
            factory=sgdw,
            label="SGDW, decay x learning rate",
            decay="per step: lr_t * wd",
            lrs=sgd_lrs,
            wds=(-4.0, 0.5),
        ),
    }


# ----------------------------------------------------------------------------
# data and model


def load_data(n_train: int, seed: int = 0):
    """Digits scaled to [0, 1]; a fixed split with a small training set."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:n_train], order[n_train:]
    return (jnp.asarray(x[train]), jnp.asarray(y[train])), (
        jnp.asarray(x[test]),
        jnp.asarray(y[test]),
    )


def init_mlp(key, sizes=(64, 128, 10)):
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        w = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in)
        params.append({"w": w, "b": jnp.zeros(n_out)})
    return params


def logits(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
    return x @ params[-1]["w"] + params[-1]["b"][None, :]


def loss_fn(params, x, y):
    log_p = jax.nn.log_softmax(logits(params, x))
    return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))


def error_rate(params, x, y):
    return jnp.mean(jnp.argmax(logits(params, x), axis=1) != y)


# ----------------------------------------------------------------------------
# one grid: every (learning rate, decay, seed) trained at once under vmap


def run_grid(spec, lrs, wds, seeds, steps, batch_size, data, chunk, progress):
    (x_train, y_train), (x_test, y_test) = data
    opt = gradtx.inject_hyperparams(spec["factory"])(
        learning_rate=0.0, weight_decay=0.0
    )
    grid_lr, grid_wd, grid_seed = (
        a.ravel() for a in np.meshgrid(lrs, wds, seeds, indexing="ij")
    )

    def init_run(lr, wd, seed):
        params = init_mlp(jax.random.key(seed))
        state = opt.init(params)
        hyperparams = {"learning_rate": lr, "weight_decay": wd}
        return params, state._replace(hyperparams=hyperparams)

    def train_steps(params, state, seed, first_step):
        def one_step(carry, t):
            params, state = carry
            key = jax.random.fold_in(jax.random.key(seed + 1000), t)
            idx = jax.random.randint(key, (batch_size,), 0, x_train.shape[0])
            grads = jax.grad(loss_fn)(params, x_train[idx], y_train[idx])
            updates, state = opt.update(grads, state, params)
            return (gradtx.apply_updates(params, updates), state), None

        ts = first_step + jnp.arange(chunk)
        (params, state), _ = jax.lax.scan(one_step, (params, state), ts)
        return params, state

    as_f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    seeds_arr = jnp.asarray(grid_seed, jnp.int32)
    params, state = jax.vmap(init_run)(as_f32(grid_lr), as_f32(grid_wd), seeds_arr)
    train = jax.jit(
        jax.vmap(train_steps, in_axes=(0, 0, 0, None)), donate_argnums=(0, 1)
    )
    for first in range(0, steps, chunk):
        params, state = train(params, state, seeds_arr, first)
        progress.update(1)
    errors = jax.vmap(error_rate, in_axes=(0, None, None))(params, x_test, y_test)
    train_loss = jax.vmap(loss_fn, in_axes=(0, None, None))(params, x_train, y_train)
    shape = (len(lrs), len(wds), len(seeds))
    return (
        np.asarray(errors).reshape(shape),
        np.asarray(train_loss).reshape(shape),
        params,
        state,
    )


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
    z = np.log(mean_error[rows])
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


# ----------------------------------------------------------------------------
# figures


def plot_heatmaps(summary, path):
    names = list(summary["variants"])
    means = [np.array(summary["variants"][n]["test_error_mean"]) for n in names]
    # One colour scale for every panel, from the best cell of all grids to
    # three times that: the basins' shapes show, failed cells saturate.
    low = max(min(m.min() for m in means), 1e-3)
    high = 3 * low
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.8 * cols, 4.6 * rows), dpi=110, layout="constrained"
    )
    norm = LogNorm(vmin=low, vmax=high)
    for ax, name, mean in zip(axes.ravel(), names, means, strict=False):
        entry = summary["variants"][name]
        image = ax.imshow(
            np.clip(mean, low, high),
            origin="lower",
            cmap="viridis_r",
            norm=norm,
            aspect="auto",
        )
        lrs, wds = entry["learning_rates"], entry["weight_decays"]
        ax.set_xticks(
            range(len(wds)), [f"{w:.0e}" for w in wds], rotation=60, fontsize=7
        )
        ax.set_yticks(range(len(lrs)), [f"{v:.0e}" for v in lrs], fontsize=7)
        ax.set_xlabel(f"weight decay ({entry['decay_meaning']})", fontsize=8)
        ax.set_ylabel("base learning rate", fontsize=8)
        tilt_text = "n/a" if entry["tilt"] is None else f"{entry['tilt']:+.2f}"
        ax.set_title(f"{entry['label']}\nvalley slope {tilt_text}", fontsize=9)
        best = entry["best"]
        ax.plot(best["wd_index"], best["lr_index"], marker="*", color="red", ms=12)
        for i in range(len(lrs)):
            j = int(np.argmin(mean[i]))
            ax.plot(j, i, marker="o", mfc="none", mec="white", ms=6, lw=0)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.colorbar(
        image,
        ax=axes.ravel().tolist(),
        extend="max",
        label="test error, mean over seeds (darkest: 3x the best or worse)",
    )
    fig.suptitle(
        f"Test error on digits, {summary['seeds']} seeds, {summary['steps']} steps "
        "(star: best cell; circles: best decay per learning rate)",
        fontsize=10,
    )
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_shrinkage(shrink, path):
    """Per-weight fraction removed by the decay in one step, coupled vs not."""
    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=110)
    coupled = shrink["coupled"]
    bins = np.logspace(np.log10(coupled.min()), np.log10(coupled.max()), 60)
    ax.hist(
        coupled, bins=bins, color="tab:orange", alpha=0.8, label="Adam + L2 (coupled)"
    )
    ax.axvline(shrink["decoupled"], color="tab:blue", lw=2.5, label="AdamW (decoupled)")
    ax.set_xscale("log")
    ax.set_xlabel("decay step relative to the weight, lr * wd / (sqrt(v_hat) + eps)")
    ax.set_ylabel("number of weights")
    ax.set_title(
        f"Learning rate {shrink['learning_rate']:.0e}, "
        f"decay {shrink['weight_decay']:.0e}: "
        "coupled L2 shrinks each weight by a different amount",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def shrinkage(
    spec_coupled, spec_decoupled, lr, wd, steps, batch_size, data, chunk, progress
):
    """Train both at one (lr, wd) and read each weight's decay per step.

    Under Adam + L2 the decay term wd * p passes through Adam's division, so
    weight i loses lr * wd / (sqrt(v_hat_i) + eps) of itself per step; under
    AdamW every weight loses lr * wd. Evaluated at the base learning rate with
    the second moments at the middle of training.
    """
    half = (steps // 2 // chunk) * chunk or chunk
    _, _, _, state = run_grid(
        spec_coupled, [lr], [wd], [0], half, batch_size, data, chunk, progress
    )
    adam_state = state.inner_state[1]  # chain(add_decayed_weights, scale_by_adam, lr)
    t = float(adam_state.count[0])
    nu_hat = [leaf[0] / (1 - 0.999**t) for leaf in jax.tree.leaves(adam_state.nu)]
    coupled = np.concatenate([np.ravel(lr * wd / (np.sqrt(n) + 1e-8)) for n in nu_hat])
    del spec_decoupled  # AdamW's shrink is lr * wd for every weight, by construction
    return {
        "coupled": coupled,
        "decoupled": lr * wd,
        "learning_rate": lr,
        "weight_decay": wd,
    }


# ----------------------------------------------------------------------------
# main


def main(quick=False, out_dir=None, docs=False, seeds=3, steps=None, grid=None):
    steps = steps or (400 if quick else 1000)
    grid = grid or (6 if quick else 8)
    chunk = 100 if steps % 100 == 0 else steps
    batch_size, n_train = 64, 400
    out = pathlib.Path(out_dir or ROOT / "runs" / "decay_study")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(n_train)
    specs = variants(steps)
    seed_list = list(range(seeds))
    started = time.perf_counter()
    summary = {
        "dataset": f"scikit-learn digits (8x8), {n_train} training / "
        f"{1797 - n_train} test images",
        "model": "MLP 64-128-10, ReLU, softmax cross-entropy",
        "seeds": seeds,
        "steps": steps,
        "batch_size": batch_size,
        "schedule": "cosine decay of the learning rate to 0 over all steps",
        "variants": {},
    }
    total = len(specs) * (steps // chunk) + (steps // 2 // chunk or 1)
    with tqdm(total=total, desc="training grids", unit="chunk") as progress:
        for name, spec in specs.items():
            lrs = np.logspace(*spec["lrs"], grid)
            wds = np.logspace(*spec["wds"], grid)
            errors, train_loss, _, _ = run_grid(
                spec, lrs, wds, seed_list, steps, batch_size, data, chunk, progress
            )
            mean, std = errors.mean(axis=2), errors.std(axis=2)
            i, j = np.unravel_index(np.argmin(mean), mean.shape)
            slope = tilt(lrs, wds, mean)
            summary["variants"][name] = {
                "label": spec["label"],
                "decay_meaning": spec["decay"],
                "learning_rates": lrs.tolist(),
                "weight_decays": wds.tolist(),
                "test_error_mean": mean.tolist(),
                "test_error_std": std.tolist(),
                "train_loss_mean": train_loss.mean(axis=2).tolist(),
                "best": {
                    "learning_rate": float(lrs[i]),
                    "weight_decay": float(wds[j]),
                    "lr_index": int(i),
                    "wd_index": int(j),
                    "test_error_mean": float(mean[i, j]),
                    "test_error_std": float(std[i, j]),
                    "at_grid_edge": bool(j in (0, grid - 1) or i in (0, grid - 1)),
                },
                "tilt": slope,
                "breakdown_slope": breakdown_slope(lrs, wds, mean),
                "best_decay_per_lr": [float(wds[int(np.argmin(r))]) for r in mean],
            }
        best_adam = summary["variants"]["adam_l2"]["best"]
        shrink = shrinkage(
            specs["adam_l2"],
            specs["adamw"],
            best_adam["learning_rate"],
            best_adam["weight_decay"],
            steps,
            batch_size,
            data,
            chunk,
            progress,
        )
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["shrinkage"] = {
        "learning_rate": shrink["learning_rate"],
        "weight_decay": shrink["weight_decay"],
        "coupled_quantiles": np.quantile(shrink["coupled"], [0.05, 0.5, 0.95]).tolist(),
        "decoupled": shrink["decoupled"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_heatmaps(summary, out / "heatmaps.png")
    plot_shrinkage(shrink, out / "shrinkage.png")
    print_table(summary)
    if docs:
        write_docs(summary, out)
    return summary


def _signed(value):
    return "n/a" if value is None else f"{value:+.2f}"


def print_table(summary):
    print()
    print(
        f"{'variant':<18} {'best lr':>8} {'best wd':>8} {'test error %':>14} "
        f"{'valley':>7} {'breakdown':>9}"
    )
    for name, entry in summary["variants"].items():
        best = entry["best"]
        error = (
            f"{100 * best['test_error_mean']:.2f} +- {100 * best['test_error_std']:.2f}"
        )
        edge = "  (edge)" if best["at_grid_edge"] else ""
        print(
            f"{name:<18} {best['learning_rate']:>8.1e} {best['weight_decay']:>8.1e} "
            f"{error:>14} {_signed(entry['tilt']):>7} "
            f"{_signed(entry['breakdown_slope']):>9}{edge}"
        )
    print(
        "valley: slope of log(best decay) against log(learning rate), from a "
        "quadratic fit;\nbreakdown: the same slope for the decay at which the "
        "error reaches 1.5x the row's best.\n0 = separable, -1 = lr * wd "
        "constant, +1 = wd / lr constant."
    )
    print(
        f"{summary['dataset']}; {summary['seeds']} seeds x {summary['steps']} steps; "
        f"{summary['seconds']} s"
    )


def write_docs(summary, out):
    """docs/decay_study.md and its figures, from this run (no hand-edited numbers)."""
    image_dir = ROOT / "docs" / "img" / "decay_study"
    image_dir.mkdir(parents=True, exist_ok=True)
    for name in ("heatmaps.png", "shrinkage.png"):
        (image_dir / name).write_bytes((out / name).read_bytes())
    rows = []
    for name, entry in summary["variants"].items():
        best = entry["best"]
        error = (
            f"{100 * best['test_error_mean']:.2f} ± {100 * best['test_error_std']:.2f}"
        )
        rows.append(
            f"| `{name}` | {entry['label']} | {entry['decay_meaning']} | "
            f"{best['learning_rate']:.1e} | {best['weight_decay']:.1e} | {error} | "
            f"{_signed(entry['tilt'])} | {_signed(entry['breakdown_slope'])} |"
        )
    template = (ROOT / "docs" / "decay_study_template.md").read_text()
    slopes = {}
    for name, entry in summary["variants"].items():
        short = name.replace("adamw_", "")
        slopes[f"{short}_tilt"] = _signed(entry["tilt"])
        slopes[f"{short}_breakdown"] = _signed(entry["breakdown_slope"])
    page = template.format(
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
    )
    (ROOT / "docs" / "decay_study.md").write_text(page)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6x6 grids, 400 steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument(
        "--docs", action="store_true", help="also write docs/decay_study.md"
    )
    parser.add_argument(
        "--docs-only",
        action="store_true",
        help="rewrite docs/decay_study.md from the last run's files, without training",
    )
    args = parser.parse_args()
    if args.docs_only:
        out = pathlib.Path(args.out or ROOT / "runs" / "decay_study")
        write_docs(json.loads((out / "summary.json").read_text()), out)
    else:
        main(quick=args.quick, out_dir=args.out, docs=args.docs, seeds=args.seeds)
