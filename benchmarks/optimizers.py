"""The optimizers under test, built alike in gradtx, optax and torch.optim.

Every library gets the same hyperparameters. The gradtx side uses only the
public API, so whatever gradtx does by default is what gets timed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8
WEIGHT_DECAY, MOMENTUM, MAX_NORM = 1e-2, 0.9, 1.0

# The bytes per parameter a step must read and write at the least, all in
# float32: the copy floor moves as many. AdamW reads p, g, m, v and writes
# p, m, v; SGD reads p, g, v and writes p, v; clipping reads g once more for
# the norm; a bfloat16 first moment moves 2 bytes each way instead of 4.
BYTES_PER_PARAM = {"adamw": 28, "clip_adamw": 32, "sgd": 20, "adam": 28}
BYTES_PER_PARAM["adamw_bf16"] = 24  # not in the default set; no torch side
DEFAULT_OPTIMIZERS = ("adamw", "clip_adamw", "sgd", "adam")

# The families beyond Adam (`--families`), each with the bytes per parameter
# its step must move at the least, in float32: every per-parameter state
# buffer is read and written once, p and g are read and p written. Per-leaf
# or factored statistics (NovoGrad, Adafactor) are too small to count.
FAMILY_BYTES = {
    "amsgrad": 36,  # m, v, v_max
    "adamax": 28,  # m, u
    "adamaxw": 28,
    "radam": 28,
    "nadam": 28,
    "nadamw": 28,
    "adabelief": 28,  # m, s
    "yogi": 28,
    "adopt": 28,
    "ademamix": 36,  # m1, m2, v
    "novograd": 20,  # m; the second moment is one number per leaf
    "lion": 20,  # m
    "lamb": 28,
    "lars": 20,  # the momentum buffer
    "adafactor": 12,  # no momentum by default; factored second moment
    "sign_sgd": 12,
    "signum": 20,
    "rprop": 28,  # the previous gradient and the per-element step size
    # the training methods of 2025-2026 recipes
    "muon": 20,  # m; the orthogonalisation adds matrix products, not traffic
    "prodigy": 40,  # m, v, s read and written, the initial params read
    "schedule_free_adamw": 36,  # z, and Adam's two moments (the first unused)
    "schedule_free_sgd": 20,  # z
}
# Wrappers and methods whose step needs more than `update(grads, state,
# params)`, or keeps more than an optimizer state: each built in gradtx and
# as an optax user writes it (see `_method`). Bytes as above; the averages
# and slow weights are float32 buffers read and written once per step (the
# slow weights only every `SYNC` steps); L-BFGS's two loops read its 2 x
# `MEMORY` stored vectors twice, and it writes a new pair.
SYNC, MEMORY, CURVATURE = 5, 10, 1e-2
METHOD_BYTES = {
    "lookahead_adam": 28 + 8 // SYNC + 1,
    "ema_adam": 36,
    "swa_adam": 36,
    "sam_sgd": 28,  # p, g read twice (ascent, then the step), momentum
    "lbfgs_direction": 2 * 2 * MEMORY * 4 + 20,
}
FAMILY_BYTES.update(METHOD_BYTES)
FAMILY_OPTIMIZERS = tuple(FAMILY_BYTES)
BYTES_PER_PARAM.update(FAMILY_BYTES)
# optax keeps these in optax.contrib.
_OPTAX_CONTRIB = (
    "adopt",
    "ademamix",
    "muon",
    "prodigy",
    "schedule_free_adamw",
    "schedule_free_sgd",
)
# Decoupled weight decay where the optimizer takes one.
_WITH_DECAY = ("adamaxw", "nadamw", "lion", "lamb")


def _build(lib: Any, name: str) -> Any:
    """The optimizer `name` from gradtx or optax, whose aliases agree."""
    adam = dict(b1=B1, b2=B2, eps=EPS)
    if name == "adamw_bf16":
        import jax.numpy as jnp

        return lib.adamw(LR, weight_decay=WEIGHT_DECAY, mu_dtype=jnp.bfloat16, **adam)
    if name == "adamw":
        return lib.adamw(LR, weight_decay=WEIGHT_DECAY, **adam)
    if name == "clip_adamw":
        return lib.chain(lib.clip_by_global_norm(MAX_NORM), _build(lib, "adamw"))
    if name == "adam":
        return lib.adam(LR, **adam)
    if name == "sgd":
        return lib.sgd(LR, momentum=MOMENTUM)
    if name in FAMILY_BYTES:
        # gradtx follows optax's signature and defaults for these names, so
        # the same call builds the same optimizer in both.
        contrib = name in _OPTAX_CONTRIB and hasattr(lib, "contrib")
        where = lib.contrib if contrib else lib
        decay = {"weight_decay": WEIGHT_DECAY} if name in _WITH_DECAY else {}
        # Prodigy's learning rate multiplies the step size it estimates: 1.0
        lr = 1.0 if name == "prodigy" else LR
        return getattr(where, name)(lr, **decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {BYTES_PER_PARAM}")


def _method(lib: Any, name: str) -> tuple[Any, Callable]:
    """`(init, step)` of a method of METHOD_BYTES in gradtx or optax.

    optax has no average of the params: its side is optax's Adam followed by
    the average an optax user writes by hand, in the same jitted step.
    optax's lookahead keeps the slow weights in the params
    (`LookaheadParams`); its side carries them in the state instead, so
    that both steps take and return the same params. SAM gets the gradient
    of 0.5 * ||p||^2 (p itself) as its `grad_fn` on both sides. L-BFGS is
    timed as its direction (`scale_by_lbfgs`, then the learning rate): its
    line search's cost is that of the user's objective, evaluated at each
    trial point, which no library can change.
    """
    import jax
    import jax.numpy as jnp

    is_gradtx = lib.__name__ == "gradtx"
    adam = lib.adam(LR, b1=B1, b2=B2, eps=EPS)
    if name == "lookahead_adam" and is_gradtx:
        tx = lib.lookahead(adam, SYNC, 0.5)
    elif name == "lookahead_adam":
        tx = lib.lookahead(adam, SYNC, 0.5)

        def init(params):
            pair = lib.LookaheadParams.init_synced(params)
            return tx.init(pair), pair.slow

        def step(params, state, grads):
            inner, slow = state
            pair = lib.LookaheadParams(fast=params, slow=slow)
            updates, inner = tx.update(grads, inner, pair)
            pair = lib.apply_updates(pair, updates)
            return pair.fast, (inner, pair.slow)

        return init, step
    elif name in ("ema_adam", "swa_adam") and is_gradtx:
        tx = (
            lib.ema_params(adam, 0.999)
            if name == "ema_adam"
            else lib.swa_params(adam, every_k=1)
        )
    elif name in ("ema_adam", "swa_adam"):

        def init(params):
            average = jax.tree.map(lambda p: jnp.array(p, jnp.float32), params)
            return adam.init(params), average, jnp.zeros([], jnp.int32)

        def step(params, state, grads):
            inner, average, count = state
            updates, inner = adam.update(grads, inner, params)
            params = lib.apply_updates(params, updates)
            if name == "ema_adam":
                weight = jnp.where(count == 0, 1.0, 1.0 - 0.999)
            else:
                weight = 1.0 / (count + 1).astype(jnp.float32)
            average = jax.tree.map(
                lambda a, p: a + weight * (p.astype(jnp.float32) - a), average, params
            )
            return params, (inner, average, count + 1)

        return init, step
    elif name == "sam_sgd":
        sgd = lib.sgd(LR, momentum=MOMENTUM)
        if is_gradtx:
            tx = lib.sam(sgd, 0.05)
        else:
            adversary = lib.chain(lib.contrib.normalize(), lib.sgd(0.05))
            tx = lib.contrib.sam(sgd, adversary, 2, opaque_mode=True)

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params, grad_fn=lambda p, i: p)
            return lib.apply_updates(params, updates), state

        return tx.init, step
    elif name == "lbfgs_direction":
        tx = lib.chain(lib.scale_by_lbfgs(MEMORY), lib.scale_by_learning_rate(LR))

        def step(params, state, grads):
            # the gradient of <g, p> + CURVATURE / 2 ||p||^2: the pairs L-BFGS
            # stores then have s.y > 0, as on a convex objective
            grads = jax.tree.map(lambda g, p: g + CURVATURE * p, grads, params)
            updates, state = tx.update(grads, state, params)
            return lib.apply_updates(params, updates), state

        return tx.init, step
    else:
        raise ValueError(f"unknown method {name!r}")

    def plain_step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return lib.apply_updates(params, updates), state

    return tx.init, plain_step


def _plain(lib: Any) -> Callable[[str], tuple[Any, Callable]]:
    def make(name: str) -> tuple[Any, Callable]:
        if name in METHOD_BYTES:
            return _method(lib, name)
        tx = _build(lib, name)

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return lib.apply_updates(params, updates), state

        return tx.init, step

    return make


def _fused(**options: Any) -> Callable[[str], tuple[Any, Callable]]:
    def make(name: str) -> tuple[Any, Callable]:
        import gradtx

        step = gradtx.fused_step(_build(gradtx, name), **options)
        return step.init, step

    return make


def jax_libraries() -> dict[str, Callable[[str], tuple[Any, Callable]]]:
    """Library name -> (optimizer name -> `(init, step)`), in column order.

    `step(params, state, grads)` returns `(params, state)`.
    """
    import optax

    import gradtx

    libraries = {"gradtx": _plain(gradtx)}
    if "fused_step" in gradtx.__all__:  # the fused annex is installed
        libraries["gradtx-fused"] = _fused()
        libraries["gradtx-flat"] = _fused(flat_moments=True)
    libraries["optax"] = _plain(optax)
    return libraries


# The contenders a family optimizer is timed with: the fused step has no
# kernel for these chains (it would time the plain step again).
FAMILY_LIBRARIES = ("copy", "gradtx", "optax", "torch-foreach")


TORCH_LIBRARIES = ("torch-foreach", "torch-fused")


def make_torch(name: str, params: list, impl: str) -> tuple[Any, float | None]:
    """torch.optim's `name` built with `foreach=True` or `fused=True`.

    Returns the optimizer and the max norm to clip to before each step (None
    for no clipping).
    """
    import torch

    flag = {impl: True}
    if name in ("adamw", "clip_adamw"):
        opt = torch.optim.AdamW(
            params, LR, betas=(B1, B2), eps=EPS, weight_decay=WEIGHT_DECAY, **flag
        )
    elif name == "adam":
        opt = torch.optim.Adam(params, LR, betas=(B1, B2), eps=EPS, **flag)
    elif name == "sgd":
        opt = torch.optim.SGD(params, LR, momentum=MOMENTUM, **flag)
    elif name in _TORCH_FAMILIES:
        if impl == "fused":
            raise ValueError(f"torch.optim has no fused {name!r}")
        if name == "muon" and params[0].device.type == "cpu" and not _bf16_cpu():
            # Muon's iteration runs in bfloat16, which torch's CPU matmuls
            # emulate without AVX512-BF16 or AMX: about a minute a step on
            # ResNet-50 on 2 cores.
            raise ValueError(
                "torch.optim.Muon is timed on a GPU or a CPU with bfloat16 "
                "products only"
            )
        opt = _TORCH_FAMILIES[name](torch.optim, params, flag)
    else:
        why = " (its state is the params' dtype)" if name == "adamw_bf16" else ""
        raise ValueError(f"torch.optim has no {name!r}{why}")
    return opt, (MAX_NORM if name == "clip_adamw" else None)


def _bf16_cpu() -> bool:
    """Whether torch's CPU matmuls have native bfloat16 (oneDNN's check)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# torch.optim's own form of the families it has (its defaults where they
# differ from optax's: the timing compares implementations of the same
# method, and tests/ pins each numerical difference).
_TORCH_FAMILIES = {
    "amsgrad": lambda o, p, f: o.Adam(
        p, LR, betas=(B1, B2), eps=EPS, amsgrad=True, **f
    ),
    "adamax": lambda o, p, f: o.Adamax(p, LR, betas=(B1, B2), eps=EPS, **f),
    "radam": lambda o, p, f: o.RAdam(p, LR, betas=(B1, B2), eps=EPS, **f),
    "nadam": lambda o, p, f: o.NAdam(p, LR, betas=(B1, B2), eps=EPS, **f),
    "nadamw": lambda o, p, f: o.NAdam(
        p,
        LR,
        betas=(B1, B2),
        eps=EPS,
        weight_decay=WEIGHT_DECAY,
        decoupled_weight_decay=True,
        **f,
    ),
    "adafactor": lambda o, p, f: o.Adafactor(p, LR, **f),
    "muon": lambda o, p, f: _MuonAndAdamW(o, p, f),
    "rprop": lambda o, p, f: o.Rprop(p, LR, **f),
}


def state_bytes(state: Any) -> int:
    """Bytes held by a JAX optimizer state (every array leaf)."""
    import jax

    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(state))


class _MuonAndAdamW:
    """torch's Muon recipe: `torch.optim.Muon` on the matrices, AdamW on the rest.

    `torch.optim.Muon` refuses parameters that are not 2-D, so a whole model
    takes two optimizers, stepped one after the other; `state` holds both.
    """

    def __init__(self, optim: Any, params: list, flags: dict) -> None:
        del flags  # Muon takes neither foreach nor fused
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        self.parts = [optim.Muon(matrices, LR, eps=EPS)] if matrices else []
        if others:
            self.parts.append(
                optim.AdamW(others, LR, betas=(B1, B2), eps=EPS, foreach=True)
            )

    @property
    def state(self) -> dict:
        return {k: v for part in self.parts for k, v in part.state.items()}

    def step(self) -> None:
        for part in self.parts:
            part.step()
