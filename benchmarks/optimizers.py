"""The optimizers under test, built the same way in gradtx, optax and torch.optim.

Every library gets the same hyperparameters (`HYPERPARAMS`). The gradtx side
calls only the public API (`gradtx.adamw(...)`, `gradtx.apply_updates`), so
whatever gradtx does by default, a fast path included, is what gets timed.
To time another JAX library or a gradtx variant side by side, add an entry to
`JAX_LIBRARIES`: a function from an optimizer name to `(tx, apply_updates)`.

Each optimizer also carries its memory-traffic model: the bytes per parameter
that a step must move at the least, with float32 everything:

- adamw, adam: read p, g, m, v and write p, m, v: 7 x 4 = 28 bytes.
- sgd with momentum: read p, g, v and write p, v: 5 x 4 = 20 bytes.
- clip + adamw: adamw plus one more read of g for the global norm: 32 bytes.
- adamw_bf16 (AdamW with `mu_dtype=bfloat16`, not in the default set): the
  first moment takes 2 bytes instead of 4: 24 bytes. torch.optim has no such
  option (its state follows the params' dtype), so only the JAX side runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HYPERPARAMS = {
    "learning_rate": 1e-3,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "weight_decay": 1e-2,
    "momentum": 0.9,
    "max_norm": 1.0,
}


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer under test and its memory-traffic model."""

    name: str
    label: str
    bytes_per_param: int
    traffic: str


OPTIMIZERS = {
    "adamw": OptimizerSpec(
        "adamw", "AdamW", 28, "read p, g, m, v; write p, m, v (7 x 4 B)"
    ),
    "adam": OptimizerSpec("adam", "Adam", 28, "read p, g, m, v; write p, m, v"),
    "sgd": OptimizerSpec(
        "sgd", "SGD momentum 0.9", 20, "read p, g, v; write p, v (5 x 4 B)"
    ),
    "clip_adamw": OptimizerSpec(
        "clip_adamw",
        "clip_by_global_norm(1) + AdamW",
        32,
        "AdamW plus one read of g for the norm (8 x 4 B)",
    ),
}
DEFAULT_OPTIMIZERS = tuple(OPTIMIZERS)
OPTIMIZERS["adamw_bf16"] = OptimizerSpec(
    "adamw_bf16",
    "AdamW, first moment in bfloat16",
    24,
    "read p, g, v (4 B), m (2 B); write p, v (4 B), m (2 B)",
)


def _gradtx(name: str) -> tuple[Any, Callable[..., Any]]:
    import jax.numpy as jnp

    import gradtx

    h = HYPERPARAMS
    adam_args = dict(b1=h["b1"], b2=h["b2"], eps=h["eps"])
    if name in ("adamw", "adamw_bf16"):
        if name == "adamw_bf16":
            adam_args["mu_dtype"] = jnp.bfloat16
        tx = gradtx.adamw(
            h["learning_rate"], weight_decay=h["weight_decay"], **adam_args
        )
    elif name == "adam":
        tx = gradtx.adam(h["learning_rate"], **adam_args)
    elif name == "sgd":
        tx = gradtx.sgd(h["learning_rate"], momentum=h["momentum"])
    elif name == "clip_adamw":
        tx = gradtx.chain(
            gradtx.clip_by_global_norm(h["max_norm"]), _gradtx("adamw")[0]
        )
    else:
        raise ValueError(f"gradtx: unknown optimizer {name!r}")
    return tx, gradtx.apply_updates


def _optax(name: str) -> tuple[Any, Callable[..., Any]]:
    import jax.numpy as jnp
    import optax

    h = HYPERPARAMS
    adam_args = dict(b1=h["b1"], b2=h["b2"], eps=h["eps"])
    if name in ("adamw", "adamw_bf16"):
        if name == "adamw_bf16":
            adam_args["mu_dtype"] = jnp.bfloat16
        tx = optax.adamw(
            h["learning_rate"], weight_decay=h["weight_decay"], **adam_args
        )
    elif name == "adam":
        tx = optax.adam(h["learning_rate"], **adam_args)
    elif name == "sgd":
        tx = optax.sgd(h["learning_rate"], momentum=h["momentum"])
    elif name == "clip_adamw":
        tx = optax.chain(optax.clip_by_global_norm(h["max_norm"]), _optax("adamw")[0])
    else:
        raise ValueError(f"optax: unknown optimizer {name!r}")
    return tx, optax.apply_updates


def _gradtx_fused(name: str) -> tuple[Any, Callable[..., Any], Callable[..., Any]]:
    """gradtx's chain run by `gradtx.fused_step` (one pass on CPU)."""
    import gradtx

    tx, apply_updates = _gradtx(name)
    return tx, apply_updates, gradtx.fused_step(tx)


def _gradtx_flat(name: str) -> tuple[Any, Callable[..., Any], Callable[..., Any]]:
    """The fused step with the moments in flat arrays (`flat_moments=True`)."""
    import gradtx

    tx, apply_updates = _gradtx(name)
    return tx, apply_updates, gradtx.fused_step(tx, flat_moments=True)


# name -> (optimizer name -> (tx, apply_updates[, step])); the order is the
# column order. A library that returns a third item, `step(params, state,
# grads) -> (params, state)`, is timed with it instead of `tx.update` followed
# by `apply_updates`; its state comes from `step.init` where it has one.
JAX_LIBRARIES: dict[str, Callable[[str], tuple[Any, ...]]] = {
    "gradtx": _gradtx,
    "gradtx-fused": _gradtx_fused,
    "gradtx-flat": _gradtx_flat,
    "optax": _optax,
}
# The contenders whose ratios to every other contender are reported.
OURS = ("gradtx", "gradtx-fused", "gradtx-flat")

# torch.optim implementations timed, each a constructor keyword set to True.
TORCH_IMPLS = ("foreach", "fused")


def make_torch(name: str, params: list[Any], impl: str) -> tuple[Any, float | None]:
    """A torch.optim optimizer for `name` over `params`, and its clip norm.

    Args:
        name: One of `OPTIMIZERS`.
        params: The tensors to optimize.
        impl: "foreach" or "fused": the constructor flag set to True.

    Returns:
        `(optimizer, max_norm)`; `max_norm` is None unless the step must first
        call `torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`.

    Raises:
        ValueError: If the optimizer name is unknown.
        RuntimeError: If torch rejects the implementation on this device.
    """
    import torch

    h = HYPERPARAMS
    flag = {impl: True}
    betas = (h["b1"], h["b2"])
    lr = h["learning_rate"]
    if name in ("adamw", "clip_adamw"):
        opt = torch.optim.AdamW(
            params,
            lr=lr,
            betas=betas,
            eps=h["eps"],
            weight_decay=h["weight_decay"],
            **flag,
        )
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=h["eps"], **flag)
    elif name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=h["momentum"], **flag)
    elif name == "adamw_bf16":
        raise ValueError("torch.optim keeps its state in the params' dtype")
    else:
        raise ValueError(f"torch: unknown optimizer {name!r}")
    return opt, (h["max_norm"] if name == "clip_adamw" else None)
