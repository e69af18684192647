"""`python -m benchmarks [--quick] [options]`: time, save, rebuild the page.

The results go to `benchmarks/results/<device>.json` (`<device>-quick.json`
with `--quick`), replacing the cases this run timed; `docs/benchmarks.md` is
then rebuilt from every results file.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax

from benchmarks import harness, report
from benchmarks.harness import LIBRARIES
from benchmarks.optimizers import (
    BYTES_PER_PARAM,
    DEFAULT_OPTIMIZERS,
    FAMILY_LIBRARIES,
    FAMILY_OPTIMIZERS,
)
from benchmarks.trees import DEFAULT_TREES, TREES, get_tree

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOCS_PATH = ROOT / "docs" / "benchmarks.md"

# The quick cases compile in seconds on a CPU: many-small and GPT-2 do not.
QUICK_CASES = [("one-big", o) for o in ("adamw", "clip_adamw", "sgd", "adam")]
QUICK_CASES.append(("resnet50", "adamw"))


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time gradtx, optax and torch.optim optimizer steps side by side.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one-big with each optimizer and resnet50 with AdamW, short rounds",
    )
    p.add_argument(
        "--families",
        action="store_true",
        help="the families beyond Adam, on resnet50 and gpt2-small, against "
        "optax and torch-foreach",
    )
    p.add_argument(
        "--trees",
        type=_names,
        help=f"of {','.join(TREES)} (default {','.join(DEFAULT_TREES)})",
    )
    p.add_argument(
        "--optimizers",
        type=_names,
        help=f"of {','.join(BYTES_PER_PARAM)} (default {','.join(DEFAULT_OPTIMIZERS)})",
    )
    p.add_argument(
        "--libraries",
        type=_names,
        help=f"of {','.join(LIBRARIES)} (default all; with --families "
        f"{','.join(FAMILY_LIBRARIES)})",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (15; quick 5)")
    p.add_argument("--warmup", type=int, help="warm-up steps (3; quick 2)")
    p.add_argument(
        "--sample-seconds", type=float, help="length of one sample (0.2; quick 0.05)"
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--docs", type=Path, default=DOCS_PATH, help="the page to write")
    p.add_argument("--no-docs", action="store_true", help="leave the page as it is")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild the page; time nothing"
    )
    args = p.parse_args(argv)
    for tree in args.trees or ():
        if tree not in TREES:
            p.error(f"unknown tree {tree!r}")
    for optimizer in args.optimizers or ():
        if optimizer not in BYTES_PER_PARAM:
            p.error(f"unknown optimizer {optimizer!r}")
    if args.libraries is None:
        chosen = FAMILY_LIBRARIES if args.families else LIBRARIES
        args.libraries = tuple(name for name in chosen if name in LIBRARIES)
    for library in args.libraries:
        if library not in LIBRARIES:
            p.error(f"unknown library {library!r}")
    return args


def cases(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.quick and not args.trees and not args.optimizers and not args.families:
        return QUICK_CASES
    if args.families:
        trees = args.trees or ("resnet50", "gpt2-small")
        return [(t, o) for t in trees for o in args.optimizers or FAMILY_OPTIMIZERS]
    trees = args.trees or DEFAULT_TREES
    return [(t, o) for t in trees for o in args.optimizers or DEFAULT_OPTIMIZERS]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Else JAX takes 75% of a GPU's memory up front and leaves torch too
    # little; read when JAX first asks for its devices.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.report_only:
        report.write_page(args.results_dir, args.docs)
        print(f"wrote {args.docs}")
        return
    # Compile times must be real compiles, never cache hits.
    jax.config.update("jax_enable_compilation_cache", False)
    settings = harness.Settings(
        rounds=args.rounds or (5 if args.quick else 15),
        warmup=args.warmup or (2 if args.quick else 3),
        sample_seconds=args.sample_seconds or (0.05 if args.quick else 0.2),
    )
    name = harness.device_slug() + ("-quick" if args.quick else "")
    path = args.results_dir / f"{name}.json"
    print(f"{harness.device_name()}: {len(cases(args))} cases into {path}", flush=True)
    summary = {
        "device": harness.device_name(),
        "mode": "quick" if args.quick else "full",
        "torch_device": harness.torch_device(),
        "versions": harness.versions(),
    }
    for tree_name, optimizer in cases(args):
        tree = get_tree(tree_name)
        print(f"{tree_name} / {optimizer}", flush=True)
        t0 = time.perf_counter()
        rows = harness.run_case(tree, optimizer, args.libraries, settings, print)
        print("\n".join(report.table(rows)[2:]), flush=True)
        print(f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
        report.save(path, {**summary, "rows": rows})
    if not args.no_docs:
        report.write_page(args.results_dir, args.docs)
        print(f"wrote {args.docs}")


if __name__ == "__main__":
    main()
