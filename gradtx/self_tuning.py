"""Prodigy: Adam whose step size is estimated from the distance travelled.

Prodigy keeps Adam's two moments, of the gradient scaled by an estimate d of
the distance to the solution, and raises d from a weighted correlation of the
gradients with the way the parameters have moved since the start. The
estimate is one number for the whole tree: its two sums run over every
element of every leaf, so on a mesh each device adds up its own shards and
only scalars cross between devices (no leaf is gathered), and the result
does not depend on how the numbers are split into leaves or devices.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import (
    check_dtype,
    check_flag,
    check_in_range,
    check_same_tree,
    require_params,
)
from gradtx.base import (
    ArrayLike,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Updates,
    abs_sq,
    bias_correction,
    compute_dtype,
    described,
    init_like,
    map_leaves,
    safe_increment,
    scalar_dtype,
    value_at,
)
from gradtx.clipping import sum_over_leaves


class ProdigyState(NamedTuple):
    """State of `scale_by_prodigy`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx import scale_by_prodigy
        >>> state = scale_by_prodigy().init({"w": jnp.ones(2)})
        >>> state.estim_lr, state.params0
        (Array(1.e-06, dtype=float32), {'w': Array([1., 1.], dtype=float32)})
    """

    count: jax.Array  # int32 scalar: updates applied so far
    exp_avg: Updates  # m: EMA of d * g, same tree as the params
    exp_avg_sq: Updates  # v: EMA of (d * g)**2
    grad_sum: Updates  # s: the weighted sum of gradients in d's denominator
    params0: Params  # p_0: the params given to init
    estim_lr: jax.Array  # d: the estimate, a scalar (at least float32)
    numerator_weighted: jax.Array  # r: the weighted sum in d's numerator


def _zeros(params: Params, dtype: Any) -> Any:
    """Zeros like `params`, in `dtype` or the leaf's, float16 widened to float32.

    Prodigy's moments and sum hold d * g, which starts near estim_lr0 = 1e-6
    times the gradient: float16 (smallest normal 6e-5) would flush most of
    it, and its square entirely, to zero.
    """

    def leaf(p: Any) -> Any:
        wide = jnp.float32 if jnp.result_type(p) == jnp.float16 else None
        return init_like(p, dtype or wide)

    return jax.tree.map(leaf, params)


def _betas(fn: str, betas: Any) -> tuple[Any, Any]:
    try:
        b1, b2 = betas
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{fn}: betas must be a pair (b1, b2), got {type(betas).__name__} {betas!r}"
        ) from error
    check_in_range(fn, "betas[0]", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "betas[1]", b2, 0.0, 1.0, high_open=True)
    return b1, b2


@described
def scale_by_prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
    beta3: ArrayLike | None = None,
    eps: ArrayLike = 1e-8,
    estim_lr0: ArrayLike = 1e-6,
    estim_lr_coef: ArrayLike = 1.0,
    weight_decay: ArrayLike = 0.0,
    safeguard_warmup: bool = False,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Prodigy's Adam step in units of its own estimate d of the step size.

    Per leaf, with t the number of updates applied including this one,
    lr = learning_rate(t - 1), (b1, b2) = betas, b3 = beta3 (sqrt(b2) when
    None), d the estimate before this step (estim_lr0 at first), and the two
    sums taken over every element of every leaf together::

        c_t = sqrt(1 - b2**t) / (1 - b1**t)
        k   = d * lr * c_t            (k = d with safeguard_warmup)
        m_t = b1 * m_{t-1} + (1 - b1) * d * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * (d * g_t)**2
        s_t = b3 * s_{t-1} + (d / estim_lr0) * k * g_t
        r_t = b3 * r_{t-1} + (d / estim_lr0) * d * lr * c_t * sum(g_t * (p_0 - p_t))
        d'  = max(d, estim_lr_coef * r_t / sum(|s_t|))
        u_t = d * c_t * (m_t / (sqrt(v_t) + d' * eps) + weight_decay * p_t)

    and d' becomes d for the next step. m_0 = v_0 = s_0 = 0, r_0 = 0 and p_0
    is the params given to `init`. Where sum(|s_t|) is 0 (a zero gradient,
    or a learning rate of 0 without the safeguard) d is kept; optax's
    `prodigy` gives NaN there.

    The update is not yet multiplied by the learning rate: chain
    `scale_by_learning_rate(learning_rate)` after it, with the same rate
    (`prodigy` does). The rate enters here too, because the estimate weighs
    each step by the rate it is taken with. The decoupled weight decay is
    part of the link because it scales with d: Prodigy decays by
    `lr * d * c_t * weight_decay * p` (optax's and the paper's form), and a
    separate `add_decayed_weights` placed after this link would decay by
    `lr * weight_decay * p` instead, independent of d.

    Args:
        learning_rate: The rate the chain applies after this link, a number
            in [0, inf) or a schedule; 1.0 unless scheduled.
        betas: (b1, b2), the EMA rates of the two moments, each in [0, 1).
        beta3: EMA rate of the sums behind d, in [0, 1); None is sqrt(b2).
        eps: Added to the root of the second moment (times d'), in [0, inf).
        estim_lr0: The first estimate d_0, in (0, inf): an underestimate.
        estim_lr_coef: Multiplies every new estimate, in [0, inf).
        weight_decay: Decoupled decay in units of d, in [0, inf).
        safeguard_warmup: Leave lr * c_t out of the weights of s (helps when
            the learning rate warms up from 0).
        mu_dtype: Dtype of the first moment; None keeps each param's dtype,
            except float32 for float16 params (see `nu_dtype`).
        nu_dtype: Dtype of the second moment; None keeps each param's dtype,
            except float32 for float16 params: both moments and the sum s
            hold d * g with d near estim_lr0 = 1e-6 at first, and in float16
            (d * g)**2 underflows to 0, which would make the first steps
            huge. Pass float16 explicitly to keep them in float16.

    Returns:
        A `GradientTransformation` whose state is a `ProdigyState`. Its
        update needs `params`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` or `nu_dtype` is not a floating-point dtype; at
            update, if `params` is missing or its tree differs from the
            updates'.
        TypeError: If `betas` is not a pair or `safeguard_warmup` not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx import scale_by_prodigy
        >>> tx = scale_by_prodigy()
        >>> params = jnp.array([1.0, -1.0])
        >>> u, state = tx.update(jnp.array([0.5, -2.0]), tx.init(params), params)
        >>> [round(float(x) / 1e-6, 4) for x in u]  # d_0 * sign(g), as Adam's
        [1.0, -1.0]

    References:
        Mishchenko and Defazio, "Prodigy: An Expeditiously Adaptive
        Parameter-Free Learner", ICML 2024 (arXiv:2306.06101, 2023).
    """
    fn = "scale_by_prodigy"
    if not callable(learning_rate):
        check_in_range(fn, "learning_rate", learning_rate, 0.0)
    b1, b2 = _betas(fn, betas)
    if beta3 is None:
        b3 = math.sqrt(b2) if isinstance(b2, int | float) else jnp.sqrt(b2)
    else:
        check_in_range(fn, "beta3", beta3, 0.0, 1.0, high_open=True)
        b3 = beta3
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "estim_lr0", estim_lr0, 0.0, low_open=True)
    check_in_range(fn, "estim_lr_coef", estim_lr_coef, 0.0)
    check_in_range(fn, "weight_decay", weight_decay, 0.0)
    check_flag(fn, "safeguard_warmup", safeguard_warmup)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    nu_dtype = check_dtype(fn, "nu_dtype", nu_dtype)

    def init(params: Params) -> ProdigyState:
        dtype = scalar_dtype(params)
        return ProdigyState(
            count=jnp.zeros([], jnp.int32),
            exp_avg=_zeros(params, mu_dtype),
            exp_avg_sq=_zeros(params, nu_dtype),
            grad_sum=_zeros(params, None),
            params0=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
            estim_lr=jnp.asarray(estim_lr0, dtype),
            numerator_weighted=jnp.zeros([], dtype),
        )

    def moments(g, m, v, s, p0, p, d, s_rate):
        g_c = g.astype(compute_dtype(g, m, v, s, p0, p, d))
        dg = d * g_c
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * dg
        v_new = b2 * v.astype(g_c.dtype) + (1 - b2) * abs_sq(dg)
        s_new = b3 * s.astype(g_c.dtype) + s_rate * g_c
        moved = p0.astype(g_c.dtype) - p.astype(g_c.dtype)
        product = jnp.real(jnp.conj(g_c) * moved)
        return (
            m_new.astype(m.dtype),
            v_new.astype(v.dtype),
            s_new.astype(s.dtype),
            product,
        )

    def step(g, m, v, p, scale, denominator_eps):
        dtype = compute_dtype(g, m, v, p, scale)
        m_c, v_c, p_c = m.astype(dtype), v.astype(dtype), p.astype(dtype)
        u = scale * (m_c / (jnp.sqrt(v_c) + denominator_eps) + weight_decay * p_c)
        return (u.astype(g.dtype),)

    def update(
        updates: Updates, state: ProdigyState, params: Params | None = None, **extra
    ) -> tuple[Updates, ProdigyState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        check_same_tree(fn, "updates", updates, "state.exp_avg", state.exp_avg)
        count = safe_increment(state.count)
        d = state.estim_lr
        t = count.astype(d.dtype)
        correction = jnp.sqrt(bias_correction(b2, t)) / bias_correction(b1, t)
        dlr = d * value_at(learning_rate, state.count) * correction
        weight = d / estim_lr0
        s_rate = weight * (d if safeguard_warmup else dlr)
        exp_avg, exp_avg_sq, grad_sum, products = map_leaves(
            lambda *leaves: moments(*leaves, d=d, s_rate=s_rate),
            4,
            updates,
            state.exp_avg,
            state.exp_avg_sq,
            state.grad_sum,
            state.params0,
            params,
        )
        leaves = jax.tree.leaves(products)
        if leaves:
            moved = sum_over_leaves(jnp.sum, leaves).astype(d.dtype)
            denominator = sum_over_leaves(
                lambda x: jnp.sum(jnp.abs(x.astype(compute_dtype(x, d)))),
                jax.tree.leaves(grad_sum),
            ).astype(d.dtype)
        else:
            moved = denominator = jnp.zeros([], d.dtype)
        numerator = b3 * state.numerator_weighted + weight * dlr * moved
        numerator = numerator.astype(d.dtype)
        positive = denominator > 0
        estimate = estim_lr_coef * numerator / jnp.where(positive, denominator, 1)
        d_new = jnp.where(positive, jnp.maximum(d, estimate), d).astype(d.dtype)
        (new_updates,) = map_leaves(
            lambda g, m, v, p: step(g, m, v, p, d * correction, d_new * eps),
            1,
            updates,
            exp_avg,
            exp_avg_sq,
            params,
        )
        return new_updates, ProdigyState(
            count=count,
            exp_avg=exp_avg,
            exp_avg_sq=exp_avg_sq,
            grad_sum=grad_sum,
            params0=state.params0,
            estim_lr=d_new,
            numerator_weighted=numerator,
        )

    return GradientTransformation(init, update)
