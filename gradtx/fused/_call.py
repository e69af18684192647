"""Calling the kernel over a step's leaves, a group at a time, all in place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx.fused._build import TARGETS

# Leaves per kernel call. XLA's compile time grows faster than linearly in
# the number of buffers of one custom call; calls over a few dozen leaves
# each keep it close to the plain step's.
GROUP = 32
# Per-leaf flag bits, as in _kernel.cc.
COUPLED, DECOUPLED = 1, 2


class LeafInputs(NamedTuple):
    """What the kernel reads of one leaf."""

    p: jax.Array
    g: jax.Array
    moments: tuple[jax.Array, ...]  # its own moments; () when they are flat
    flags: int  # COUPLED | DECOUPLED: which decays apply to it


class KernelOutputs(NamedTuple):
    params: list[jax.Array]  # one per leaf
    moments: list[tuple[jax.Array, ...]]  # one tuple per leaf; () when flat
    flat_moments: tuple[jax.Array, ...] | None  # the flat moments, or None


def run_kernel(
    kind: str,
    scalars: jax.Array,
    leaves: Sequence[LeafInputs],
    flat_moments: tuple[jax.Array, ...] | None,
    attrs: dict[str, bool],
) -> KernelOutputs:
    """Run the kernel over `leaves`, `GROUP` at a time, every output in place.

    Per-leaf moments (`flat_moments` None): each call takes and returns its
    group's. Flat moments (one array per moment, each leaf's stretch of it
    in flattening order): they go through the calls one after another, each
    call updating its group's stretches in place.
    """
    sizes = [int(np.size(leaf.p)) for leaf in leaves]
    starts = np.cumsum([0, *sizes])[:-1].astype(np.int64)
    scalars = _priced(scalars, -(-len(leaves) // GROUP))
    params: list[jax.Array] = []
    moments: list[tuple[jax.Array, ...]] = []
    for start in range(0, len(leaves), GROUP):
        group = leaves[start : start + GROUP]
        offsets = None if flat_moments is None else starts[start : start + GROUP]
        out = _call_group(kind, scalars, group, flat_moments, offsets, attrs)
        params += out.params
        moments += out.moments
        flat_moments = out.flat_moments
    return KernelOutputs(params, moments, flat_moments)


def _call_group(
    kind: str,
    scalars: jax.Array,
    group: Sequence[LeafInputs],
    flat_moments: tuple[jax.Array, ...] | None,
    offsets: np.ndarray | None,
    attrs: dict[str, bool],
) -> KernelOutputs:
    """One kernel call over a group of leaves (the layouts of `_kernel.cc`)."""
    flat = () if flat_moments is None else flat_moments
    # (operand, updated in place?) in argument order
    pairs = [(scalars, False), *((m, True) for m in flat)]
    for leaf in group:
        pairs += [(jnp.asarray(leaf.p), True), (jnp.asarray(leaf.g), False)]
        pairs += [(jnp.asarray(m), True) for m in leaf.moments]
    operands = [operand for operand, _ in pairs]
    updated = [i for i, (_, in_place) in enumerate(pairs) if in_place]
    results = [
        jax.ShapeDtypeStruct(operands[i].shape, operands[i].dtype) for i in updated
    ]
    # Under jax.vmap every operand gets the batch axis in front (the scalars
    # too, shape (batch, n)); the kernel then runs row r of each leaf with
    # row r of the scalars.
    outputs = jax.ffi.ffi_call(
        TARGETS[kind],
        results,
        input_output_aliases={i: out for out, i in enumerate(updated)},
        vmap_method="broadcast_all",
    )(
        *operands,
        flags=np.asarray([leaf.flags for leaf in group], np.int64),
        offsets=np.zeros(0, np.int64) if offsets is None else offsets,
        **attrs,
    )
    new_flat, rest = tuple(outputs[: len(flat)]), list(outputs[len(flat) :])
    params, moments = [], []
    i = 0
    for leaf in group:  # results: p, then its moments, leaf after leaf
        width = 1 + len(leaf.moments)
        params.append(rest[i])
        moments.append(tuple(rest[i + 1 : i + width]))
        i += width
    return KernelOutputs(params, moments, None if flat_moments is None else new_flat)


def _priced(scalars: jax.Array, n_calls: int) -> jax.Array:
    """`scalars`, unchanged, through an op that XLA's cost model can count.

    XLA's cost analysis counts a custom call as -1 flops, so a step made of
    kernel calls looks like less than 1000 flops, and the CPU client runs
    such "cheap" programs synchronously on the calling thread: the caller
    could not prepare the next step (flatten the pytree, hand over its
    buffers) while this one runs. The maximum over identical copies of the
    scalars is the scalars, bit for bit (NaN and -0.0 included), and costs
    enough counted flops to get the step dispatched like any other XLA
    program.
    """
    copies = -(-(2000 + 2 * n_calls) // max(1, scalars.shape[-1]))
    return jnp.max(jnp.broadcast_to(scalars, (copies, *scalars.shape)), axis=0)
