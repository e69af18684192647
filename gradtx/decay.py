"""Regularisation terms added to the updates: weight decay (L2) and L1.

Where such a term sits in a chain decides what it means. Before an adaptive
scaling (`scale_by_adam`) it is a penalty folded into the gradient and gets
rescaled with it (coupled L2, `adam_l2`); after the scaling and before
`scale_by_learning_rate` it shrinks every weight by the same fraction of the
learning rate (decoupled weight decay, `adamw`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import check_in_range, check_same_tree, mask_flags, require_params
from gradtx.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    compute_dtype,
    described,
    safe_increment,
    value_at,
)

Mask = Any  # a bool pytree (the params' structure or a prefix), or params -> one


class AddDecayedWeightsState(NamedTuple):
    """State of `add_decayed_weights` when the decay is a schedule.

    Examples:
        >>> import gradtx
        >>> gradtx.add_decayed_weights(lambda t: 1e-4 * 0.9**t).init(None)
        AddDecayedWeightsState(count=Array(0, dtype=int32))
    """

    count: jax.Array  # int32 scalar: updates applied so far


class AddL1PenaltyState(NamedTuple):
    """State of `add_l1_penalty` when the strength is a schedule.

    Examples:
        >>> import gradtx
        >>> gradtx.add_l1_penalty(lambda t: 1e-3).init(None)
        AddL1PenaltyState(count=Array(0, dtype=int32))
    """

    count: jax.Array  # int32 scalar: updates applied so far


def _add_param_term(
    fn: str,
    coefficient: ScalarOrSchedule,
    term: Callable[[jax.Array], jax.Array],
    mask: Mask,
    state_type: type,
) -> GradientTransformation:
    """`g + c_t * term(p)` on the masked leaves; `c_t` a number or schedule."""
    scheduled = callable(coefficient)

    def init(params: Params) -> OptState:
        del params
        if scheduled:
            return state_type(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def leaf(g, p, c):
        g_c = g.astype(compute_dtype(g, p))
        return (g_c + c * term(p.astype(g_c.dtype))).astype(g.dtype)

    def update(
        updates: Updates, state: OptState, params: Params | None = None, **extra
    ) -> tuple[Updates, OptState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        if callable(coefficient):
            c = jnp.asarray(coefficient(state.count))
            state = state_type(count=safe_increment(state.count))
        else:
            c = coefficient
        leaves, treedef = jax.tree.flatten(updates)
        flags = [True] * len(leaves) if mask is None else mask_flags(fn, mask, params)
        new = [
            leaf(g, p, c) if selected else g
            for g, p, selected in zip(
                leaves, treedef.flatten_up_to(params), flags, strict=True
            )
        ]
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)


@described
def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: Mask = None
) -> GradientTransformation:
    """Add the weights, times a decay rate, to the updates.

    Per selected leaf, with t the number of updates already applied::

        u_t = g_t + wd_t * p_t

    where wd_t is `weight_decay` or `weight_decay(t)` for a schedule. Before
    an adaptive scaling this is the gradient of the L2 penalty
    `wd/2 * ||p||**2` (coupled); after it, decoupled weight decay.

    Args:
        weight_decay: Decay rate: a number in [0, inf), an array or a schedule.
        mask: Which leaves to decay: a bool tree with the params' structure (or
            a prefix of it), or a function of the params returning one. Leaves
            that are not selected pass through unchanged. None decays all.

    Returns:
        A `GradientTransformation`; its state is an `AddDecayedWeightsState`
        for a scheduled decay and an `EmptyState` otherwise. Its update needs
        `params`.

    Raises:
        ValueError: If `weight_decay` is a negative number; at update, if
            `params` is missing or the mask does not fit the params.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.add_decayed_weights(0.1, mask={"w": True, "b": False})
        >>> params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([3.0])}
        >>> grads = {"w": jnp.zeros(2), "b": jnp.zeros(1)}
        >>> tx.update(grads, tx.init(params), params)[0]
        {'b': Array([0.], dtype=float32), 'w': Array([0.1, 0.2], dtype=float32)}

    References:
        Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR
        2019.
    """
    check_in_range("add_decayed_weights", "weight_decay", weight_decay, 0.0)
    return _add_param_term(
        "add_decayed_weights",
        weight_decay,
        lambda p: p,
        mask,
        AddDecayedWeightsState,
    )


@described
def add_l1_penalty(
    strength: ScalarOrSchedule = 0.0, mask: Mask = None
) -> GradientTransformation:
    """Add the (sub)gradient of an L1 penalty to the updates.

    Per selected leaf, with t the number of updates already applied::

        u_t = g_t + strength_t * sign(p_t)

    the gradient of `strength * sum(|p|)`, taken as 0 where p is 0. Chained
    with `add_decayed_weights` it gives the elastic net.

    Args:
        strength: Penalty strength: a number in [0, inf), an array or a
            schedule.
        mask: Which leaves to penalise, as in `add_decayed_weights`.

    Returns:
        A `GradientTransformation`; its state is an `AddL1PenaltyState` for a
        scheduled strength and an `EmptyState` otherwise. Its update needs
        `params`.

    Raises:
        ValueError: If `strength` is a negative number; at update, if `params`
            is missing or the mask does not fit the params.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.add_l1_penalty(0.5)
        >>> params = jnp.array([-2.0, 0.0, 3.0])
        >>> tx.update(jnp.ones(3), tx.init(params), params)[0]
        Array([0.5, 1. , 1.5], dtype=float32)
    """
    check_in_range("add_l1_penalty", "strength", strength, 0.0)
    return _add_param_term(
        "add_l1_penalty", strength, jnp.sign, mask, AddL1PenaltyState
    )


class ProximalL1State(NamedTuple):
    """State of `proximal_l1` when the strength or the learning rate is a schedule.

    Examples:
        >>> import gradtx
        >>> gradtx.proximal_l1(1e-3, gradtx.cosine_decay_schedule(0.1, 100)).init(None)
        ProximalL1State(count=Array(0, dtype=int32))
    """

    count: jax.Array  # int32 scalar: updates applied so far


@described
def proximal_l1(
    strength: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    mask: Mask = None,
) -> GradientTransformation:
    """Soft-threshold the parameters after a step: L1 that lands on zero.

    Per selected leaf, with u_t the incoming update (already multiplied by
    the learning rate) and t the number of updates already applied::

        x_t  = p_t + u_t
        u'_t = sign(x_t) * max(|x_t| - learning_rate_t * strength_t, 0) - p_t

    so that `apply_updates` moves p_t to the soft-thresholded point: the
    proximal step of the penalty `strength * sum(|p|)` taken with step size
    `learning_rate`. A weight within `learning_rate * strength` of zero
    after the step is set to exactly zero and stays there while its gradient
    is too small to pull it out. Where x_t survives, u'_t is computed as
    `u_t - sign(x_t) * learning_rate_t * strength_t`, which keeps the
    update's own precision; where it does not, u'_t is `-p_t` exactly.

    Why not `add_l1_penalty`: its subgradient `g + strength * sign(p)`
    pushes a weight across zero by a whole step and back again, so the
    weight oscillates around zero and almost never lands on it. The
    proximal step lands on it exactly, which is what makes a lasso sparse.
    After `scale_by_learning_rate`, with the same learning rate given to
    both, this is ISTA (proximal gradient descent)::

        gradtx.chain(
            gradtx.scale_by_learning_rate(learning_rate),
            gradtx.proximal_l1(strength, learning_rate),
        )

    It must come last in a chain (it reads the step actually taken) and
    needs `params`. After an adaptive scaling such as Adam's it still gives
    exact zeros, with a threshold that ignores the per-coordinate scaling.
    Exact zeros need updates in the params' dtype (or a wider one): the
    update for a zeroed weight is `-p`, exact in that dtype.

    Args:
        strength: L1 strength, a number in [0, inf), an array or a schedule.
        learning_rate: The learning rate of the step before it, a number in
            [0, inf), an array or a schedule (the same one given to
            `scale_by_learning_rate`).
        mask: Which leaves to threshold, as in `add_l1_penalty`; the others
            pass through unchanged.

    Returns:
        A `GradientTransformation`; its state is a `ProximalL1State` if
        `strength` or `learning_rate` is a schedule and an `EmptyState`
        otherwise. Its update needs `params`.

    Raises:
        ValueError: If `strength` or `learning_rate` is a negative number; at
            update, if `params` is missing or the mask does not fit the
            params.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.chain(
        ...     gradtx.scale_by_learning_rate(0.5), gradtx.proximal_l1(0.2, 0.5)
        ... )
        >>> params = jnp.array([1.0, 0.05, -0.3])
        >>> u, _ = tx.update(jnp.array([0.0, 0.0, 0.2]), tx.init(params), params)
        >>> gradtx.apply_updates(params, u)  # thresholds at 0.5 * 0.2 = 0.1
        Array([ 0.9,  0. , -0.3], dtype=float32)

    References:
        Daubechies, Defrise and De Mol, "An iterative thresholding algorithm
        for linear inverse problems with a sparsity constraint", Comm. Pure
        Appl. Math. 2004. Beck and Teboulle, "A Fast Iterative
        Shrinkage-Thresholding Algorithm for Linear Inverse Problems", SIAM
        J. Imaging Sci. 2009.
    """
    fn = "proximal_l1"
    check_in_range(fn, "strength", strength, 0.0)
    check_in_range(fn, "learning_rate", learning_rate, 0.0)
    scheduled = callable(strength) or callable(learning_rate)

    def init(params: Params) -> OptState:
        del params
        if scheduled:
            return ProximalL1State(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def leaf(u, p, threshold):
        dtype = compute_dtype(u, p)
        p_c, u_c = p.astype(dtype), u.astype(dtype)
        x = p_c + u_c
        # sign(x) * max(|x| - threshold, 0) - p, written without subtracting
        # p from a point near it: u - sign(x) * threshold where x survives.
        survives = jnp.abs(x) > threshold
        return jnp.where(survives, u_c - jnp.sign(x) * threshold, -p_c).astype(u.dtype)

    def update(
        updates: Updates, state: OptState, params: Params | None = None, **extra
    ) -> tuple[Updates, OptState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        if scheduled:
            count = state.count
            state = ProximalL1State(count=safe_increment(count))
        else:
            count = None

        threshold = value_at(learning_rate, count) * value_at(strength, count)
        leaves, treedef = jax.tree.flatten(updates)
        flags = [True] * len(leaves) if mask is None else mask_flags(fn, mask, params)
        new = [
            leaf(u, p, threshold) if selected else u
            for u, p, selected in zip(
                leaves, treedef.flatten_up_to(params), flags, strict=True
            )
        ]
        return treedef.unflatten(new), state

    return GradientTransformation(init, update)
