"""Clipping: bound each update element, or the norm of the whole tree."""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from gradtx._checks import check_in_range, check_same_tree, require_params
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


def _scaled_norm(tree: Updates) -> tuple[jax.Array, jax.Array]:
    """The global norm as `root / scale`, `scale` a power of two (1 usually).

    The squares are summed once. Only when that sum overflowed or fell below
    the smallest normal number are they summed again, under `lax.cond`, from
    the elements multiplied by a power of two `c` (exact) that brings every
    square back into range: `root = sqrt(sum |c*x|**2)` and `scale = c`.
    `root` is finite whenever the elements are, even where the norm is not.
    """
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    dtype = compute_dtype(*leaves)
    info = jnp.finfo(dtype)
    real, one = info.dtype, jnp.ones([], info.dtype)  # a complex tree's norm is real
    if not leaves:
        return jnp.zeros([], real), one

    def sum_of_squares(c: jax.Array | None = None) -> jax.Array:
        def leaf_sum(x: jax.Array) -> jax.Array:
            if c is not None:
                # Each leaf takes c through a barrier of its own: a c shared by
                # the leaves of one shape becomes a broadcast that XLA:CPU keeps
                # in scratch, a leaf of memory per shape for a rare branch.
                x, c_x = jax.lax.optimization_barrier((x, c))
                x = x.astype(dtype) * c_x
            return jnp.sum(abs_sq(x.astype(dtype))).astype(real)

        return sum_over_leaves(leaf_sum, leaves)

    # Overflow: scaled down, every |c*x|**2 is finite unless the norm is not.
    # Underflow: every |x| is below 2**(minexp/2), and scaled up it is normal.
    down = 2.0 ** -(info.maxexp // 2 + 1)
    up = 2.0 ** (-info.minexp // 2 + info.nmant)

    def rescaled(total: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = jnp.where(total == jnp.inf, down, up).astype(real)
        return jnp.sqrt(sum_of_squares(c)), c

    def in_range(total: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.sqrt(total), one

    total = sum_of_squares()
    out_of_range = (total == jnp.inf) | (total < info.tiny)  # NaN: in range
    return jax.lax.cond(out_of_range, rescaled, in_range, total)


def clip_factors(updates: Updates, max_norm: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The two factors `clip_by_global_norm` multiplies each leaf by, in order.

    The clipped gradient is `(g * rescale) * ratio`. With `norm = root /
    scale` (see `_scaled_norm`), `g * max_norm / norm = (g * scale) *
    (max_norm / root)`: every factor stays a normal number even when the norm
    overflows (scale < 1) and the ratio itself would be subnormal (flushed to
    zero on CPU). scale is a power of two, so g * scale is exact, and it is 1
    in the common case. No branch divides by zero: a zero norm would give 0/0
    (for a zero bound) and a NaN gradient. Both factors are 1 when the norm is
    within the bound.
    """
    root, scale = _scaled_norm(updates)
    # Written as "not within" so that a NaN norm counts as over the bound:
    # its ratio is then NaN and every leaf becomes NaN, as in optax and
    # torch, instead of passing the other leaves through unclipped.
    over = ~(root <= max_norm * scale)
    ratio = jnp.where(over, max_norm / jnp.where(over, root, 1.0), 1.0)
    rescale = jnp.where(over, scale, 1.0)
    return rescale, ratio


# ----------------------------------------------------------------------------
# summing over the leaves of a tree

# Leaves with at most this many elements are summed together, in pieces of
# at most `_PIECE` elements.
_SMALL_LEAF = 1 << 14
_PIECE = 1 << 15


def sum_over_leaves(leaf_sum: Any, leaves: list[jax.Array]) -> jax.Array:
    """`sum(leaf_sum(x) for x in leaves)`, for one or more leaves.

    `leaf_sum` maps an array to a scalar that adds up over pieces of it and
    counts a zero element as nothing (a sum of squares). When every leaf's
    type carries a `NamedSharding` of one mesh whose axes are all explicit,
    each device adds up its own shards (a leaf replicated over an axis the
    others are split on counts on that axis's first device only) and one
    `psum` adds the devices' totals: a single all-reduce of one scalar.
    Otherwise the leaves are summed by `_grouped_sum`, whose order depends on
    the leaves only, never on the number of devices in the process.
    """
    shardings = [jax.typeof(x).sharding for x in leaves]
    mesh = shardings[0].mesh
    explicit = (
        not mesh.empty
        and all(t == AxisType.Explicit for t in mesh.axis_types)
        and all(isinstance(s, NamedSharding) and s.mesh == mesh for s in shardings)
    )
    split = [set(_axes(s.spec)) for s in shardings] if explicit else []
    axes = tuple(a for a in mesh.axis_names if any(a in u for u in split))
    if not axes:
        return _grouped_sum(leaf_sum, leaves)

    def local(*shards: jax.Array) -> jax.Array:
        totals = []
        for x, used in zip(shards, split, strict=True):
            total = leaf_sum(x)
            for axis in axes:
                if axis not in used:  # x is whole on every device of this axis
                    first = jax.lax.axis_index(axis) == 0
                    total = jnp.where(first, total, jnp.zeros_like(total))
            totals.append(total)
        return jax.lax.psum(functools.reduce(operator.add, totals), axes)

    specs = tuple(s.spec for s in shardings)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec())(
        *leaves
    )


def _grouped_sum(leaf_sum: Any, leaves: list[jax.Array]) -> jax.Array:
    """`sum(leaf_sum(x) for x in leaves)`, the small leaves stacked first.

    Thousands of small reductions feeding one scalar take XLA superlinear time
    to compile, so small leaves of one dtype and shape are stacked into pieces
    of at most `_PIECE` elements, each summed in one reduction. Stacking keeps
    each leaf's sharding on its own axes (joining raveled leaves of other
    shapes would make the devices gather each other's shards). Each piece
    adds to its first leaf a zero computed from the previous piece's sum, so
    it is copied only once that sum is taken: the pieces take turns in one
    buffer of scratch instead of holding a copy of every small leaf at once.
    Large leaves are summed one by one, read once.
    """
    parts, groups = [], {}
    for x in leaves:
        if x.size > _SMALL_LEAF:
            parts.append(leaf_sum(x))
            continue
        pieces = groups.setdefault((jnp.result_type(x), x.shape), [])
        if not pieces or (len(pieces[-1]) + 1) * x.size > _PIECE:
            pieces.append([])
        pieces[-1].append(x)
    previous = None
    for piece in (piece for pieces in groups.values() for piece in pieces):
        if previous is not None:
            # min(|s|, 0) is 0, or NaN when s is (the total is NaN then
            # anyway); XLA cannot fold it, so the copy waits for s.
            zero = jnp.minimum(jnp.abs(previous), 0).astype(piece[0].dtype)
            piece = [piece[0] + zero, *piece[1:]]
        previous = leaf_sum(piece[0] if len(piece) == 1 else jnp.stack(piece))
        parts.append(previous)
    return functools.reduce(operator.add, parts)


def _axes(spec: PartitionSpec) -> list[str]:
    """The mesh axes a partition spec splits an array over."""
    names = []
    for entry in spec:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, tuple | list):
            names.extend(entry)
    return names


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


def _unit_axes(shape: tuple[int, ...], axis: int | tuple[int, ...] | None) -> tuple:
    """The axes a unit of `adaptive_grad_clip` spans, for a leaf of `shape`.

    With `axis` None: the whole leaf when it has at most one axis longer
    than 1; for 2-D (in, out) and 3-D (in, heads, out) kernels, axis 0, a
    unit per output; for 4-D (H, W, in, out) and 5-D (D, H, W, in, out)
    convolution kernels, all but the last axis, a unit per output channel.
    """
    ndim = len(shape)
    if axis is not None:
        return (axis,) if isinstance(axis, int) else tuple(axis)
    if sum(n != 1 for n in shape) <= 1:
        return tuple(range(ndim))
    if ndim in (2, 3):
        return (0,)
    if ndim in (4, 5):
        return tuple(range(ndim - 1))
    raise ValueError(
        f"adaptive_grad_clip: no default unit for a leaf of shape {shape}; "
        "pass axis=... to name the axes that a unit spans"
    )


@described
def adaptive_grad_clip(
    clipping: ArrayLike,
    eps: ArrayLike = 1e-3,
    axis: int | tuple[int, ...] | None = None,
) -> GradientTransformation:
    """Clip each unit's update to a fraction of its parameter's norm (AGC).

    Per leaf, for each unit (a slice of the leaf, below) with ||x|| the
    Euclidean norm over the unit::

        max_norm = clipping * max(||p||, eps)
        u = g                               if ||g|| <= max_norm
        u = g * max_norm / ||g||            otherwise

    A unit is, with `axis` None: the whole leaf for scalars and vectors (and
    any leaf with at most one axis longer than 1); one column (all of axis
    0) for 2-D kernels of shape (in, out) and 3-D kernels of shape (in,
    heads, out); all but the last axis for 4-D convolution kernels (H, W,
    in, out) and 5-D ones (D, H, W, in, out). These are optax's units;
    `axis` names the reduced axes instead, for every leaf. A parameter
    unit whose norm is below `eps` (zero-initialised) counts as `eps`.

    optax divides by `max(||g||, 1e-6)` instead of `||g||`; the two agree
    unless `max_norm` is below 1e-6, where optax clips further than the
    bound and this clips to it exactly.

    Args:
        clipping: Largest ratio of update norm to parameter norm, in
            [0, inf] (inf: no clipping). Brock et al. use 0.01 to 0.16.
        eps: Floor of the parameter norm, in [0, inf).
        axis: Axis or axes a unit spans in every leaf, or None for the
            defaults above.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`. Its update
        needs `params`.

    Raises:
        ValueError: If `clipping` or `eps` is a number outside its range; at
            update, if `params` is missing or does not fit the updates, or a
            leaf has more than five axes and `axis` is None.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.adaptive_grad_clip(0.1)
        >>> params = jnp.array([[3.0, 1.0], [4.0, 0.0]])  # column norms 5 and 1
        >>> grads = jnp.array([[0.0, 1.0], [0.2, 0.0]])  # column norms 0.2 and 1
        >>> tx.update(grads, tx.init(params), params)[0]
        Array([[0. , 0.1],
               [0.2, 0. ]], dtype=float32)

    References:
        Brock, De, Smith and Simonyan, "High-Performance Large-Scale Image
        Recognition Without Normalization", ICML 2021.
    """
    fn = "adaptive_grad_clip"
    check_in_range(fn, "clipping", clipping, 0.0, allow_inf=True)
    check_in_range(fn, "eps", eps, 0.0)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def unit_norm(x: jax.Array, axes: tuple) -> jax.Array:
        return jnp.sqrt(jnp.sum(abs_sq(x), axis=axes, keepdims=True))

    def leaf(g, p):
        dtype = compute_dtype(g, p)
        g_c = g.astype(dtype)
        axes = _unit_axes(g.shape, axis)
        max_norm = clipping * jnp.maximum(unit_norm(p.astype(dtype), axes), eps)
        g_norm = unit_norm(g_c, axes)
        # "not within" so that a NaN norm clips, and its unit becomes NaN
        over = ~(g_norm <= max_norm)
        factor = jnp.where(over, max_norm / jnp.where(over, g_norm, 1), 1)
        return (g_c * factor.astype(g_c.real.dtype)).astype(g.dtype)

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        return jax.tree.map(leaf, updates, params), state

    return GradientTransformation(init, update)
