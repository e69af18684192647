"""Which chains the kernel runs, read from the factories that built them.

A transformation says what it is through the factory that built it
(`tx.factory`). `READERS` maps each factory whose link the kernel can run
to a reader with the factory's own signature: `reader(*tx.children,
**tx.hyperparams)` turns the recorded call into a small spec. A factory
argument renamed or added in the core makes that call fail when the step is
built, and `tests/test_fused.py` holds every reader's signature to its
factory's, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from gradtx.base import GradientTransformation, chain
from gradtx.clipping import clip_by_global_norm
from gradtx.decay import add_decayed_weights
from gradtx.scaling import scale_by_adam, scale_by_learning_rate, scale_by_momentum

# The dtypes a moment may be kept in (None: the params', float32 for the kernel).
MOMENT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class Unsupported(Exception):
    """The chain has no kernel; the message says why."""


# ----------------------------------------------------------------------------
# what each link's factory call says


class ChainSpec(NamedTuple):
    links: tuple[Any, ...]


class ClipSpec(NamedTuple):
    max_norm: Any


class DecaySpec(NamedTuple):
    weight_decay: Any  # a number, an array or a schedule
    mask: Any


class AdamSpec(NamedTuple):
    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    nesterov: bool
    moment_dtypes: tuple[Any, ...]


class MomentumSpec(NamedTuple):
    decay: Any
    nesterov: bool
    dampening: Any
    moment_dtypes: tuple[Any, ...]


class LearningRateSpec(NamedTuple):
    learning_rate: Any  # a number, an array or a schedule


def _chain(*transforms: Any) -> ChainSpec:
    return ChainSpec(transforms)


def _clip(max_norm: Any) -> ClipSpec:
    return ClipSpec(max_norm)


def _decay(weight_decay: Any = 0.0, mask: Any = None) -> DecaySpec:
    return DecaySpec(weight_decay, mask)


def _adam(
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> AdamSpec:
    return AdamSpec(b1, b2, eps, eps_root, bool(nesterov), (mu_dtype, nu_dtype))


def _momentum(
    decay: Any = 0.9,
    nesterov: bool = False,
    dampening: Any = 0.0,
    accumulator_dtype: Any = None,
) -> MomentumSpec:
    return MomentumSpec(decay, bool(nesterov), dampening, (accumulator_dtype,))


def _learning_rate(learning_rate: Any, *, flip_sign: bool = True) -> LearningRateSpec:
    if not flip_sign:
        raise Unsupported("the kernel descends: flip_sign=False has no kernel")
    return LearningRateSpec(learning_rate)


READERS: dict[Callable[..., Any], Callable[..., Any]] = {
    chain: _chain,
    clip_by_global_norm: _clip,
    add_decayed_weights: _decay,
    scale_by_adam: _adam,
    scale_by_momentum: _momentum,
    scale_by_learning_rate: _learning_rate,
}


def read(tx: Any) -> Any:
    """The spec of one transformation, or None if the kernel has no part for it.

    Raises:
        TypeError: If the reader of `tx`'s factory no longer takes the call
            the factory recorded (the factory's signature has changed).
    """
    reader = READERS.get(getattr(tx, "factory", None))  # type: ignore[arg-type]
    if reader is None:
        return None
    try:
        bound = inspect.signature(reader).bind(*tx.children, **tx.hyperparams)
    except TypeError as error:
        raise TypeError(
            f"fused_step: the reader of {tx.name} in gradtx/fused/_plan.py does "
            f"not take the call {tx.name} recorded ({error}); it must have "
            f"{tx.name}'s signature"
        ) from None
    return reader(*bound.args, **bound.kwargs)


# ----------------------------------------------------------------------------
# the plan: the links of a chain the kernel runs, in their roles


class Link(NamedTuple):
    name: str  # the factory's name, for messages
    spec: Any  # what `read` made of it; None where the kernel has no part
    path: tuple[int, ...]  # where its state sits in the chain's state


class Plan(NamedTuple):
    """The links of a kernel chain, each in its role (None where absent)."""

    kind: str  # which kernel: "adam" or "sgd"
    clip: Link | None
    coupled: Link | None  # add_decayed_weights before the scaling
    core: Link | None  # scale_by_adam (kind "adam") or scale_by_momentum
    decoupled: Link | None  # add_decayed_weights after scale_by_adam
    lr: Link

    def moments(self) -> tuple[str, ...]:
        """The fields of the core link's state that hold moment trees."""
        if self.core is None:
            return ()
        return ("mu", "nu") if self.kind == "adam" else ("velocity",)


def _links(tx: Any, path: tuple[int, ...] = ()) -> list[Link]:
    """The links of a (nested) chain in order, with their state paths."""
    name = getattr(tx, "name", None)
    if name is None:
        raise Unsupported("a link was not built by a gradtx factory")
    spec = read(tx)
    if isinstance(spec, ChainSpec):
        return [
            link
            for i, child in enumerate(spec.links)
            for link in _links(child, (*path, i))
        ]
    return [Link(name, spec, path)]


def _take(links: list[Link], i: int, kind: type) -> tuple[Link | None, int]:
    """`links[i]` and `i + 1` if that link's spec is a `kind`; else `None, i`."""
    if i < len(links) and isinstance(links[i].spec, kind):
        return links[i], i + 1
    return None, i


def _check_moment_dtypes(link: Link | None, what: str) -> None:
    if link is None:
        return
    for dtype in link.spec.moment_dtypes:
        if dtype is not None and jnp.dtype(dtype) not in MOMENT_DTYPES:
            raise Unsupported(f"the kernel keeps {what} in float32 or bfloat16 only")


def make_plan(tx: GradientTransformation) -> Plan:
    """Match the chain against the shapes the kernels run.

    Raises:
        Unsupported: If no kernel runs `tx`, saying why.
        TypeError: If a link's factory call cannot be read (see `read`).
    """
    links = _links(tx)
    clip, i = _take(links, 0, ClipSpec)
    coupled, i = _take(links, i, DecaySpec)
    core, i = _take(links, i, AdamSpec)
    decoupled = None
    if core is not None:
        kind = "adam"
        decoupled, i = _take(links, i, DecaySpec)
    else:
        kind = "sgd"
        core, i = _take(links, i, MomentumSpec)
    lr, i = _take(links, i, LearningRateSpec)
    if lr is None or i != len(links):
        shown = " -> ".join(link.name for link in links)
        raise Unsupported(
            f"no kernel for the chain {shown}; the kernels run [clip_by_global_norm]"
            " -> [add_decayed_weights] -> scale_by_adam -> [add_decayed_weights] ->"
            " scale_by_learning_rate and [clip_by_global_norm] ->"
            " [add_decayed_weights] -> [scale_by_momentum] -> scale_by_learning_rate"
        )
    what = "Adam's moments" if kind == "adam" else "the momentum"
    _check_moment_dtypes(core, what)
    return Plan(kind, clip, coupled, core, decoupled, lr)
