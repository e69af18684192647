"""Adafactor: its links, and the optimizer that chains them.

Adafactor's links: a second moment factored into row and column statistics,
clipping by block RMS, and steps relative to the parameter's scale.

A matrix of gradients (n rows, m columns) keeps, instead of Adam's n * m
second moments, an average over each row and one over each column; their
outer product, divided by their common mean, stands in for the full second
moment. The state of a large model shrinks from one number per parameter to
one per row and per column. `clip_by_block_rms` bounds the root mean square
of each leaf's update, and `scale_by_param_block_rms` makes the step a
fraction of the parameter's own root mean square (optionally, the paper's
relative step). `adafactor` chains them.

Every equation runs in at least float32 (`compute_dtype`); statistics are
stored in the parameters' dtype and updates keep the incoming dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._checks import (
    check_count,
    check_flag,
    check_in_range,
    check_same_tree,
    require_params,
)
from gradtx.base import (
    ArrayLike,
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    abs_sq,
    compute_dtype,
    described,
    init_like,
    map_leaves,
    safe_increment,
    scalar_dtype,
    value_at,
)

# `decay_rate_fn(step, decay_rate) -> beta`: the step is the number of updates
# already applied minus `step_offset`. (The name avoids the words by which
# `inject_hyperparams` recognises a schedule argument.)
DecayRateFn = Callable[[Any, Any], Any]


def _stat_dtype(dtype: Any) -> jnp.dtype:
    """The real dtype that holds the squares of a leaf of `dtype`."""
    return jnp.dtype(jnp.finfo(dtype).dtype)


def _factored_axes(
    shape: tuple[int, ...], factored: bool, min_size: int, last_axes: bool
) -> tuple[int, int] | None:
    """The two axes `(a, b)`, a < b, whose statistics replace the leaf's.

    optax's rule by default: the two largest axes (ties broken as
    `np.argsort` breaks them), if the smaller of the two has at least
    `min_size` elements. With `last_axes`, torch's: the last two axes.
    """
    if not factored or len(shape) < 2:
        return None
    if last_axes:
        a, b = len(shape) - 2, len(shape) - 1
    else:
        order = np.argsort(shape)
        a, b = sorted((int(order[-2]), int(order[-1])))
    if min(shape[a], shape[b]) < min_size:
        return None
    return a, b


def _placeholder(dtype: Any) -> jax.Array:
    """An empty array where a leaf keeps no statistic of one kind."""
    return jnp.zeros((0,), dtype)


# ----------------------------------------------------------------------------
# the factored second moment


class ScaleByFactoredRmsState(NamedTuple):
    """State of `scale_by_factored_rms`.

    Each tree has the params' structure. A factored leaf of shape (n, m) has
    a row statistic of shape (n,) and a column statistic of shape (m,) and
    an empty `v`; any other leaf has a full-size `v` and empty statistics.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_factored_rms(min_dim_size_to_factor=2)
        >>> state = tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})
        >>> state.v_row["w"].shape, state.v_col["w"].shape, state.v["w"].shape
        ((4,), (3,), (0,))
        >>> state.v["b"].shape, state.v_row["b"].shape
        ((3,), (0,))
    """

    count: jax.Array  # int32 scalar: updates applied so far
    v_row: Updates  # per factored leaf: mean over its second factored axis
    v_col: Updates  # per factored leaf: mean over its first factored axis
    v: Updates  # per unfactored leaf: the full second moment


@described
def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: ArrayLike = 0.8,
    step_offset: ArrayLike = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: ArrayLike | None = 1e-30,
    decay_rate_fn: DecayRateFn | None = None,
    *,
    factor_last_axes: bool = False,
    epsilon_as_floor: bool = False,
) -> GradientTransformation:
    """Divide updates by a second moment kept as row and column averages.

    Per leaf, with t the number of this update (1 at the first) and a leaf
    of two or more axes factored over rows i and columns j of two of its
    axes (the others are a batch)::

        beta_t = 1 - max(t - step_offset, 1) ** (-decay_rate)
        s_t    = g_t**2 + epsilon
        r_t    = beta_t * r_{t-1} + (1 - beta_t) * mean_j(s_t)     (factored)
        c_t    = beta_t * c_{t-1} + (1 - beta_t) * mean_i(s_t)
        v_t    = r_t[i] * c_t[j] / mean_i(r_t)
        v_t    = beta_t * v_{t-1} + (1 - beta_t) * s_t            (otherwise)
        u_t    = g_t / sqrt(v_t)

    with r_0 = c_0 = v_0 = 0. With `epsilon_as_floor=True` (the form of
    torch.optim.Adafactor) epsilon is not added to the squares but bounds
    the divisors from below::

        s_t = g_t**2
        v_t = r_t[i] * c_t[j] / max(mean_i(r_t), epsilon)         (factored)
        u_t = g_t / max(sqrt(v_t), epsilon)

    A leaf is factored over its two largest axes, as optax does, if the
    smaller of the two has at least `min_dim_size_to_factor` elements;
    `factor_last_axes=True` takes the last two axes instead, as torch does
    (torch has no minimum: pass `min_dim_size_to_factor=0`). Vectors,
    scalars and leaves below the minimum keep the full second moment v.

    `beta_t` is the paper's schedule, which tends to 1 (the average grows
    ever longer); optax's `1 - (t - step_offset) ** (-decay_rate)` is the
    same while t > step_offset, and before that optax's is undefined (NaN)
    while here beta_t is 0. `decay_rate_fn(t - 1 - step_offset, decay_rate)`
    replaces the schedule (as in optax, it receives the count of updates
    already applied, less the offset).

    Args:
        factored: Factor the second moment of leaves of two or more axes.
        decay_rate: Exponent of the schedule of beta_t, in [0, inf); 0.8 in
            the paper (torch's `beta2_decay` is `-decay_rate`).
        step_offset: Steps before the schedule starts, in [0, inf): to
            restart it when fine-tuning from a saved state.
        min_dim_size_to_factor: Smallest size, in [0, inf), of both
            factored axes.
        epsilon: In [0, inf), added to the squared gradients (or, with
            `epsilon_as_floor`, the floor of the divisors). None: the
            machine epsilon of each parameter's dtype (torch's default).
        decay_rate_fn: A function `(step, decay_rate) -> beta_t` replacing
            the schedule; None for the paper's.
        factor_last_axes: Factor the last two axes rather than the two
            largest (torch.optim.Adafactor's rule).
        epsilon_as_floor: Use epsilon as torch does: a floor of the
            divisors rather than a term added to the squares.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByFactoredRmsState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.
        TypeError: If a flag is not a bool or `min_dim_size_to_factor` is not
            a whole number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_factored_rms(min_dim_size_to_factor=2)
        >>> g = jnp.array([[1.0, 2.0], [2.0, 4.0]])  # rank one: exact
        >>> u, _ = tx.update(g, tx.init(jnp.zeros((2, 2))))
        >>> u
        Array([[1., 1.],
               [1., 1.]], dtype=float32)

    References:
        Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear
        Memory Cost", ICML 2018.
    """
    fn = "scale_by_factored_rms"
    check_flag(fn, "factored", factored)
    check_flag(fn, "factor_last_axes", factor_last_axes)
    check_flag(fn, "epsilon_as_floor", epsilon_as_floor)
    check_in_range(fn, "decay_rate", decay_rate, 0.0)
    check_in_range(fn, "step_offset", step_offset, 0.0)
    min_size = check_count(fn, "min_dim_size_to_factor", min_dim_size_to_factor, 0)
    check_in_range(fn, "epsilon", epsilon, 0.0)
    if decay_rate_fn is not None and not callable(decay_rate_fn):
        raise TypeError(
            f"{fn}: decay_rate_fn must be a function (step, decay_rate) -> beta, "
            f"got {type(decay_rate_fn).__name__}"
        )

    def axes_of(leaf: Any) -> tuple[int, int] | None:
        return _factored_axes(leaf.shape, factored, min_size, factor_last_axes)

    def init(params: Params) -> ScaleByFactoredRmsState:
        def stats(p):
            dtype = _stat_dtype(jnp.result_type(p))
            axes = axes_of(p)
            if axes is None:
                return _placeholder(dtype), _placeholder(dtype), init_like(p, dtype)
            a, b = axes
            # Zeros reduced from a tensor placed like p: each statistic gets
            # the placement of the axes it keeps (rows of a row-sharded
            # matrix stay sharded), which a bare constant would not.
            zeros = init_like(p, dtype)
            return jnp.sum(zeros, axis=b), jnp.sum(zeros, axis=a), _placeholder(dtype)

        leaves, treedef = jax.tree.flatten(params)
        per_leaf = [stats(p) for p in leaves]
        return ScaleByFactoredRmsState(
            count=jnp.zeros([], jnp.int32),
            v_row=treedef.unflatten([s[0] for s in per_leaf]),
            v_col=treedef.unflatten([s[1] for s in per_leaf]),
            v=treedef.unflatten([s[2] for s in per_leaf]),
        )

    def expected(updates: Updates, which: int) -> Any:
        """The shapes the state should have for `updates`, for the checks."""

        def leaf(g):
            axes = axes_of(g)
            if axes is None:
                shape = g.shape if which == 2 else (0,)
            elif which == 2:
                shape = (0,)
            else:
                dropped = axes[1] if which == 0 else axes[0]
                shape = tuple(n for k, n in enumerate(g.shape) if k != dropped)
            return jax.ShapeDtypeStruct(shape, jnp.result_type(g))

        return jax.tree.map(leaf, updates)

    def floor_of(stat: jax.Array, dtype: Any) -> Any:
        if epsilon is None:
            return jnp.asarray(jnp.finfo(stat.dtype).eps, dtype)
        return epsilon

    def leaf(g, row, col, v, beta, weight):
        axes = axes_of(g)
        cd = compute_dtype(g, row, col, v)
        g_c = g.astype(cd)
        stored = v if axes is None else row
        eps = floor_of(stored, cd)
        squares = abs_sq(g_c) if epsilon_as_floor else abs_sq(g_c) + eps
        beta, weight = beta.astype(cd), weight.astype(cd)
        if axes is None:
            v_new = beta * v.astype(cd) + weight * squares
            if epsilon_as_floor:
                u = g_c / jnp.maximum(jnp.sqrt(v_new), eps)
            else:
                u = g_c * jax.lax.rsqrt(v_new)
            return u.astype(g.dtype), row, col, v_new.astype(v.dtype)
        a, b = axes
        row_new = beta * row.astype(cd) + weight * jnp.mean(squares, axis=b)
        col_new = beta * col.astype(cd) + weight * jnp.mean(squares, axis=a)
        mean_row = jnp.mean(row_new, axis=a, keepdims=True)
        if epsilon_as_floor:
            row_share = row_new / jnp.maximum(mean_row, eps)
            v_hat = jnp.expand_dims(row_share, b) * jnp.expand_dims(col_new, a)
            u = g_c / jnp.maximum(jnp.sqrt(v_hat), eps)
        else:
            row_factor = jax.lax.rsqrt(row_new / mean_row)
            col_factor = jax.lax.rsqrt(col_new)
            u = g_c * jnp.expand_dims(row_factor, b) * jnp.expand_dims(col_factor, a)
        return (
            u.astype(g.dtype),
            row_new.astype(row.dtype),
            col_new.astype(col.dtype),
            v,
        )

    def update(
        updates: Updates,
        state: ScaleByFactoredRmsState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByFactoredRmsState]:
        del params
        trees = {"state.v_row": state.v_row, "state.v_col": state.v_col}
        trees["state.v"] = state.v
        for which, (name, tree) in enumerate(trees.items()):
            check_same_tree(fn, "updates", expected(updates, which), name, tree)
        dtype = scalar_dtype(updates)
        if decay_rate_fn is None:
            # 1 - beta_t is computed directly: 1 - (1 - w) loses the low
            # digits of a small weight w in float32.
            t = (state.count + 1).astype(dtype) - jnp.asarray(step_offset, dtype)
            weight = jnp.maximum(t, 1) ** -jnp.asarray(decay_rate, dtype)
            beta = 1 - weight
        else:
            beta = jnp.asarray(
                decay_rate_fn(state.count - step_offset, decay_rate), dtype
            )
            weight = 1 - beta

        def step(g, row, col, v):
            return leaf(g, row, col, v, beta, weight)

        updates, v_row, v_col, v = map_leaves(
            step, 4, updates, state.v_row, state.v_col, state.v
        )
        new_state = ScaleByFactoredRmsState(
            count=safe_increment(state.count), v_row=v_row, v_col=v_col, v=v
        )
        return updates, new_state

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# clipping and the parameter scale


@described
def clip_by_block_rms(threshold: ArrayLike) -> GradientTransformation:
    """Scale each leaf down so that its root mean square is at most `threshold`.

    Per leaf, the mean taken over all its elements::

        u = g / max(1, sqrt(mean(g**2)) / threshold)

    Args:
        threshold: The largest root mean square of a leaf's update, in
            (0, inf] (inf: no clipping). Adafactor uses 1.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Raises:
        ValueError: If `threshold` is a number outside (0, inf].

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.clip_by_block_rms(1.0)
        >>> g = {"big": jnp.array([3.0, -4.0]), "small": jnp.array([0.5, 0.5])}
        >>> u, _ = tx.update(g, tx.init(None))
        >>> [round(float(x), 4) for x in u["big"]], u["small"]
        ([0.8485, -1.1314], Array([0.5, 0.5], dtype=float32))

    References:
        Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear
        Memory Cost", ICML 2018 (update clipping, section 6).
    """
    check_in_range(
        "clip_by_block_rms", "threshold", threshold, 0.0, low_open=True, allow_inf=True
    )

    def leaf(g):
        if g.size == 0:
            return g
        g_c = g.astype(compute_dtype(g))
        rms = jnp.sqrt(jnp.mean(abs_sq(g_c)))
        return (g_c / jnp.maximum(1, rms / threshold)).astype(g.dtype)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init, update)


class ScaleByParamBlockRmsState(NamedTuple):
    """State of `scale_by_param_block_rms` with a relative step.

    Examples:
        >>> import gradtx
        >>> gradtx.scale_by_param_block_rms(max_relative_step=1e-2).init(None)
        ScaleByParamBlockRmsState(count=Array(0, dtype=int32))
    """

    count: jax.Array  # int32 scalar: updates applied so far


def _safe_rms(p: jax.Array, floor: Any) -> jax.Array:
    """`max(sqrt(mean(p**2)), floor)` whose derivative is finite at p = 0."""
    mean_sq = jnp.mean(abs_sq(p))
    small = mean_sq <= jnp.square(floor)
    rms = jnp.sqrt(jnp.where(small, 1, mean_sq))
    return jnp.where(small, floor, rms)


@described
def scale_by_param_block_rms(
    min_scale: ArrayLike = 1e-3,
    *,
    max_relative_step: ScalarOrSchedule | None = None,
) -> GradientTransformation:
    """Multiply each leaf's update by the root mean square of its parameter.

    Per leaf, with p the parameter and the mean taken over all its
    elements::

        u = max(sqrt(mean(p**2)), min_scale) * g

    so a step is a fraction of the parameter's own scale. With
    `max_relative_step` (the relative step of Adafactor's paper, and the
    role of torch.optim.Adafactor's `lr`), at update number t (1 at the
    first)::

        rho_t = min(max_relative_step_t, 1 / sqrt(t))
        u     = rho_t * max(sqrt(mean(p**2)), min_scale) * g

    where `max_relative_step_t` is the number, or the schedule at t - 1.

    Args:
        min_scale: Floor of the parameter scale, in [0, inf), so that
            parameters that start at zero can move (torch's `eps[1]`).
        max_relative_step: Cap of the relative step, a number in [0, inf)
            or a schedule; None (the default) applies no relative step.

    Returns:
        A `GradientTransformation`; its state is a
        `ScaleByParamBlockRmsState` with a relative step and an `EmptyState`
        otherwise. Its update needs `params`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range; at
            update, if `params` is missing.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_param_block_rms()
        >>> params = {"w": jnp.array([3.0, -4.0]), "zero": jnp.zeros(2)}
        >>> grads = {"w": jnp.ones(2), "zero": jnp.ones(2)}
        >>> u, _ = tx.update(grads, tx.init(params), params)
        >>> u["w"]  # the root mean square of w
        Array([3.535534, 3.535534], dtype=float32)
        >>> u["zero"]  # a zero leaf gets min_scale
        Array([0.001, 0.001], dtype=float32)

    References:
        Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear
        Memory Cost", ICML 2018 (relative step size, section 8).
    """
    fn = "scale_by_param_block_rms"
    check_in_range(fn, "min_scale", min_scale, 0.0)
    check_in_range(fn, "max_relative_step", max_relative_step, 0.0)
    relative = max_relative_step is not None

    def init(params: Params) -> OptState:
        del params
        if relative:
            return ScaleByParamBlockRmsState(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def leaf(g, p, rho):
        cd = compute_dtype(g, p)
        factor = _safe_rms(p.astype(cd), jnp.asarray(min_scale, cd))
        if rho is not None:
            factor = factor * rho.astype(cd)
        return (g.astype(cd) * factor).astype(g.dtype)

    def update(
        updates: Updates, state: OptState, params: Params | None = None, **extra
    ) -> tuple[Updates, OptState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        rho = None
        if relative:
            dtype = scalar_dtype(updates)
            cap = value_at(max_relative_step, state.count)
            t = (state.count + 1).astype(dtype)
            rho = jnp.minimum(jnp.asarray(cap, dtype), jax.lax.rsqrt(t))
            state = ScaleByParamBlockRmsState(count=safe_increment(state.count))
        leaves, treedef = jax.tree.flatten(updates)
        new = [
            leaf(g, p, rho)
            for g, p in zip(leaves, treedef.flatten_up_to(params), strict=True)
        ]
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)
