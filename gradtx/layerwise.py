"""Methods that scale each leaf (layer) as a whole.

The trust ratio of LARS and LAMB multiplies a leaf's update by the ratio of
the leaf's parameter norm to its update norm, so that every layer moves by
the same fraction of its own size. NovoGrad keeps one second moment per leaf
(the EMA of the squared norm of its gradient) where Adam keeps one per
element.

Norms are taken over whole leaves, in at least float32. For a sharded leaf
each norm is a reduction that XLA partitions like any other sum: nothing is
gathered.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import (
    check_dtype,
    check_in_range,
    check_same_tree,
    require_params,
)
from gradtx.base import (
    ArrayLike,
    EmptyState,
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
    value_at,
)


def _sum_of_squares(x: jax.Array) -> jax.Array:
    """The squared Euclidean norm of a whole leaf, real, in `x`'s dtype."""
    return jnp.sum(abs_sq(x))


def _real_dtype(x: Any) -> Any:
    """The real dtype of `x`'s arithmetic: at least float32, never complex."""
    return jnp.finfo(compute_dtype(x)).dtype


def _root(sq: jax.Array) -> jax.Array:
    """`sqrt(sq)`, with a finite derivative where `sq` is 0 (the norm is 0)."""
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


# ----------------------------------------------------------------------------
# trust ratio


@described
def scale_by_trust_ratio(
    min_norm: ArrayLike = 0.0,
    trust_coefficient: ArrayLike = 1.0,
    eps: ArrayLike = 0.0,
) -> GradientTransformation:
    """Rescale each leaf's update by the ratio of parameter norm to update norm.

    Per leaf, with ||x|| the Euclidean norm of the whole leaf::

        p_norm = max(||p||, min_norm)
        g_norm = max(||g||, min_norm)
        ratio  = trust_coefficient * p_norm / (g_norm + eps)
        ratio  = 1                          if p_norm == 0 or g_norm == 0
        u      = ratio * g

    With the defaults every leaf's update has the norm of its parameter. A
    leaf whose parameter or update is zero (a bias initialised at zero)
    passes through unscaled. The trust ratio is the layer-wise learning rate
    of LARS (`lars`, after the weight decay is added) and of LAMB (`lamb`,
    after Adam's scaling and the decay).

    Args:
        min_norm: Lower bound of both norms, in [0, inf); 0 bounds nothing.
        trust_coefficient: Multiplier of the ratio, in (0, inf).
        eps: Added to the update norm in the denominator, in [0, inf).

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`. Its update
        needs `params`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range; at
            update, if `params` is missing or does not fit the updates.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_trust_ratio()
        >>> params = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
        >>> grads = {"w": jnp.array([0.0, 0.5]), "b": jnp.array([1.0, 1.0])}
        >>> tx.update(grads, tx.init(params), params)[0]  # ||u_w|| = ||w|| = 5
        {'b': Array([1., 1.], dtype=float32), 'w': Array([0., 5.], dtype=float32)}

    References:
        You, Gitman and Ginsburg, "Large Batch Training of Convolutional
        Networks", 2017. You et al., "Large Batch Optimization for Deep
        Learning: Training BERT in 76 minutes", ICLR 2020.
    """
    fn = "scale_by_trust_ratio"
    check_in_range(fn, "min_norm", min_norm, 0.0)
    check_in_range(fn, "trust_coefficient", trust_coefficient, 0.0, low_open=True)
    check_in_range(fn, "eps", eps, 0.0)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def leaf(g, p):
        dtype = compute_dtype(g, p)
        g_c = g.astype(dtype)
        p_norm = jnp.maximum(_root(_sum_of_squares(p.astype(dtype))), min_norm)
        g_norm = jnp.maximum(_root(_sum_of_squares(g_c)), min_norm)
        zero = (p_norm == 0) | (g_norm == 0)
        denominator = jnp.where(zero, 1, g_norm + eps)
        ratio = jnp.where(zero, 1, trust_coefficient * p_norm / denominator)
        return ((g_c * ratio.astype(g_c.real.dtype)).astype(g.dtype),)

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        require_params(fn, params)
        check_same_tree(fn, "updates", updates, "params", params)
        (updates,) = map_leaves(leaf, 1, updates, params)
        return updates, state

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# NovoGrad


class ScaleByNovogradState(NamedTuple):
    """State of `scale_by_novograd`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_novograd()
        >>> params = {"w": jnp.zeros(2, jnp.bfloat16)}
        >>> _, state = tx.update({"w": jnp.array([3.0, 4.0], jnp.bfloat16)},
        ...                      tx.init(params), params)
        >>> state.count, state.mu["w"].dtype, state.nu["w"]
        (Array(1, dtype=int32), dtype(bfloat16), Array(25., dtype=float32))
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # first moment, in mu_dtype or the params' dtype
    nu: Updates  # one scalar per leaf: EMA of ||g||**2, at least float32


@described
def scale_by_novograd(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.25,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """NovoGrad: the gradient normalised by a per-leaf second moment, then momentum.

    Per leaf, with ||g|| the Euclidean norm of the whole leaf, t = 1, 2, ...
    and m_0 = 0::

        n_t = ||g_t||**2                                (t = 1)
        n_t = b2 * n_{t-1} + (1 - b2) * ||g_t||**2      (t > 1)
        d_t = g_t / (sqrt(n_t + eps_root) + eps) + weight_decay * p_t
        m_t = b1 * m_{t-1} + d_t
        u_t = m_t

    There is no bias correction: the first n is the first squared norm
    itself, and the momentum adds terms without a (1 - b1) factor, as in the
    paper and optax. The second moment is a single number per leaf, kept in
    at least float32 whatever the params' dtype (a float16 square would
    overflow for a leaf norm above 256); it costs nothing per element.

    Args:
        b1: Momentum decay, in [0, 1).
        b2: EMA rate of the squared gradient norm, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        weight_decay: Coefficient of the weight term inside the momentum: a
            number in [0, inf), an array, or a schedule of the step count
            (t - 1 at step t). Unless it is the number 0, `update` needs
            `params`.
        mu_dtype: Dtype of the first moment; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByNovogradState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` is not a floating-point dtype; at update, if `params`
            is needed and missing.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_novograd(b1=0.5, eps=0.0)
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([3.0, 4.0]), state)  # g / ||g||
        >>> u
        Array([0.6, 0.8], dtype=float32)
        >>> u, state = tx.update(jnp.array([3.0, 4.0]), state)  # 0.5 * m + g / 5
        >>> u
        Array([0.90000004, 1.2       ], dtype=float32)

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise
        Adaptive Moments for Training of Deep Networks", 2019.
    """
    fn = "scale_by_novograd"
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "eps_root", eps_root, 0.0)
    check_in_range(fn, "weight_decay", weight_decay, 0.0)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    no_decay = isinstance(weight_decay, int | float) and weight_decay == 0

    def init(params: Params) -> ScaleByNovogradState:
        return ScaleByNovogradState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype),
            nu=jax.tree.map(per_leaf_zero, params),
        )

    def per_leaf_zero(p):
        # One number per leaf; a scalar parameter's is placed like it.
        if jnp.ndim(p) == 0:
            return init_like(p, _real_dtype(p))
        return jnp.zeros([], _real_dtype(p))

    def leaf(g, m, n, p, first, wd):
        dtype = compute_dtype(g, m, n)
        g_c = g.astype(dtype)
        n_c = n.astype(g_c.real.dtype)
        sq = _sum_of_squares(g_c)
        n_new = jnp.where(first, sq, b2 * n_c + (1 - b2) * sq)
        m_new = b1 * m.astype(dtype) + g_c / (jnp.sqrt(n_new + eps_root) + eps)
        if p is not None:
            m_new = m_new + wd * p.astype(dtype)
        return m_new.astype(g.dtype), m_new.astype(m.dtype), n_new.astype(n.dtype)

    def update(
        updates: Updates,
        state: ScaleByNovogradState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByNovogradState]:
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        first = state.count == 0
        wd = value_at(weight_decay, state.count)
        if no_decay:
            leaves = (updates, state.mu, state.nu)
            updates, mu, nu = map_leaves(
                lambda g, m, n: leaf(g, m, n, None, first, wd), 3, *leaves
            )
        else:
            require_params(fn, params)
            check_same_tree(fn, "updates", updates, "params", params)
            updates, mu, nu = map_leaves(
                lambda g, m, n, p: leaf(g, m, n, p, first, wd),
                3,
                updates,
                state.mu,
                state.nu,
                params,
            )
        count = safe_increment(state.count)
        return updates, ScaleByNovogradState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)
