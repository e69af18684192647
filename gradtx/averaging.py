"""Wrappers that keep a second set of weights: averages, slow weights, schedule-free.

`ema_params` and `swa_params` wrap a whole optimizer and keep, next to its
state, an average of the parameters it produces: an exponential moving
average, or the equal-weight running mean of stochastic weight averaging
(torch.optim.swa_utils.AveragedModel's two rules). `averaged_params` reads
that average back from the state of a training loop, wherever the wrapper
sits in it. `lookahead` keeps Zhang et al.'s slow weights in its state and
pulls the parameters towards them every few steps.

Each of these wrappers reads the parameters (`update(grads, state,
params)`), and its inner transformation must be the whole optimizer: the
updates it returns are the ones applied to the parameters, so that
`params + updates` is where the parameters go.

`schedule_free` turns any base chain (one without momentum) into the
schedule-free method of Defazio et al.: the base chain moves a sequence z,
a weighted running average of z gives x, the point to evaluate at, and the
gradient is taken at y, a fixed interpolation between the two. The trained
params are y; `schedule_free_eval_params` recovers x from the state. The
optimizers `schedule_free_adamw` and `schedule_free_sgd` are in
gradtx/aliases.py.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import (
    check_count,
    check_dtype,
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
    ScalarOrSchedule,
    Updates,
    compute_dtype,
    described,
    map_leaves,
    safe_increment,
    scalar_dtype,
    value_at,
)

_INT32_MAX = int(jnp.iinfo(jnp.int32).max)

# ----------------------------------------------------------------------------
# helpers


def _copy(params: Params, dtype: Any) -> Params:
    """A fresh copy of each leaf, in `dtype` (None: the leaf's own dtype).

    Never the leaf itself, not even when the dtype is unchanged (`astype`
    then returns the same array): state and params are donated together.
    """

    def leaf(p: Any) -> jax.Array:
        own = jnp.result_type(p)
        wanted = own if dtype is None else jnp.dtype(dtype)
        if jnp.issubdtype(own, jnp.complexfloating):  # keep the imaginary part
            wanted = jnp.promote_types(wanted, own)
        return jnp.array(p, dtype=wanted, copy=True)

    return jax.tree.map(leaf, params)


def _moved(p: jax.Array, u: jax.Array) -> jax.Array:
    """The parameter after the step, as `apply_updates` makes it, in `cd`.

    The sum is rounded to the param's precision with `reduce_precision`: a
    plain cast to bfloat16 and back may be dropped by XLA (it allows excess
    precision), which would average sums the params never held.
    """
    dtype = jnp.result_type(p)
    cd = compute_dtype(p, u)
    moved = jnp.asarray(p + u).astype(dtype).astype(cd)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        info = jnp.finfo(dtype)
        moved = jax.lax.reduce_precision(moved, info.nexp, info.nmant)
    return moved


def _find_states(state: OptState, types: tuple[type, ...]) -> list[Any]:
    """Every sub-state of one of `types`, outermost first, none inside another."""
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, types))
    return [x for x in nodes if isinstance(x, types)]


def _one_state(fn: str, state: OptState, types: tuple[type, ...]) -> Any:
    """The single sub-state of one of `types` in `state`, or a clear error."""
    names = " or ".join(t.__name__ for t in types)
    found = _find_states(state, types)
    if not found:
        raise ValueError(
            f"{fn}: no {names} in the state; searched a {type(state).__name__} "
            f"with {len(jax.tree.leaves(state))} arrays, through its tuples, "
            "NamedTuples, dicts and lists. Pass the state of an optimizer built "
            f"with the wrapper that keeps a {names}."
        )
    if len(found) > 1:
        raise ValueError(
            f"{fn}: the state holds {len(found)} {names} side by side; pass the "
            "part of the state that holds the one you want (state[0], say)."
        )
    return found[0]


def _averaging(
    fn: str,
    inner: GradientTransformation,
    weight: Any,
    start_step: int,
    every_k: int,
    dtype: Any,
    state_type: type,
) -> GradientTransformation:
    """The update both averages share; `weight(n, dtype)` is the lerp weight."""
    inner_update = check_transformation(fn, "inner", inner)
    start = min(start_step, _INT32_MAX)

    def init(params: Params) -> Any:
        return state_type(
            count=jnp.zeros([], jnp.int32),
            n_averaged=jnp.zeros([], jnp.int32),
            average=_copy(params, dtype),
            inner_state=inner.init(params),
        )

    def update(
        updates: Updates, state: Any, params: Params | None = None, **extra
    ) -> tuple[Updates, Any]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        check_same_tree(fn, "params", params, "state.average", state.average)
        new, inner_state = inner_update(updates, state.inner_state, params, **extra)
        check_same_tree(fn, "the inner updates", new, "params", params)
        count = safe_increment(state.count)
        take = (count > start) & ((count - start) % every_k == 0)
        first = state.n_averaged == 0

        def leaf(p, u, a):
            moved = _moved(p, u)
            cd = compute_dtype(moved, a)
            a_c, p_c = a.astype(cd), moved.astype(cd)
            blended = a_c + weight(state.n_averaged, cd) * (p_c - a_c)
            a_new = jnp.where(take, jnp.where(first, p_c, blended), a_c)
            return (a_new.astype(a.dtype),)

        (average,) = map_leaves(leaf, 1, params, new, state.average)
        n_averaged = jnp.where(take, safe_increment(state.n_averaged), state.n_averaged)
        return new, state_type(count, n_averaged, average, inner_state)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# ema_params, swa_params


class EmaParamsState(NamedTuple):
    """State of `ema_params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.ema_params(gradtx.sgd(0.1), decay=0.9)
        >>> state = tx.init({"w": jnp.ones(2, jnp.bfloat16)})
        >>> state.count, state.n_averaged, state.average["w"].dtype
        (Array(0, dtype=int32), Array(0, dtype=int32), dtype('float32'))
    """

    count: jax.Array  # int32 scalar: updates so far
    n_averaged: jax.Array  # int32 scalar: params taken into the average so far
    average: Params  # the averaged params, in `dtype`; a copy of init's params
    inner_state: OptState  # the state of the wrapped optimizer


class SwaParamsState(NamedTuple):
    """State of `swa_params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.swa_params(gradtx.sgd(0.1), every_k=2)
        >>> state = tx.init({"w": jnp.ones(2)})
        >>> state.n_averaged, state.average["w"]
        (Array(0, dtype=int32), Array([1., 1.], dtype=float32))
    """

    count: jax.Array  # int32 scalar: updates so far
    n_averaged: jax.Array  # int32 scalar: params taken into the average so far
    average: Params  # the running mean of the params, in `dtype`
    inner_state: OptState  # the state of the wrapped optimizer


@described
def ema_params(
    inner: GradientTransformation,
    decay: ArrayLike = 0.999,
    *,
    start_step: int = 0,
    dtype: Any = jnp.float32,
) -> GradientTransformation:
    """Keep an exponential moving average of the parameters an optimizer makes.

    Per leaf, with p_t = p_{t-1} + u_t the params after update t = 1, 2, ...
    (u_t from `inner`), n the number of params averaged so far and the
    average taken on every update t > start_step::

        avg = p_t                                   if n == 0
        avg = decay * avg + (1 - decay) * p_t       otherwise
        n   = n + 1

    This is torch.optim.swa_utils.AveragedModel with
    `multi_avg_fn=get_ema_multi_avg_fn(decay)`, updated after each optimizer
    step: the first averaged params are copied, not blended with the
    starting weights. Before that, the average holds a copy of the params
    given to `init`. The wrapper returns the updates of `inner` unchanged;
    read the average with `averaged_params(state)`.

    p_t is the parameter as `apply_updates` makes it (rounded to the
    param's dtype), and the average is kept in `dtype` (float32 by
    default), so bfloat16 params are averaged without bfloat16 round-off.

    `inner` must be the whole optimizer: `params + updates` is taken to be
    the next params. To average over real steps only, put the wrapper
    inside `accumulate_gradients` and `apply_if_finite`, not outside:
    outside, a micro-step or a skipped step (a zero update) counts as a
    step whose params are averaged again.

    Batch statistics: averaging the weights does not average the running
    statistics of BatchNorm-style layers, which belong to the weights they
    were measured with (torch's `update_bn` recomputes them). In JAX they
    live outside the optimizer, so recompute them yourself: reset them and
    run one pass of training data through the model in training mode with
    the averaged params (in flax, `model.apply({"params": avg, "batch_stats":
    stats}, x, train=True, mutable=["batch_stats"])` per batch, keeping the
    statistics it returns), then evaluate with those.

    Args:
        inner: The optimizer whose params are averaged.
        decay: Weight of the old average, in [0, 1]; 0 keeps the latest
            params, 1 keeps the first averaged params.
        start_step: Updates to leave out before the first one averaged, an
            int in [0, inf).
        dtype: Dtype of the average (a floating-point dtype; complex params
            get the complex dtype of at least this precision); None keeps
            each param's dtype.

    Returns:
        A `GradientTransformation` whose state is an `EmaParamsState`.

    Raises:
        TypeError: If `inner` is not an `(init, update)` pair or
            `start_step` is not a whole number.
        ValueError: If `decay` or `start_step` is out of range or `dtype`
            is not a floating-point dtype; at update, if `params` is None.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.ema_params(gradtx.sgd(1.0), decay=0.5)
        >>> params = jnp.array([4.0])
        >>> state = tx.init(params)
        >>> for grad in (1.0, 1.0):  # params 4 -> 3 -> 2
        ...     updates, state = tx.update(jnp.array([grad]), state, params)
        ...     params = gradtx.apply_updates(params, updates)
        >>> gradtx.averaged_params(state)  # 3 copied, then 0.5 * 3 + 0.5 * 2
        Array([2.5], dtype=float32)

    References:
        Polyak and Juditsky, "Acceleration of Stochastic Approximation by
        Averaging", SIAM J. Control Optim. 1992.
    """
    fn = "ema_params"
    check_in_range(fn, "decay", decay, 0.0, 1.0)
    start_step = check_count(fn, "start_step", start_step, 0)
    dtype = check_dtype(fn, "dtype", dtype)

    def weight(n: jax.Array, cd: Any) -> Any:
        del n
        return jnp.asarray(1 - decay, cd)

    return _averaging(fn, inner, weight, start_step, 1, dtype, EmaParamsState)


@described
def swa_params(
    inner: GradientTransformation,
    every_k: int = 1,
    *,
    start_step: int = 0,
    dtype: Any = jnp.float32,
) -> GradientTransformation:
    """Keep the running mean of the parameters an optimizer makes (SWA).

    Per leaf, with p_t = p_{t-1} + u_t the params after update t = 1, 2, ...
    (u_t from `inner`), n the number of params averaged so far and the
    average taken on the updates t = start_step + every_k * j, j = 1, 2, ...::

        avg = avg + (p_t - avg) / (n + 1)          (n == 0: avg = p_t)
        n   = n + 1

    so avg is the plain mean of the n params taken. This is
    torch.optim.swa_utils.AveragedModel with its default average, updated
    the way SWA is used in torch: every few steps (every epoch) once
    `swa_start` has passed, usually with a constant or cyclic learning rate
    (torch's SWALR; here a schedule in `inner`). Before the first average,
    the average holds a copy of the params given to `init`. The wrapper
    returns the updates of `inner` unchanged; read the average with
    `averaged_params(state)`.

    p_t is the parameter as `apply_updates` makes it (rounded to the
    param's dtype), and the average is kept in `dtype` (float32 by
    default), so bfloat16 params are averaged without bfloat16 round-off.

    `inner` must be the whole optimizer: `params + updates` is taken to be
    the next params. Put the wrapper inside `accumulate_gradients` and
    `apply_if_finite`, not outside, so that only real steps count.

    Batch statistics: averaging the weights does not average the running
    statistics of BatchNorm-style layers, which belong to the weights they
    were measured with (torch's `update_bn` recomputes them). In JAX they
    live outside the optimizer, so recompute them yourself: reset them and
    run one pass of training data through the model in training mode with
    the averaged params (in flax, `model.apply({"params": avg, "batch_stats":
    stats}, x, train=True, mutable=["batch_stats"])` per batch, keeping the
    statistics it returns), then evaluate with those.

    Args:
        inner: The optimizer whose params are averaged.
        every_k: Updates between two averaged params, an int in [1, inf)
            (the steps of an epoch, to average once per epoch).
        start_step: Updates before averaging starts (torch's `swa_start`, in
            updates), an int in [0, inf).
        dtype: Dtype of the average (a floating-point dtype; complex params
            get the complex dtype of at least this precision); None keeps
            each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `SwaParamsState`.

    Raises:
        TypeError: If `inner` is not an `(init, update)` pair or `every_k`
            or `start_step` is not a whole number.
        ValueError: If `every_k` or `start_step` is out of range or `dtype`
            is not a floating-point dtype; at update, if `params` is None.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.swa_params(gradtx.sgd(1.0), every_k=2)
        >>> params = jnp.array([8.0])
        >>> state = tx.init(params)
        >>> for _ in range(4):  # params 7, 6, 5, 4; averaged: 6 and 4
        ...     updates, state = tx.update(jnp.array([1.0]), state, params)
        ...     params = gradtx.apply_updates(params, updates)
        >>> gradtx.averaged_params(state), state.n_averaged
        (Array([5.], dtype=float32), Array(2, dtype=int32))

    References:
        Izmailov, Podoprikhin, Garipov, Vetrov and Wilson, "Averaging Weights
        Leads to Wider Optima and Better Generalization", UAI 2018.
    """
    fn = "swa_params"
    every_k = check_count(fn, "every_k", every_k, 1)
    start_step = check_count(fn, "start_step", start_step, 0)
    dtype = check_dtype(fn, "dtype", dtype)

    def weight(n: jax.Array, cd: Any) -> jax.Array:
        return 1 / (n.astype(cd) + 1)

    return _averaging(fn, inner, weight, start_step, every_k, dtype, SwaParamsState)


def averaged_params(state: OptState) -> Params:
    """The averaged params kept by `ema_params` or `swa_params` in `state`.

    The state is searched through its tuples, NamedTuples, dicts and lists,
    so the wrapper may sit inside a chain or other wrappers
    (`inject_hyperparams`, `accumulate_gradients`, `masked`, ...). A wrapper
    inside another averaging wrapper is not looked at: the outer one is
    found.

    Args:
        state: The state of an optimizer that holds one `EmaParamsState` or
            `SwaParamsState`.

    Returns:
        The average, a tree with the params' structure, in the wrapper's
        `dtype` (float32 by default; cast it to the params' dtypes if
        needed). Leaves a `masked` wrapper keeps out are None.

    Raises:
        ValueError: If the state holds no such state, or several side by side.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.chain(gradtx.clip(1.0), gradtx.ema_params(gradtx.sgd(0.1)))
        >>> gradtx.averaged_params(tx.init({"w": jnp.ones(2)}))
        {'w': Array([1., 1.], dtype=float32)}
    """
    found = _one_state("averaged_params", state, (EmaParamsState, SwaParamsState))
    return found.average


# ----------------------------------------------------------------------------
# lookahead


class LookaheadState(NamedTuple):
    """State of `lookahead`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.lookahead(gradtx.sgd(0.1), sync_period=5, slow_step_size=0.5)
        >>> state = tx.init({"w": jnp.ones(2)})
        >>> state.steps_since_sync, state.slow
        (Array(0, dtype=int32), {'w': Array([1., 1.], dtype=float32)})
    """

    steps_since_sync: jax.Array  # int32 scalar in [0, sync_period)
    slow: Params  # the slow weights, a copy of init's params at first
    inner_state: OptState  # the state of the fast optimizer


@described
def lookahead(
    inner: GradientTransformation,
    sync_period: int,
    slow_step_size: ArrayLike,
    reset_state: bool = False,
    *,
    slow_dtype: Any = None,
) -> GradientTransformation:
    """Lookahead: k fast steps forward, then part of the way back to slow weights.

    Per leaf, with p the params (the fast weights), u_t the update of
    `inner` at update t = 1, 2, ..., slow weights s starting as a copy of the
    params given to `init`, and k = sync_period::

        f_t = p_{t-1} + u_t
        s   = s + slow_step_size * (f_t - s)      if t is a multiple of k
        p_t = s                                   if t is a multiple of k
        p_t = f_t                                 otherwise

    The update returned is u_t, or s - p_{t-1} on a synchronising step, so
    that the params land on the new slow weights (up to one rounding of the
    update). The slow weights stay in the state: the params are ordinary
    params, and evaluation reads the slow ones with
    `lookahead_slow_params(state)`. This is optax.lookahead without its
    `LookaheadParams` pair: optax keeps both copies in the params, with the
    same numbers.

    Args:
        inner: The fast optimizer (the whole optimizer: its updates are the
            ones applied to the params).
        sync_period: Fast steps between two synchronisations (k in the
            paper), an int in [1, inf).
        slow_step_size: Step of the slow weights towards the fast ones
            (alpha in the paper), in [0, 1].
        reset_state: Reset the state of `inner` to `inner.init(params)` at
            each synchronisation (step counts and schedules inside start over).
        slow_dtype: Dtype of the slow weights (float32 for bfloat16 params,
            say); None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `LookaheadState`.

    Raises:
        TypeError: If `inner` is not an `(init, update)` pair, `sync_period`
            is not a whole number or `reset_state` is not a bool.
        ValueError: If `sync_period` or `slow_step_size` is out of range or
            `slow_dtype` is not a floating-point dtype; at update, if
            `params` is None.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.lookahead(gradtx.sgd(1.0), sync_period=2, slow_step_size=0.5)
        >>> params = jnp.array([4.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):  # fast 4 -> 3 -> 2, then back to 4 + 0.5 * (2 - 4)
        ...     updates, state = tx.update(jnp.array([1.0]), state, params)
        ...     params = gradtx.apply_updates(params, updates)
        >>> params, gradtx.lookahead_slow_params(state)
        (Array([3.], dtype=float32), Array([3.], dtype=float32))

    References:
        Zhang, Lucas, Hinton and Ba, "Lookahead Optimizer: k steps forward,
        1 step back", NeurIPS 2019.
    """
    fn = "lookahead"
    inner_update = check_transformation(fn, "inner", inner)
    sync_period = check_count(fn, "sync_period", sync_period, 1)
    check_in_range(fn, "slow_step_size", slow_step_size, 0.0, 1.0)
    check_flag(fn, "reset_state", reset_state)
    slow_dtype = check_dtype(fn, "slow_dtype", slow_dtype)
    last = min(sync_period, _INT32_MAX) - 1

    def init(params: Params) -> LookaheadState:
        return LookaheadState(
            steps_since_sync=jnp.zeros([], jnp.int32),
            slow=_copy(params, slow_dtype),
            inner_state=inner.init(params),
        )

    def update(
        updates: Updates, state: LookaheadState, params: Params | None = None, **extra
    ) -> tuple[Updates, LookaheadState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        check_same_tree(fn, "params", params, "state.slow", state.slow)
        new, inner_state = inner_update(updates, state.inner_state, params, **extra)
        check_same_tree(fn, "the inner updates", new, "params", params)
        sync = state.steps_since_sync == last

        def leaf(p, u, s):
            fast = _moved(p, u)
            cd = compute_dtype(fast, s, u)
            s_c = s.astype(cd)
            s_new = (s_c + slow_step_size * (fast.astype(cd) - s_c)).astype(s.dtype)
            back = (s_new.astype(cd) - p.astype(cd)).astype(u.dtype)
            return jnp.where(sync, back, u), jnp.where(sync, s_new, s)

        out, slow = map_leaves(leaf, 2, params, new, state.slow)
        if reset_state:
            fresh = inner.init(params)
            inner_state = jax.tree.map(
                lambda now, first: jnp.where(sync, first, now), inner_state, fresh
            )
        steps = jnp.where(sync, 0, state.steps_since_sync + 1)
        return out, LookaheadState(steps, slow, inner_state)

    return GradientTransformation(init, update)


def lookahead_slow_params(state: OptState) -> Params:
    """The slow weights kept by `lookahead` in `state`, for evaluation.

    The state is searched as in `averaged_params`, so the wrapper may sit
    inside a chain or other wrappers.

    Args:
        state: The state of an optimizer that holds one `LookaheadState`.

    Returns:
        The slow weights, a tree with the params' structure, in the
        wrapper's `slow_dtype` (the params' dtypes by default).

    Raises:
        ValueError: If the state holds no `LookaheadState`, or several side
            by side.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.apply_if_finite(gradtx.lookahead(gradtx.sgd(0.1), 5, 0.5), 3)
        >>> gradtx.lookahead_slow_params(tx.init({"w": jnp.ones(2)}))
        {'w': Array([1., 1.], dtype=float32)}
    """
    return _one_state("lookahead_slow_params", state, (LookaheadState,)).slow


# ----------------------------------------------------------------------------
# schedule-free: the average of an iterate, used in place of a decay


class ScheduleFreeState(NamedTuple):
    """State of `schedule_free`.

    The scalars are kept in at least float32 whatever the params' dtype, so
    that the running sum of weights does not stall in bfloat16.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.schedule_free(gradtx.sgd(0.1), learning_rate=0.1)
        >>> state = tx.init({"w": jnp.ones(2, jnp.bfloat16)})
        >>> state.count, state.weight_sum.dtype, state.z["w"].dtype
        (Array(0, dtype=int32), dtype('float32'), dtype(bfloat16))
    """

    b1: jax.Array  # scalar: the interpolation weight of x in y, for eval params
    weight_sum: jax.Array  # scalar: sum of the averaging weights so far
    count: jax.Array  # int32 scalar: updates applied so far
    max_lr: jax.Array  # scalar: largest learning rate seen so far
    base_optimizer_state: OptState  # state of the base chain
    z: Params  # the base chain's iterate, in state_dtype or the params' dtype


def _copy_leaf(p: Any, dtype: Any) -> jax.Array:
    # A fresh buffer, never the params' own: params and state can then both be
    # donated to a jitted step (an aliased z breaks donation, optax #1059).
    return jnp.array(p, dtype=dtype or jnp.result_type(p), copy=True)


@described
def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    weight_lr_power: ArrayLike = 2.0,
    state_dtype: Any = None,
) -> GradientTransformation:
    """Make a base chain schedule-free: average its iterates, step at a blend.

    Per leaf, with y the params (where the gradient g is taken), z_0 = y_0,
    and t = 1, 2, ...::

        d_t     = base_optimizer(g_t taken at y_{t-1})   (it holds the -lr)
        z_t     = z_{t-1} + d_t
        x_{t-1} = (y_{t-1} - (1 - b1) * z_{t-1}) / b1
        lr_t    = learning_rate(t)  (the number itself if not a schedule)
        m_t     = max(lr_1, ..., lr_t)
        c_t     = m_t**weight_lr_power / sum_{s<=t} m_s**weight_lr_power
        x_t     = (1 - c_t) * x_{t-1} + c_t * z_t
        y_t     = b1 * x_t + (1 - b1) * z_t
        u_t     = y_t - y_{t-1}

    x is not stored: it is recovered from y and z, so the wrapper keeps one
    buffer (z) besides the base chain's state. u_t is computed as the sum of
    its two moves, b1 * c_t * (z_t - x_{t-1}) + (1 - b1) * d_t, never as a
    difference of two params. Evaluate the model at x, given
    by `schedule_free_eval_params(state, params)`. With c_t = 0 (a zero
    learning rate so far) x holds still.

    The base chain must not keep momentum (the interpolation replaces it)
    and should scale by `learning_rate` itself. The weight c_t reads the
    schedule at t (1 at the first update) while a `scale_by_learning_rate`
    link in the base chain reads it at t - 1, its own count: with a warmup
    from 0 the first step of z is zero. This is optax's convention, kept so
    that the numbers are the same.

    Args:
        base_optimizer: The chain that moves z, without momentum, for
            example `gradtx.sgd(lr)` or Adam with `b1=0`.
        learning_rate: The base chain's learning rate, a number in [0, inf)
            or a schedule; it sets the averaging weights.
        b1: Weight of x in the gradient point y, in (0, 1]; 1 takes the
            gradient at the average itself.
        weight_lr_power: Power of the learning rate in the averaging weight,
            in [0, inf); 0 gives the uniform average 1/t.
        state_dtype: Dtype of z (a floating-point dtype); None keeps each
            param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScheduleFreeState`.

    Raises:
        TypeError: If `base_optimizer` is not an `(init, update)` pair.
        ValueError: If a hyperparameter is a number outside its range or
            `state_dtype` is not a floating-point dtype; at update, if
            `params` is None.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.schedule_free(gradtx.sgd(0.5), learning_rate=0.5, b1=0.5)
        >>> params = jnp.array([2.0])
        >>> state = tx.init(params)
        >>> u, state = tx.update(jnp.array([1.0]), state, params)
        >>> state.z, u  # z moved by -0.5; x = z after one step; y halfway
        (Array([1.5], dtype=float32), Array([-0.5], dtype=float32))

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, "The Road Less
        Scheduled", NeurIPS 2024.
    """
    fn = "schedule_free"
    base_update = check_transformation(fn, "base_optimizer", base_optimizer)
    check_in_range(fn, "learning_rate", learning_rate, 0.0)
    check_in_range(fn, "b1", b1, 0.0, 1.0, low_open=True)
    check_in_range(fn, "weight_lr_power", weight_lr_power, 0.0)
    state_dtype = check_dtype(fn, "state_dtype", state_dtype)

    def init(params: Params) -> ScheduleFreeState:
        dtype = scalar_dtype(params)
        return ScheduleFreeState(
            b1=jnp.array(b1, dtype=dtype, copy=True),
            weight_sum=jnp.zeros([], dtype),
            count=jnp.zeros([], jnp.int32),
            max_lr=jnp.zeros([], dtype),
            base_optimizer_state=base_optimizer.init(params),
            z=jax.tree.map(lambda p: _copy_leaf(p, state_dtype), params),
        )

    def update(
        updates: Updates,
        state: ScheduleFreeState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScheduleFreeState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        check_same_tree(fn, "updates", updates, "state.z", state.z)
        dtype = state.weight_sum.dtype
        count = safe_increment(state.count)
        lr = jnp.asarray(value_at(learning_rate, count), dtype)
        max_lr = jnp.maximum(state.max_lr, lr)
        weight = max_lr**weight_lr_power
        weight_sum = state.weight_sum + weight
        # weight_sum is 0 only while every weight is: c = 0, x holds still
        c = weight / jnp.where(weight_sum == 0, 1, weight_sum)

        steps, base_state = base_update(
            updates, state.base_optimizer_state, params, **extra
        )
        check_same_tree(fn, "updates", updates, "base updates", steps)

        def leaf(g, y, z, d):
            cd = compute_dtype(y, z, d)
            y_c, z_c = y.astype(cd), z.astype(cd)
            z_new = (z_c + d.astype(cd)).astype(z.dtype)
            # x and y are formed from z as stored, so that the next step
            # recovers x from (y, z) exactly as this step left them
            z_n = z_new.astype(cd)
            x_prev = (y_c - (1 - b1) * z_c) / b1
            # u = y_t - y_{t-1} with y_t = b1 x_t + (1 - b1) z_t, written as
            # the sum of its two moves so that no large y is subtracted:
            # x_t - x_{t-1} = c (z_t - x_{t-1}), and z moved by z_t - z_{t-1}
            u = b1 * c * (z_n - x_prev) + (1 - b1) * (z_n - z_c)
            return u.astype(g.dtype), z_new

        leaves, treedef = jax.tree.flatten(updates)
        results = [
            leaf(*args)
            for args in zip(
                leaves,
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.z),
                treedef.flatten_up_to(steps),
                strict=True,
            )
        ]
        new_updates = treedef.unflatten([r[0] for r in results])
        z = treedef.unflatten([r[1] for r in results])
        return new_updates, ScheduleFreeState(
            b1=jnp.asarray(b1, dtype),
            weight_sum=weight_sum,
            count=count,
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
        )

    return GradientTransformation(init, update)


def schedule_free_eval_params(state: OptState, params: Params) -> Params:
    """The params to evaluate a schedule-free model at: the average x.

    Per leaf, with y the params being trained and z, b1 from the state::

        x = (y - (1 - b1) * z) / b1

    The state may be a `ScheduleFreeState` or any optimizer state holding
    exactly one (under `inject_hyperparams`, in a chain, inside `masked`);
    leaves that the schedule-free state does not cover are returned as they
    are. The arithmetic runs in at least float32 and each result keeps its
    param's dtype.

    Args:
        state: The optimizer state.
        params: The params being trained (y).

    Returns:
        The params x, a tree like `params`.

    Raises:
        ValueError: If the state holds no `ScheduleFreeState`, or several.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.schedule_free_sgd(learning_rate=1.0, b1=0.5)
        >>> params = jnp.array([4.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):  # z: 4 -> 2 -> 0, x: 4 -> 2 -> 1
        ...     u, state = tx.update(jnp.array([2.0]), state, params)
        ...     params = gradtx.apply_updates(params, u)
        >>> params, gradtx.schedule_free_eval_params(state, params)
        (Array([0.5], dtype=float32), Array([1.], dtype=float32))
    """
    fn = "schedule_free_eval_params"
    sf_state = _one_state(fn, state, (ScheduleFreeState,))
    b1 = sf_state.b1
    leaves, treedef = jax.tree.flatten(params)
    zs = treedef.flatten_up_to(sf_state.z)

    def leaf(y, z):
        if z is None:
            return y
        cd = compute_dtype(y, z, b1)
        x = (y.astype(cd) - (1 - b1.astype(cd)) * z.astype(cd)) / b1.astype(cd)
        return x.astype(jnp.result_type(y))

    return treedef.unflatten([leaf(y, z) for y, z in zip(leaves, zs, strict=True)])
