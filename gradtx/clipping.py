"""Clipping: bound each update element, or the norm of the whole tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import check_in_range
from gradtx.base import (
    ArrayLike,
    EmptyState,
    GradientTransformation,
    Params,
    Updates,
    abs_sq,
    compute_dtype,
    described,
)
from gradtx.sharding import _sum_over_leaves


class _NormKernels(NamedTuple):
    """Stand-ins for two parts of the norm (`gradtx.fused_step`'s CPU kernels).

    `rescaled(total, leaves, down, up) -> (root, scale)` replaces the
    `lax.cond` of `_scaled_norm`; `concatenate(arrays)` replaces
    `jnp.concatenate` where small leaves are joined for one reduction.
    """

    rescaled: Callable[
        [jax.Array, list[jax.Array], float, float], tuple[jax.Array, jax.Array]
    ]
    concatenate: Callable[[list[jax.Array]], jax.Array]


@described
def clip(max_delta: ArrayLike) -> GradientTransformation:
    """Clip every element of the updates to [-max_delta, max_delta].

    Per leaf::

        u = min(max(g, -max_delta), max_delta)

    Args:
        max_delta: The bound, in [0, inf] (inf: no clipping).

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Raises:
        ValueError: If `max_delta` is a negative number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.clip(1.0)
        >>> tx.update(jnp.array([-3.0, 0.5, 2.0]), tx.init(None))[0]
        Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    check_in_range("clip", "max_delta", max_delta, 0.0, allow_inf=True)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def leaf(g):
        g_c = g.astype(compute_dtype(g))
        return jnp.clip(g_c, -max_delta, max_delta).astype(g.dtype)

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init, update)


def global_norm(tree: Updates) -> jax.Array:
    """The Euclidean norm of all the elements of a tree taken together.

    Each leaf's sum of squares is taken in at least float32::

        s = sum over leaves of sum(|x|**2)
        ||x|| = sqrt(s)

    When s overflows (an element above about 1.8e19 in float32) or falls
    below the smallest normal number, squaring loses the answer; only then,
    chosen by `jax.lax.cond`, the norm is taken again from the elements
    scaled by a power of two c (exact), as sqrt(sum |c*x|**2) / c. The norm
    is right over the whole range of the dtype, inf only when it is itself
    beyond the largest finite number, and NaN only when an element is NaN.
    In the common case the tree is read once.

    On a mesh with explicit sharding (arrays whose type carries a
    `NamedSharding`), each device sums its own shards and one all-reduce of
    a scalar adds them up; with auto sharding, XLA partitions the sum.

    Args:
        tree: A pytree of arrays.

    Returns:
        A real scalar in the widest dtype of the leaves, at least float32.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> gradtx.global_norm({"a": jnp.array([3.0]), "b": jnp.array([[4.0]])})
        Array(5., dtype=float32)
        >>> gradtx.global_norm(jnp.array([3e30, 4e30]))  # squares overflow
        Array(5.e+30, dtype=float32)
    """
    root, scale = _scaled_norm(tree)
    return root / scale


def _scaled_norm(
    tree: Updates, kernels: _NormKernels | None = None
) -> tuple[jax.Array, jax.Array]:
    """The global norm as `root / scale`, `scale` a power of two (1 usually).

    `root` is the norm of the tree multiplied by `scale`, which is always a
    finite number when the elements are, even where the norm itself is not.

    `kernels`, when given, stand in for two parts that take XLA seconds to
    compile on thousands of leaves. `kernels.rescaled(total, leaves, down,
    up)` replaces the `lax.cond` below: it must return the `(root, scale)`
    of the out-of-range case (scale `down` when `total` is inf, `up`
    otherwise) and may return anything when `total` is in range, where
    `sqrt(total)` is taken as always. `kernels.concatenate` joins the small
    leaves for their reductions (the same bytes, so the same sum).
    """
    leaves = jax.tree.leaves(tree)
    dtype = compute_dtype(*leaves)
    info = jnp.finfo(dtype)
    real = info.dtype  # the norm of a complex tree is real
    one = jnp.ones([], real)
    if not leaves:
        return jnp.zeros([], real), one

    def plain(x: jax.Array) -> jax.Array:
        return jnp.sum(abs_sq(x.astype(compute_dtype(x)))).astype(real)

    concatenate = jnp.concatenate if kernels is None else kernels.concatenate
    total = _sum_over_leaves(plain, leaves, concatenate)
    # Powers of two that bring the squares back into range: down when the
    # sum overflowed (every |c*x|**2 is then finite unless the norm is not),
    # up when it underflowed (every |x| is then below 2**(minexp/2)).
    down = 2.0 ** -(info.maxexp // 2 + 1)
    up = 2.0 ** (-info.minexp // 2 + info.nmant)

    def rescaled(total: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = jnp.where(total == jnp.inf, down, up).astype(real)

        def scaled(x: jax.Array) -> jax.Array:
            # Each leaf takes c through its own barrier: a c shared by the
            # leaves of one shape becomes one broadcast that XLA:CPU
            # materialises (a leaf of scratch per shape) instead of fusing.
            x, c_x = jax.lax.optimization_barrier((x, c))
            return jnp.sum(abs_sq(x.astype(dtype) * c_x))

        return jnp.sqrt(_sum_over_leaves(scaled, leaves)), c

    def in_range(total: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.sqrt(total), one

    out_of_range = (total == jnp.inf) | (total < info.tiny)
    if kernels is not None:
        root, scale = kernels.rescaled(total, leaves, down, up)
        return (
            jnp.where(out_of_range, root, jnp.sqrt(total)),
            jnp.where(out_of_range, scale, one),
        )
    return jax.lax.cond(out_of_range, rescaled, in_range, total)


def clip_factors(
    updates: Updates, max_norm: ArrayLike, kernels: _NormKernels | None = None
) -> tuple[jax.Array, jax.Array]:
    """The two factors `clip_by_global_norm` multiplies each leaf by, in order.

    The clipped gradient is `(g * rescale) * ratio`. With `norm = root /
    scale` (see `_scaled_norm`), `g * max_norm / norm = (g * scale) *
    (max_norm / root)`: every factor stays a normal number even when the norm
    overflows (scale < 1) and the ratio itself would be subnormal (flushed to
    zero on CPU). scale is a power of two, so g * scale is exact, and it is 1
    in the common case. No branch divides by zero: a zero norm would give 0/0
    (for a zero bound) and a NaN gradient. Both factors are 1 when the norm is
    within the bound. `gradtx.fused_step` uses the same two factors, with
    its CPU `kernels` (see `_scaled_norm`).
    """
    root, scale = _scaled_norm(updates, kernels)
    # Written as "not within" so that a NaN norm counts as over the bound:
    # its ratio is then NaN and every leaf becomes NaN, as in optax and
    # torch, instead of passing the other leaves through unclipped.
    over = ~(root <= max_norm * scale)
    ratio = jnp.where(over, max_norm / jnp.where(over, root, 1.0), 1.0)
    rescale = jnp.where(over, scale, 1.0)
    return rescale, ratio


@described
def clip_by_global_norm(max_norm: ArrayLike) -> GradientTransformation:
    """Rescale the whole tree so that its global norm is at most `max_norm`.

    With ||g|| the norm over every element of every leaf::

        u = g * min(1, max_norm / ||g||)

    Updates already within the bound pass through unchanged; the direction
    is never altered. If any element is NaN the norm is NaN and every update
    of the tree becomes NaN, so that the fault is visible (guard the step
    with `apply_if_finite` to skip it) rather than the other leaves passing
    through unclipped.

    Args:
        max_norm: The largest global norm allowed, in [0, inf] (inf: no
            clipping).

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Raises:
        ValueError: If `max_norm` is a negative number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.clip_by_global_norm(1.0)
        >>> tx.update(jnp.array([3.0, 4.0]), tx.init(None))[0]
        Array([0.6, 0.8], dtype=float32)

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013.
    """
    check_in_range("clip_by_global_norm", "max_norm", max_norm, 0.0, allow_inf=True)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        rescale, ratio = clip_factors(updates, max_norm)

        def leaf(g):
            g_c = g.astype(compute_dtype(g))
            return (g_c * rescale.astype(g_c.dtype) * ratio.astype(g_c.dtype)).astype(
                g.dtype
            )

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init, update)
