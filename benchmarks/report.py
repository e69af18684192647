"""Turn results files into `docs/benchmarks.md`, its plots and console tables.

Everything on the page is computed here from `benchmarks/results/*.json`;
nothing on it is written by hand. `write_docs` rebuilds the whole page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DEFAULT_CONTENDERS, IDENTITY
from benchmarks.optimizers import OPTIMIZERS, OURS
from benchmarks.trees import DEFAULT_TREES

DASH = "–"


# ----------------------------------------------------------------------------
# formatting


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    v = seconds * 1e3
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _s(seconds: float | None) -> str:
    return DASH if seconds is None else f"{seconds:.2f}"


def _mb(nbytes: float | None) -> str:
    return DASH if nbytes is None else f"{nbytes / 2**20:.1f}"


def _ratio(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}x"


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# ----------------------------------------------------------------------------
# reading records


def _ok(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    entry = record["contenders"].get(name)
    return entry if entry and entry.get("status") == "ok" else None


def _state_bytes(record: dict[str, Any], name: str) -> float | None:
    """Bytes of optimizer state the step of `name` takes: its arguments less
    the float32 params and grads (8 bytes per parameter)."""
    memory = (_ok(record, name) or {}).get("memory") or {}
    if "argument_bytes" not in memory:
        return None
    return memory["argument_bytes"] - 8 * record["n_params"]


def _median(record: dict[str, Any], name: str) -> float | None:
    entry = _ok(record, name)
    return None if entry is None else entry["median_s"]


def _cell(record: dict[str, Any], name: str) -> str:
    entry = record["contenders"].get(name)
    if entry is None:
        return DASH
    if entry.get("status") != "ok":
        return entry.get("status", "?")
    return _ms(entry["median_s"])


def _paired(record: dict[str, Any], other: str, mine: str = "gradtx") -> float | None:
    ratio = record.get("ratios", {}).get(f"{mine}/{other}")
    return None if ratio is None else ratio["paired_median"]


def single_call_gpu_limit(run: dict[str, Any]) -> bool:
    """Whether a GPU run timed its bandwidth kernels one call per sample.

    The harness did so before it batched calls; on a GPU that counts the wait
    and the dispatch and under-reads the limit, so such a limit is not used.
    """
    measured = [m for m in run.get("bandwidth", {}).values() if m]
    batched = any(
        "calls_per_sample" in k for m in measured for k in m["kernels"].values()
    )
    platform = run.get("machine", {}).get("jax_platform", "cpu")
    return bool(measured) and not batched and platform != "cpu"


def limit_gbs(run: dict[str, Any]) -> float | None:
    """The run's bandwidth limit: the best of its start and end measurements."""
    if single_call_gpu_limit(run):
        return None
    values = [m["limit_gbs"] for m in run.get("bandwidth", {}).values() if m]
    return max(values) if values else None


def read_gbs(run: dict[str, Any]) -> float | None:
    """The run's read-only bandwidth (runs before it was measured: None)."""
    if single_call_gpu_limit(run):
        return None
    values = [m.get("read_gbs") for m in run.get("bandwidth", {}).values() if m]
    values = [v for v in values if v]
    return max(values) if values else None


def clip_floor(n_params: int, adamw_s: float, run: dict[str, Any]) -> float | None:
    """The least `clip + AdamW` over `AdamW` a library could take in this run.

    Clipping by the global norm must read the whole gradient before the first
    update (4 bytes per parameter); at the run's read bandwidth that pass
    alone takes `4 * n / read_gbs`. Added to the measured AdamW step
    (`adamw_s`), it gives the ratio of a clip that costs nothing beyond that
    read.
    """
    gbs = read_gbs(run)
    if not gbs or not adamw_s:
        return None
    return 1.0 + 4 * n_params / (gbs * 1e9) / adamw_s


def clip_over_adamw(
    clip: dict[str, Any], plain: dict[str, Any] | None, lib: str
) -> tuple[float, float, bool] | None:
    """`lib`'s clip + AdamW step over its AdamW step: (ratio, AdamW s, paired).

    From the AdamW step timed in the clipped case's own rounds (the median of
    the per-round ratios) when the case has it; otherwise, for results of
    older runs, the ratio of the medians of the two cases.
    """
    base = clip.get("baselines", {}).get(lib)
    if base and _median(clip, lib):
        return base["paired_median"], base["median_s"], True
    if plain and _median(clip, lib) and _median(plain, lib):
        return _median(clip, lib) / _median(plain, lib), _median(plain, lib), False
    return None


def _contenders(records: list[dict[str, Any]]) -> list[str]:
    seen = {name for r in records for name in r["contenders"]}
    ordered = [c for c in DEFAULT_CONTENDERS if c in seen]
    return ordered + sorted(seen - set(ordered))


def _is_sweep(record: dict[str, Any]) -> bool:
    return record["tree"].startswith("sweep-")


def _tree_order(record: dict[str, Any]) -> tuple[int, str, int]:
    tree = record["tree"]
    rank = DEFAULT_TREES.index(tree) if tree in DEFAULT_TREES else len(DEFAULT_TREES)
    opt = list(OPTIMIZERS).index(record["optimizer"])
    return rank, tree, opt


def _sweep_order(record: dict[str, Any]) -> tuple[str, int]:
    return record["optimizer"], record["n_leaves"]


# ----------------------------------------------------------------------------
# tables


def one_line(record: dict[str, Any]) -> str:
    """A progress line: each contender's median and gradtx's ratios."""
    parts = [
        f"{name} {_cell(record, name)}" + (" ms" if _ok(record, name) else "")
        for name in record["contenders"]
    ]
    for key, ratio in record.get("ratios", {}).items():
        parts.append(f"{key} {ratio['paired_median']:.2f}x")
    return " | ".join(parts)


def step_table(records: list[dict[str, Any]]) -> list[str]:
    """Median step times, gradtx's paired ratios, spread and agreement.

    The spread is the largest interquartile range over median among the
    contenders: a few percent on a quiet machine.
    """
    names = _contenders(records)
    # (mine, other) pairs: each of ours over every peer, and the fused step
    # over the plain one.
    pairs = [
        (mine, n)
        for mine in OURS
        if mine in names
        for n in names
        if n not in (*OURS, IDENTITY)
    ]
    pairs += [(mine, OURS[0]) for mine in OURS[1:] if {mine, OURS[0]} <= set(names)]
    header = ["tree", "optimizer", "leaves", "params"]
    header += [f"{n} (ms)" for n in names]
    header += [f"{mine} / {n}" for mine, n in pairs] + ["spread", "max abs Δp"]
    rows = []
    for r in records:
        row = [r["tree"], r["optimizer"], str(r["n_leaves"]), _params(r["n_params"])]
        row += [_cell(r, n) for n in names]
        row += [_ratio(_paired(r, n, mine)) for mine, n in pairs]
        spreads = [
            (e["p75_s"] - e["p25_s"]) / e["median_s"]
            for e in (_ok(r, n) for n in names)
            if e is not None
        ]
        row.append(f"{max(spreads):.0%}" if spreads else DASH)
        gaps = r.get("agreement", {}).get("max_abs_diff", {})
        row.append(f"{max(gaps.values()):.1e}" if gaps else DASH)
        rows.append(row)
    return _table(header, rows)


def bandwidth_table(
    records: list[dict[str, Any]], runs: dict[str, dict[str, Any]]
) -> list[str]:
    """Achieved GB/s of each contender and its fraction of the run's limit."""
    names = [n for n in _contenders(records) if n != IDENTITY]
    header = ["tree", "optimizer", "model B/param"] + [
        f"{n} GB/s (of limit)" for n in names
    ]
    rows = []
    for r in records:
        limit = limit_gbs(runs.get(r["run"], {}))
        row = [r["tree"], r["optimizer"], str(r["model_bytes_per_param"])]
        for n in names:
            entry = _ok(r, n)
            if entry is None:
                row.append(_cell(r, n))
            elif limit:
                row.append(
                    f"{entry['achieved_gbs']:.1f} ({entry['achieved_gbs'] / limit:.0%})"
                )
            else:
                row.append(f"{entry['achieved_gbs']:.1f}")
        rows.append(row)
    return _table(header, rows)


def xla_table(records: list[dict[str, Any]]) -> list[str]:
    """Compile time, kernel counts, XLA's traffic estimate and memory."""
    header = [
        "tree",
        "optimizer",
        "library",
        "lower + compile (s)",
        "fusions",
        "scalar",
        "others per leaf",
        "unfused ops",
        "XLA B/param",
        "args (MB)",
        "out (MB)",
        "aliased (MB)",
        "temp (MB)",
        "extra (MB)",
        "largest leaf (MB)",
    ]
    rows = []
    for r in records:
        for name in _contenders([r]):
            entry = _ok(r, name)
            if entry is None or name == IDENTITY or "hlo" not in entry:
                continue
            hlo, memory = entry["hlo"], entry.get("memory") or {}
            bpp = entry.get("bytes_per_param")
            per_leaf = (hlo["fusions"] - hlo.get("scalar_fusions", 0)) / r["n_leaves"]
            rows.append(
                [
                    r["tree"],
                    r["optimizer"],
                    name,
                    _s(entry["lower_compile_s"]),
                    str(hlo["fusions"]),
                    str(hlo.get("scalar_fusions", DASH)),
                    f"{per_leaf:.2f}",
                    str(hlo["unfused_ops"]),
                    DASH if bpp is None else f"{bpp:.1f}",
                    _mb(memory.get("argument_bytes")),
                    _mb(memory.get("output_bytes")),
                    _mb(memory.get("alias_bytes")),
                    _mb(memory.get("temp_bytes")),
                    _mb(memory.get("extra_bytes")),
                    _mb(r["largest_leaf_bytes"]),
                ]
            )
    return _table(header, rows)


def fit_exponent(ns: list[float], ts: list[float], n_min: int = 100) -> dict | None:
    """Slope of log t against log n, fitted on the points with n >= n_min.

    With fewer than two such points every point is used. Returns the slope
    and the range of n it was fitted on, or None with fewer than two points.
    """
    points = [(n, t) for n, t in zip(ns, ts, strict=True) if t and t > 0]
    big = [(n, t) for n, t in points if n >= n_min]
    use = big if len(big) >= 2 else points
    if len(use) < 2:
        return None
    x = np.log([n for n, _ in use])
    y = np.log([t for _, t in use])
    slope = float(np.polyfit(x, y, 1)[0])
    return {"exponent": slope, "n_from": int(use[0][0]), "n_to": int(use[-1][0])}


def sweep_fits(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Growth exponents of compile and step time per optimizer and library.

    `jax-identity` (a step that returns its donated buffers) is fitted too:
    its compile time is what XLA takes for a program with that many buffers
    and no work, the floor under every library's.
    """
    fits = []
    for opt in dict.fromkeys(r["optimizer"] for r in records):
        rs = sorted((r for r in records if r["optimizer"] == opt), key=_sweep_order)
        ns = [r["n_leaves"] for r in rs]
        for name in _contenders(rs):
            entries = [_ok(r, name) for r in rs]
            if any(e is None for e in entries):
                continue
            steps = [e["median_s"] for e in entries]
            compiles = [e.get("lower_compile_s") for e in entries]
            fit = {
                "optimizer": opt,
                "library": name,
                "compile": None if None in compiles else fit_exponent(ns, compiles),
                "step": fit_exponent(ns, steps),
            }
            if fit["compile"] or fit["step"]:
                fits.append(fit)
    return fits


def sweep_tables(records: list[dict[str, Any]]) -> list[str]:
    """Step and compile time against the leaf count, and the fitted exponents."""
    names = _contenders(records)
    jax_names = [n for n in names if any("hlo" in (_ok(r, n) or {}) for r in records)]
    header = ["N", "optimizer"] + [f"{n} step (ms)" for n in names]
    header += [f"{n} compile (s)" for n in jax_names]
    header += [f"{n} fusions" for n in jax_names]
    rows = []
    for r in sorted(records, key=_sweep_order):
        row = [str(r["n_leaves"]), r["optimizer"]] + [_cell(r, n) for n in names]
        for n in jax_names:
            entry = _ok(r, n)
            row.append(_s(entry["lower_compile_s"]) if entry else DASH)
        for n in jax_names:
            entry = _ok(r, n)
            row.append(str(entry["hlo"]["fusions"]) if entry else DASH)
        rows.append(row)
    lines = _table(header, rows)
    fit_rows = []
    for fit in sweep_fits(records):
        compile_fit, step_fit = fit["compile"], fit["step"]
        span = compile_fit or step_fit
        fit_rows.append(
            [
                fit["optimizer"],
                fit["library"],
                DASH if compile_fit is None else f"{compile_fit['exponent']:.2f}",
                DASH if step_fit is None else f"{step_fit['exponent']:.2f}",
                DASH if span is None else f"{span['n_from']} to {span['n_to']}",
            ]
        )
    if fit_rows:
        lines += [
            "",
            "Growth exponents (slope of log time against log N; 1 is linear):",
            "",
        ]
        lines += _table(
            ["optimizer", "library", "lower + compile", "step", "fitted on N"],
            fit_rows,
        )
    return lines


def bandwidth_kernel_table(run: dict[str, Any]) -> list[str]:
    """The streaming kernels measured at the start and end of a run."""
    measured = run.get("bandwidth", {})
    kernels = list(
        dict.fromkeys(k for m in measured.values() if m for k in m["kernels"])
    )
    rows = []
    for kernel in kernels:
        reading = any(
            m["kernels"][kernel].get("reads_only")
            for m in measured.values()
            if m and kernel in m["kernels"]
        )
        row = [f"{kernel} (reads only)" if reading else kernel]
        for when in ("start", "end"):
            m = measured.get(when)
            k = m["kernels"].get(kernel) if m else None
            row.append(DASH if k is None else f"{k['gbs']:.1f}")
        where = next(
            m["kernels"][kernel]["where"]
            for m in measured.values()
            if m and kernel in m["kernels"]
        )
        row.append(where)
        rows.append(row)
    size = next((m["size"] for m in measured.values() if m), None)
    lines = _table(["kernel", "GB/s at start", "GB/s at end", "on"], rows)
    limit = limit_gbs(run)
    if limit is not None:
        best = max((m for m in measured.values() if m), key=lambda m: m["limit_gbs"])[
            "limit_kernel"
        ]
        lines += [
            "",
            f"Buffer: {size:,} float32 ({8 * size / 2**20:.0f} MB moved per call). "
            f"**Limit: {limit:.1f} GB/s** ({best}), the fastest device kernel "
            "that reads and writes.",
        ]
    reading = read_gbs(run)
    if reading is not None:
        best = max(
            (m for m in measured.values() if m and m.get("read_gbs")),
            key=lambda m: m["read_gbs"],
        )["read_kernel"]
        lines += [
            "",
            f"Read bandwidth: {reading:.1f} GB/s ({best}), the fastest kernel "
            "that only reads (4 bytes per element): the pace of the gradient's "
            "norm pass before a clipped update.",
        ]
    if single_call_gpu_limit(run):
        lines += [
            "",
            "This run timed one call per sample (the harness before it batched "
            "calls): on a GPU, where one call lasts under a millisecond, that "
            "counts the wait and the dispatch and reads the limit low, so it is "
            "not used: this run's cases show no 'of limit' figure.",
        ]
    return lines


# ----------------------------------------------------------------------------
# targets of issue 5


def _by_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in records}


def target_rows(
    records: list[dict[str, Any]], runs: dict[str, Any] | None = None
) -> list[list[str]]:
    """Issue 5's targets, where this run measured what they need.

    `runs` (run id -> run) gives the bandwidth limits and the platform; the
    GPU targets need it.
    """
    cases = _by_key(records)
    rows: list[list[str]] = []

    def add(
        target: str, value: float | None, bound: float, text: str, at_least=False
    ) -> None:
        if value is None:
            return
        met = value >= bound if at_least else value <= bound
        rows.append([target, text.format(value), "yes" if met else "no"])

    for lib in OURS:
        for tree in ("gpt2-small", "one-1b"):
            r = cases.get(f"{tree}/adamw")
            run = (runs or {}).get(r["run"]) if r else None
            if not run or run["machine"].get("jax_platform") == "cpu":
                continue
            limit, entry = limit_gbs(run), _ok(r, lib)
            if limit and entry:
                add(
                    f"GPU AdamW {tree}: {lib} at >= 85% of the bandwidth limit",
                    entry["achieved_gbs"] / limit * 100,
                    85.0,
                    "{:.0f}%",
                    at_least=True,
                )
            add(
                f"GPU AdamW {tree}: {lib} / optax <= 1.00",
                _paired(r, "optax", lib),
                1.0,
                "{:.2f}x",
            )

        for tree in ("resnet50", "gpt2-small", "one-big"):
            r = cases.get(f"{tree}/adamw")
            if r:
                add(
                    f"AdamW {tree}: {lib} / optax <= 0.70",
                    _paired(r, "optax", lib),
                    0.70,
                    "{:.2f}x",
                )
                add(
                    f"AdamW {tree}: {lib} / torch fused <= 1.05",
                    _paired(r, "torch-fused", lib),
                    1.05,
                    "{:.2f}x",
                )
        for tree in DEFAULT_TREES:
            clip, plain = cases.get(f"{tree}/clip_adamw"), cases.get(f"{tree}/adamw")
            over = clip_over_adamw(clip, plain, lib) if clip else None
            if clip and over:
                ratio, adamw_s, paired = over
                run = (runs or {}).get(clip["run"], {})
                floor = clip_floor(clip["n_params"], adamw_s, run)
                notes = ["paired"] if paired else []
                if floor is not None:
                    notes.append(f"read-bound floor {floor:.2f}x")
                note = f" ({'; '.join(notes)})" if notes else ""
                add(
                    f"clip + AdamW {tree}: {lib} over {lib} AdamW <= 1.2",
                    ratio,
                    1.2,
                    "{:.2f}x" + note,
                )
            if clip:
                add(
                    f"clip + AdamW {tree}: {lib} / optax <= 0.45",
                    _paired(clip, "optax", lib),
                    0.45,
                    "{:.2f}x",
                )
        r = cases.get("many-small/adamw")
        if r:
            add(
                f"many-small AdamW: {lib} / optax <= 0.5",
                _paired(r, "optax", lib),
                0.5,
                "{:.2f}x",
            )
            a, b = _ok(r, lib), _ok(r, "optax")
            if a and b:
                add(
                    f"many-small AdamW: compile {lib} / optax <= 0.2",
                    a["lower_compile_s"] / b["lower_compile_s"],
                    0.2,
                    "{:.2f}x",
                )
        sweep = [r for r in records if _is_sweep(r)]
        for fit in sweep_fits(sweep):
            if fit["library"] == lib and fit["compile"]:
                add(
                    f"sweep {fit['optimizer']}: {lib} compile-time exponent <= 1",
                    fit["compile"]["exponent"],
                    1.0,
                    "{:.2f}",
                )
        for r in sweep:
            entry = _ok(r, lib)
            if r["n_leaves"] == 5000 and entry:
                add(
                    f"sweep-5000 {r['optimizer']}: {lib} lower + compile < 10 s",
                    entry["lower_compile_s"],
                    10.0,
                    "{:.1f} s",
                )
        for r in records:
            if r["optimizer"] != "adamw_bf16":
                continue
            base = cases.get(f"{r['tree']}/adamw")
            bf16 = _state_bytes(r, lib)
            f32 = _state_bytes(base, lib) if base else None
            if bf16 is not None and f32:
                add(
                    f"{r['tree']}: {lib} state with mu_dtype=bfloat16 / float32 "
                    "<= 0.75",
                    bf16 / f32,
                    0.75 + 1e-3,  # the int32 step count is not cut
                    "{:.3f}x",
                )
        for r in records:
            entry = _ok(r, lib)
            memory = (entry or {}).get("memory") or {}
            if "extra_bytes" in memory and not _is_sweep(r):
                add(
                    f"{r['key']}: {lib} extra memory <= largest leaf "
                    f"({_mb(r['largest_leaf_bytes'])} MB)",
                    memory["extra_bytes"] / 2**20,
                    r["largest_leaf_bytes"] / 2**20,
                    "{:.1f} MB",
                )
    return rows


# ----------------------------------------------------------------------------
# plots


def _plot_sweep(records, title: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    if not records:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ["-", "--", ":", "-."]
    colors = {"gradtx": "C0", "optax": "C1", "torch-foreach": "C2", "torch-fused": "C3"}
    colors[IDENTITY] = "0.5"
    for i, opt in enumerate(dict.fromkeys(r["optimizer"] for r in records)):
        rs = sorted((r for r in records if r["optimizer"] == opt), key=_sweep_order)
        for name in _contenders(rs):
            points = [(r["n_leaves"], _ok(r, name)) for r in rs]
            points = [(n, e) for n, e in points if e is not None]
            if not points:
                continue
            ns = [n for n, _ in points]
            style = dict(color=colors.get(name), linestyle=styles[i % len(styles)])
            left.plot(
                ns,
                [e["median_s"] * 1e3 for _, e in points],
                marker="o",
                label=f"{name} {opt}",
                **style,
            )
            if "lower_compile_s" in points[0][1] and name != IDENTITY:
                right.plot(
                    ns,
                    [e["lower_compile_s"] for _, e in points],
                    marker="o",
                    label=f"{name} {opt}",
                    **style,
                )
    fits = [f for f in sweep_fits(records) if f["library"] == "gradtx" and f["compile"]]
    if fits:  # a line of slope 1 through gradtx's first fitted point
        fit = fits[0]
        first = next(
            r
            for r in sorted(records, key=_sweep_order)
            if r["optimizer"] == fit["optimizer"]
            and r["n_leaves"] == fit["compile"]["n_from"]
        )
        n0, t0 = first["n_leaves"], first["contenders"]["gradtx"]["lower_compile_s"]
        n1 = fit["compile"]["n_to"]
        right.plot([n0, n1], [t0, t0 * n1 / n0], "k:", label="linear in N")
    left.set(xlabel="leaves N (each 1024 float32)", ylabel="step time (ms)")
    right.set(xlabel="leaves N (each 1024 float32)", ylabel="lower + compile (s)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        if ax.lines:
            ax.legend(fontsize=7)
    left.set_title("step time")
    right.set_title("lower + compile time")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_bandwidth(records, runs, title: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in _contenders(records) if n != IDENTITY]
    rows = [r for r in records if limit_gbs(runs.get(r["run"], {}))]
    if not rows or not names:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.2))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        heights = []
        for r in rows:
            entry = _ok(r, name)
            limit = limit_gbs(runs[r["run"]])
            heights.append(entry["achieved_gbs"] / limit if entry else 0.0)
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, heights, width=width, label=name)
    ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['tree']}\n{r['optimizer']}" for r in rows], fontsize=7)
    ax.set_ylabel("achieved GB/s / bandwidth limit")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------
# the page


def _machine_lines(run: dict[str, Any]) -> list[str]:
    m = run["machine"]
    v = m["versions"]
    commit = m.get("gradtx_commit") or "?"
    if m.get("gradtx_dirty"):
        commit += " with uncommitted changes under gradtx/"
    versions = ", ".join(f"{k} {v[k]}" for k in v if v[k])
    return [
        f"- Device: {m['device']}; torch on {m['torch_device'] or 'nothing (skipped)'}"
        f", torch threads: {m['torch_threads']}",
        f"- Host: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; "
        f"Python {m['python']}",
        f"- Versions: {versions}; gradtx commit {commit}",
        f"- XLA_FLAGS: `{m['xla_flags'] or '(unset)'}`",
        f"- Load average (1, 5, 15 min) at start: {m.get('load_average')}, at end: "
        f"{run.get('load_average_end')}",
    ]


def run_summary(run: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The tables of one run, as markdown for the console."""
    runs = {run["id"]: run}
    trees = sorted((r for r in records if not _is_sweep(r)), key=_tree_order)
    sweep = [r for r in records if _is_sweep(r)]
    lines = [f"{run['machine']['device']}, {run['date']}, `{run['command']}`", ""]
    lines += bandwidth_kernel_table(run) + [""]
    if trees:
        lines += ["Step time (median of paired rounds):", ""] + step_table(trees)
        lines += ["", "Achieved bandwidth:", ""] + bandwidth_table(trees, runs)
        lines += ["", "XLA:", ""] + xla_table(trees) + [""]
    if sweep:
        lines += ["Leaf-count sweep:", ""] + sweep_tables(sweep) + [""]
    targets = target_rows(records, runs)
    if targets:
        lines += ["Issue 5 targets:", ""]
        lines += _table(["target", "measured", "met"], targets)
    return "\n".join(lines)


def _load(results_dir: Path) -> list[dict[str, Any]]:
    """The results files to show: full runs, and quick ones lacking a full one."""
    files = sorted(results_dir.glob("*.json"))
    data = []
    for path in files:
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "cases" in content and "runs" in content:
            content["slug"] = path.stem
            data.append(content)
    full = {d["slug"] for d in data if not d["slug"].endswith("-quick")}
    return [
        d for d in data if not (d["slug"].endswith("-quick") and d["slug"][:-6] in full)
    ]


HEADER = """\
# Benchmarks

<!-- Generated by benchmarks/report.py from benchmarks/results/*.json.
     Do not edit by hand: rerun `python -m benchmarks` (or `--report-only`). -->

Every number on this page was measured by the harness in `benchmarks/` and
written here by it. Each case times a jitted training-free optimizer step,
`params, state = step(params, state, grads)` with params and state donated,
for gradtx and optax, next to torch.optim (`foreach=True` and `fused=True`)
stepping the same tree in place, all in one process and in interleaved
rounds. `gradtx` is the plain step (`tx.update`, then `apply_updates`);
`gradtx-fused` is the same chain through `gradtx.fused_step`, which on a CPU
runs one C++ pass over memory and elsewhere is the plain step, and
`gradtx-flat` the same with `flat_moments=True` (see the page "Fused step
(CPU)"); runs from before they existed have no such columns. Times
are medians over the rounds; a ratio is the median of the per-round ratios
(gradtx's sample over the other's sample of the same round). `jax-identity`
is a jitted, donated step that returns params and state untouched: the floor
set by calling an executable with that many buffers.
The bandwidth limit is measured in the same run by streaming kernels
(in-place read-modify-write and copy, 8 bytes per element); achieved GB/s
counts only the bytes the algorithm must move (28 B/param for AdamW and Adam,
20 for SGD with momentum, 32 for clip + AdamW) over the median step time.
Kernels that only read (a sum of squares, 4 bytes per element) give the
read bandwidth, the pace of the norm pass that clipping needs before the
first update: the clip + AdamW targets show the least ratio to AdamW that
this pass allows in the same run ("read-bound floor"). In a clip + AdamW
case (sweep excepted) each of gradtx's steps is also timed without the clip,
right after the clipped one in every round, and the "over AdamW" target is
the median of those paired ratios ("paired"; older runs compare the medians
of the two cases).
How the fusions, XLA bytes and memory columns are counted is explained in
`benchmarks/README.md`.
"""


def build_page(data: list[dict[str, Any]], docs_path: Path, img_dir: Path):
    """The markdown page and the plots it references, as `(text, plots)`."""
    lines = [HEADER]
    plots: list[Path] = []
    if not data:
        lines += ["No results yet: run `python -m benchmarks --quick`.", ""]
    for d in data:
        runs, records = d["runs"], list(d["cases"].values())
        quick = d["slug"].endswith("-quick")
        lines += [f"## {d['device']}" + (" (quick mode)" if quick else ""), ""]
        if quick:
            lines += [
                "Quick mode: fewer cases, rounds and shorter samples; indicative "
                "only. The full run (`make bench`) replaces this section.",
                "",
            ]
        lines += _table(
            ["run", "date", "mode", "command", "wall time"],
            [
                [
                    run_id,
                    run["date"],
                    run["mode"],
                    f"`{run['command']}`",
                    f"{run['wall_s']:.0f} s" if "wall_s" in run else "unfinished",
                ]
                for run_id, run in runs.items()
            ],
        )
        lines += [""] + _machine_lines(next(reversed(runs.values()))) + [""]
        for run_id, run in runs.items():
            lines += [f"### Bandwidth limit (run {run_id})", ""]
            lines += bandwidth_kernel_table(run) + [""]
        trees = sorted((r for r in records if not _is_sweep(r)), key=_tree_order)
        sweep = [r for r in records if _is_sweep(r)]
        title = f"{d['device']}{' (quick)' if quick else ''}"
        if trees:
            lines += ["### Step time", ""] + step_table(trees) + [""]
            lines += ["### Achieved bandwidth", ""] + bandwidth_table(trees, runs)
            path = img_dir / f"benchmarks_{d['slug']}_bandwidth.png"
            if _try_plot(_plot_bandwidth, trees, runs, title, path):
                plots.append(path)
                rel = os.path.relpath(path, docs_path.parent)
                lines += ["", f"![fraction of the bandwidth limit]({rel})"]
            lines += ["", "### Compile time, kernels, traffic and memory (XLA)", ""]
            lines += xla_table(trees) + [""]
        if sweep:
            lines += ["### Leaf-count sweep: N x (1024,)", ""]
            lines += sweep_tables(sweep) + [""]
            path = img_dir / f"benchmarks_{d['slug']}_sweep.png"
            if _try_plot(_plot_sweep, sweep, title, path):
                plots.append(path)
                rel = os.path.relpath(path, docs_path.parent)
                lines += [f"![step and compile time against leaf count]({rel})", ""]
        targets = target_rows(records, runs)
        if targets:
            lines += ["### Issue 5 targets", ""]
            lines += [
                "Benchmark targets, not tests; `met` compares the numbers above.",
                "",
            ]
            lines += _table(["target", "measured", "met"], targets) + [""]
    return "\n".join(lines).rstrip() + "\n", plots


def _try_plot(fn, *args) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return fn(*args)


def write_docs(results_dir: Path, docs_path: Path, img_dir: Path) -> list[Path]:
    """Rebuild the markdown page and its plots from every results file.

    Plots named `benchmarks_*.png` in `img_dir` that the new page does not
    reference are removed, so the folder never holds stale figures.

    Returns:
        The paths written.
    """
    img_dir.mkdir(parents=True, exist_ok=True)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    text, plots = build_page(_load(results_dir), docs_path, img_dir)
    docs_path.write_text(text)
    for stale in img_dir.glob("benchmarks_*.png"):
        if stale not in plots:
            stale.unlink()
    return [docs_path, *plots]
