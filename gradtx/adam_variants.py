"""Adam's variants that change one of its equations: AMSGrad, Adamax, RAdam, NAdam.

Each link keeps Adam's two moving averages and changes one step: AMSGrad
divides by the largest second moment seen so far, Adamax by an exponentially
weighted infinity norm, RAdam rectifies the adaptive step while the second
moment is still a poor estimate, and NAdam (torch's form) looks ahead with a
momentum coefficient that warms up over time. As everywhere in gradtx, every
equation runs in at least float32 (`compute_dtype`) and each stored result is
rounded once: updates to the incoming updates' dtype, moments to the dtype
they were created with.

Where optax and torch.optim define the same optimizer differently, the
default is optax's and torch's form is one keyword-only argument away:
`max_before_correction` (AMSGrad), `eps_before_correction` (RAdam) and
`momentum_decay` (NAdam). Adamax needs none: both peers put eps inside the
maximum.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import check_dtype, check_flag, check_in_range, check_same_tree
from gradtx.base import (
    ArrayLike,
    GradientTransformation,
    Params,
    Updates,
    abs_sq,
    bias_correction,
    compute_dtype,
    described,
    init_like,
    map_leaves,
    safe_increment,
    scalar_dtype,
)
from gradtx.scaling import adam_factors


def _check_adam_args(fn: str, b1: Any, b2: Any, eps: Any, eps_root: Any) -> None:
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "eps_root", eps_root, 0.0)


# ----------------------------------------------------------------------------
# AMSGrad


class ScaleByAmsgradState(NamedTuple):
    """State of `scale_by_amsgrad`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_amsgrad(b2=0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> _, state = tx.update(jnp.array([2.0]), state)
        >>> _, state = tx.update(jnp.array([0.0]), state)
        >>> state.nu_max  # the first step's v_hat = 4, larger than the second's
        Array([4.], dtype=float32)
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # first moment, in mu_dtype or the params' dtype
    nu: Updates  # second moment, in the params' dtype
    nu_max: Updates  # running maximum of the (corrected) second moment


@described
def scale_by_amsgrad(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_before_correction: bool = False,
) -> GradientTransformation:
    """AMSGrad: Adam divided by the largest second moment seen so far.

    Per leaf, with t = 1, 2, ... and m, v and v_max starting at 0::

        m_t     = b1 * m_{t-1} + (1 - b1) * g_t
        v_t     = b2 * v_{t-1} + (1 - b2) * g_t**2
        c1_t    = 1 - b1**t  if bias_correction_mu else 1
        c2_t    = 1 - b2**t  if bias_correction_nu else 1
        m_hat_t = m_t / c1_t
        v_max_t = max(v_max_{t-1}, v_t / c2_t)
        u_t     = m_hat_t / (sqrt(v_max_t + eps_root) + eps)

    With `max_before_correction=True` (torch.optim.Adam(amsgrad=True)) the
    maximum is taken over the raw second moment and the current step's
    correction divides it afterwards::

        v_max_t = max(v_max_{t-1}, v_t)
        u_t     = m_hat_t / (sqrt(v_max_t / c2_t + eps_root) + eps)

    The default is optax's. The two differ only while the correction is
    still changing: the optax form remembers early, strongly corrected
    values. With `bias_correction_nu=False` there is no correction and the
    flag changes nothing (Reddi et al.'s original algorithm also sets
    `bias_correction_mu=False`).

    Args:
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.
        bias_correction_mu: Divide the first moment by 1 - b1**t.
        bias_correction_nu: Divide the second moment by 1 - b2**t.
        max_before_correction: Take the maximum over the raw second moment
            and correct it afterwards, as torch does (keyword-only).

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAmsgradState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` is not a floating-point dtype.
        TypeError: If a flag is not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_amsgrad(b1=0.0, b2=0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([2.0]), state)
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> round(float(u[0]), 4)  # 1 / sqrt(max(4, (0.25*4 + 0.5*1) / 0.75))
        0.5

    References:
        Reddi, Kale and Kumar, "On the Convergence of Adam and Beyond", ICLR
        2018.
    """
    fn = "scale_by_amsgrad"
    _check_adam_args(fn, b1, b2, eps, eps_root)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    check_flag(fn, "bias_correction_mu", bias_correction_mu)
    check_flag(fn, "bias_correction_nu", bias_correction_nu)
    check_flag(fn, "max_before_correction", max_before_correction)

    def init(params: Params) -> ScaleByAmsgradState:
        return ScaleByAmsgradState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype),
            nu=init_like(params),
            nu_max=init_like(params),
        )

    def leaf(g, m, v, v_max, factors):
        g_c = g.astype(compute_dtype(g, m, v, v_max))
        m_factor, v_factor = factors(g_c.dtype)
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * g_c
        v_new = b2 * v.astype(g_c.dtype) + (1 - b2) * abs_sq(g_c)
        m_hat = m_new * m_factor if bias_correction_mu else m_new
        if not bias_correction_nu:
            v_max_new = jnp.maximum(v_max.astype(g_c.dtype), v_new)
            v_hat = v_max_new
        elif max_before_correction:
            v_max_new = jnp.maximum(v_max.astype(g_c.dtype), v_new)
            v_hat = v_max_new * v_factor
        else:
            v_max_new = jnp.maximum(v_max.astype(g_c.dtype), v_new * v_factor)
            v_hat = v_max_new
        u = m_hat / (jnp.sqrt(v_hat + eps_root) + eps)
        return (
            u.astype(g.dtype),
            m_new.astype(m.dtype),
            v_new.astype(v.dtype),
            v_max_new.astype(v_max.dtype),
        )

    def update(
        updates: Updates,
        state: ScaleByAmsgradState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByAmsgradState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        check_same_tree(fn, "updates", updates, "state.nu_max", state.nu_max)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))

        @functools.cache
        def factors(dtype):
            m_factor, _, v_factor = adam_factors(b1, b2, False, t, dtype)
            return m_factor, v_factor

        updates, mu, nu, nu_max = map_leaves(
            functools.partial(leaf, factors=factors),
            4,
            updates,
            state.mu,
            state.nu,
            state.nu_max,
        )
        return updates, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Adamax


class ScaleByAdamaxState(NamedTuple):
    """State of `scale_by_adamax`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adamax(eps=0.0)
        >>> _, state = tx.update(jnp.array([-3.0]), tx.init(jnp.zeros(1)))
        >>> state.nu  # the infinity norm: |g| on the first step
        Array([3.], dtype=float32)
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # first moment, in mu_dtype or the params' dtype
    nu: Updates  # exponentially weighted infinity norm, in the params' dtype


@described
def scale_by_adamax(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Adamax: Adam with the infinity norm in place of the second moment.

    Per leaf, with t = 1, 2, ... and m and n starting at 0::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        n_t = max(b2 * n_{t-1}, |g_t| + eps)
        u_t = m_t / ((1 - b1**t) * n_t)

    eps sits inside the maximum, as in both optax and torch.optim.Adamax
    (the paper has no eps); n needs no bias correction.

    Args:
        b1: EMA rate of the first moment, in [0, 1).
        b2: Decay of the infinity norm, in [0, 1).
        eps: Added to |g| inside the maximum, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdamaxState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adamax(eps=0.0)
        >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(x), 4) for x in u]  # the first step: the sign of g
        [1.0, -1.0]

    References:
        Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR
        2015, section 7.1.
    """
    fn = "scale_by_adamax"
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)

    def init(params: Params) -> ScaleByAdamaxState:
        return ScaleByAdamaxState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype),
            nu=init_like(params),
        )

    def leaf(g, m, n, factor):
        g_c = g.astype(compute_dtype(g, m, n))
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * g_c
        n_new = jnp.maximum(b2 * n.astype(g_c.dtype), jnp.abs(g_c) + eps)
        u = m_new * factor(g_c.dtype) / n_new
        return u.astype(g.dtype), m_new.astype(m.dtype), n_new.astype(n.dtype)

    def update(
        updates: Updates,
        state: ScaleByAdamaxState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByAdamaxState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))
        factor = functools.cache(lambda dtype: 1 / bias_correction(b1, t).astype(dtype))
        updates, mu, nu = map_leaves(
            functools.partial(leaf, factor=factor), 3, updates, state.mu, state.nu
        )
        return updates, ScaleByAdamaxState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# RAdam


class ScaleByRadamState(NamedTuple):
    """State of `scale_by_radam`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> state = gradtx.scale_by_radam().init({"w": jnp.zeros(2)})
        >>> state.count, state.mu["w"].shape, state.nu["w"].dtype
        (Array(0, dtype=int32), (2,), dtype('float32'))
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # first moment, in mu_dtype or the params' dtype
    nu: Updates  # second moment, in the params' dtype


# (z/2) * coth(z/2) - 1 = sum over n >= 1 of B_2n z**2n / (2n)!, for |z| <= 1;
# the first omitted term is below 6e-9 of the sum there.
_HALF_COTH_SERIES = (1 / 12, -1 / 720, 1 / 30240, -1 / 1209600, 1 / 47900160)


def _half_coth_minus_one(z: jax.Array) -> jax.Array:
    """`(z/2) * coth(z/2) - 1` for 0 < z <= 1, to a few ulps of the result."""
    z2 = z * z
    total = jnp.zeros_like(z)
    for c in reversed(_HALF_COTH_SERIES):
        total = z2 * (c + total)
    return total


def _radam_rho(b2: ArrayLike, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """RAdam's `(rho_t, rho_inf)` for step `t`, to float32 round-off of rho_t.

    With x = -log(b2) and y = t * x::

        rho_inf = 2 / (1 - b2) - 1
        rho_t   = rho_inf - 2 * t * b2**t / (1 - b2**t)

    Written this way rho_t is the difference of two numbers near 2 / x,
    which in float32 loses about log10(2 / x) digits just where the
    rectification is most sensitive (rho_t near 5, t near 6). For y < 1 the
    identical form

        rho_t = t - (2 / x) * (h(y) - h(x)),   h(z) = (z/2) coth(z/2) - 1

    has no such cancellation (h is evaluated by its series); for y >= 1 the
    direct form loses at most a factor 2.4. A Python `b2` has its logarithm
    and rho_inf taken in double precision.

    Args:
        b2: EMA rate of the second moment, in [0, 1); a number or an array.
        t: The step number (1 at the first update), a float array.

    Returns:
        `(rho_t, rho_inf)`, in the dtype of `t`.
    """
    dtype = t.dtype
    if isinstance(b2, int | float):
        x = jnp.asarray(-math.log(b2) if b2 > 0 else math.inf, dtype)
        rho_inf = jnp.asarray(2 / (1 - b2) - 1, dtype)
    else:
        b2 = jnp.asarray(b2, dtype)
        x = -jnp.log1p(b2 - 1)
        rho_inf = 2 / (1 - b2) - 1
    y = t * x
    small_x, small_y = jnp.minimum(x, 1), jnp.minimum(y, 1)
    rho_small = (
        t
        - 2 * (_half_coth_minus_one(small_y) - _half_coth_minus_one(small_x)) / small_x
    )
    rho_large = rho_inf - 2 * t * jnp.exp(-y) / -jnp.expm1(-y)
    return jnp.where(y < 1, rho_small, rho_large), rho_inf


@described
def scale_by_radam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    threshold: ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    eps_before_correction: bool = False,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Rectified Adam: no adaptive step until the second moment is reliable.

    Per leaf, with t = 1, 2, ... and both moments starting at 0::

        m_t     = b1 * m_{t-1} + (1 - b1) * g_t
        v_t     = b2 * v_{t-1} + (1 - b2) * g_t**2
        m_hat_t = m_t / (1 - b1**t)
        v_hat_t = v_t / (1 - b2**t)
        rho_inf = 2 / (1 - b2) - 1
        rho_t   = rho_inf - 2 * t * b2**t / (1 - b2**t)
        r_t     = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                       / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        u_t     = r_t * m_hat_t / (sqrt(v_hat_t + eps_root) + eps)
                  if rho_t >= threshold, else m_hat_t

    With `nesterov=True` the first moment looks one step ahead, as in
    `scale_by_adam`::

        m_hat_t = b1 * m_t / (1 - b1**(t+1)) + (1 - b1) * g_t / (1 - b1**t)

    With `eps_before_correction=True` (torch.optim.RAdam, which adds eps to
    sqrt(v_t) and then divides by sqrt(1 - b2**t)) the denominator is::

        sqrt(v_hat_t + eps_root) + eps / sqrt(1 - b2**t)

    The default is optax's. torch rectifies when rho_t > 5, optax and gradtx
    when rho_t >= threshold: the two differ only at a step where rho_t is 5
    exactly, which takes a b2 picked for it (rho_1 = 1 and rho_t < t for
    t >= 2, so the first five steps are never rectified). rho_t is
    evaluated to float32 round-off, without the cancellation of its direct
    form: optax subtracts two float32 numbers near 2 / (1 - b2) and is off
    by up to 0.04 near the threshold with b2 = 0.999, and by several units
    with b2 = 0.9999 (it then rectifies from t = 2).

    Args:
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        threshold: The rectified step is taken once rho_t reaches it; in
            [4, inf] (below 4 the rectification is undefined, inf never
            takes it).
        nesterov: Use the Nesterov form of the first moment.
        eps_before_correction: Divide eps by sqrt(1 - b2**t), as torch does.
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByRadamState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` is not a floating-point dtype.
        TypeError: If a flag is not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_radam()
        >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(x), 4) for x in u]  # rho_1 = 1 < 5: m_hat_1, which is g
        [0.5, -2.0]

    References:
        Liu et al., "On the Variance of the Adaptive Learning Rate and
        Beyond", ICLR 2020.
    """
    fn = "scale_by_radam"
    _check_adam_args(fn, b1, b2, eps, eps_root)
    check_in_range(fn, "threshold", threshold, 4.0, allow_inf=True)
    check_flag(fn, "nesterov", nesterov)
    check_flag(fn, "eps_before_correction", eps_before_correction)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)

    def init(params: Params) -> ScaleByRadamState:
        return ScaleByRadamState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype),
            nu=init_like(params),
        )

    def leaf(g, m, v, scalars):
        g_c = g.astype(compute_dtype(g, m, v))
        m_factor, g_factor, v_factor, rectify, r, eps_t = scalars(g_c.dtype)
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * g_c
        v_new = b2 * v.astype(g_c.dtype) + (1 - b2) * abs_sq(g_c)
        m_hat = m_new * m_factor
        if nesterov:
            m_hat = m_hat + g_c * g_factor
        denominator = jnp.sqrt(v_new * v_factor + eps_root) + eps_t
        u = jnp.where(rectify, r * m_hat / denominator, m_hat)
        return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

    def update(
        updates: Updates,
        state: ScaleByRadamState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByRadamState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))

        @functools.cache
        def scalars(dtype):
            m_factor, g_factor, v_factor = adam_factors(b1, b2, nesterov, t, dtype)
            rho, rho_inf = _radam_rho(b2, t.astype(dtype))
            rectify = rho >= threshold
            # Outside the rectified branch the ratio may be negative or 0/0;
            # the stand-ins keep the unused value (and its gradient) finite.
            rho = jnp.where(rectify, rho, 5.0)
            rho_inf = jnp.where(rectify, rho_inf, 6.0)
            r = jnp.sqrt(
                (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
            )
            eps_t = jnp.asarray(eps, dtype)
            if eps_before_correction:
                eps_t = eps_t / jnp.sqrt(bias_correction(b2, t).astype(dtype))
            return m_factor, g_factor, v_factor, rectify, r, eps_t

        updates, mu, nu = map_leaves(
            functools.partial(leaf, scalars=scalars), 3, updates, state.mu, state.nu
        )
        return updates, ScaleByRadamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# NAdam (torch's form, with the momentum schedule)


class ScaleByNadamState(NamedTuple):
    """State of `scale_by_nadam`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_nadam(b1=0.9, momentum_decay=0.0)
        >>> _, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2, jnp.bfloat16)))
        >>> state.mu_product  # mu_1 = 0.9 * (1 - 0.5 * 0.96**0); kept in float32
        Array(0.45, dtype=float32)
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu_product: jax.Array  # float32 scalar: mu_1 * mu_2 * ... * mu_t
    mu: Updates  # first moment, in mu_dtype or the params' dtype
    nu: Updates  # second moment, in the params' dtype


_NADAM_BASE = math.log(0.96)  # mu_t = b1 * (1 - 0.5 * 0.96**(t * psi))


def _nadam_mu(b1: ArrayLike, momentum_decay: ArrayLike, t: jax.Array) -> jax.Array:
    return jnp.asarray(b1 * (1 - 0.5 * jnp.exp(t * momentum_decay * _NADAM_BASE)))


@described
def scale_by_nadam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    *,
    momentum_decay: ArrayLike = 0.004,
) -> GradientTransformation:
    """NAdam with a warming-up momentum coefficient, as torch.optim.NAdam.

    Per leaf, with t = 1, 2, ..., both moments starting at 0 and P_0 = 1::

        mu_t    = b1 * (1 - 0.5 * 0.96**(t * momentum_decay))
        P_t     = P_{t-1} * mu_t
        m_t     = b1 * m_{t-1} + (1 - b1) * g_t
        v_t     = b2 * v_{t-1} + (1 - b2) * g_t**2
        m_hat_t = mu_{t+1} * m_t / (1 - P_t * mu_{t+1})
                  + (1 - mu_t) * g_t / (1 - P_t)
        v_hat_t = v_t / (1 - b2**t)
        u_t     = m_hat_t / (sqrt(v_hat_t + eps_root) + eps)

    The product P_t is kept in the state in float32, as torch keeps it.
    optax's `nadam` has no momentum schedule: it is `scale_by_adam` with
    `nesterov=True`, which `nadam` uses unless given `momentum_decay`.

    Args:
        b1: EMA rate of the first moment and the limit of mu_t, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.
        momentum_decay: The rate at which mu_t rises from b1 / 2 towards
            b1 (psi in the paper), in [0, inf); torch's default is 0.004.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByNadamState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_nadam()
        >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(x), 4) for x in u]  # sign(g) * (1 + 0.1 * 0.5645)
        [1.0565, -1.0565]

    References:
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop
        2016.
    """
    fn = "scale_by_nadam"
    _check_adam_args(fn, b1, b2, eps, eps_root)
    check_in_range(fn, "momentum_decay", momentum_decay, 0.0)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)

    def init(params: Params) -> ScaleByNadamState:
        return ScaleByNadamState(
            count=jnp.zeros([], jnp.int32),
            mu_product=jnp.ones([], jnp.float32),
            mu=init_like(params, mu_dtype),
            nu=init_like(params),
        )

    def leaf(g, m, v, factors):
        g_c = g.astype(compute_dtype(g, m, v))
        m_coef, g_coef, v_factor = factors(g_c.dtype)
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * g_c
        v_new = b2 * v.astype(g_c.dtype) + (1 - b2) * abs_sq(g_c)
        m_hat = m_coef * m_new + g_coef * g_c
        u = m_hat / (jnp.sqrt(v_new * v_factor + eps_root) + eps)
        return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

    def update(
        updates: Updates,
        state: ScaleByNadamState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByNadamState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = safe_increment(state.count)
        step_dtype = jnp.promote_types(scalar_dtype(updates), state.mu_product.dtype)
        t = count.astype(step_dtype)
        mu_t = _nadam_mu(b1, momentum_decay, t)
        mu_next = _nadam_mu(b1, momentum_decay, t + 1)
        product = state.mu_product.astype(step_dtype) * mu_t
        stored_product = product.astype(state.mu_product.dtype)

        @functools.cache
        def factors(dtype):
            p = stored_product.astype(dtype)
            m_coef = mu_next.astype(dtype) / (1 - p * mu_next.astype(dtype))
            g_coef = (1 - mu_t.astype(dtype)) / (1 - p)
            v_factor = 1 / bias_correction(b2, t).astype(dtype)
            return m_coef, g_coef, v_factor

        updates, mu, nu = map_leaves(
            functools.partial(leaf, factors=factors), 3, updates, state.mu, state.nu
        )
        new_state = ScaleByNadamState(
            count=count, mu_product=stored_product, mu=mu, nu=nu
        )
        return updates, new_state

    return GradientTransformation(init, update)
