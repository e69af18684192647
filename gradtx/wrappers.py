"""Wrappers that decide where, when and on what an inner transformation runs.

`masked` and `multi_transform` give different leaves different treatment,
`freeze` holds leaves still, `apply_if_finite` skips steps whose gradients
hold NaN or Inf, and `accumulate_gradients` turns k micro-steps into one.

A wrapper hands its inner transformation a tree in which every leaf it must
not touch is replaced by `None`. `None` is an empty pytree node, skipped by
every gradtx (and optax) transformation, so the inner state holds arrays for
the selected leaves only, and the inner transformation never sees the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import (
    broadcast_prefix,
    check_count,
    check_dtype,
    check_same_tree,
    mask_flags,
)
from gradtx._pairs import check_transformation
from gradtx.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    Updates,
    compute_dtype,
    described,
    init_like,
    safe_increment,
)
from gradtx.decay import Mask
from gradtx.scaling import optax_spelling

Labels = Any  # a tree of label strings (the params' structure or a prefix), or
# a function of the params returning one

# ----------------------------------------------------------------------------
# helpers


def _check_mask(fn: str, name: str, mask: Any) -> None:
    if mask is None:
        raise TypeError(
            f"{fn}: {name} must be a tree with the params' structure (or a "
            f"prefix of it) or a function of the params, got {mask!r}"
        )


def _reference(updates: Updates, params: Params | None) -> Any:
    """The tree a mask or labels function is called on: params, else updates."""
    return updates if params is None else params


def _keep(tree: Any, selected: list[bool]) -> Any:
    """`tree` with every leaf whose flag is False replaced by None."""
    leaves, treedef = jax.tree.flatten(tree)
    kept = [x if s else None for x, s in zip(leaves, selected, strict=True)]
    return treedef.unflatten(kept)


def _resolve_labels(
    fn: str, labels: Labels, params: Any, transforms: Mapping[str, Any]
) -> list[str]:
    """One label per leaf of `params`, each checked against `transforms`."""
    if callable(labels):
        labels = labels(params)
    per_leaf: list[str] = []
    for path, label in broadcast_prefix(fn, "labels", labels, params):
        if not isinstance(label, str):
            raise TypeError(
                f"{fn}: labels must be strings, got {type(label).__name__} "
                f"{label!r} at '{path}'"
            )
        if label not in transforms:
            known = ", ".join(repr(k) for k in transforms) or "none"
            raise ValueError(
                f"{fn}: label {label!r} at '{path}' has no "
                f"transformation; transforms has labels {known}. Add a transformation "
                f"for {label!r} or relabel the leaf."
            )
        per_leaf.append(label)
    return per_leaf


# ----------------------------------------------------------------------------
# masked, multi_transform, freeze


class MaskedState(NamedTuple):
    """State of `masked`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.masked(gradtx.scale_by_momentum(), {"w": True, "b": False})
        >>> tx.init({"w": jnp.zeros(2), "b": jnp.zeros(2)}).inner_state.velocity
        {'b': None, 'w': Array([0., 0.], dtype=float32)}
    """

    inner_state: OptState  # the inner state, over the selected leaves only


@described
def masked(inner: GradientTransformation, mask: Mask) -> GradientTransformation:
    """Apply `inner` to the selected leaves; pass the others through unchanged.

    Per leaf, with g the incoming update::

        u = inner(g)    where mask is True
        u = g           where mask is False

    Unselected leaves keep their incoming update as it is: `masked` does not
    stop them from moving. For leaves that must not move, use `freeze`, or
    `multi_transform` with `set_to_zero` as their group's transformation.

    `inner` is handed the updates (and params) with every unselected leaf
    replaced by `None`, an empty pytree node. Its state therefore holds
    arrays for the selected leaves only, and it never reads the others.

    Args:
        inner: The transformation for the selected leaves.
        mask: A tree of bools with the params' structure, or a prefix of it
            (a bool at an inner node covers its whole subtree), or a function
            of the params returning one, such as `gradtx.masks.by_path(...)`.
            The function is called on the params, or on the updates when
            `update` gets no params; it should depend on the tree's structure
            and shapes only.

    Returns:
        A `GradientTransformation` whose state is a `MaskedState`.

    Raises:
        TypeError: If `inner` is not an `(init, update)` pair or `mask` is
            neither a tree nor a function; at init or update, if a mask leaf
            is not a bool.
        ValueError: At init or update, if the mask's structure does not fit
            the params, naming the first differing path.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.wrappers import masked
        >>> tx = masked(gradtx.scale_by_adam(), {"w": True, "b": False})
        >>> params = {"w": jnp.zeros(2), "b": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> state.inner_state.mu  # no moment for "b"
        {'b': None, 'w': Array([0., 0.], dtype=float32)}
        >>> grads = {"w": jnp.array([0.5, -2.0]), "b": jnp.array([0.5, -2.0])}
        >>> tx.update(grads, state, params)[0]
        {'b': Array([ 0.5, -2. ], dtype=float32), 'w': Array([ 1., -1.], dtype=float32)}
    """
    fn = "masked"
    inner_update = check_transformation(fn, "inner", inner)
    _check_mask(fn, "mask", mask)

    def init(params: Params) -> MaskedState:
        selected = mask_flags(fn, mask, params)
        return MaskedState(inner_state=inner.init(_keep(params, selected)))

    def update(
        updates: Updates, state: MaskedState, params: Params | None = None, **extra
    ) -> tuple[Updates, MaskedState]:
        if params is not None:
            check_same_tree(fn, "updates", updates, "params", params)
        selected = mask_flags(fn, mask, _reference(updates, params))
        inner_params = None if params is None else _keep(params, selected)
        new, inner_state = inner_update(
            _keep(updates, selected), state.inner_state, inner_params, **extra
        )
        leaves, treedef = jax.tree.flatten(updates)
        new_leaves = treedef.flatten_up_to(new)
        merged = [
            n if s else g for g, n, s in zip(leaves, new_leaves, selected, strict=True)
        ]
        return treedef.unflatten(merged), MaskedState(inner_state=inner_state)

    return GradientTransformation(init, update)


class MultiTransformState(NamedTuple):
    """State of `multi_transform`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.multi_transform(
        ...     {"adam": gradtx.adam(1e-3), "sgd": gradtx.sgd(0.1)},
        ...     {"w": "adam", "b": "sgd"},
        ... )
        >>> sorted(tx.init({"w": jnp.zeros(2), "b": jnp.zeros(2)}).inner_states)
        ['adam', 'sgd']
    """

    inner_states: dict[str, OptState]  # label -> that group's state


@optax_spelling({"param_labels": "labels"})
@described
def multi_transform(
    transforms: Mapping[str, GradientTransformation], labels: Labels
) -> GradientTransformation:
    """Parameter groups: each leaf gets the transformation of its label.

    Per leaf, with g the incoming update::

        u = transforms[label](g)

    where label is the leaf's entry in `labels`. Each group's transformation
    is handed the updates (and params) of its own leaves only, the others
    replaced by `None`, so its state holds arrays for its own leaves only and
    its step sees none of the others (a global norm, for example, is the
    norm of its group).

    A transformation whose label no leaf carries is allowed: it is
    initialised on a tree with no leaves, keeps only its scalar state (a step
    count, say) and changes nothing. This lets one configuration serve models
    with and without a given kind of layer. A label without a transformation
    is an error.

    Args:
        transforms: A dict from label to transformation.
        labels: A tree of label strings with the params' structure, or a
            prefix of it (a label at an inner node covers its subtree), or a
            function of the params returning one. The function is called on
            the params, or on the updates when `update` gets no params.
            optax's name for it, `param_labels=`, is accepted too.

    Returns:
        A `GradientTransformation` whose state is a `MultiTransformState`.

    Raises:
        TypeError: If `transforms` is not a dict of `(init, update)` pairs
            keyed by strings; at init or update, if a label is not a string.
        ValueError: At init or update, if a label has no transformation
            (naming the label and the first path that carries it) or the
            labels' structure does not fit the params.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.wrappers import multi_transform
        >>> tx = multi_transform(
        ...     {"fast": gradtx.sgd(1.0), "slow": gradtx.sgd(0.1)},
        ...     {"w": "fast", "b": "slow"},
        ... )
        >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
        >>> tx.update(params, tx.init(params), params)[0]
        {'b': Array([-0.1, -0.1], dtype=float32), 'w': Array([-1., -1.], dtype=float32)}
    """
    fn = "multi_transform"
    if not isinstance(transforms, Mapping):
        raise TypeError(
            f"{fn}: transforms must be a dict from label to transformation, got "
            f"{type(transforms).__name__}"
        )
    update_fns = {}
    for label, tx in transforms.items():
        if not isinstance(label, str):
            raise TypeError(
                f"{fn}: transforms must be keyed by label strings, got "
                f"{type(label).__name__} {label!r}"
            )
        update_fns[label] = check_transformation(fn, f"transforms[{label!r}]", tx)
    _check_mask(fn, "labels", labels)

    def groups(tree_labels: list[str]) -> dict[str, list[bool]]:
        return {k: [lab == k for lab in tree_labels] for k in transforms}

    def init(params: Params) -> MultiTransformState:
        per_leaf = _resolve_labels(fn, labels, params, transforms)
        return MultiTransformState(
            inner_states={
                k: transforms[k].init(_keep(params, sel))
                for k, sel in groups(per_leaf).items()
            }
        )

    def update(
        updates: Updates,
        state: MultiTransformState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, MultiTransformState]:
        if params is not None:
            check_same_tree(fn, "updates", updates, "params", params)
        per_leaf = _resolve_labels(fn, labels, _reference(updates, params), transforms)
        leaves, treedef = jax.tree.flatten(updates)
        merged = list(leaves)
        inner_states = {}
        for k, sel in groups(per_leaf).items():
            if treedef.num_leaves == 1 and treedef.num_nodes == 1 and not sel[0]:
                # A bare array outside this group would reach it as None,
                # the same as no params: the group has nothing to update.
                inner_states[k] = state.inner_states[k]
                continue
            new, inner_states[k] = update_fns[k](
                _keep(updates, sel),
                state.inner_states[k],
                None if params is None else _keep(params, sel),
                **extra,
            )
            for i, n in enumerate(treedef.flatten_up_to(new)):
                if sel[i]:
                    merged[i] = n
        return treedef.unflatten(merged), MultiTransformState(inner_states)

    return GradientTransformation(init, update)


@described
def freeze(mask: Mask) -> GradientTransformation:
    """Zero the updates of the selected leaves, so that they never move.

    Per leaf, with g the incoming update::

        u = 0    where mask is True
        u = g    where mask is False

    `freeze` keeps no state. Place it last in a chain (after any weight
    decay, which would otherwise move the frozen leaves). A transformation
    earlier in the chain still keeps state for the frozen leaves; to keep
    none anywhere, give them their own group instead:
    `multi_transform({"train": opt, "frozen": set_to_zero()}, labels)`.

    Args:
        mask: The leaves to freeze: a tree of bools with the params'
            structure (or a prefix of it), or a function of the params
            returning one, as in `masked`.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Raises:
        TypeError: If `mask` is neither a tree nor a function; at update, if
            a mask leaf is not a bool.
        ValueError: At update, if the mask's structure does not fit the
            params, naming the first differing path.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.wrappers import freeze
        >>> tx = gradtx.chain(gradtx.sgd(0.1), freeze({"embed": True, "w": False}))
        >>> grads = {"embed": jnp.ones(2), "w": jnp.ones(2)}
        >>> updates, _ = tx.update(grads, tx.init(grads))
        >>> updates["embed"], updates["w"]
        (Array([0., 0.], dtype=float32), Array([-0.1, -0.1], dtype=float32))
    """
    fn = "freeze"
    _check_mask(fn, "mask", mask)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        if params is not None:
            check_same_tree(fn, "updates", updates, "params", params)
        selected = mask_flags(fn, mask, _reference(updates, params))
        leaves, treedef = jax.tree.flatten(updates)
        new = [
            jnp.zeros_like(g) if s else g for g, s in zip(leaves, selected, strict=True)
        ]
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# apply_if_finite


class ApplyIfFiniteState(NamedTuple):
    """State of `apply_if_finite`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.apply_if_finite(gradtx.sgd(0.1), max_consecutive_errors=2)
        >>> _, state = tx.update(jnp.array([jnp.inf]), tx.init(jnp.zeros(1)))
        >>> state.notfinite_in_a_row, state.last_finite
        (Array(1, dtype=int32), Array(False, dtype=bool))
    """

    notfinite_in_a_row: jax.Array  # int32: non-finite steps since the last finite
    notfinite_total: jax.Array  # int32: non-finite steps so far
    last_finite: jax.Array  # bool: whether the latest step was finite
    inner_state: OptState  # the inner state, untouched by skipped steps


def _all_finite(tree: Any) -> jax.Array:
    """One reduction per leaf: True if no leaf holds a NaN or an Inf."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, checks, jnp.array(True))


@described
def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip a step whose incoming updates hold a NaN or an Inf, and count it.

    With finite_t true when every element of every incoming leaf is finite,
    and n_t the number of non-finite steps in a row up to and including t::

        n_t = 0 if finite_t else n_{t-1} + 1
        u_t, s_t = inner(g_t, s_{t-1})    if finite_t or n_t > max_consecutive_errors
        u_t, s_t = 0, s_{t-1}             otherwise

    A skipped step gives zero updates and leaves the inner state exactly as
    it was, bit for bit: a run with a skipped step goes on as if that step
    had never come. At most `max_consecutive_errors` non-finite steps in a
    row are skipped; from the next one on, until a finite step arrives, every
    non-finite step is applied anyway, so that a run which keeps producing
    NaNs shows them in the params instead of silently standing still.

    The check is one reduction per leaf in the same step, and the inner
    update runs under `jax.lax.cond`, so nothing raises and nothing branches
    in Python: the step is safe under `jax.jit`.

    Args:
        inner: The transformation to protect.
        max_consecutive_errors: How many non-finite steps in a row to skip, an
            int in [0, inf).

    Returns:
        A `GradientTransformation` whose state is an `ApplyIfFiniteState`.

    Raises:
        TypeError: If `inner` is not an `(init, update)` pair or
            `max_consecutive_errors` is not an int.
        ValueError: If `max_consecutive_errors` is negative.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.wrappers import apply_if_finite
        >>> tx = apply_if_finite(gradtx.sgd(0.1), max_consecutive_errors=3)
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), state)
        >>> u, state.notfinite_total
        (Array([0., 0.], dtype=float32), Array(1, dtype=int32))
    """
    fn = "apply_if_finite"
    inner_update = check_transformation(fn, "inner", inner)
    max_consecutive_errors = check_count(
        fn, "max_consecutive_errors", max_consecutive_errors, 0
    )
    limit = min(max_consecutive_errors, jnp.iinfo(jnp.int32).max)

    def init(params: Params) -> ApplyIfFiniteState:
        return ApplyIfFiniteState(
            notfinite_in_a_row=jnp.zeros([], jnp.int32),
            notfinite_total=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True),
            inner_state=inner.init(params),
        )

    def update(
        updates: Updates,
        state: ApplyIfFiniteState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ApplyIfFiniteState]:
        finite = _all_finite(updates)
        in_a_row = jnp.where(finite, 0, safe_increment(state.notfinite_in_a_row))
        total = jnp.where(
            finite, state.notfinite_total, safe_increment(state.notfinite_total)
        )

        def apply() -> tuple[Updates, OptState]:
            return inner_update(updates, state.inner_state, params, **extra)

        def skip() -> tuple[Updates, OptState]:
            return jax.tree.map(jnp.zeros_like, updates), state.inner_state

        new, inner_state = jax.lax.cond(finite | (in_a_row > limit), apply, skip)
        return new, ApplyIfFiniteState(
            notfinite_in_a_row=in_a_row,
            notfinite_total=total,
            last_finite=finite,
            inner_state=inner_state,
        )

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# accumulate_gradients


class AccumulateGradientsState(NamedTuple):
    """State of `accumulate_gradients`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.accumulate_gradients(gradtx.sgd(0.1), every_k=4)
        >>> _, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
        >>> state.micro_step, state.acc
        (Array(1, dtype=int32), Array([1., 1.], dtype=float32))
    """

    micro_step: jax.Array  # int32 in [0, every_k): micro-steps since the last step
    acc: Updates | None  # their summed updates; None when every_k is 1
    inner_state: OptState  # the inner state, changed once per every_k


@described
def accumulate_gradients(
    inner: GradientTransformation, every_k: int, accumulator_dtype: Any = None
) -> GradientTransformation:
    """Average the updates of every_k micro-steps and apply `inner` once on them.

    With the micro-steps numbered t = 1, 2, ... and g_t their incoming
    updates::

        acc_t = acc_{t-1} + g_t                       (acc_0 = 0)
        u_t   = inner(acc_t / every_k), acc_t = 0     if t is a multiple of every_k
        u_t   = 0                                     otherwise

    so the params move once per every_k micro-steps, by one step of `inner`
    on the mean of their gradients. The sum lives in one buffer shaped like
    the params and is added in at least float32. The inner update runs under
    `jax.lax.cond` on the last micro-step only, so the inner state is neither
    touched nor copied in between. With `every_k=1` the wrapper is `inner`
    itself: it keeps no buffer and gives the same updates, bit for bit.

    `params` and keyword extras reach `inner` on its step from the last
    micro-step of the group.

    Args:
        inner: The transformation to apply once per `every_k` micro-steps.
        every_k: Micro-steps per real step, an int in [1, inf).
        accumulator_dtype: Dtype of the buffer; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is an
        `AccumulateGradientsState`.

    Raises:
        TypeError: If `inner` is not an `(init, update)` pair or `every_k` is
            not an int.
        ValueError: If `every_k` is below 1 or `accumulator_dtype` is not a
            floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.wrappers import accumulate_gradients
        >>> tx = accumulate_gradients(gradtx.sgd(1.0), every_k=2)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u
        Array([0.], dtype=float32)
        >>> u, state = tx.update(jnp.array([2.0]), state)
        >>> u
        Array([-1.5], dtype=float32)
    """
    fn = "accumulate_gradients"
    inner_update = check_transformation(fn, "inner", inner)
    every_k = check_count(fn, "every_k", every_k, 1)
    accumulator_dtype = check_dtype(fn, "accumulator_dtype", accumulator_dtype)

    def init(params: Params) -> AccumulateGradientsState:
        return AccumulateGradientsState(
            micro_step=jnp.zeros([], jnp.int32),
            acc=None if every_k == 1 else init_like(params, accumulator_dtype),
            inner_state=inner.init(params),
        )

    def add(g: jax.Array, a: jax.Array) -> jax.Array:
        dtype = compute_dtype(g, a)
        return a.astype(dtype) + g.astype(dtype)

    def update(
        updates: Updates,
        state: AccumulateGradientsState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, AccumulateGradientsState]:
        if every_k == 1:
            new, inner_state = inner_update(updates, state.inner_state, params, **extra)
            return new, state._replace(inner_state=inner_state)
        check_same_tree(fn, "updates", updates, "state.acc", state.acc)
        total = jax.tree.map(add, updates, state.acc)
        last = state.micro_step == every_k - 1

        def step() -> tuple[Updates, Updates, OptState]:
            mean = jax.tree.map(
                lambda s, g: (s / every_k).astype(g.dtype), total, updates
            )
            new, inner_state = inner_update(mean, state.inner_state, params, **extra)
            return new, jax.tree.map(jnp.zeros_like, state.acc), inner_state

        def hold() -> tuple[Updates, Updates, OptState]:
            acc = jax.tree.map(lambda s, a: s.astype(a.dtype), total, state.acc)
            return jax.tree.map(jnp.zeros_like, updates), acc, state.inner_state

        new, acc, inner_state = jax.lax.cond(last, step, hold)
        micro_step = jnp.where(last, 0, state.micro_step + 1)
        return new, AccumulateGradientsState(micro_step, acc, inner_state)

    return GradientTransformation(init, update)
