"""Sharpness-aware minimisation: the gradient taken at a nearby worse point.

`sam` wraps an optimizer. Each update climbs from the params a distance rho
along the normalised gradient, asks for the gradient there (through the
`grad_fn=` keyword of `update`), and hands that gradient to the optimizer,
so that the params descend towards regions whose whole neighbourhood has a
low loss. One call of `update` is one SAM step: the ascent is internal, as
in optax's "opaque mode", and nothing else in the training loop changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import (
    check_count,
    check_flag,
    check_in_range,
    check_same_tree,
    require_params,
)
from gradtx._pairs import check_transformation
from gradtx.base import (
    ArrayLike,
    GradientTransformation,
    OptState,
    Params,
    Updates,
    compute_dtype,
    described,
)
from gradtx.clipping import global_norm


class SamState(NamedTuple):
    """State of `sam`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx import sam
        >>> tx = sam(gradtx.sgd(0.1, momentum=0.9))
        >>> tx.init({"w": jnp.zeros(2)}).inner_state[0].velocity
        {'w': Array([0., 0.], dtype=float32)}
    """

    inner_state: OptState  # the state of the wrapped optimizer


def _takes_an_index(fn: str, grad_fn: Any) -> bool:
    """Whether `grad_fn` is optax's `(params, i)` form or `params -> grads`.

    The index is passed when the function has a second positional
    parameter without a default (or takes `*args`); a function whose
    signature cannot be read is called in optax's form.
    """
    if not callable(grad_fn):
        raise TypeError(
            f"{fn}: grad_fn must be a function of the params returning their "
            f"gradients, got {type(grad_fn).__name__}"
        )
    try:
        parameters = list(inspect.signature(grad_fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    required = [
        p
        for p in parameters
        if p.kind in positional and p.default is inspect.Parameter.empty
    ]
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    return len(required) >= 2 or variadic


@described
def sam(
    optimizer: GradientTransformation,
    rho: ArrayLike = 0.05,
    *,
    adaptive: bool = False,
    eta: ArrayLike = 0.0,
    sync_period: int = 2,
    batch_axis_name: str | None = None,
) -> GradientTransformation:
    """Sharpness-aware minimisation (SAM, or ASAM with `adaptive=True`).

    Per leaf, with g the incoming gradient at the params w, ||.|| the norm
    over every element of every leaf together, and grad_fn the function
    passed to `update`::

        T   = |w| + eta if adaptive else 1
        w'  = w + rho * T**2 * g / ||T * g||
        g'  = grad_fn(w')
        u   = optimizer(g')

    where `optimizer` is stepped with the params w (not w'), so its weight
    decay and its state follow the real params. A zero gradient (||T * g||
    = 0) gives w' = w. With `sync_period` k > 2 the ascent is repeated
    k - 1 times, each from the point the previous one reached, with the
    gradient grad_fn returned there (and T taken at that point); g' is the
    gradient at the last point.

    `update` needs `params` and the keyword `grad_fn`: a function of the
    params returning the gradients (a tree like the params), such as
    `jax.grad(lambda p: loss(p, batch))`, or optax's `(params, i)` form with
    i = 0, 1, ... the ascent step, to read another batch at each. It is
    called with an index when it has a second positional parameter without
    a default. Under `pmap` or `vmap` with a named batch axis, give that name
    as `batch_axis_name`: each gradient grad_fn returns is then averaged
    over the axis (`jax.lax.pmean`), as the incoming one should be.

    The gradient the optimizer receives comes from grad_fn alone: a link
    chained before `sam` (such as clipping) shapes only the ascent
    direction. To clip the gradient the optimizer steps with, clip inside:
    `sam(chain(clip_by_global_norm(1.0), sgd(0.1)))`. `sam` calls grad_fn on
    the whole tree of params it is given, so wrap it around the optimizer,
    not inside `masked` or `multi_transform` (which hand it part of the tree).

    This is the step of `optax.contrib.sam(optimizer, chain(normalize(),
    sgd(rho)), sync_period, opaque_mode=True)`. optax's other, default mode
    (one adversarial step per call of `update`) has no counterpart here, and
    an optax call of `sam` raises `TypeError` rather than meaning something
    else. torch.optim has no SAM.

    Args:
        optimizer: The optimizer that takes the step, with the gradient at
            the ascent point.
        rho: Radius of the ascent, in [0, inf) (0: plain `optimizer`).
            Foret et al. use 0.05; ASAM takes larger ones (0.5 to 2).
        adaptive: Scale the ascent by |w| + eta, leaf element by element
            (ASAM: the neighbourhood is relative to the size of each weight).
        eta: Added to |w| in the adaptive scale, in [0, inf).
        sync_period: One plus the number of ascent steps, an int in [1, inf)
            (optax's meaning; 1: no ascent, `optimizer` on g itself).
        batch_axis_name: Name of a mapped axis over which to average the
            gradients grad_fn returns; None for none.

    Returns:
        A `GradientTransformation` whose state is a `SamState`.

    Raises:
        TypeError: If `optimizer` is not an `(init, update)` pair, `adaptive`
            not a bool or `sync_period` not an int; at update, if grad_fn is
            not callable.
        ValueError: If `rho` or `eta` is a number outside its range or
            `sync_period` is below 1; at update, if `params` or `grad_fn` is
            missing, or grad_fn returns a tree unlike the params.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx import sam
        >>> def loss(w):
        ...     return jnp.sum(w**4)
        >>> tx = sam(gradtx.sgd(0.1), rho=0.5)
        >>> w = jnp.array([1.0, 0.5])
        >>> g = jax.grad(loss)(w)  # [4, 0.5]: the ascent point is w + 0.5 * g / |g|
        >>> u, state = tx.update(g, tx.init(w), w, grad_fn=jax.grad(loss))
        >>> [round(float(x), 4) for x in u]  # -0.1 * the gradient there: 4 * w'**3
        [-1.3396, -0.071]

    References:
        Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware Minimization
        for Efficiently Improving Generalization", ICLR 2021.
        Kwon, Kim, Park and Choi, "ASAM: Adaptive Sharpness-Aware
        Minimization for Scale-Invariant Learning of Deep Neural Networks",
        ICML 2021.
    """
    fn = "sam"
    inner_update = check_transformation(fn, "optimizer", optimizer)
    check_in_range(fn, "rho", rho, 0.0)
    check_flag(fn, "adaptive", adaptive)
    check_in_range(fn, "eta", eta, 0.0)
    sync_period = check_count(fn, "sync_period", sync_period, 1)
    if batch_axis_name is not None and not isinstance(batch_axis_name, str):
        raise TypeError(
            f"{fn}: batch_axis_name must be a string or None, got "
            f"{type(batch_axis_name).__name__} {batch_axis_name!r}"
        )

    def init(params: Params) -> SamState:
        return SamState(inner_state=optimizer.init(params))

    def scale(w: jax.Array) -> jax.Array:
        dtype = compute_dtype(w)
        return jnp.abs(w.astype(dtype)) + eta

    def ascend(w: Params, g: Updates) -> Params:
        if adaptive:
            scaled = jax.tree.map(
                lambda g, w: g.astype(compute_dtype(g)) * scale(w), g, w
            )
        else:
            scaled = g
        norm = global_norm(scaled)
        factor = rho / jnp.where(norm > 0, norm, 1)
        factor = jnp.where(norm > 0, factor, 0)

        def leaf(w: jax.Array, g: jax.Array) -> jax.Array:
            dtype = compute_dtype(w, g, norm)
            step = g.astype(dtype) * factor
            if adaptive:
                step = step * jnp.square(scale(w).astype(dtype))
            return (w.astype(dtype) + step).astype(jnp.result_type(w))

        return jax.tree.map(leaf, w, g)

    def update(
        updates: Updates,
        state: SamState,
        params: Params | None = None,
        *,
        grad_fn: Callable[..., Updates] | None = None,
        **extra,
    ) -> tuple[Updates, SamState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        if grad_fn is None and sync_period > 1:
            raise ValueError(
                f"{fn} needs the gradient at the ascent point, but update() got no "
                "grad_fn; call update(grads, state, params, grad_fn=f) with f a "
                "function of the params returning their gradients, such as "
                "jax.grad(lambda p: loss(p, batch))"
            )
        with_index = grad_fn is not None and _takes_an_index(fn, grad_fn)
        point, grads = params, updates
        for i in range(sync_period - 1):
            point = ascend(point, grads)
            assert grad_fn is not None  # checked above
            grads = grad_fn(point, i) if with_index else grad_fn(point)
            check_same_tree(fn, "the gradients from grad_fn", grads, "params", params)
            if batch_axis_name is not None:
                grads = jax.lax.pmean(grads, axis_name=batch_axis_name)
            grads = jax.tree.map(
                lambda g, u: jnp.asarray(g).astype(jnp.result_type(u)), grads, updates
            )
        new, inner_state = inner_update(grads, state.inner_state, params, **extra)
        return new, SamState(inner_state=inner_state)

    return GradientTransformation(init, update)
