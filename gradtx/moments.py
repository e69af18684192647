"""Other estimators of the moments Adam divides by: AdaBelief, Yogi, ADOPT, AdEMAMix.

Each keeps Adam's shape (a first moment over the root of a second) and
changes one estimate: AdaBelief divides by the spread of the gradient around
its own average, Yogi moves its second moment by a bounded additive step,
ADOPT normalises each gradient by the previous second moment before
averaging it, and AdEMAMix adds a slow second average of the gradient to the
fast one.

As everywhere in gradtx, every equation runs in at least float32
(`compute_dtype`) and each result is rounded once to the dtype it is stored
in: updates keep the dtype of the incoming updates, moments the dtype they
were created with (the params' dtype unless `mu_dtype` or `nu_dtype` says
otherwise).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import check_dtype, check_flag, check_in_range, check_same_tree
from gradtx.base import (
    ArrayLike,
    GradientTransformation,
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
from gradtx.scaling import adam_factors

# A function of the int32 step count giving ADOPT's clipping bound. Its name
# avoids the words by which `inject_hyperparams` recognises schedules, so
# that the function is passed to the factory as it is.
ClipValueFn = Callable[[Any], Any]


def fourth_root_of_count(count: Any) -> Any:
    """ADOPT's default clipping bound: the step count to the power 1/4."""
    return jnp.asarray(count, jnp.float32) ** 0.25


# ----------------------------------------------------------------------------
# AdaBelief


class ScaleByBeliefState(NamedTuple):
    """State of `scale_by_belief`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> state = gradtx.scale_by_belief().init({"w": jnp.zeros(2)})
        >>> state.count, state.mu["w"], state.nu["w"]
        (Array(0, dtype=int32), Array([0., 0.], dtype=float32), Array([0., 0.], dtype=float32))
    """  # noqa: E501

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # EMA of the updates, in mu_dtype or the params' dtype
    nu: Updates  # EMA of the squared deviation from mu, plus eps_root each step


@described
def scale_by_belief(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-16,
    eps_root: ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdaBelief: divide by the spread of the gradient around its average.

    Per leaf, with t = 1, 2, ... and both moments starting at 0::

        m_t     = b1 * m_{t-1} + (1 - b1) * g_t
        s_t     = b2 * s_{t-1} + (1 - b2) * (g_t - m_t)**2 + eps_root
        m_hat_t = m_t / (1 - b1**t)
        s_hat_t = s_t / (1 - b2**t)
        u_t     = m_hat_t / (sqrt(s_hat_t) + eps)

    With `nesterov=True` the first moment looks one step ahead, as in
    `scale_by_adam`::

        m_hat_t = b1 * m_t / (1 - b1**(t+1)) + (1 - b1) * g_t / (1 - b1**t)

    Where Adam divides by the root mean square of the gradient, AdaBelief
    divides by its deviation from the prediction m_t: a gradient that agrees
    with its recent average earns a large step. `eps_root` is added to the
    stored s_t at every step, as in the paper and optax; the defaults are
    optax's (the paper's are eps = 1e-8 and eps_root = 0).

    Args:
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the squared deviation, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added to s_t at each step, in [0, inf); positive keeps the
            root differentiable where the deviation is zero.
        nesterov: Use the Nesterov form of the first moment.
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.
        nu_dtype: Dtype of the second moment; None keeps each param's dtype.
            For float16 params pass float32 (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` whose state is a `ScaleByBeliefState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or a
            dtype is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_belief()
        >>> u, state = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> u  # first step: g / sqrt((1 - b1)**2 * g**2) = sign(g) / 0.9
        Array([ 1.1111112, -1.1111112], dtype=float32)

    References:
        Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief
        in Observed Gradients", NeurIPS 2020.
    """
    fn = "scale_by_belief"
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "eps_root", eps_root, 0.0)
    check_flag(fn, "nesterov", nesterov)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    nu_dtype = check_dtype(fn, "nu_dtype", nu_dtype)

    def init(params: Params) -> ScaleByBeliefState:
        return ScaleByBeliefState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype),
            nu=init_like(params, nu_dtype),
        )

    def leaf(g, m, s, factors):
        g_c = g.astype(compute_dtype(g, m, s))
        m_factor, g_factor, s_factor = factors(g_c.dtype)
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * g_c
        s_new = b2 * s.astype(g_c.dtype) + (1 - b2) * abs_sq(g_c - m_new) + eps_root
        m_hat = m_new * m_factor
        if nesterov:
            m_hat = m_hat + g_c * g_factor
        u = m_hat / (jnp.sqrt(s_new * s_factor) + eps)
        return u.astype(g.dtype), m_new.astype(m.dtype), s_new.astype(s.dtype)

    def update(
        updates: Updates,
        state: ScaleByBeliefState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByBeliefState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))
        factors = functools.cache(
            lambda dtype: adam_factors(b1, b2, nesterov, t, dtype)
        )
        updates, mu, nu = map_leaves(
            functools.partial(leaf, factors=factors), 3, updates, state.mu, state.nu
        )
        return updates, ScaleByBeliefState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Yogi


class ScaleByYogiState(NamedTuple):
    """State of `scale_by_yogi`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_yogi(initial_accumulator_value=0.5)
        >>> state = tx.init(jnp.zeros(2))
        >>> state.mu, state.nu  # both start at initial_accumulator_value
        (Array([0.5, 0.5], dtype=float32), Array([0.5, 0.5], dtype=float32))
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # EMA of the updates, in mu_dtype or the params' dtype
    nu: Updates  # second moment, moved by at most (1 - b2) * g**2 per step


@described
def scale_by_yogi(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-3,
    eps_root: ArrayLike = 0.0,
    initial_accumulator_value: ArrayLike = 1e-6,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Yogi: a second moment that moves by an additive, sign-controlled step.

    Per leaf, with t = 1, 2, ... and m_0 = v_0 = initial_accumulator_value::

        m_t     = b1 * m_{t-1} + (1 - b1) * g_t
        v_t     = v_{t-1} - (1 - b2) * sign(v_{t-1} - g_t**2) * g_t**2
        m_hat_t = m_t / (1 - b1**t)
        v_hat_t = v_t / (1 - b2**t)
        u_t     = m_hat_t / (sqrt(v_hat_t + eps_root) + eps)

    Adam's v moves towards g**2 by a fraction of the gap; Yogi's moves by
    (1 - b2) * g**2 whatever the gap, so a burst of large gradients cannot
    shrink the effective step size abruptly. Both moments start at
    `initial_accumulator_value`, as in optax.

    Args:
        b1: EMA rate of the first moment, in [0, 1).
        b2: Rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added to v_hat under the root, in [0, inf).
        initial_accumulator_value: Starting value of both moments, in
            [0, inf).
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.
        nu_dtype: Dtype of the second moment; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByYogiState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or a
            dtype is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_yogi(initial_accumulator_value=0.0, eps=0.0)
        >>> u, state = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> u  # from zero moments the first step is the sign of g
        Array([ 1., -1.], dtype=float32)

    References:
        Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS
        2018.
    """
    fn = "scale_by_yogi"
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "eps_root", eps_root, 0.0)
    check_in_range(fn, "initial_accumulator_value", initial_accumulator_value, 0.0)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    nu_dtype = check_dtype(fn, "nu_dtype", nu_dtype)

    def init(params: Params) -> ScaleByYogiState:
        return ScaleByYogiState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype, fill=initial_accumulator_value),
            nu=init_like(params, nu_dtype, fill=initial_accumulator_value),
        )

    def leaf(g, m, v, factors):
        g_c = g.astype(compute_dtype(g, m, v))
        m_factor, _, v_factor = factors(g_c.dtype)
        g_sq = abs_sq(g_c)
        v_c = v.astype(g_c.dtype)
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * g_c
        v_new = v_c - (1 - b2) * jnp.sign(v_c - g_sq) * g_sq
        u = m_new * m_factor / (jnp.sqrt(v_new * v_factor + eps_root) + eps)
        return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

    def update(
        updates: Updates,
        state: ScaleByYogiState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByYogiState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))
        factors = functools.cache(lambda dtype: adam_factors(b1, b2, False, t, dtype))
        updates, mu, nu = map_leaves(
            functools.partial(leaf, factors=factors), 3, updates, state.mu, state.nu
        )
        return updates, ScaleByYogiState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# ADOPT


class ScaleByAdoptState(NamedTuple):
    """State of `scale_by_adopt`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adopt()
        >>> _, state = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> state.count, state.mu, state.nu  # the first step only sets nu
        (Array(1, dtype=int32), Array([0.], dtype=float32), Array([4.], dtype=float32))
    """  # noqa: E501

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # EMA of the normalised updates, in mu_dtype or params' dtype
    nu: Updates  # EMA of the squared updates (g_0**2 after the first step)


@described
def scale_by_adopt(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.9999,
    eps: ArrayLike = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: ClipValueFn = fourth_root_of_count,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """ADOPT: normalise each gradient by the second moment of the past ones.

    Per leaf, with k = 0, 1, ... the number of updates already applied, the
    first update (k = 0) only sets v_0 = g_0**2 and returns zero (m_0 = 0).
    Then, for k >= 1::

        d_k = clip(g_k / max(sqrt(v_{k-1}), eps), -c_k, c_k)
        m_k = b1 * m_{k-1} + (1 - b1) * d_k
        v_k = b2 * v_{k-1} + (1 - b2) * g_k**2
        u_k = m_k                                   (default)
        u_k = b1 * m_k + (1 - b1) * d_k             (nesterov=True)

    where c_k = clip_value_fn(k) (k**0.25 by default) with `use_clipping`,
    and no clipping without it. Dividing by v_{k-1}, which does not contain
    g_k, is what lets ADOPT converge for any b2; nothing is bias-corrected.

    Args:
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Floor of the root of the second moment, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.
        nesterov: Use the Nesterov form of the output.
        use_clipping: Clip the normalised gradient to [-c_k, c_k].
        clip_value_fn: The bound c_k as a function of the int32 step count k.
            It is a fixed function, never a schedule of a hyperparameter:
            `inject_hyperparams` passes it through unchanged.
        nu_dtype: Dtype of the second moment; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdoptState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or a
            dtype is not a floating-point dtype.
        TypeError: If `clip_value_fn` is not callable or a flag not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adopt()
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([2.0, -4.0]), state)
        >>> u  # the first step only sets nu
        Array([0., 0.], dtype=float32)
        >>> u, state = tx.update(jnp.array([1.0, -8.0]), state)
        >>> u  # (1 - b1) * clip(g / sqrt(nu), -1, 1)
        Array([ 0.05, -0.1 ], dtype=float32)

    References:
        Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2
        with the Optimal Rate", NeurIPS 2024.
    """
    fn = "scale_by_adopt"
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    check_flag(fn, "nesterov", nesterov)
    check_flag(fn, "use_clipping", use_clipping)
    if not callable(clip_value_fn):
        raise TypeError(
            f"{fn}: clip_value_fn must be a function of the step count, got "
            f"{type(clip_value_fn).__name__} {clip_value_fn!r}"
        )
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    nu_dtype = check_dtype(fn, "nu_dtype", nu_dtype)

    def init(params: Params) -> ScaleByAdoptState:
        return ScaleByAdoptState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype),
            nu=init_like(params, nu_dtype),
        )

    def leaf(g, m, v, rates, bound):
        # The first step only sets v = g**2 and leaves m, through per-step
        # scalar rates (b1_t = 1, b2_t = 0, and a unit floor that keeps d
        # finite where eps is 0); later steps use b1, b2 and eps. Scalars,
        # not a per-element choice, keep the step one cheap loop.
        b1_t, c1_t, b2_t, c2_t, floor = rates
        dtype = compute_dtype(g, m, v)
        g_c, m_c, v_c = g.astype(dtype), m.astype(dtype), v.astype(dtype)
        d = g_c / jnp.maximum(jnp.sqrt(v_c), floor.astype(dtype))
        if use_clipping:
            c = bound.astype(dtype)
            d = jnp.clip(d, -c, c)
        m_new = b1_t * m_c + c1_t * d
        v_new = b2_t * v_c + c2_t * abs_sq(g_c)
        u = b1_t * m_new + c1_t * d if nesterov else m_new
        return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

    def update(
        updates: Updates,
        state: ScaleByAdoptState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByAdoptState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        first = state.count == 0
        rates = (  # b1, 1 - b1, b2, 1 - b2 and the floor of the step
            jnp.where(first, 1.0, b1),
            jnp.where(first, 0.0, 1 - b1),
            jnp.where(first, 0.0, b2),
            jnp.where(first, 1.0, 1 - b2),
            jnp.where(first, 1.0, eps),
        )
        bound = jnp.asarray(clip_value_fn(state.count)) if use_clipping else None
        updates, mu, nu = map_leaves(
            functools.partial(leaf, rates=rates, bound=bound),
            3,
            updates,
            state.mu,
            state.nu,
        )
        count = safe_increment(state.count)
        return updates, ScaleByAdoptState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# AdEMAMix


class ScaleByAdemamixState(NamedTuple):
    """State of `scale_by_ademamix`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_ademamix(mu_dtype=jnp.bfloat16)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> state.count, state.m1["w"].dtype, state.m2["w"].dtype, state.nu["w"].dtype
        (Array(0, dtype=int32), dtype(bfloat16), dtype(bfloat16), dtype('float32'))
    """

    count: jax.Array  # int32 scalar: updates applied so far
    m1: Updates  # fast EMA of the updates, in mu_dtype or the params' dtype
    m2: Updates  # slow EMA of the updates, in mu_dtype or the params' dtype
    nu: Updates  # EMA of the squared updates, in nu_dtype or the params' dtype


@described
def scale_by_ademamix(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdEMAMix: Adam's fast average of the gradient plus a slow one.

    Per leaf, with t = 1, 2, ... and every moment starting at 0::

        m1_t     = b1 * m1_{t-1} + (1 - b1) * g_t
        m2_t     = b3_t * m2_{t-1} + (1 - b3_t) * g_t
        nu_t     = b2 * nu_{t-1} + (1 - b2) * g_t**2
        m1_hat_t = m1_t / (1 - b1**t)
        nu_hat_t = nu_t / (1 - b2**t)
        u_t      = (m1_hat_t + alpha_t * m2_t) / (sqrt(nu_hat_t + eps_root) + eps)

    where b3_t and alpha_t are `b3` and `alpha`, or their values at t - 1 (the
    number of updates already applied) when they are schedules; the paper
    warms both up over the first steps. The slow average m2 is not
    bias-corrected: it fills slowly on purpose.

    Args:
        b1: EMA rate of the fast first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        b3: EMA rate of the slow first moment, in [0, 1), or a schedule of
            the step count.
        alpha: Weight of the slow average, in [0, inf), or a schedule of the
            step count.
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added to nu_hat under the root, in [0, inf).
        mu_dtype: Dtype of both first moments; None keeps each param's dtype.
        nu_dtype: Dtype of the second moment; None keeps each param's dtype
            (optax stores it in `mu_dtype`).

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdemamixState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or a
            dtype is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_ademamix(alpha=5.0)
        >>> u, state = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> u  # (g + alpha * (1 - b3) * g) / |g|
        Array([ 1.0005, -1.0005], dtype=float32)

    References:
        Pagliardini, Ablin and Grangier, "The AdEMAMix Optimizer: Better,
        Faster, Older", ICLR 2025.
    """
    fn = "scale_by_ademamix"
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b3", b3, 0.0, 1.0, high_open=True)
    check_in_range(fn, "alpha", alpha, 0.0)
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "eps_root", eps_root, 0.0)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    nu_dtype = check_dtype(fn, "nu_dtype", nu_dtype)

    def init(params: Params) -> ScaleByAdemamixState:
        return ScaleByAdemamixState(
            count=jnp.zeros([], jnp.int32),
            m1=init_like(params, mu_dtype),
            m2=init_like(params, mu_dtype),
            nu=init_like(params, nu_dtype),
        )

    def leaf(g, m1, m2, v, factors, b3_t, alpha_t):
        g_c = g.astype(compute_dtype(g, m1, m2, v))
        m1_factor, _, v_factor = factors(g_c.dtype)
        m1_new = b1 * m1.astype(g_c.dtype) + (1 - b1) * g_c
        m2_new = b3_t * m2.astype(g_c.dtype) + (1 - b3_t) * g_c
        v_new = b2 * v.astype(g_c.dtype) + (1 - b2) * abs_sq(g_c)
        numerator = m1_new * m1_factor + alpha_t * m2_new
        u = numerator / (jnp.sqrt(v_new * v_factor + eps_root) + eps)
        return (
            u.astype(g.dtype),
            m1_new.astype(m1.dtype),
            m2_new.astype(m2.dtype),
            v_new.astype(v.dtype),
        )

    def update(
        updates: Updates,
        state: ScaleByAdemamixState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByAdemamixState]:
        del params
        check_same_tree(fn, "updates", updates, "state.m1", state.m1)
        check_same_tree(fn, "updates", updates, "state.m2", state.m2)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))
        factors = functools.cache(lambda dtype: adam_factors(b1, b2, False, t, dtype))
        step_leaf = functools.partial(
            leaf,
            factors=factors,
            b3_t=value_at(b3, state.count),
            alpha_t=value_at(alpha, state.count),
        )
        updates, m1, m2, nu = map_leaves(
            step_leaf, 4, updates, state.m1, state.m2, state.nu
        )
        return updates, ScaleByAdemamixState(count=count, m1=m1, m2=m2, nu=nu)

    return GradientTransformation(init, update)
