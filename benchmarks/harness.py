"""Timing machinery: contenders, interleaved rounds, XLA analysis, bandwidth.

A *contender* is one implementation of one optimizer on one tree, holding its
own parameters and state: `gradtx`, `optax` (jitted, donated steps),
`torch-foreach`, `torch-fused` (torch.optim in place), and `jax-identity` (a
jitted, donated step that returns params and state unchanged: the floor that
calling an executable with that many buffers costs). `run_case` builds them
all, warms them up, then times them in interleaved rounds (A, B, C, A, B,
C, ...) so that a slow spell of a shared machine hits every contender alike.

The step timed is training-free: `params, state = step(params, state, grads)`
with fixed random gradients, `donate_argnums=(0, 1)` for the JAX sides.
"""

from __future__ import annotations

import gc
import math
import re
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.optimizers import (
    JAX_LIBRARIES,
    OPTIMIZERS,
    OURS,
    TORCH_IMPLS,
    make_torch,
)
from benchmarks.trees import TreeSpec, make_data

IDENTITY = "jax-identity"
# The optimizer that a case times next to its own, per library of ours.
BASELINES = {"clip_adamw": "adamw"}
DEFAULT_CONTENDERS = (
    *JAX_LIBRARIES,
    *(f"torch-{impl}" for impl in TORCH_IMPLS),
    IDENTITY,
)


@dataclass
class Settings:
    """How long to time: rounds, warm-up steps and the length of one sample.

    Each sample runs `steps` back-to-back steps of one contender and blocks
    once at the end; `steps` is chosen per case so that a sample of the
    slowest contender lasts about `sample_seconds`. With `baselines`, a case
    whose optimizer has one in `BASELINES` (clip + AdamW: AdamW) also times
    each of gradtx's own steps for that optimizer in the same rounds, so that
    "clip + AdamW over AdamW" is a paired ratio (sweep trees excepted).
    """

    rounds: int = 15
    warmup: int = 3
    sample_seconds: float = 0.2
    max_steps_per_sample: int = 1000
    seed: int = 0
    contenders: Sequence[str] = DEFAULT_CONTENDERS
    baselines: bool = True


def log_nothing(message: str) -> None:
    """The default logger: prints nothing."""
    del message


# ----------------------------------------------------------------------------
# the device


def jax_device() -> jax.Device:
    """The device JAX runs on by default."""
    return jax.devices()[0]


def torch_device() -> tuple[str | None, str]:
    """Where the torch side runs: `(device, reason)`; device None means skip.

    torch runs on the CPU when JAX does, and on CUDA when JAX runs on a GPU
    and torch sees one; otherwise the comparison would be across devices,
    so it is skipped.
    """
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    platform = jax_device().platform
    if platform == "cpu":
        return "cpu", ""
    if platform in ("gpu", "cuda", "rocm") and torch.cuda.is_available():
        return "cuda", ""
    return None, f"JAX runs on {platform} and torch has no such device"


# ----------------------------------------------------------------------------
# the optimized HLO

# Instructions that launch no kernel of their own.
_NO_KERNEL = {
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "bitcast",
    "while",
    "conditional",
    "call",
    "after-all",
    "opt-barrier",
    "partition-id",
    "replica-id",
}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED = re.compile(
    r"\b(body|condition|to_apply|calls|branch_computations|true_computation|"
    r"false_computation)=(\{[^}]*\}|%?[\w.\-]+)"
)


def _split(rest: str) -> tuple[str, str]:
    """`(result type, opcode)` of an instruction, from the text after `name =`."""
    if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                shape, rest = rest[: i + 1], rest[i + 1 :]
                break
        else:
            shape, rest = rest, ""
    else:
        shape, _, rest = rest.partition(" ")
    match = re.match(r"\s*([\w\-]+)\(", rest)
    return shape, match.group(1) if match else "?"


def _is_scalar(shape: str) -> bool:
    """True if every array in a result type has rank 0, e.g. `f32[]`."""
    dims = re.findall(r"\w+\[([^\]]*)\]", shape)
    return bool(dims) and all(d.strip() == "" for d in dims)


def analyse_hlo(text: str) -> dict[str, Any]:
    """Count the kernels in an optimized HLO module (`compiled.as_text()`).

    The counting rule: walk the computations that run as control flow, the
    ENTRY computation and, recursively, the bodies, conditions and branches
    of its `while` and `conditional` instructions and the targets of `call`.
    In them, every `fusion` instruction is one fusion (one kernel: a loop
    over its output, whatever it computes inside), counted by its `kind=`;
    those whose result is a scalar (step counters, bias corrections, each
    leaf's sum of squares in a global norm) are also counted apart as scalar
    fusions.
    Every other instruction that does work (not a parameter, constant,
    tuple, get-tuple-element, bitcast or control flow) is an unfused op,
    also one kernel. Instructions inside fused computations and inside
    reducers (`to_apply` of a reduce) are parts of a kernel, not kernels.
    The counts are static: a kernel inside a loop body counts once.

    Args:
        text: The module text.

    Returns:
        A dict with `fusions`, `fusion_kinds` (kind -> count),
        `scalar_fusions`, `unfused_ops` and `unfused_op_kinds` (opcode ->
        count).
    """
    computations: dict[str, list[tuple[str, str, str]]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            header = _HEADER.match(line)
            if header and "=" not in line.split("(", 1)[0]:
                current = header.group(2)
                computations[current] = []
                if header.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction:
            rest = instruction.group(2)
            shape, opcode = _split(rest)
            computations[current].append((opcode, shape, rest))
    fusion_kinds: Counter[str] = Counter()
    other: Counter[str] = Counter()
    scalar_fusions = 0
    seen, todo = set(), [entry] if entry else []
    while todo:
        name = todo.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for opcode, shape, rest in computations[name]:
            if opcode == "fusion":
                kind = re.search(r"\bkind=(\w+)", rest)
                fusion_kinds[kind.group(1) if kind else "?"] += 1
                scalar_fusions += _is_scalar(shape)
            elif opcode not in _NO_KERNEL:
                other[opcode] += 1
            if opcode in ("while", "conditional", "call"):
                for _, called in _CALLED.findall(rest):
                    todo += [
                        c.strip().lstrip("%") for c in called.strip("{}").split(",")
                    ]
    return {
        "fusions": sum(fusion_kinds.values()),
        "fusion_kinds": dict(sorted(fusion_kinds.items())),
        "scalar_fusions": scalar_fusions,
        "unfused_ops": sum(other.values()),
        "unfused_op_kinds": dict(sorted(other.items())),
    }


def cost_bytes_accessed(compiled: Any) -> float | None:
    """XLA's 'bytes accessed' estimate, whatever shape cost_analysis returns."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not isinstance(cost, dict) or "bytes accessed" not in cost:
        return None
    return float(cost["bytes accessed"])


_MEMORY_FIELDS = {
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
    "peak_bytes": "peak_memory_in_bytes",
}


def memory_footprint(compiled: Any) -> dict[str, int] | None:
    """Sizes from `compiled.memory_analysis()`, plus what the step adds.

    `extra_bytes` is what the step allocates beyond its arguments: scratch
    (`temp`) plus the outputs that could not reuse a donated input
    (`output - alias`). With full donation it is the scratch alone.
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    out = {}
    for key, attribute in _MEMORY_FIELDS.items():
        value = getattr(stats, attribute, None)
        if isinstance(value, int | np.integer):
            out[key] = int(value)
    if {"temp_bytes", "output_bytes", "alias_bytes"} <= out.keys():
        out["extra_bytes"] = (
            out["temp_bytes"] + out["output_bytes"] - out["alias_bytes"]
        )
    return out


# ----------------------------------------------------------------------------
# contenders


@dataclass
class Contender:
    """One implementation of the step, with its own params and state."""

    name: str
    library: str
    info: dict[str, Any] = field(default_factory=dict)
    steps_done: int = 0

    def run(self, steps: int, deadline: float = math.inf) -> int:
        """Run `steps` steps back to back and wait for the last to finish.

        Stops early, after at least one step, once `time.perf_counter()`
        passes `deadline` (a guard against a contender that stalls on a
        busy machine; JAX dispatches asynchronously, so on its side the
        guard only sees dispatch time). Returns the number of steps run.
        """
        raise NotImplementedError

    def final_params(self) -> list[np.ndarray]:
        """The parameters now, as NumPy arrays in leaf order."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the buffers."""


def _private_copy(tree: Any) -> Any:
    """Fresh device buffers for a tree, none shared with NumPy or each other."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class JaxContender(Contender):
    """A jitted step with params and state donated; compiled once, timed after."""

    def __init__(
        self,
        name: str,
        library: str,
        step: Callable[..., Any],
        params: Any,
        state: Any,
        grads: Any,
    ) -> None:
        """Lower and compile `step`, recording times and the XLA analyses."""
        super().__init__(name, library)
        self.params, self.state, self.grads = params, state, grads
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jitted = jax.jit(step, donate_argnums=(0, 1))
            t0 = time.perf_counter()
            lowered = jitted.lower(params, state, grads)
            t1 = time.perf_counter()
            self.compiled = lowered.compile()
            t2 = time.perf_counter()
            self.run(1)  # the first call: donation warnings appear here
        n_params = sum(x.size for x in jax.tree.leaves(params))
        bytes_accessed = cost_bytes_accessed(self.compiled)
        self.info = {
            "lower_s": t1 - t0,
            "compile_s": t2 - t1,
            "lower_compile_s": t2 - t0,
            "hlo": analyse_hlo(self.compiled.as_text()),
            "bytes_accessed": bytes_accessed,
            "bytes_per_param": None
            if bytes_accessed is None
            else bytes_accessed / n_params,
            "memory": memory_footprint(self.compiled),
            "state_leaves": len(jax.tree.leaves(state)),
            "warnings": sorted({str(w.message).split("\n")[0] for w in caught}),
        }

    def run(self, steps: int, deadline: float = math.inf) -> int:
        """Run up to `steps` steps and wait for the last; see `Contender.run`."""
        params, state = self.params, self.state
        done = 0
        while done < steps and (done == 0 or time.perf_counter() < deadline):
            params, state = self.compiled(params, state, self.grads)
            done += 1
        self.params, self.state = jax.block_until_ready((params, state))
        self.steps_done += done
        return done

    def final_params(self) -> list[np.ndarray]:
        """The parameters now, as NumPy arrays in leaf order."""
        return [np.asarray(x) for x in jax.tree.leaves(self.params)]

    def close(self) -> None:
        """Drop the buffers."""
        self.params = self.state = self.grads = self.compiled = None


def jax_contender(
    library: str, optimizer: str, params_np: dict, grads: Any
) -> JaxContender:
    """The contender of a JAX library from `JAX_LIBRARIES`."""
    tx, apply_updates, *own_step = JAX_LIBRARIES[library](optimizer)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    init = tx.init
    if own_step:
        step = own_step[0]
        init = getattr(step, "init", tx.init)

    params = _private_copy(params_np)
    state = _private_copy(init(params))
    return JaxContender(library, library, step, params, state, grads)


def identity_contender(reference: str, optimizer: str, params_np, grads):
    """A jitted, donated step returning params and state untouched.

    The state is the one `reference`'s optimizer keeps, so the executable
    receives and returns as many buffers as the real step does.
    """
    tx, _ = JAX_LIBRARIES[reference](optimizer)

    def step(params, state, grads):
        del grads
        return params, state

    params = _private_copy(params_np)
    state = _private_copy(tx.init(params))
    return JaxContender(IDENTITY, "jax", step, params, state, grads)


class TorchContender(Contender):
    """torch.optim in place: `clip_grad_norm_` if clipping, then `step()`."""

    def __init__(
        self,
        impl: str,
        optimizer: str,
        params_np: dict,
        grads: list[Any],
        device: str,
    ) -> None:
        """Build the optimizer; raises if torch rejects it on this device."""
        import torch

        super().__init__(f"torch-{impl}", "torch")
        self.torch = torch
        self.device = device
        self.params = [
            torch.nn.Parameter(torch.tensor(params_np[k], device=device))
            for k in sorted(params_np)
        ]
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        self.optimizer, self.max_norm = make_torch(optimizer, self.params, impl)
        self.info = {"impl": impl, "device": device}
        self.run(1)  # the first step allocates the state

    def run(self, steps: int, deadline: float = math.inf) -> int:
        """Run up to `steps` steps and wait for the last; see `Contender.run`."""
        clip = self.torch.nn.utils.clip_grad_norm_
        done = 0
        while done < steps and (done == 0 or time.perf_counter() < deadline):
            if self.max_norm is not None:
                clip(self.params, self.max_norm, foreach=True)
            self.optimizer.step()
            done += 1
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        self.steps_done += done
        return done

    def final_params(self) -> list[np.ndarray]:
        """The parameters now, as NumPy arrays in leaf order."""
        return [p.detach().cpu().numpy() for p in self.params]

    def close(self) -> None:
        """Drop the buffers."""
        self.params = self.optimizer = None


# ----------------------------------------------------------------------------
# one case: a tree and an optimizer, every contender


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q2, q3


def _build(
    name: str, optimizer: str, params_np, grads_jax, grads_torch, torch_dev
) -> Contender:
    if name in JAX_LIBRARIES:
        return jax_contender(name, optimizer, params_np, grads_jax)
    if name == IDENTITY:
        reference = "optax" if "optax" in JAX_LIBRARIES else next(iter(JAX_LIBRARIES))
        return identity_contender(reference, optimizer, params_np, grads_jax)
    if name.startswith("torch-") and name[len("torch-") :] in TORCH_IMPLS:
        if torch_dev is None:
            raise _Skip(torch_device()[1])
        return TorchContender(
            name[len("torch-") :], optimizer, params_np, grads_torch, torch_dev
        )
    raise ValueError(f"unknown contender {name!r}; known: {DEFAULT_CONTENDERS}")


class _Skip(Exception):
    """A contender that cannot run here (no device, unsupported variant)."""


def run_case(
    spec: TreeSpec,
    optimizer: str,
    settings: Settings,
    log: Callable[[str], None] = log_nothing,
) -> dict[str, Any]:
    """Time every contender of one optimizer on one tree.

    Args:
        spec: The tree.
        optimizer: A key of `OPTIMIZERS`.
        settings: Rounds, warm-up and sample length.
        log: Called with one line of progress at a time.

    Returns:
        The case record: tree and optimizer facts, one entry per contender
        (status, samples, median, quartiles, achieved GB/s and, for JAX
        sides, compile times, HLO counts, bytes accessed and memory), the
        gradtx ratios, and how far the final parameters agree.
    """
    opt = OPTIMIZERS[optimizer]
    clock = time.perf_counter()
    phases: dict[str, Any] = {"build_s": {}}
    params_np, grads_np = make_data(spec, settings.seed)
    grads_jax = _private_copy(grads_np)
    torch_dev, torch_reason = torch_device()
    grads_torch = None
    if torch_dev is not None and any(
        c.startswith("torch-") for c in settings.contenders
    ):
        import torch

        grads_torch = [
            torch.tensor(grads_np[k], device=torch_dev) for k in sorted(grads_np)
        ]
    del grads_np
    phases["data_s"], clock = time.perf_counter() - clock, time.perf_counter()

    entries: dict[str, dict[str, Any]] = {}
    active: list[Contender] = []
    for name in settings.contenders:
        try:
            contender = _build(
                name, optimizer, params_np, grads_jax, grads_torch, torch_dev
            )
        except _Skip as skip:
            entries[name] = {"status": "skipped", "reason": str(skip)}
            log(f"  {name:14s} skipped: {skip}")
            continue
        except Exception as error:  # noqa: BLE001 - recorded, the run goes on
            status = "skipped" if name.startswith("torch-") else "error"
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            entries[name] = {"status": status, "reason": reason}
            log(f"  {name:14s} {status}: {reason}")
            continue
        finally:
            phases["build_s"][name] = time.perf_counter() - clock
            clock = time.perf_counter()
        entries[name] = {"status": "ok", "library": contender.library}
        entries[name].update(contender.info)
        active.append(contender)
        if "lower_compile_s" in contender.info:
            log(
                f"  {name:14s} lower {contender.info['lower_s']:6.2f} s, "
                f"compile {contender.info['compile_s']:6.2f} s, "
                f"{contender.info['hlo']['fusions']} fusions"
            )
    # Each of our steps without the clip, right after its clipped step in
    # every round: `baselines[name]` times `name`'s step for BASELINES[optimizer].
    baselines: dict[str, Contender] = {}
    baseline = BASELINES.get(optimizer) if settings.baselines else None
    if baseline and not spec.name.startswith("sweep-"):
        for contender in list(active):
            if contender.name not in OURS:
                continue
            try:
                base = jax_contender(contender.name, baseline, params_np, grads_jax)
            except Exception as error:  # noqa: BLE001 - the ratio is left out
                log(f"  {contender.name}:{baseline} error: {error}")
                continue
            base.name = f"{contender.name}:{baseline}"
            baselines[contender.name] = base
    del params_np
    timed: list[Contender] = []
    for contender in active:
        timed.append(contender)
        if contender.name in baselines:
            timed.append(baselines[contender.name])
    phases["build_s"]["baselines"] = time.perf_counter() - clock
    clock = time.perf_counter()

    # Warm up, and estimate each step's time: the median warm-up step.
    estimates = {}
    for contender in timed:
        times = []
        for _ in range(max(settings.warmup, 1)):
            t0 = time.perf_counter()
            contender.run(1)
            times.append(time.perf_counter() - t0)
        estimates[contender.name] = statistics.median(times)
    slowest = max(estimates.values(), default=1.0)
    steps = int(
        min(
            settings.max_steps_per_sample,
            max(1, round(settings.sample_seconds / max(slowest, 1e-9))),
        )
    )
    phases["warmup_s"], clock = time.perf_counter() - clock, time.perf_counter()

    # A sample stops early past 5x its planned length: one stalled contender
    # on a busy machine must not stretch the run by orders of magnitude.
    budget = 5 * max(settings.sample_seconds, steps * slowest)
    samples: dict[str, list[float]] = {c.name: [] for c in timed}
    gc.collect()
    gc.disable()  # no collector pauses inside the samples (collect is slow)
    try:
        for _ in range(settings.rounds):
            for contender in timed:  # interleaved: A, B, C, A, B, C, ...
                t0 = time.perf_counter()
                done = contender.run(steps, deadline=t0 + budget)
                samples[contender.name].append((time.perf_counter() - t0) / done)
    finally:
        gc.enable()
    phases["rounds_s"], clock = time.perf_counter() - clock, time.perf_counter()

    model_bytes = opt.bytes_per_param * spec.n_params
    for contender in active:
        entry = entries[contender.name]
        q1, median, q3 = _quartiles(samples[contender.name])
        entry.update(
            samples_s=samples[contender.name],
            median_s=median,
            p25_s=q1,
            p75_s=q3,
            achieved_gbs=model_bytes / median / 1e9,
        )
    agreement = _agreement(active, estimates)
    phases["agreement_s"] = time.perf_counter() - clock
    base_entries = {}
    for name, base in baselines.items():
        mine, theirs = samples[name], samples[base.name]
        q1, median, q3 = _quartiles(theirs)
        base_entries[name] = {
            "optimizer": baseline,
            "samples_s": theirs,
            "median_s": median,
            "p25_s": q1,
            "p75_s": q3,
            "lower_compile_s": base.info["lower_compile_s"],
            # the clipped step over this one, round by round
            "paired_median": statistics.median(
                a / b for a, b in zip(mine, theirs, strict=True)
            ),
        }

    record = {
        "key": f"{spec.name}/{optimizer}",
        "tree": spec.name,
        "tree_description": spec.description,
        "optimizer": optimizer,
        "n_leaves": spec.n_leaves,
        "n_params": spec.n_params,
        "largest_leaf_bytes": 4 * spec.largest_leaf,
        "model_bytes_per_param": opt.bytes_per_param,
        "rounds": settings.rounds,
        "warmup": settings.warmup,
        "steps_per_sample": steps,
        "order": [c.name for c in active],
        "contenders": entries,
        "ratios": _ratios({c.name: samples[c.name] for c in active}),
        "baselines": base_entries,
        "agreement": agreement,
        "phases": phases,
    }
    if torch_reason:
        record["torch_note"] = torch_reason
    for contender in timed:
        contender.close()
    del active, timed, baselines, grads_jax, grads_torch
    gc.collect()
    return record


def _ratios(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each of `OURS` over each other contender: median of paired ratios.

    Round r of gradtx is divided by round r of the other (they ran seconds
    apart), and the median of those ratios is reported, with the ratio of
    the two medians beside it.
    """
    ratios = {}
    for first in OURS:
        if first not in samples:
            continue
        mine = samples[first]
        for name, theirs in samples.items():
            if name in (first, IDENTITY):
                continue
            paired = [a / b for a, b in zip(mine, theirs, strict=True)]
            ratios[f"{first}/{name}"] = {
                "paired_median": statistics.median(paired),
                "of_medians": statistics.median(mine) / statistics.median(theirs),
            }
    return ratios


def _agreement(
    active: list[Contender], estimates: dict[str, float], catch_up_s: float = 10.0
) -> dict[str, Any]:
    """Largest difference of final parameters from the reference contender.

    Every contender started from the same parameters and gradients; the ones
    that ran fewer steps (a sample cut short) first catch up, untimed, unless
    that would take more than `catch_up_s`. The parameters must then agree to
    float32 round-off: a check that each side did the work it was timed for
    (not a correctness test).
    """
    real = [c for c in active if c.name != IDENTITY]
    if len(real) < 2:
        return {}
    target = max(c.steps_done for c in real)
    for contender in real:
        missing = target - contender.steps_done
        if 0 < missing and missing * estimates[contender.name] <= catch_up_s:
            contender.run(missing)
    real = [c for c in real if c.steps_done == target]
    names = [c.name for c in real]
    if len(real) < 2:
        return {"steps": target, "not_compared": [c.name for c in active]}
    reference = real[names.index("optax")] if "optax" in names else real[0]
    want = reference.final_params()
    scale = max(float(np.max(np.abs(w))) for w in want)
    out: dict[str, Any] = {
        "steps": target,
        "reference": reference.name,
        "max_abs_param": scale,
        "max_abs_diff": {},
        "not_compared": [
            c.name for c in active if c.name != IDENTITY and c not in real
        ],
    }
    for contender in real:
        if contender is reference:
            continue
        got = contender.final_params()
        gap = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
        out["max_abs_diff"][contender.name] = gap
    return out


# ----------------------------------------------------------------------------
# the bandwidth limit


def measure_bandwidth(
    size: int, repeats: int, log: Callable[[str], None] = log_nothing
) -> dict[str, Any]:
    """GB/s of streaming kernels over `size` float32 scalars.

    The update kernels read and write each element once (8 bytes per
    element): a jitted, donated, in-place `x * a + b` on the JAX device;
    NumPy's `np.multiply(x, a, out=x)` on the host (one thread); and, on the
    torch device when there is one, torch's in-place `x.mul_(a)` and its copy
    `y.copy_(x)` (what a device-to-device copy moves). The read kernels only
    read each element (4 bytes): a jitted `sum(x * x)` and torch's
    `dot(x, x)`, what the global norm of a gradient costs. A sample is a batch
    of calls issued back to back and waited for once, long enough (about
    20 ms) that the wait and the Python dispatch do not count: on a GPU one
    call over a few GB lasts under a millisecond. The kernels run in
    interleaved rounds; the median of each is reported. The limit is the
    fastest update kernel on the device JAX runs on, the read limit the
    fastest read kernel there.

    Args:
        size: Number of float32 elements in the buffer.
        repeats: Number of rounds.
        log: Called with one line of progress at a time.

    Returns:
        A dict: `size`, `bytes_per_call` (of an update kernel), `kernels`
        (name -> {gbs, median_s, calls_per_sample, where, bytes_per_call,
        reads_only}), `limit_gbs`, `limit_kernel`, `read_gbs` and
        `read_kernel`.
    """
    nbytes = 8 * size
    # Each kernel runs `calls` back to back and waits once.
    kernels: dict[str, tuple[Callable[[int], None], str]] = {}
    reads_only: set[str] = set()  # kernels that move 4 bytes per element

    state = {"x": jnp.ones((size,), jnp.float32)}
    rmw = jax.jit(
        lambda x: x * jnp.float32(0.999) + jnp.float32(0.001), donate_argnums=0
    )

    def run_jax(calls: int) -> None:
        x = state["x"]
        for _ in range(calls):
            x = rmw(x)
        state["x"] = x.block_until_ready()

    kernels["jax x*a+b (donated)"] = (run_jax, "device")

    sum_sq = jax.jit(lambda x: jnp.sum(x * x))

    def run_jax_read(calls: int) -> None:
        x = state["x"]
        total = None
        for _ in range(calls):
            total = sum_sq(x)
        jax.block_until_ready(total)

    kernels["jax sum(x*x)"] = (run_jax_read, "device")
    reads_only.add("jax sum(x*x)")

    host = np.ones((size,), np.float32)
    factor = np.float32(0.9999)

    def run_numpy(calls: int) -> None:
        for _ in range(calls):
            np.multiply(host, factor, out=host)

    on_cpu = jax_device().platform == "cpu"
    kernels["numpy multiply(out=x)"] = (run_numpy, "device" if on_cpu else "host")

    dev, _ = torch_device()  # the CPU when JAX is on the CPU, else its GPU
    if dev is not None:
        import torch

        tensor = torch.ones(size, dtype=torch.float32, device=dev)
        target = torch.empty_like(tensor)

        def wait() -> None:
            if dev == "cuda":
                torch.cuda.synchronize()

        def run_torch(calls: int) -> None:
            for _ in range(calls):
                tensor.mul_(0.9999)
            wait()

        def run_copy(calls: int) -> None:
            for _ in range(calls):
                target.copy_(tensor)
            wait()

        def run_dot(calls: int) -> None:
            for _ in range(calls):
                total = torch.dot(tensor, tensor)
            wait()
            del total

        kernels[f"torch mul_ ({dev})"] = (run_torch, "device")
        kernels[f"torch copy_ ({dev})"] = (run_copy, "device")
        kernels[f"torch dot ({dev})"] = (run_dot, "device")
        reads_only.add(f"torch dot ({dev})")

    calls: dict[str, int] = {}
    for name, (fn, _) in kernels.items():
        fn(1)  # compile, fault the pages in
        t0 = time.perf_counter()
        fn(1)
        once = time.perf_counter() - t0
        calls[name] = max(1, min(1000, round(0.02 / max(once, 1e-9))))
    times: dict[str, list[float]] = {k: [] for k in kernels}
    for _ in range(repeats):
        for name, (fn, _) in kernels.items():
            t0 = time.perf_counter()
            fn(calls[name])
            times[name].append((time.perf_counter() - t0) / calls[name])
    out: dict[str, Any] = {"size": size, "bytes_per_call": nbytes, "kernels": {}}
    for name, (_, where) in kernels.items():
        median = statistics.median(times[name])
        moved = nbytes // 2 if name in reads_only else nbytes
        out["kernels"][name] = {
            "median_s": median,
            "gbs": moved / median / 1e9,
            "calls_per_sample": calls[name],
            "where": where,
            "bytes_per_call": moved,
            "reads_only": name in reads_only,
        }
        log(f"  {name:26s} {moved / median / 1e9:7.2f} GB/s ({where})")
    for key, reading in (("limit", False), ("read", True)):
        on_device = {
            k: v
            for k, v in out["kernels"].items()
            if v["where"] == "device" and v["reads_only"] == reading
        }
        best = max(on_device, key=lambda k: on_device[k]["gbs"])
        out[f"{key}_gbs"], out[f"{key}_kernel"] = on_device[best]["gbs"], best
    return out
