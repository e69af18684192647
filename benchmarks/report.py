"""The summary files in benchmarks/results/ and the page built from them.

A summary file holds one device: its name, the library versions, and one row
per tree, optimizer and library. `docs/benchmarks.md` is built from every
summary file and from nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.harness import ALL_LIBRARIES
from benchmarks.optimizers import BYTES_PER_PARAM, FAMILY_OPTIMIZERS, METHOD_BYTES
from benchmarks.trees import TREES, get_tree


def dumps(summary: dict[str, Any]) -> str:
    """JSON with one row per line, so that a diff shows which rows changed."""
    head = {k: v for k, v in summary.items() if k != "rows"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    rows = ",\n".join(f"  {json.dumps(row)}" for row in summary["rows"])
    return "{\n" + ",\n".join([*lines, f' "rows": [\n{rows}\n ]']) + "\n}\n"


def save(path: Path, summary: dict[str, Any]) -> None:
    """Write `summary`, keeping the file's rows of cases this run did not time."""
    if path.exists():
        done = {(r["tree"], r["optimizer"]) for r in summary["rows"]}
        kept = [
            r
            for r in json.loads(path.read_text())["rows"]
            if (r["tree"], r["optimizer"]) not in done
        ]
        summary = {**summary, "rows": kept + summary["rows"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(summary))


def _order(row: dict[str, Any]) -> tuple[int, int, int]:
    def rank(names, name):
        names = list(names)
        return names.index(name) if name in names else len(names)

    return (
        rank(TREES, row["tree"]),
        rank(BYTES_PER_PARAM, row["optimizer"]),
        rank(ALL_LIBRARIES, row["library"]),
    )


def _ms(value: float) -> str:
    digits = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per row; tree and optimizer are named where they change."""
    lines = [
        "| tree | optimizer | library | step (ms) | ÷ optax | ÷ torch "
        "| compile (s) | state (MB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    last = None
    for row in sorted(rows, key=_order):
        case = (row["tree"], row["optimizer"])
        tree, optimizer = case if case != last else ("", "")
        last = case
        apart = "" if row.get("interleaved", True) else " †"
        cells = [tree, optimizer, row["library"], _ms(row["ms"]) + apart]
        cells += [_ratio(row["vs_optax"]), _ratio(row["vs_torch"])]
        cells.append("" if row["compile_s"] is None else f"{row['compile_s']:.2f}")
        held = row.get("state_mb")  # absent from rows timed before it was kept
        cells.append("" if held is None else f"{held:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _span(values: list[float | None]) -> str:
    """Some ratios' median and range, or the one value: '0.93x (0.85-1.02)'.

    The range is held together by word joiners, so that a narrow column
    wraps it, whole, onto the next line rather than at its dash.
    """
    found = sorted(v for v in values if v is not None)
    if not found:
        return ""
    middle = _ratio(float(median(found)))
    low, high = _ratio(found[0]), _ratio(found[-1])
    if low == high:
        return middle
    dash = "\u2060–\u2060"
    return f"{middle} ({low.removesuffix('x')}{dash}{high.removesuffix('x')})"


SUMMARY_TEXT = """\
Step time of gradtx over optax's and over torch.optim's for the same
optimizer on the same tree, timed in the same process; below 1 gradtx is
faster. Each cell is the median over the trees timed for that optimizer on
that device (their number follows its name), then in brackets the lowest
and the highest; the families beyond Adam share one row, over every one of
them and every tree, and so do the wrappers and methods (Lookahead, the
averages of the params, SAM, the L-BFGS direction). `gradtx` is the plain
jitted step (`tx.update`, then `apply_updates`); `gradtx-fused` is
`gradtx.fused_step(tx)`, which on a CPU reads and writes each element once
and elsewhere is the plain step. Every timing behind these ratios is in the
device sections below.
"""


def summary_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Per device, one short table: each optimizer's ratios to optax and torch.

    The tables are written without outer pipes (still Markdown tables), so
    that the lines starting with "| " on the page are the device sections'
    alone; a device's columns are the gradtx forms it timed.
    """
    lines: list[str] = []
    for summary in summaries.values():
        by_optimizer: dict[str, list[dict[str, Any]]] = {}
        for row in summary["rows"]:
            group = row["optimizer"]
            if group in METHOD_BYTES:
                group = "methods"
            elif group in FAMILY_OPTIMIZERS:
                group = "families"
            by_optimizer.setdefault(group, []).append(row)
        order = [o for o in BYTES_PER_PARAM if o in by_optimizer]
        order += [g for g in ("families", "methods") if g in by_optimizer]
        libraries = [
            lib
            for lib in ("gradtx", "gradtx-fused")
            if any(r["library"] == lib for r in summary["rows"])
        ]
        body = []
        for name in order:
            group = by_optimizer[name]
            cells = []
            for lib in libraries:
                mine = [r for r in group if r["library"] == lib]
                cells += [_span([r["vs_optax"] for r in mine])]
                cells += [_span([r["vs_torch"] for r in mine])]
            if not any(cells):
                continue
            trees = len({r["tree"] for r in group})
            names = sorted({r["optimizer"] for r in group})
            count = len(names)
            if count == 1:  # one family or method: its own name
                label = names[0]
            elif name == "families":
                label = f"{count} families beyond Adam"
            elif name == "methods":
                label = f"{count} wrappers and methods"
            else:
                label = name
            label += f" ({trees} {'tree' if trees == 1 else 'trees'})"
            body.append(" | ".join([label, *cells]))
        if not body:
            continue
        head = ["optimizer"]
        for lib in libraries:
            head += [f"{lib} ÷ optax", f"{lib} ÷ torch"]
        lines += [f"**{summary['device']}**", ""]
        lines += [" | ".join(head), " | ".join(["---"] + ["---:"] * (len(head) - 1))]
        lines += [*body, ""]
    return lines


INTRO = """\
# Benchmarks

<!-- Generated by `python -m benchmarks` (or `--report-only`) from
     benchmarks/results/*.json. Do not edit by hand. -->

## Summary

{summary}
## How it is measured

Each row times one optimizer step, `params, state = step(params, state,
grads)`, over the same random float32 tree, with every library in the same
process.

- `gradtx`: `tx.update` then `gradtx.apply_updates`, jitted with params and
  state donated.
- `gradtx-fused`: the same chain through `gradtx.fused_step(tx)`, which on a
  CPU reads and writes each element once (see "Fused step (CPU)") and
  elsewhere is the plain step; `gradtx-flat`: `gradtx.fused_step(tx,
  flat_moments=True)`.
- `optax`: the same optimizer from optax, jitted and donated alike.
- `torch-foreach`, `torch-fused`: `torch.optim` built with `foreach=True` or
  `fused=True`, stepping in place on the same device (after
  `clip_grad_norm_` for clip + AdamW). torch.optim has no bfloat16 moments,
  so `adamw_bf16` has no torch rows; for the families below it runs in its
  own form (for example `Adam(amsgrad=True)`, `NAdam` with its momentum
  decay, its `Adafactor`), and only where it has the method. Its Muon
  (`torch.optim.Muon`, AdamW for the other leaves) iterates in bfloat16,
  gradtx and optax in float32; on a CPU it runs only with oneDNN's bfloat16
  products (AVX512-BF16, AMX). XLA:CPU's bfloat16 products are no faster.
- `copy`: a jitted, donated `x * a + b` over one buffer holding as many bytes
  as the step must read and write at the least (28 B per parameter for AdamW
  and Adam, 32 for clip + AdamW, 20 for SGD, 24 for AdamW with a bfloat16
  first moment): the memory-bandwidth floor as XLA reaches it on one large
  buffer.

Columns: **step** is the median over the rounds; **÷ optax** and **÷
torch** are the row's step time over optax's and torch's (torch-fused, or
torch-foreach where torch has no fused form), the median of the ratios of
samples timed in the same round (the libraries run in interleaved rounds;
where their buffers do not fit in memory together they run one after
another, marked †, and the ratio is that of the medians); below 1 is
faster. **compile** is the wall time of `jax.jit(step).lower(...).compile()`
with the compilation cache off.
**state** is the megabytes the optimizer state holds.

Optimizers: AdamW, `clip_by_global_norm(1)` + AdamW (`clip_adamw`), SGD
with momentum 0.9, Adam, and AdamW with a bfloat16 first moment
(`adamw_bf16`), with the same hyperparameters in every library; and, with
`--families`, each of the families beyond Adam (AMSGrad to Rprop, built by
the same call in gradtx and optax, learning rate 1e-3, weight decay 1e-2
where the optimizer decays decoupled, the libraries' defaults otherwise).
Their `copy` row moves every per-parameter state buffer once. The wrappers
and methods run with `--families` too: `lookahead_adam` (Adam, 5 fast
steps, slow step 0.5; optax's `LookaheadParams` pair is carried in its
side's state so that both steps take the same params), `ema_adam` and
`swa_adam` (Adam and an average of the params after every step, decay
0.999 or the running mean; optax has none, so its side is `optax.adam` and
the average written by hand in the same jitted step), `sam_sgd` (SGD with
momentum in SAM, rho 0.05, each step alternating between the ascent and
the descent as optax's opaque mode does, with the gradient of
0.5 ||p||^2 as `grad_fn`), and `lbfgs_direction` (`scale_by_lbfgs` with
10 pairs, then the learning rate, on the gradient of a convex quadratic;
the line search costs what the objective costs). Trees:

{trees}

To measure: `make bench` (every default case; long on a CPU), `make
bench-quick` (a few cases, fewer rounds), `python -m benchmarks --families`
(the families on ResNet-50 and GPT-2 small), or `python -m benchmarks
--help`.
A run replaces its own cases in `benchmarks/results/<device>.json` and
rebuilds this page; `python -m benchmarks --report-only` rebuilds it alone.
"""


APART_NOTE = """\
† Timed one library after another, not in interleaved rounds: their buffers
do not fit in this device's memory together. The ratios are those of the
medians.
"""


def _intro(rows: list[dict[str, Any]], summary: str = "") -> str:
    trees = [
        f"- `{t.name}`: {t.description}, "
        f"{len(t.shapes)} {'leaf' if len(t.shapes) == 1 else 'leaves'}, "
        f"{t.n_params:,} parameters."
        for t in map(get_tree, TREES)
        if any(r["tree"] == t.name for r in rows)
    ]
    return INTRO.format(trees="\n".join(trees), summary=summary)


def load(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every device's summary by file stem.

    A quick-mode file is shown only for a device with no full one.
    """
    found = {p.stem: json.loads(p.read_text()) for p in results_dir.glob("*.json")}
    return {
        stem: summary
        for stem, summary in sorted(found.items())
        if not (stem.endswith("-quick") and stem.removesuffix("-quick") in found)
    }


def page(summaries: dict[str, dict[str, Any]]) -> str:
    """The whole page: the summary, how it is measured, one section per device."""
    all_rows = [r for s in summaries.values() for r in s["rows"]]
    summary = ""
    if summaries:
        summary = SUMMARY_TEXT + "\n" + "\n".join(summary_table(summaries))
    lines = [_intro(all_rows, summary)]
    if not summaries:
        lines.append("No results yet: run `python -m benchmarks --quick`.\n")
    for stem, summary in summaries.items():
        quick = stem.endswith("-quick")
        note = " (quick mode: few rounds, indicative only)" if quick else ""
        lines.append(f"## {summary['device']}{note}\n")
        versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
        torch = summary["torch_device"]
        lines.append(f"{versions}; torch on {torch}.\n" if torch else f"{versions}.\n")
        lines.append("\n".join(table(summary["rows"])) + "\n")
        if not all(row.get("interleaved", True) for row in summary["rows"]):
            lines.append(APART_NOTE)
    return "\n".join(lines)


def write_page(results_dir: Path, docs_path: Path) -> None:
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(page(load(results_dir)))
