"""Time one optimizer step of each library on one tree, side by side.

Each library keeps its own copy of the same params and state. A JAX step is
jitted with params and state donated, lowered and compiled once (timed), then
called; torch.optim steps its tensors in place on the same device. After a
warm-up the libraries run in interleaved rounds, A, B, C, A, B, C, ..., so
that a busy spell of the machine falls on all of them alike, and a ratio is
taken round by round before its median. A case whose contenders' buffers
would not fit in memory together (L-BFGS's history on GPT-2 small on a CPU)
times them one after the other instead, and says so in its rows.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.optimizers import (
    BYTES_PER_PARAM,
    TORCH_LIBRARIES,
    jax_libraries,
    make_torch,
    state_bytes,
)
from benchmarks.trees import Tree, make_data

COPY = "copy"
# Every contender, in column order; LIBRARIES are those this install can run
# (the fused ones need the gradtx.fused annex).
ALL_LIBRARIES = (
    COPY,
    "gradtx",
    "gradtx-fused",
    "gradtx-flat",
    "optax",
    *TORCH_LIBRARIES,
)
_RUNNABLE = {COPY, *jax_libraries(), *TORCH_LIBRARIES}
LIBRARIES = tuple(name for name in ALL_LIBRARIES if name in _RUNNABLE)


@dataclass(frozen=True)
class Settings:
    """How long to time. A sample is `k` steps back to back, waited for once,
    with `k` chosen so that the slowest library's sample lasts about
    `sample_seconds`: one wait per step would dominate steps of microseconds.
    """

    rounds: int = 15
    warmup: int = 3
    sample_seconds: float = 0.2


def torch_device() -> str | None:
    """torch's device: the CPU with JAX's CPU, CUDA with JAX's GPU, else None.

    Timing torch on another device than JAX would compare the devices.
    """
    try:
        import torch
    except ImportError:
        return None
    jax_platform = jax.devices()[0].platform
    if jax_platform == "cpu":
        return "cpu"
    on_gpu = jax_platform in ("gpu", "cuda", "rocm")
    return "cuda" if on_gpu and torch.cuda.is_available() else None


def _private(tree: Any) -> Any:
    # Fresh buffers: on a CPU, jnp.asarray may alias the NumPy array, and a
    # donated step would then write into data another library starts from.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class JaxStep:
    """A jitted step with params and state donated, compiled before timing."""

    def __init__(self, step: Callable, params: Any, state: Any, grads: Any):
        t0 = time.perf_counter()
        jitted = jax.jit(step, donate_argnums=(0, 1))
        self.compiled = jitted.lower(params, state, grads).compile()
        self.compile_s: float | None = time.perf_counter() - t0
        self.params, self.state, self.grads = params, state, grads
        self.state_bytes: int | None = state_bytes(state)

    def run(self, steps: int) -> None:
        params, state = self.params, self.state
        for _ in range(steps):
            params, state = self.compiled(params, state, self.grads)
        self.params, self.state = jax.block_until_ready((params, state))


class TorchStep:
    """torch.optim in place: `clip_grad_norm_` first when clipping, then `step`."""

    compile_s = None

    def __init__(self, optimizer: str, impl: str, params_np: dict, grads_np: dict):
        import torch

        self.torch, self.device = torch, torch_device()
        if self.device is None:
            raise RuntimeError("torch has no device next to JAX's")
        self.params = [
            torch.nn.Parameter(torch.tensor(params_np[k], device=self.device))
            for k in sorted(params_np)
        ]
        for p, k in zip(self.params, sorted(grads_np), strict=True):
            p.grad = torch.tensor(grads_np[k], device=self.device)
        self.optimizer, self.max_norm = make_torch(optimizer, self.params, impl)

    @property
    def state_bytes(self) -> int:
        """Bytes of the tensors in the optimizer's state (after a step)."""
        return sum(
            value.numel() * value.element_size()
            for per_param in self.optimizer.state.values()
            for value in per_param.values()
            if isinstance(value, self.torch.Tensor)
        )

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if self.max_norm is not None:
                self.torch.nn.utils.clip_grad_norm_(
                    self.params, self.max_norm, foreach=True
                )
            self.optimizer.step()
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def copy_step(n_bytes: int) -> JaxStep:
    """The floor: a donated `x * a + b` reading and writing `n_bytes` in all.

    Each float32 element is read once and written once, as in a copy.
    """
    x = jnp.ones((n_bytes // 8,), jnp.float32)
    return JaxStep(lambda x, s, g: (x * 0.999 + 0.001, s), x, (), ())


def build(name: str, tree: Tree, optimizer: str, params_np, grads_np, grads):
    """The step of library `name`; raises if it cannot run here."""
    if name == COPY:
        return copy_step(BYTES_PER_PARAM[optimizer] * tree.n_params)
    if name in TORCH_LIBRARIES:
        impl = name.removeprefix("torch-")
        return TorchStep(optimizer, impl, params_np, grads_np)
    init, step = jax_libraries()[name](optimizer)
    params = _private(params_np)
    return JaxStep(step, params, _own_state(init, params), grads)


def _own_state(init: Callable, params: Any) -> Any:
    """`init(params)` in buffers of its own, built without a second copy.

    Under jit the state comes out in new buffers, except a leaf that is a
    param (schedule-free's `z`) or appears twice, which is copied: the step
    donates params and state, and a buffer may be donated once. Copying the
    whole state afterwards would hold L-BFGS's history twice.
    """
    state = jax.jit(init)(params)
    seen = {id(leaf) for leaf in jax.tree.leaves(params)}

    def own(leaf: Any) -> Any:
        if id(leaf) in seen:
            leaf = jnp.array(leaf, copy=True)
        seen.add(id(leaf))
        return leaf

    return jax.tree.map(own, state)


def memory_available() -> int | None:
    """Bytes JAX's device can still allocate, or None where it cannot tell."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" not in stats:
            return None
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def bytes_held(tree: Tree, optimizer: str) -> int:
    """About what one contender holds: half the bytes its step moves.

    A step reads and writes each buffer it keeps (params, state) once and
    reads the gradient, so half its traffic is its resident size; the copy
    floor holds exactly that.
    """
    return BYTES_PER_PARAM[optimizer] * tree.n_params // 2


def fits_together(tree: Tree, optimizer: str, n: int) -> bool:
    """Whether `n` contenders' buffers fit in the device's memory at once."""
    available = memory_available()
    return available is None or n * bytes_held(tree, optimizer) < available


def _log_nothing(message: str) -> None:
    del message


def _time(steps: dict[str, Any], settings: Settings) -> dict[str, list[float]]:
    """Per-step seconds of each step: `settings.rounds` samples, interleaved."""
    warmup_s = {}
    for name, step in steps.items():
        step.run(1)  # torch allocates its state here
        t0 = time.perf_counter()
        step.run(settings.warmup)
        warmup_s[name] = (time.perf_counter() - t0) / max(settings.warmup, 1)
    k = max(1, round(settings.sample_seconds / max(max(warmup_s.values()), 1e-9)))

    samples: dict[str, list[float]] = {name: [] for name in steps}
    gc.collect()
    gc.disable()  # no collector pause inside a sample
    try:
        for _ in range(settings.rounds):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step.run(k)
                samples[name].append((time.perf_counter() - t0) / k)
    finally:
        gc.enable()
    return samples


def _run_group(
    names: tuple[str, ...],
    tree: Tree,
    optimizer: str,
    data: tuple[dict, dict],
    settings: Settings,
    log: Callable[[str], None],
) -> tuple[dict[str, list[float]], dict[str, tuple[float | None, int | None]]]:
    """Build and time the libraries `names` together; their buffers are
    freed when it returns. Returns each one's samples and its compile time
    and state bytes (None for the copy floor)."""
    params_np, grads_np = data
    grads = _private(grads_np)
    steps = {}
    for name in names:
        try:
            steps[name] = build(name, tree, optimizer, params_np, grads_np, grads)
        except (ImportError, ValueError, RuntimeError) as error:
            if name not in TORCH_LIBRARIES:
                raise
            log(f"  {name} skipped: {str(error).splitlines()[0]}")
    samples = _time(steps, settings) if steps else {}
    held = {
        name: (None, None) if name == COPY else (step.compile_s, step.state_bytes)
        for name, step in steps.items()
    }
    return samples, held


def run_case(
    tree: Tree,
    optimizer: str,
    libraries: tuple[str, ...] = LIBRARIES,
    settings: Settings = Settings(),
    log: Callable[[str], None] = _log_nothing,
    together: bool | None = None,
) -> list[dict[str, Any]]:
    """Time every library on one tree and optimizer.

    Returns one row per library that ran: its median step time in ms, its
    step time over optax's and over torch's (torch-fused's, or torch-foreach's
    where torch has no fused form; the median of the ratios of samples of the
    same round), for a JAX step its lower + compile time, and the megabytes
    its optimizer state holds.
    A torch variant that torch rejects on this device is left out.

    `together=None` interleaves the libraries when their buffers fit in
    memory at once (`fits_together`); otherwise, or with `together=False`,
    each library is built, timed and freed before the next, its ratios are
    those of the medians, and its rows say `"interleaved": False`.
    """
    if together is None:
        together = fits_together(tree, optimizer, len(libraries))
    if not together:
        log("  timed one library after another: their buffers do not fit together")
    data = make_data(tree)
    samples: dict[str, list[float]] = {}
    built: dict[str, tuple[float | None, int | None]] = {}
    for group in [libraries] if together else [(name,) for name in libraries]:
        timed, held = _run_group(group, tree, optimizer, data, settings, log)
        samples.update(timed)
        built.update(held)
        gc.collect()  # the group's buffers, before the next group's

    def ratio(name: str, other: str) -> float | None:
        if other not in samples or other == name:
            return None
        if not together:
            value = statistics.median(samples[name]) / statistics.median(samples[other])
            return round(value, 3)
        pairs = zip(samples[name], samples[other], strict=True)
        return round(statistics.median(a / b for a, b in pairs), 3)

    # torch-fused where torch has it, else torch-foreach (the families).
    torch_reference = "torch-fused" if "torch-fused" in samples else "torch-foreach"
    rows = []
    for name, (compile_s, held) in built.items():
        row = {
            "tree": tree.name,
            "optimizer": optimizer,
            "library": name,
            "ms": float(f"{statistics.median(samples[name]) * 1e3:.4g}"),
            "vs_optax": ratio(name, "optax"),
            "vs_torch": ratio(name, torch_reference),
            "compile_s": None if compile_s is None else round(compile_s, 3),
            "state_mb": None if held is None else round(held / 1e6, 3),
        }
        if not together:
            row["interleaved"] = False
        rows.append(row)
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """What JAX runs on, e.g. 'CPU AMD EPYC (2 cores)' or 'GPU NVIDIA H100'."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        affinity = getattr(os, "sched_getaffinity", None)  # Linux only
        cores = len(affinity(0)) if affinity else os.cpu_count()
        return f"CPU {_cpu_model()} ({cores} cores)"
    return f"{device.platform.upper()} {device.device_kind}"


def device_slug() -> str:
    """The results file stem, e.g. 'cpu-amd-epyc-2cores'."""
    text = device_name().lower().replace(" cores)", "cores")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def versions() -> dict[str, str]:
    out = {}
    for module in ("gradtx", "jax", "jaxlib", "optax", "torch", "numpy"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            pass
    return out
