"""L-BFGS: a limited-memory quasi-Newton direction and a strong-Wolfe line search.

`scale_by_lbfgs` turns the gradient into the L-BFGS direction, the product
of an inverse-Hessian estimate (built from the last `memory_size` pairs of
parameter and gradient differences) with the gradient. `scale_by_zoom_linesearch`
then picks a step length along the (negated) direction that satisfies the
strong Wolfe conditions, calling the objective through the `value_fn=`
keyword extra. `lbfgs` (in gradtx/aliases.py) chains the two, as optax.lbfgs does.

Both links follow optax's definitions and defaults, so that an optax user
gets the same numbers; the line search is written from Nocedal and Wright's
Algorithms 3.5 and 3.6 with optax's stopping rules. The keyword-only
`convention="torch"` gives torch.optim.LBFGS's first step and its rule for
skipping curvature pairs. Every equation runs in
at least float32 (`compute_dtype`); stored arrays keep the dtype they were
created with (the params' dtype), and updates the incoming updates' dtype.
"""

from __future__ import annotations

import functools
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
from gradtx.base import (
    ArrayLike,
    GradientTransformation,
    Params,
    Updates,
    abs_sq,
    compute_dtype,
    described,
    explicit_split,
    init_like,
    safe_increment,
    scalar_dtype,
)


def _vdot(a: Any, b: Any, dtype: Any) -> jax.Array:
    """Real inner product of two trees, summed over leaves in `dtype`.

    Each leaf's product is one contraction over all of its axes
    (`tensordot`), which keeps XLA:CPU from writing the product of two
    large leaves to memory in L-BFGS's loops. A leaf split over an explicit
    mesh axis is multiplied and then summed instead: a contraction over a
    sharded axis has no output sharding of its own there, while the sum is
    a partial sum per device and an all-reduce.
    """
    total = jnp.zeros([], dtype)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = x.astype(dtype), y.astype(dtype)
        if explicit_split(x) is not None or explicit_split(y) is not None:
            total = total + jnp.sum(jnp.real(jnp.conj(x) * y))
        else:
            total = total + jnp.real(jnp.tensordot(jnp.conj(x), y, axes=x.ndim))
    return total


def _sq_norm(a: Any, dtype: Any) -> jax.Array:
    """Squared Euclidean norm of a tree, as a sum of squares in `dtype`."""
    total = jnp.zeros([], dtype)
    for x in jax.tree.leaves(a):
        total = total + jnp.sum(abs_sq(x.astype(dtype)))
    return total


# ----------------------------------------------------------------------------
# the L-BFGS direction

# torch.optim.LBFGS stores a curvature pair only when s'y exceeds this.
_TORCH_CURVATURE_FLOOR = 1e-10


class ScaleByLbfgsState(NamedTuple):
    """State of `scale_by_lbfgs`.

    The memory holds `memory_size` pairs in a ring buffer: the j-th pair
    kept goes to slot `j mod m`, and `slot` is where the next one goes: the
    oldest pair's slot once the memory is full (empty slots have weight 0).

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_lbfgs(memory_size=3)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> state.diff_params["w"].shape, state.weights.shape
        ((3, 2), (3,))
    """

    count: jax.Array  # int32 scalar: updates applied so far
    slot: jax.Array  # int32 scalar: where the next pair goes
    params: Params  # the params seen by the previous update
    updates: Updates  # the incoming updates (gradients) of the previous update
    diff_params: Params  # s pairs: each leaf stacked to (memory_size, *shape)
    diff_updates: Updates  # y pairs, stacked like diff_params
    weights: jax.Array  # rho = 1 / (s'y) per slot, 0 for an empty slot


@described
def scale_by_lbfgs(
    memory_size: int = 10,
    scale_init_precond: bool = True,
    *,
    convention: str = "optax",
) -> GradientTransformation:
    """Multiply updates by the L-BFGS estimate of the inverse Hessian.

    Per step k (over the whole tree, with g_k the incoming updates and w_k
    the params), the newest pair and the two-loop recursion over the last
    m = memory_size pairs, oldest pair i = k-m ... newest k-1::

        s_{k-1} = w_k - w_{k-1}      y_{k-1} = g_k - g_{k-1}      (k >= 1)
        rho_i   = 1 / (s_i'y_i)   (0 when s_i'y_i == 0: the pair drops out)
        gamma_k = s_{k-1}'y_{k-1} / y_{k-1}'y_{k-1}   (scale_init_precond)
        gamma_0 = min(1, 1 / |g_0|_2)                 (scale_init_precond)
        gamma_k = 1                                   (otherwise)
        q = g_k
        for i newest to oldest:  a_i = rho_i s_i'q ;   q = q - a_i y_i
        r = gamma_k q
        for i oldest to newest:  b_i = rho_i y_i'r ;   r = r + (a_i - b_i) s_i
        u_k = r          (= H_k g_k, a descent direction once negated)

    At the first step the memory is empty and u_0 = gamma_0 g_0. A pair
    with s'y < 0 (negative curvature, which a strong-Wolfe step never
    produces) is kept with its negative weight, as optax does; only a pair
    with s'y == 0 is dropped (weight 0). The link must see the params of
    every step, so chain it first and pass `params` to `update`.

    `convention="torch"` gives torch.optim.LBFGS's direction instead: a
    new pair is stored only when s'y > 1e-10 (otherwise the memory and
    gamma stay as they were), gamma_k is s'y / y'y of the newest stored
    pair (1 while none is stored), and gamma_0 = min(1, 1 / |g_0|_1), the
    factor torch puts on its first step.

    Args:
        memory_size: Number of (s, y) pairs kept, an int >= 1 (torch's
            `history_size`, whose default is 100).
        scale_init_precond: Start the recursion from gamma_k times the
            identity (the Barzilai-Borwein scaling) instead of the identity.
        convention: "optax" (the default) or "torch", as above.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByLbfgsState`.

    Raises:
        ValueError: If `memory_size` is below 1, `convention` is unknown, or
            `update` gets no params.
        TypeError: If `memory_size` is not a whole number or
            `scale_init_precond` not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_lbfgs()
        >>> params = jnp.array([1.0, 1.0])
        >>> u, state = tx.update(jnp.array([3.0, 4.0]), tx.init(params), params)
        >>> u  # first step: g / |g|
        Array([0.6, 0.8], dtype=float32)

    References:
        Nocedal and Wright, "Numerical Optimization", 2nd ed., Springer 2006,
        Algorithms 7.4 and 7.5. Liu and Nocedal, "On the limited memory BFGS
        method for large scale optimization", Math. Programming 45, 1989.
    """
    fn = "scale_by_lbfgs"
    memory_size = check_count(fn, "memory_size", memory_size, 1)
    check_flag(fn, "scale_init_precond", scale_init_precond)
    if convention not in ("optax", "torch"):
        raise ValueError(
            f"{fn}: convention must be 'optax' or 'torch', got {convention!r}"
        )
    torch_form = convention == "torch"
    m = memory_size

    def init(params: Params) -> ScaleByLbfgsState:
        def stacked(p):
            # a zero leaf placed like the param (init_like), broadcast, so
            # that the history of a sharded leaf is sharded like it (the new
            # leading axis whole)
            zero = init_like(jnp.asarray(p))
            return jnp.broadcast_to(zero[None], (m, *zero.shape))

        return ScaleByLbfgsState(
            count=jnp.zeros([], jnp.int32),
            slot=jnp.zeros([], jnp.int32),
            params=init_like(params),
            updates=init_like(params),
            diff_params=jax.tree.map(stacked, params),
            diff_updates=jax.tree.map(stacked, params),
            weights=jnp.zeros([m], scalar_dtype(params)),
        )

    def update(
        updates: Updates,
        state: ScaleByLbfgsState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByLbfgsState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "state.params", state.params)
        check_same_tree(fn, "params", params, "state.params", state.params)
        dtype = state.weights.dtype
        started = state.count > 0

        def diff(new, old):
            c = compute_dtype(new, old)
            d = new.astype(c) - old.astype(c)
            return jnp.where(started, d, jnp.zeros_like(d))

        s = jax.tree.map(diff, params, state.params)
        y = jax.tree.map(diff, updates, state.updates)
        sy = _vdot(s, y, dtype)
        yy = _sq_norm(y, dtype)
        # optax keeps every pair (s'y == 0 gets weight 0); torch only s'y > 1e-10
        keep = started & (sy > _TORCH_CURVATURE_FLOOR) if torch_form else started
        rho = jnp.where(sy != 0, 1 / jnp.where(sy == 0, 1, sy), 0)
        slot = state.slot  # where the new pair goes

        def store(memory, new):
            new = jnp.where(keep, new.astype(memory.dtype), memory[slot])
            return memory.at[slot].set(new)

        diff_params = jax.tree.map(store, state.diff_params, s)
        diff_updates = jax.tree.map(store, state.diff_updates, y)
        weights = state.weights.at[slot].set(
            jnp.where(keep, rho.astype(dtype), state.weights[slot])
        )
        oldest = (slot + keep.astype(jnp.int32)) % m  # the next slot: the oldest

        g = jax.tree.map(lambda x: x.astype(compute_dtype(x)), updates)
        if not scale_init_precond:
            gamma = jnp.ones([], dtype)
        elif torch_form:
            newest = (oldest - 1) % m
            stored = jnp.any(weights != 0)  # torch's pairs all have rho > 0
            s_n = jax.tree.map(lambda x: x[newest], diff_params)
            y_n = jax.tree.map(lambda x: x[newest], diff_updates)
            sy_n, yy_n = _vdot(s_n, y_n, dtype), _sq_norm(y_n, dtype)
            g_l1 = sum(
                (jnp.sum(jnp.abs(x.astype(dtype))) for x in jax.tree.leaves(g)),
                jnp.zeros([], dtype),
            )
            gamma = jnp.where(
                started,
                jnp.where(stored, sy_n / jnp.where(yy_n > 0, yy_n, 1), 1),
                jnp.minimum(1, 1 / g_l1),
            )
        else:
            g_norm = jnp.sqrt(_sq_norm(g, dtype))
            gamma = jnp.where(
                started,
                jnp.where(yy > 0, sy / jnp.where(yy > 0, yy, 1), 1),
                jnp.minimum(1, 1 / g_norm),
            )

        order = (oldest + jnp.arange(m)) % m  # oldest to newest

        def pair(i):
            pick = functools.partial(jax.lax.dynamic_index_in_dim, index=i)
            s_i = jax.tree.map(lambda x: pick(x, keepdims=False), diff_params)
            y_i = jax.tree.map(lambda x: pick(x, keepdims=False), diff_updates)
            return s_i, y_i, weights[i]

        def newest_to_oldest(q, i):
            s_i, y_i, rho_i = pair(i)
            a_i = rho_i * _vdot(s_i, q, dtype)
            q = jax.tree.map(lambda v, w: v - (a_i * w).astype(v.dtype), q, y_i)
            return q, a_i

        q, alphas = jax.lax.scan(newest_to_oldest, g, order, reverse=True)
        r = jax.tree.map(lambda v: (gamma * v).astype(v.dtype), q)

        def oldest_to_newest(r, i_and_a):
            i, a_i = i_and_a
            s_i, y_i, rho_i = pair(i)
            b_i = rho_i * _vdot(y_i, r, dtype)
            r = jax.tree.map(lambda v, w: v + ((a_i - b_i) * w).astype(v.dtype), r, s_i)
            return r, None

        r, _ = jax.lax.scan(oldest_to_newest, r, (order, alphas))
        new_updates = jax.tree.map(lambda v, u: v.astype(u.dtype), r, updates)
        new_state = ScaleByLbfgsState(
            count=safe_increment(state.count),
            slot=oldest,
            params=jax.tree.map(lambda p, o: p.astype(o.dtype), params, state.params),
            updates=jax.tree.map(
                lambda u, o: u.astype(o.dtype), updates, state.updates
            ),
            diff_params=diff_params,
            diff_updates=diff_updates,
            weights=weights,
        )
        return new_updates, new_state

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# the zoom line search


class ScaleByZoomLinesearchState(NamedTuple):
    """State of `scale_by_zoom_linesearch`: what the latest search found.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_zoom_linesearch()
        >>> state = tx.init(jnp.zeros(2))
        >>> state.learning_rate, state.num_linesearch_steps
        (Array(1., dtype=float32), Array(0, dtype=int32))
    """

    learning_rate: jax.Array  # the accepted step length eta
    value: jax.Array  # the objective at the accepted point (inf before any step)
    grad: Updates  # the gradient at the accepted point
    num_linesearch_steps: jax.Array  # int32: objective evaluations in the search
    decrease_error: jax.Array  # >0: the last trial missed sufficient decrease
    curvature_error: jax.Array  # >0: the last trial missed the curvature test


class _Search(NamedTuple):
    """The carry of the search loop: all scalars but the two gradients."""

    k: jax.Array  # trials made
    a: jax.Array  # latest trial step, its value, gradient and slope
    f: jax.Array
    g: Any
    d: jax.Array
    dec: jax.Array  # its decrease and curvature errors
    curv: jax.Array
    found: jax.Array  # a bracket [lo, hi] is known: zoom phase
    done: jax.Array
    failed: jax.Array
    lo: jax.Array  # the bracket end with the lower value
    f_lo: jax.Array
    d_lo: jax.Array
    hi: jax.Array
    f_hi: jax.Array
    ref: jax.Array  # a third point for the cubic fit
    f_ref: jax.Array
    safe_a: jax.Array  # best step with sufficient decrease so far (0: none)
    safe_f: jax.Array
    safe_g: Any


def _cubic_minimizer(a, fa, da, b, fb, c, fc):
    """Stationary point of the cubic through (a, fa), (b, fb), (c, fc), slope da at a.

    NaN when the points do not define one (two of them coincide, or the
    cubic has no real stationary point); the caller then ignores it.
    """
    db, dc = b - a, c - a
    rb = fb - fa - da * db
    rc = fc - fa - da * dc
    denom = (db * dc) ** 2 * (db - dc)
    p = (dc**2 * rb - db**2 * rc) / denom
    q = (db**3 * rc - dc**3 * rb) / denom
    return a + (-q + jnp.sqrt(q * q - 3 * p * da)) / (3 * p)


def _quadratic_minimizer(a, fa, da, b, fb):
    """Stationary point of the parabola through (a, fa), (b, fb), slope da at a."""
    db = b - a
    curvature = (fb - fa - da * db) / db**2
    return a - da / (2 * curvature)


def _value_fn_kwargs(value_fn: Callable[..., Any], extra: dict[str, Any]) -> dict:
    """The keyword extras that `value_fn` takes by name (all if it has **kwargs)."""
    try:
        parameters = inspect.signature(value_fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra)
    return {k: v for k, v in extra.items() if k in parameters}


@described
def scale_by_zoom_linesearch(
    max_linesearch_steps: int = 20,
    max_learning_rate: ArrayLike | None = None,
    tol: ArrayLike = 0.0,
    increase_factor: ArrayLike = 2.0,
    slope_rtol: ArrayLike = 1e-4,
    curv_rtol: ArrayLike = 0.9,
    approx_dec_rtol: ArrayLike | None = 1e-6,
    stepsize_precision: ArrayLike = 1e-5,
    initial_guess_strategy: str = "keep",
) -> GradientTransformation:
    """Scale updates by a step length satisfying the strong Wolfe conditions.

    Per step, with w the params, u the incoming updates (a descent
    direction), f = value_fn, phi(eta) = f(w + eta u) and
    phi'(eta) = grad f(w + eta u)'u, find eta with::

        phi(eta) <= phi(0) + slope_rtol * eta * phi'(0) + tol       (decrease)
        |phi'(eta)| <= curv_rtol * |phi'(0)| + tol                  (curvature)
        u_out = eta * u

    The decrease test may be met instead by Hager and Zhang's approximate
    form phi'(eta) <= (2 slope_rtol - 1) phi'(0) + tol, accepted only where
    phi(eta) <= phi(0) + approx_dec_rtol |phi(0)| (None turns it off).

    The search (Nocedal and Wright, Algorithms 3.5 and 3.6, one objective
    evaluation per iteration, inside `jax.lax.while_loop`): the first trial
    is 1 (`initial_guess_strategy="one"`) or the previous step length
    ("keep"); while no bracket is known the trial grows by `increase_factor`
    (capped at `max_learning_rate`); once a bracket [lo, hi] is known it is
    shrunk with the minimizer of a cubic fit, else of a quadratic fit, else
    the midpoint. It stops when both tests hold, or after
    `max_linesearch_steps` evaluations, or when the bracket is shorter than
    `stepsize_precision` and a step with sufficient decrease is known. When
    it stops without both tests it returns the best step with sufficient
    decrease it saw, or else the last trial (or no step at all if the
    objective was NaN/Inf there). The stopping rules and defaults are
    optax.scale_by_zoom_linesearch's.

    The update takes keyword extras, which a `chain` forwards: `value_fn`
    (required: the objective, called as `value_fn(params, **kw)` where `kw`
    are the extras whose names `value_fn` takes; other extras are ignored),
    `value` and `grad` (the objective and its gradient at `params`;
    computed here when omitted). The objective is evaluated at points cast
    to the params' dtype; its value and the slopes are taken in at least
    float32, so bfloat16 params work (the Wolfe tests are then only as
    sharp as bfloat16 values allow). The state keeps the accepted value and
    gradient, which the next step may reuse as `value=` and `grad=` when the
    objective is deterministic.

    Args:
        max_linesearch_steps: Most objective evaluations per step, an int >= 1.
        max_learning_rate: Largest step length, in (0, inf), or None.
        tol: Slack on both tests, in [0, inf).
        increase_factor: Growth of the trial while bracketing, in (1, inf).
        slope_rtol: c1 of the decrease test, in (0, 1).
        curv_rtol: c2 of the curvature test, in (0, inf] (inf turns the
            test off); the theory wants slope_rtol < curv_rtol < 1.
        approx_dec_rtol: Relative tolerance of the approximate decrease test,
            in [0, inf), or None to use only the Armijo test.
        stepsize_precision: Bracket length below which a step with sufficient
            decrease is accepted, in [0, inf).
        initial_guess_strategy: "keep" (the previous step length, for
            first-order methods) or "one" (for quasi-Newton directions).

    Returns:
        A `GradientTransformation` whose state is a
        `ScaleByZoomLinesearchState`.

    Raises:
        ValueError: If a hyperparameter is outside its range, or `update`
            gets no params or no `value_fn`.
        TypeError: If `max_linesearch_steps` is not a whole number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> def f(w):
        ...     return jnp.sum((w - 1.0) ** 2)
        >>> tx = gradtx.chain(gradtx.scale(-1.0), gradtx.scale_by_zoom_linesearch())
        >>> w = jnp.zeros(2)
        >>> u, state = tx.update(jax.grad(f)(w), tx.init(w), w, value_fn=f)
        >>> u, state[1].learning_rate
        (Array([1., 1.], dtype=float32), Array(0.5, dtype=float32))

    References:
        Nocedal and Wright, "Numerical Optimization", 2nd ed., Springer 2006,
        Algorithms 3.5 and 3.6. Hager and Zhang, "A new conjugate gradient
        method with guaranteed descent and an efficient line search", SIAM
        J. Optim. 16, 2005.
    """
    fn = "scale_by_zoom_linesearch"
    max_steps = check_count(fn, "max_linesearch_steps", max_linesearch_steps, 1)
    check_in_range(fn, "max_learning_rate", max_learning_rate, 0.0, low_open=True)
    check_in_range(fn, "tol", tol, 0.0)
    check_in_range(fn, "increase_factor", increase_factor, 1.0, low_open=True)
    check_in_range(
        fn, "slope_rtol", slope_rtol, 0.0, 1.0, low_open=True, high_open=True
    )
    check_in_range(fn, "curv_rtol", curv_rtol, 0.0, low_open=True, allow_inf=True)
    check_in_range(fn, "approx_dec_rtol", approx_dec_rtol, 0.0)
    check_in_range(fn, "stepsize_precision", stepsize_precision, 0.0)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(
            f"{fn}: initial_guess_strategy must be 'one' or 'keep', got "
            f"{initial_guess_strategy!r}"
        )

    def init(params: Params) -> ScaleByZoomLinesearchState:
        dtype = scalar_dtype(params)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones([], dtype),
            value=jnp.full([], jnp.inf, dtype),
            grad=init_like(params),
            num_linesearch_steps=jnp.zeros([], jnp.int32),
            decrease_error=jnp.full([], jnp.inf, dtype),
            curvature_error=jnp.full([], jnp.inf, dtype),
        )

    def update(
        updates: Updates,
        state: ScaleByZoomLinesearchState,
        params: Params | None = None,
        *,
        value: ArrayLike | None = None,
        grad: Updates | None = None,
        value_fn: Callable[..., Any] | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByZoomLinesearchState]:
        require_params(fn, params)
        if value_fn is None:
            raise ValueError(
                f"{fn} evaluates the objective, but update() got no value_fn=; "
                "pass value_fn=the loss (and value=, grad= at params if known)"
            )
        check_same_tree(fn, "updates", updates, "state.grad", state.grad)
        dtype = state.learning_rate.dtype
        kwargs = _value_fn_kwargs(value_fn, extra)
        value_and_grad = jax.value_and_grad(value_fn)
        if value is None or grad is None:
            value, grad = value_and_grad(params, **kwargs)
        check_same_tree(fn, "grad", grad, "params", params)
        f0 = jnp.asarray(value).astype(dtype)
        d0 = _vdot(grad, updates, dtype)
        zero = jnp.zeros([], dtype)

        def on_line(a):
            def point(p, u):
                c = compute_dtype(p, u)
                return (p.astype(c) + a.astype(c) * u.astype(c)).astype(p.dtype)

            f, g = value_and_grad(jax.tree.map(point, params, updates), **kwargs)
            return jnp.asarray(f).astype(dtype), g, _vdot(g, updates, dtype)

        def errors(a, f, d):
            dec = f - f0 - slope_rtol * a * d0
            if approx_dec_rtol is not None:
                approx = jnp.maximum(
                    d - (2 * slope_rtol - 1) * d0,
                    f - f0 - approx_dec_rtol * jnp.abs(f0),
                )
                dec = jnp.minimum(dec, approx)
            curv = jnp.abs(d) - curv_rtol * jnp.abs(d0)

            def clean(e):
                e = jnp.maximum(e, 0).astype(dtype)
                return jnp.where(jnp.isnan(e), jnp.inf, e)

            return clean(dec), clean(curv)

        guess = (
            jnp.ones([], dtype)
            if initial_guess_strategy == "one"
            else (state.learning_rate)
        )

        def step(c: _Search) -> _Search:
            # where to try: grow the step (Alg. 3.5) or shrink the bracket (3.6)
            grown = jnp.where(c.k == 0, guess, increase_factor * c.a).astype(dtype)
            at_cap = jnp.asarray(False)
            if max_learning_rate is not None:
                at_cap = grown >= max_learning_rate
                grown = jnp.minimum(grown, max_learning_rate).astype(dtype)
            width = jnp.abs(c.hi - c.lo)
            left, right = jnp.minimum(c.lo, c.hi), jnp.maximum(c.lo, c.hi)
            cubic = _cubic_minimizer(c.lo, c.f_lo, c.d_lo, c.hi, c.f_hi, c.ref, c.f_ref)
            quad = _quadratic_minimizer(c.lo, c.f_lo, c.d_lo, c.hi, c.f_hi)
            cubic_ok = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
            quad_ok = (quad > left + 0.1 * width) & (quad < right - 0.1 * width)
            inner = jnp.where(
                cubic_ok, cubic, jnp.where(quad_ok, quad, (c.lo + c.hi) / 2)
            )
            a = jnp.where(c.found, inner, grown).astype(dtype)

            f, g, d = on_line(a)
            dec, curv = errors(a, f, d)
            wolfe = jnp.maximum(dec, curv) <= tol
            sufficient = dec <= tol

            # bracketing phase: the bracket is (previous, new) or (new, previous)
            b_hi = (dec > 0) | ((f >= c.f) & (c.k > 0))
            b_lo = (d >= 0) & ~b_hi
            b_found = b_hi | b_lo | wolfe
            b = dict(
                lo=jnp.where(b_lo, a, c.a),
                f_lo=jnp.where(b_lo, f, c.f),
                d_lo=jnp.where(b_lo, d, c.d),
                hi=jnp.where(b_lo, c.a, a),
                f_hi=jnp.where(b_lo, c.f, f),
            )
            b.update(ref=b["lo"], f_ref=b["f_lo"])
            b_done = wolfe | (at_cap & ~b_found)
            b_safe = sufficient

            # zoom phase: the new point replaces hi, or lo (hi moving to old lo)
            z_hi = (dec > 0) | (f >= c.f_lo)
            z_flip = (d * (c.hi - c.lo) >= 0) & ~z_hi
            z = dict(
                lo=jnp.where(z_hi, c.lo, a),
                f_lo=jnp.where(z_hi, c.f_lo, f),
                d_lo=jnp.where(z_hi, c.d_lo, d),
                hi=jnp.where(z_hi, a, jnp.where(z_flip, c.lo, c.hi)),
                f_hi=jnp.where(z_hi, f, jnp.where(z_flip, c.f_lo, c.f_hi)),
                ref=jnp.where(z_hi | z_flip, c.hi, c.lo),
                f_ref=jnp.where(z_hi | z_flip, c.f_hi, c.f_lo),
            )
            z_safe = sufficient & (f < c.safe_f)

            bracket = {k: jnp.where(c.found, z[k], b[k]) for k in z}
            keep_new = jnp.where(c.found, z_safe, b_safe)
            safe_a = jnp.where(keep_new, a, c.safe_a)
            safe_f = jnp.where(keep_new, f, c.safe_f)
            safe_g = jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), g, c.safe_g)
            done = jnp.where(c.found, wolfe, b_done)
            too_narrow = c.found & (width <= stepsize_precision) & (safe_a > 0)
            failed = ((c.k + 1 >= max_steps) | too_narrow) & ~done

            # giving up: fall back on the best sufficient-decrease step, if any
            fall_back = failed & ((safe_a > 0) | jnp.isinf(dec))
            return _Search(
                k=c.k + 1,
                a=jnp.where(fall_back, safe_a, a),
                f=jnp.where(fall_back, safe_f, f),
                g=jax.tree.map(lambda s, n: jnp.where(fall_back, s, n), safe_g, g),
                d=d,
                dec=dec,
                curv=curv,
                found=c.found | b_found,
                done=done,
                failed=failed,
                safe_a=safe_a,
                safe_f=safe_f,
                safe_g=safe_g,
                **{k: v.astype(dtype) for k, v in bracket.items()},
            )

        inf = jnp.full([], jnp.inf, dtype)
        start = _Search(
            k=jnp.zeros([], jnp.int32),
            a=zero,
            f=f0,
            g=grad,
            d=d0,
            dec=inf,
            curv=inf,
            found=jnp.asarray(False),
            done=jnp.asarray(False),
            failed=jnp.asarray(False),
            lo=zero,
            f_lo=f0,
            d_lo=d0,
            hi=zero,
            f_hi=f0,
            ref=zero,
            f_ref=f0,
            safe_a=zero,
            safe_f=f0,
            safe_g=grad,
        )
        end = jax.lax.while_loop(lambda c: ~(c.done | c.failed), step, start)

        def scaled(u):
            return (end.a.astype(compute_dtype(u)) * u).astype(u.dtype)

        new_state = ScaleByZoomLinesearchState(
            learning_rate=end.a,
            value=end.f,
            grad=jax.tree.map(lambda n, o: n.astype(o.dtype), end.g, state.grad),
            num_linesearch_steps=end.k,
            decrease_error=end.dec,
            curvature_error=end.curv,
        )
        return jax.tree.map(scaled, updates), new_state

    return GradientTransformation(init, update)
