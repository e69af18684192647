"""Command line: run the cases, save the raw results, regenerate the docs.

    python -m benchmarks --quick             # under 2 minutes on 2 CPU cores
    python -m benchmarks                     # the full set (long on a CPU)
    python -m benchmarks --trees one-big --optimizers adamw,clip_adamw
    python -m benchmarks --trees sweep --sweep 100,1000 --contenders gradtx,optax
    python -m benchmarks --report-only       # rebuild docs from the JSON files

Raw results go to `benchmarks/results/<device>.json` (`<device>-quick.json`
in quick mode); a run of a subset replaces only the cases it ran. The docs
page `docs/benchmarks.md` and its plots are rebuilt from every results file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

from benchmarks import harness, report
from benchmarks.optimizers import DEFAULT_OPTIMIZERS, HYPERPARAMS, OPTIMIZERS
from benchmarks.trees import DEFAULT_TREES, FULL_SWEEP, QUICK_SWEEP, get_tree

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOCS_PATH = ROOT / "docs" / "benchmarks.md"
IMG_DIR = ROOT / "docs" / "img"
SCHEMA = 1

# Quick mode: the cases that compile fast, fewer and shorter rounds.
QUICK = {
    "trees": ("one-big", "many-small", "sweep"),
    "optimizers": DEFAULT_OPTIMIZERS,
    "tree_optimizers": {"many-small": ("adamw",)},
    "sweep": QUICK_SWEEP,
    "sweep_optimizers": ("adamw",),
    "rounds": 5,
    "warmup": 2,
    "sample_seconds": 0.05,
    "bandwidth_size": 2**25,
    "bandwidth_repeats": 10,
}
FULL = {
    "trees": (*DEFAULT_TREES, "sweep"),
    "optimizers": DEFAULT_OPTIMIZERS,
    "tree_optimizers": {},
    "sweep": FULL_SWEEP,
    "sweep_optimizers": ("adamw", "clip_adamw"),
    "rounds": 15,
    "warmup": 3,
    "sample_seconds": 0.2,
    "bandwidth_size": 2**26,
    "bandwidth_repeats": 30,
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in _names(text))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options; see `--help`."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time gradtx, optax and torch.optim optimizer steps side by side.",
    )
    p.add_argument("--quick", action="store_true", help="the under-2-minute subset")
    p.add_argument(
        "--trees",
        type=_names,
        help=f"comma-separated trees (default: {','.join(DEFAULT_TREES)},sweep; "
        "'sweep' is the leaf-count sweep; also one-1b and sweep-N)",
    )
    p.add_argument(
        "--optimizers",
        type=_names,
        help=f"comma-separated optimizers (default: {','.join(DEFAULT_OPTIMIZERS)};"
        " also adamw_bf16, AdamW with its first moment in bfloat16)",
    )
    p.add_argument(
        "--sweep",
        type=_sizes,
        help="comma-separated leaf counts N of the N x (1024,) sweep "
        f"(default {','.join(map(str, FULL_SWEEP))}; quick "
        f"{','.join(map(str, QUICK_SWEEP))}); implies the sweep",
    )
    p.add_argument(
        "--sweep-optimizers",
        type=_names,
        help="optimizers of the sweep (default adamw,clip_adamw; quick adamw)",
    )
    p.add_argument(
        "--contenders",
        type=_names,
        default=harness.DEFAULT_CONTENDERS,
        help=f"comma-separated (default: {','.join(harness.DEFAULT_CONTENDERS)})",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (15; quick 5)")
    p.add_argument("--warmup", type=int, help="warm-up steps (3; quick 2)")
    p.add_argument(
        "--sample-seconds",
        type=float,
        help="length of one timed sample (0.2; quick 0.05)",
    )
    p.add_argument(
        "--bandwidth-size",
        type=int,
        help="float32 elements of the bandwidth buffer (2^26; quick 2^25; GPU 2^28)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        help="torch.set_num_threads for the torch side (default: torch's own)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--docs", type=Path, default=DOCS_PATH, help="markdown to write")
    p.add_argument("--img-dir", type=Path, default=IMG_DIR, help="where plots go")
    p.add_argument("--no-docs", action="store_true", help="do not rebuild the docs")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the docs from the results files; time nothing",
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------------
# where and with what


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_name() -> str:
    """A readable name of the device JAX runs on, e.g. 'CPU AMD EPYC (2 cores)'."""
    device = harness.jax_device()
    if device.platform == "cpu":
        return f"CPU {_cpu_model()} ({_cores()} cores)"
    return f"{device.platform.upper()} {device.device_kind}"


def device_slug() -> str:
    """The results file stem for this device, e.g. 'cpu-amd-epyc-2cores'."""
    device = harness.jax_device()
    if device.platform == "cpu":
        text = f"cpu {_cpu_model()} {_cores()}cores"
    else:
        text = f"{device.platform} {device.device_kind}"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken: recorded as None
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_and_versions() -> dict[str, Any]:
    """The facts a reader needs to compare two runs."""
    device = harness.jax_device()
    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    dirty = _git("status", "--porcelain", "--", "gradtx")
    return {
        "device": device_name(),
        "jax_platform": device.platform,
        "jax_device_kind": device.device_kind,
        "jax_devices": len(jax.devices()),
        "torch_device": harness.torch_device()[0],
        "cpu": _cpu_model(),
        "cores": _cores(),
        "memory_gib": None if memory is None else round(memory / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            m: _version(m)
            for m in ("gradtx", "jax", "jaxlib", "optax", "torch", "numpy")
        },
        "gradtx_commit": _git("rev-parse", "--short", "HEAD"),
        "gradtx_dirty": None if dirty is None else bool(dirty),
        "torch_threads": torch_threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "load_average": _load_average(),
        "hyperparams": HYPERPARAMS,
    }


# ----------------------------------------------------------------------------
# the results file


def results_path(results_dir: Path, quick: bool) -> Path:
    """The results file of this device and mode."""
    return results_dir / f"{device_slug()}{'-quick' if quick else ''}.json"


def save(path: Path, run: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Merge this run's cases into the file: same-key cases are replaced."""
    data: dict[str, Any] = {"schema": SCHEMA, "runs": {}, "cases": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("schema") == SCHEMA:
                data = old
        except (OSError, ValueError):
            pass
    data["device"], data["slug"] = run["machine"]["device"], path.stem
    data["runs"][run["id"]] = run
    for record in records:
        data["cases"][record["key"]] = record
    used = {case["run"] for case in data["cases"].values()} | {run["id"]}
    data["runs"] = {k: v for k, v in data["runs"].items() if k in used}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def _log(message: str) -> None:
    print(message, flush=True)


def plan(args: argparse.Namespace) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The (tree, optimizer) cases to run and the mode's settings."""
    mode = dict(QUICK if args.quick else FULL)
    trees = args.trees if args.trees is not None else mode["trees"]
    sweep = args.sweep if args.sweep is not None else mode["sweep"]
    if "sweep" not in trees and args.sweep is None:
        sweep = ()
    trees = tuple(t for t in trees if t != "sweep")
    optimizers = args.optimizers or mode["optimizers"]
    sweep_optimizers = args.sweep_optimizers or (
        args.optimizers if args.optimizers else mode["sweep_optimizers"]
    )
    for name in (*optimizers, *sweep_optimizers):
        if name not in OPTIMIZERS:
            raise SystemExit(f"unknown optimizer {name!r}; known: {list(OPTIMIZERS)}")
    for name in trees:
        get_tree(name)  # raises on an unknown name
    cases = []
    for tree in trees:
        chosen = optimizers
        if args.trees is None and args.optimizers is None:
            chosen = mode["tree_optimizers"].get(tree, optimizers)
        cases += [(tree, o) for o in chosen]
    cases += [(f"sweep-{n}", o) for n in sweep for o in sweep_optimizers]
    return cases, mode


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks the command line asks for."""
    args = parse_args(argv)
    # On a GPU, JAX would otherwise take 75% of the memory up front and leave
    # torch too little; set before anything asks JAX for its devices.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.report_only:
        written = report.write_docs(args.results_dir, args.docs, args.img_dir)
        _log(f"wrote {', '.join(str(p) for p in written)}")
        return
    try:
        jax.config.update("jax_enable_compilation_cache", False)
    except (AttributeError, KeyError, ValueError):
        pass  # compile times must be real compiles, never cache hits

    cases, mode = plan(args)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    on_gpu = harness.jax_device().platform != "cpu"
    settings = harness.Settings(
        rounds=args.rounds or mode["rounds"],
        warmup=args.warmup or mode["warmup"],
        sample_seconds=args.sample_seconds or mode["sample_seconds"],
        contenders=args.contenders,
    )
    size = args.bandwidth_size or (2**28 if on_gpu else mode["bandwidth_size"])
    now = datetime.datetime.now(datetime.UTC)
    run = {
        "id": now.strftime("%Y%m%dT%H%M%SZ"),
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])]),
        "mode": "quick" if args.quick else "full",
        "settings": {
            "rounds": settings.rounds,
            "warmup": settings.warmup,
            "sample_seconds": settings.sample_seconds,
            "contenders": list(settings.contenders),
        },
        "machine": machine_and_versions(),
        "bandwidth": {},
    }
    path = results_path(args.results_dir, args.quick)
    started = time.perf_counter()
    _log(f"device: {run['machine']['device']}; {len(cases)} cases; results {path}")
    load = run["machine"]["load_average"]
    if load and load[0] > 0.25 * run["machine"]["cores"]:
        _log(
            f"note: load average {load[0]:.2f} on {run['machine']['cores']} cores; "
            "other work on the machine makes the timings noisy"
        )

    _log("bandwidth (start):")
    run["bandwidth"]["start"] = harness.measure_bandwidth(
        size, mode["bandwidth_repeats"], _log
    )
    records: list[dict[str, Any]] = []
    for tree_name, optimizer in cases:
        spec = get_tree(tree_name)
        _log(
            f"{tree_name} / {optimizer}: {spec.n_leaves} leaves, "
            f"{spec.n_params / 1e6:.2f}M params"
        )
        t0 = time.perf_counter()
        record = harness.run_case(spec, optimizer, settings, _log)
        record["run"], record["wall_s"] = run["id"], time.perf_counter() - t0
        records.append(record)
        _log(f"  {report.one_line(record)} [{record['wall_s']:.0f} s]")
        save(path, run, records)
    _log("bandwidth (end):")
    run["bandwidth"]["end"] = harness.measure_bandwidth(
        size, mode["bandwidth_repeats"], _log
    )
    run["wall_s"] = time.perf_counter() - started
    run["load_average_end"] = _load_average()
    save(path, run, records)

    _log("")
    _log(report.run_summary(run, records))
    _log(f"total {run['wall_s']:.0f} s; raw results in {path}")
    if not args.no_docs:
        written = report.write_docs(args.results_dir, args.docs, args.img_dir)
        _log(f"wrote {', '.join(str(p) for p in written)}")
