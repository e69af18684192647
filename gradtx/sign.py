"""Methods that step by the sign of the update: signSGD, Signum, Lion, Rprop.

Each step moves every coordinate by a fixed amount in the direction of a
sign, so the size of a gradient decides nothing beyond its sign: the step
length comes from the learning rate (signSGD, Signum, Lion) or from a per
coordinate step size that grows while the sign holds and shrinks when it
flips (Rprop). Equations run in at least float32 (`compute_dtype`); updates
keep the dtype of the incoming updates and state keeps the dtype it was
created with.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.core import Tracer

from gradtx._checks import check_dtype, check_flag, check_in_range, check_same_tree
from gradtx.base import (
    ArrayLike,
    EmptyState,
    GradientTransformation,
    Params,
    Updates,
    compute_dtype,
    described,
    init_like,
    map_leaves,
)

_LION_MODES = ("hard", "smooth", "refined")


def _known_value(value: Any) -> float:
    """A scalar hyperparameter's value where it is known now, else 0."""
    if callable(value) or isinstance(value, Tracer):
        return 0.0
    try:
        known = float(value)
    except TypeError:  # an array of several values
        return 0.0
    return known if math.isfinite(known) else 0.0


def _sign_of_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    """`sign(a + b)` for two rounded terms, the same under `jax.jit` and eagerly.

    Written as a comparison of `a` with `-b`, whose result is the sign of
    their exact sum: the rounded sum has that sign too (it is zero only
    where `a == -b`), but under `jax.jit` XLA may fuse the product that
    made `a` into the addition (one rounding instead of two), and near a
    tie the fused and the unfused sums can take different signs. A sign is
    the whole update, so compiled and eager steps would part by a full
    step. NaN, and infinities of opposite signs, give NaN as `sign` does.
    """
    if jnp.iscomplexobj(a) or jnp.iscomplexobj(b):
        return jnp.sign(a + b)  # a complex sign is a direction: no tie to break
    negated = -b
    sign = (a > negated).astype(a.dtype) - (a < negated).astype(a.dtype)
    return jnp.where(jnp.isnan(a + b), jnp.nan, sign)


# ----------------------------------------------------------------------------
# links


@described
def scale_by_sign() -> GradientTransformation:
    """Replace each update by its sign.

    Per leaf::

        u = sign(g)

    with sign(0) = 0: a coordinate whose update is exactly zero stays put.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_sign()
        >>> tx.update(jnp.array([0.3, -2.0, 0.0]), tx.init(None))[0]
        Array([ 1., -1.,  0.], dtype=float32)

    References:
        Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
        Problems", ICML 2018.
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        return jax.tree.map(jnp.sign, updates), state

    return GradientTransformation(init, update)


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_lion(b2=0.75, mu_dtype=jnp.bfloat16)
        >>> _, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
        >>> state.mu
        {'w': Array([0.25, 0.25], dtype=bfloat16)}
    """

    mu: Updates  # the momentum m, in mu_dtype or the params' dtype


@described
def scale_by_lion(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.99,
    mu_dtype: Any = None,
    *,
    mode: str = "hard",
    smooth_beta: ArrayLike = 1.0,
) -> GradientTransformation:
    """Lion: the sign of an interpolation between momentum and gradient.

    Per leaf, with m_0 = 0::

        c_t = b1 * m_{t-1} + (1 - b1) * g_t
        u_t = sign(c_t)                      (mode="hard")
        u_t = tanh(smooth_beta * c_t)        (mode="smooth")
        u_t = clip(c_t, -1, 1)               (mode="refined")
        m_t = b2 * m_{t-1} + (1 - b2) * g_t

    Two rates, where Signum has one: b1 weighs the gradient in the direction
    of this step, b2 sets how long the momentum remembers. The momentum is
    the only state, half of Adam's. The default mode is the paper's; the
    other two, as in optax, replace the sign by a function that is linear
    near zero. The sign is decided by comparing the two terms of c_t, so
    that a jitted and an eager step agree where c_t is within a rounding
    of zero.

    Args:
        b1: Weight of the momentum in the step's direction, in [0, 1].
        b2: EMA rate of the momentum, in [0, 1).
        mu_dtype: Dtype of the momentum (for example bfloat16 to halve its
            memory); None keeps each param's dtype.
        mode: "hard", "smooth" or "refined" (keyword-only, as in optax).
        smooth_beta: Slope of tanh at zero in the "smooth" mode, in
            (0, inf); unused otherwise.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByLionState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range,
            `mode` is not one of the three, or `mu_dtype` is not a
            floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_lion()
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([0.5, -3.0]), state)
        >>> u, state.mu
        (Array([ 1., -1.], dtype=float32), Array([ 0.005, -0.03 ], dtype=float32))

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS
        2023.
    """
    fn = "scale_by_lion"
    check_in_range(fn, "b1", b1, 0.0, 1.0)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    if not isinstance(mode, str) or mode not in _LION_MODES:
        raise ValueError(
            f"{fn}: mode must be one of 'hard', 'smooth' or 'refined', got {mode!r}"
        )
    check_in_range(fn, "smooth_beta", smooth_beta, 0.0, low_open=True)

    def direction(momentum_term: jax.Array, gradient_term: jax.Array) -> jax.Array:
        if mode == "smooth":
            return jnp.tanh(smooth_beta * (momentum_term + gradient_term))
        if mode == "refined":
            return jnp.clip(momentum_term + gradient_term, -1, 1)
        return _sign_of_sum(momentum_term, gradient_term)

    def init(params: Params) -> ScaleByLionState:
        return ScaleByLionState(mu=init_like(params, mu_dtype))

    def leaf(g, m):
        g_c = g.astype(compute_dtype(g, m))
        m_c = m.astype(g_c.dtype)
        u = direction(b1 * m_c, (1 - b1) * g_c)
        m_new = b2 * m_c + (1 - b2) * g_c
        return u.astype(g.dtype), m_new.astype(m.dtype)

    def update(
        updates: Updates, state: ScaleByLionState, params: Params | None = None, **extra
    ) -> tuple[Updates, ScaleByLionState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        updates, mu = map_leaves(leaf, 2, updates, state.mu)
        return updates, ScaleByLionState(mu=mu)

    return GradientTransformation(init, update)


class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_rprop(learning_rate=0.1)
        >>> _, state = tx.update(jnp.array([2.0, -1.0]), tx.init(jnp.zeros(2)))
        >>> state.step_sizes, state.prev_signs
        (Array([0.1, 0.1], dtype=float32), Array([ 1., -1.], dtype=float32))
    """

    step_sizes: Updates  # the step size of every coordinate, params' dtype
    prev_signs: Updates  # d: sign of the last step, 0 where it was skipped


@described
def scale_by_rprop(
    learning_rate: ArrayLike,
    eta_minus: ArrayLike = 0.5,
    eta_plus: ArrayLike = 1.2,
    min_step_size: ArrayLike = 1e-6,
    max_step_size: ArrayLike = 50.0,
    *,
    clip_every_step: bool = False,
) -> GradientTransformation:
    """Rprop: a step size per coordinate, grown while the sign holds.

    Per leaf, with step_0 = learning_rate and d_0 = 0::

        s_t    = sign(g_t) * d_{t-1}
        step_t = clip(eta_plus * step_{t-1}, min_step_size, max_step_size)   if s_t > 0
        step_t = clip(eta_minus * step_{t-1}, min_step_size, max_step_size)  if s_t < 0
        step_t = step_{t-1}                                                  if s_t = 0
        d_t    = 0 if s_t < 0 else sign(g_t)
        u_t    = step_t * d_t

    When the sign flips, the step is skipped (d_t = 0) and the step size
    shrinks; the next step then leaves the step size as it is, since
    s_{t+1} = 0. This is Riedmiller and Braun's rule without weight
    backtracking (iRprop- in Igel and Hüsken's terms). The update points
    along the gradient, like `scale_by_adam`'s; `rprop` chains it with
    `scale(-1.0)`.

    This is the step optax.scale_by_rprop computes (and keeps in its state as
    `prev_updates`); optax 0.2.8 emits the previous step's value instead,
    so its first update is zero and every later one lags a step behind.

    With `clip_every_step=True`, the s_t = 0 case is clipped too::

        step_t = clip(step_{t-1}, min_step_size, max_step_size)              if s_t = 0

    which is torch.optim.Rprop's form. The two differ only when
    `learning_rate` lies outside [min_step_size, max_step_size]: torch's
    first step is then clipped, optax's is `learning_rate` itself.

    Args:
        learning_rate: Initial step size of every coordinate, in [0, inf); a
            number, not a schedule. It is read by `init` only: the step sizes
            then live in the state, so a value changed later (through
            `inject_hyperparams`) does not reach them.
        eta_minus: Factor that shrinks a step size after a sign flip, in
            (0, 1].
        eta_plus: Factor that grows a step size while the sign holds, in
            [1, inf).
        min_step_size: Smallest step size, in [0, inf).
        max_step_size: Largest step size, in [min_step_size, inf].
        clip_every_step: Clip the step size at every step, as
            torch.optim.Rprop does (keyword-only).

    Returns:
        A `GradientTransformation` whose state is a `ScaleByRpropState`.

    Raises:
        TypeError: If `learning_rate` is a function: the initial step size
            is a number.
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_rprop(learning_rate=0.1)
        >>> state = tx.init(jnp.zeros(2))
        >>> for g in ([1.0, 1.0], [1.0, -1.0], [1.0, -1.0]):
        ...     u, state = tx.update(jnp.array(g), state)
        ...     print([round(float(x), 4) for x in u])
        [0.1, 0.1]
        [0.12, 0.0]
        [0.144, -0.05]

    References:
        Riedmiller and Braun, "A direct adaptive method for faster
        backpropagation learning: the RPROP algorithm", ICNN 1993.
        Igel and Hüsken, "Empirical evaluation of the improved Rprop learning
        algorithms", Neurocomputing 2003.
    """
    fn = "scale_by_rprop"
    if callable(learning_rate):
        raise TypeError(
            f"{fn}: learning_rate is the initial step size of every coordinate, "
            "a number; the step sizes then adapt on their own, so a schedule "
            "has no meaning here"
        )
    check_in_range(fn, "learning_rate", learning_rate, 0.0)
    check_in_range(fn, "eta_minus", eta_minus, 0.0, 1.0, low_open=True)
    check_in_range(fn, "eta_plus", eta_plus, 1.0)
    check_in_range(fn, "min_step_size", min_step_size, 0.0)
    check_in_range(
        fn, "max_step_size", max_step_size, _known_value(min_step_size), allow_inf=True
    )
    check_flag(fn, "clip_every_step", clip_every_step)

    def init(params: Params) -> ScaleByRpropState:
        return ScaleByRpropState(
            step_sizes=init_like(params, fill=learning_rate),
            prev_signs=init_like(params),
        )

    def leaf(g, step, prev):
        g_c = g.astype(compute_dtype(g, step, prev))
        step_c = step.astype(g_c.dtype)
        sign_g = jnp.sign(g_c)
        s = sign_g * prev.astype(g_c.dtype)
        grown = step_c * jnp.where(s > 0, eta_plus, eta_minus)
        if clip_every_step:
            step_new = jnp.clip(
                jnp.where(s == 0, step_c, grown), min_step_size, max_step_size
            )
        else:
            step_new = jnp.where(
                s == 0, step_c, jnp.clip(grown, min_step_size, max_step_size)
            )
        d = jnp.where(s < 0, 0, sign_g)
        return (
            (step_new * d).astype(g.dtype),
            step_new.astype(step.dtype),
            d.astype(prev.dtype),
        )

    def update(
        updates: Updates,
        state: ScaleByRpropState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByRpropState]:
        del params
        check_same_tree(fn, "updates", updates, "state.step_sizes", state.step_sizes)
        check_same_tree(fn, "updates", updates, "state.prev_signs", state.prev_signs)
        updates, steps, signs = map_leaves(
            leaf, 3, updates, state.step_sizes, state.prev_signs
        )
        return updates, ScaleByRpropState(step_sizes=steps, prev_signs=signs)

    return GradientTransformation(init, update)
