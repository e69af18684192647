"""The optimizers, each one chain of transformations.

Every alias returns a plain `chain`, so `print(optimizer)` shows the links it
is made of, and the equations live on those links. The seeds' optimizers come
first, then one section per family, whose links live in the module the
section names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gradtx._checks import check_count, check_dtype, check_flag, check_in_range
from gradtx.adam_variants import (
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_radam,
)
from gradtx.averaging import schedule_free
from gradtx.base import (
    ArrayLike,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    chain,
    identity,
    value_at,
)
from gradtx.decay import Mask, add_decayed_weights
from gradtx.factored import (
    clip_by_block_rms,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradtx.layerwise import scale_by_novograd, scale_by_trust_ratio
from gradtx.moments import (
    ClipValueFn,
    fourth_root_of_count,
    scale_by_ademamix,
    scale_by_adopt,
    scale_by_belief,
    scale_by_yogi,
)
from gradtx.orthogonal import (
    CONVENTIONS,
    DEFAULT_NS_COEFFS,
    DimensionNumbers,
    check_dims_argument,
    dims_per_leaf,
    orthogonalize,
    scale_by_muon_momentum,
    scale_by_shape,
)
from gradtx.quasi_newton import scale_by_lbfgs, scale_by_zoom_linesearch
from gradtx.scaling import (
    scale,
    scale_by_adadelta,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_momentum,
    scale_by_rms,
    scale_by_schedule,
)
from gradtx.schedules import linear_schedule
from gradtx.self_tuning import scale_by_prodigy
from gradtx.sign import scale_by_lion, scale_by_rprop, scale_by_sign
from gradtx.wrappers import masked, multi_transform


def _momentum_links(
    fn: str,
    momentum: ArrayLike | None,
    nesterov: bool,
    dampening: ArrayLike = 0.0,
    accumulator_dtype: Any = None,
) -> list[GradientTransformation]:
    check_flag(fn, "nesterov", nesterov)
    if momentum is None:
        if nesterov or (isinstance(dampening, int | float) and dampening != 0):
            raise ValueError(
                f"{fn}: nesterov and dampening need a momentum; pass momentum=0.9 "
                "(for example) or leave them at their defaults"
            )
        return []
    link = scale_by_momentum(
        decay=momentum,
        nesterov=nesterov,
        dampening=dampening,
        accumulator_dtype=accumulator_dtype,
    )
    return [link]


def _is_set(value: Any) -> bool:
    """Whether an optional number differs from its default 0 (arrays count)."""
    return not (isinstance(value, int | float) and value == 0)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ArrayLike | None = None,
    nesterov: bool = False,
    *,
    dampening: ArrayLike = 0.0,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    Chain: [scale_by_momentum] -> scale_by_learning_rate. Without momentum
    the step is `p -= lr * g`; with it, `v = momentum * v + (1 - dampening)
    * g` and `p -= lr * v` (or `lr * (g + momentum * v)` with nesterov).

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        momentum: Momentum coefficient in [0, 1), or None for plain SGD.
        nesterov: Use Nesterov momentum (needs `momentum`).
        dampening: Damping of the gradient in the momentum buffer.
        accumulator_dtype: Dtype of the momentum buffer (as optax's argument
            of that name); None keeps each param's dtype. Unused without
            `momentum`.

    Returns:
        A `chain`; the equations are on `scale_by_momentum`.

    Raises:
        ValueError: If a hyperparameter is out of range, or `nesterov` or
            `dampening` is set without `momentum`.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.sgd(0.1, momentum=0.9, nesterov=True)
        >>> [link.name for link in tx.children]
        ['scale_by_momentum', 'scale_by_learning_rate']
    """
    accumulator_dtype = check_dtype("sgd", "accumulator_dtype", accumulator_dtype)
    return chain(
        *_momentum_links("sgd", momentum, nesterov, dampening, accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: ArrayLike = 0.9,
    eps: ArrayLike = 1e-8,
    *,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    momentum: ArrayLike | None = None,
    nesterov: bool = False,
    initial_scale: ArrayLike = 0.0,
    bias_correction: bool = False,
) -> GradientTransformation:
    """RMSProp: gradient over the root of an EMA of its square.

    Chain: scale_by_rms -> [scale_by_momentum] -> scale_by_learning_rate. The
    default places eps outside the root, as torch.optim.RMSprop (whose
    `alpha` is `decay` here); `eps_in_sqrt=True` gives optax's placement.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        decay: EMA rate of the squared gradient, in [0, 1).
        eps: Added to the denominator, in [0, inf).
        eps_in_sqrt: Add eps under the root instead of after it.
        centered: Divide by the centred second moment (a variance estimate).
        momentum: Momentum applied to the scaled gradient, or None.
        nesterov: Use Nesterov momentum (needs `momentum`).
        initial_scale: Starting value of the EMA of the squared gradient, in
            [0, inf) (torch starts at 0, TensorFlow at 1).
        bias_correction: Divide the averages by `1 - decay**t` as Adam does
            (optax's argument of that name).

    Returns:
        A `chain`; the equations are on `scale_by_rms` and `scale_by_momentum`.

    Raises:
        ValueError: If a hyperparameter is out of range, or `nesterov` is set
            without `momentum`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.rmsprop(0.1)
        >>> u, _ = tx.update(jnp.array([1.0, -4.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(x), 4) for x in u]  # -lr * g / sqrt(0.1 * g**2)
        [-0.3162, 0.3162]
    """
    return chain(
        scale_by_rms(
            decay=decay,
            eps=eps,
            eps_in_sqrt=eps_in_sqrt,
            centered=centered,
            initial_scale=initial_scale,
            bias_correction=bias_correction,
        ),
        *_momentum_links("rmsprop", momentum, nesterov),
        scale_by_learning_rate(learning_rate),
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: ArrayLike = 0.0,
    eps: ArrayLike = 1e-10,
) -> GradientTransformation:
    """Adagrad: gradient over the root of the running sum of its squares.

    Chain: scale_by_adagrad -> scale_by_learning_rate, with torch's defaults.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        initial_accumulator_value: Starting value of the sum, in [0, inf).
        eps: Added to the denominator, in [0, inf).

    Returns:
        A `chain`; the equations are on `scale_by_adagrad`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.adagrad(0.1)
        >>> u, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
        >>> [round(float(x), 4) for x in u]  # first step: -lr * sign(g)
        [-0.1, 0.1]
    """
    return chain(
        scale_by_adagrad(initial_accumulator_value=initial_accumulator_value, eps=eps),
        scale_by_learning_rate(learning_rate),
    )


def adadelta(
    learning_rate: ScalarOrSchedule = 1.0,
    rho: ArrayLike = 0.9,
    eps: ArrayLike = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Mask = None,
) -> GradientTransformation:
    """Adadelta, which needs no learning rate (it defaults to 1).

    Chain: [add_decayed_weights] -> scale_by_adadelta ->
    scale_by_learning_rate, so the default descends (optax's `adadelta()`
    without a learning rate ascends). A weight decay is coupled (added to
    the gradient before Zeiler's step), as in optax and torch.

    Args:
        learning_rate: Multiplier of Zeiler's step, 1.0 in the paper.
        rho: EMA rate of both averages, in [0, 1).
        eps: Conditioning constant, in (0, inf).
        weight_decay: Coupled L2 coefficient, a number in [0, inf) or a
            schedule; at 0 (and no mask) the chain has no decay link.
        weight_decay_mask: Leaves to decay, as `mask` in `add_decayed_weights`.

    Returns:
        A `chain`; the equations are on `scale_by_adadelta`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.adadelta()
        >>> g = jnp.array([3.0, -4.0])
        >>> u, _ = tx.update(g, tx.init(jnp.zeros(2)))
        >>> bool(jnp.all(u * g < 0))  # descends, unlike optax.adadelta()
        True
    """
    decay = []
    if _is_set(weight_decay) or weight_decay_mask is not None:
        decay = [add_decayed_weights(weight_decay, mask=weight_decay_mask)]
    return chain(
        *decay,
        scale_by_adadelta(rho=rho, eps=eps),
        scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam, with no weight decay.

    Chain: scale_by_adam -> scale_by_learning_rate. The positional order is
    optax's (`learning_rate, b1, b2, eps, eps_root, mu_dtype`); the flags
    after it are keyword-only.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf). Set a small positive
            value (1e-8) to differentiate through the update (meta-learning):
            sqrt has an infinite derivative at 0, where the second moment of
            a parameter whose gradients are all zero sits.
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nesterov: Use the Nesterov form of the first moment (NAdam).
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.
            Pass float32 for float16 params (see `scale_by_adam`).

    Returns:
        A `chain`; the equations are on `scale_by_adam`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import gradtx
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> tx = gradtx.adam(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> gradtx.apply_updates(params, updates)
        {'w': Array([ 0.9, -0.9], dtype=float32)}
    """
    return chain(
        scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


def adam_l2(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask = None,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam on an L2-penalised loss: the decay passes through Adam's scaling.

    Chain: add_decayed_weights -> scale_by_adam -> scale_by_learning_rate.
    This is coupled weight decay, what `torch.optim.Adam(weight_decay=...)`
    does. `adamw` is the same three links with the decay moved after Adam.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        weight_decay: L2 coefficient (gradient of `wd/2 * ||p||**2`).
        mask: Leaves to decay, as in `add_decayed_weights`.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nesterov: Use the Nesterov form of the first moment.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> params, zero_grads = jnp.array([1.0, -4.0]), jnp.zeros(2)
        >>> tx = gradtx.adam_l2(0.1, weight_decay=0.5)
        >>> u, _ = tx.update(zero_grads, tx.init(params), params)
        >>> [round(float(x), 4) for x in u]  # the decay went through Adam
        [-0.1, 0.1]
    """
    return chain(
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask = None,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam with decoupled weight decay: the decay skips Adam's scaling.

    Chain: scale_by_adam -> add_decayed_weights -> scale_by_learning_rate, so
    each step is `p -= lr * (adam_step + wd * p)`: every weight shrinks by the
    same fraction `lr * wd`. This is the torch.optim.AdamW and optax.adamw
    convention (the decay is multiplied by the full learning rate).

    Everything after `learning_rate` is keyword-only: optax's `adamw` takes
    `b1` second and `weight_decay` seventh, so a positional call written for
    either library raises instead of setting another hyperparameter.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        weight_decay: Decay rate per unit of learning rate.
        mask: Leaves to decay, as in `add_decayed_weights`.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nesterov: Use the Nesterov form of the first moment.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> params, zero_grads = jnp.array([1.0, -4.0]), jnp.zeros(2)
        >>> tx = gradtx.adamw(0.1, weight_decay=0.5)
        >>> u, _ = tx.update(zero_grads, tx.init(params), params)
        >>> [round(float(x), 4) for x in u]  # -lr * wd * p
        [-0.05, 0.2]

    References:
        Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR
        2019.
    """
    return chain(
        scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
        ),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def adamw_multiplier(
    learning_rate: ArrayLike,
    *,
    weight_decay: ScalarOrSchedule = 1e-4,
    schedule: ScalarOrSchedule = 1.0,
    mask: Mask = None,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdamW as in Loshchilov and Hutter's Algorithm 2.

    The decay is scaled by the schedule multiplier `eta_t` only, not by the
    base learning rate::

        p -= eta_t * (learning_rate * adam_step + weight_decay * p)

    Chain: scale_by_adam -> scale(learning_rate) -> add_decayed_weights ->
    scale_by_learning_rate(schedule). With `lr_t = learning_rate * eta_t`,
    `adamw(lr_t, weight_decay / learning_rate)` takes the same steps, so the
    decay here keeps its meaning when the base learning rate is tuned.

    Args:
        learning_rate: Base learning rate (alpha in the paper), a number in
            [0, inf) or an array; the schedule goes in `schedule`.
        weight_decay: Decay per unit of the multiplier (lambda in the paper).
        schedule: The multiplier eta_t: a schedule or a number (1.0: none).
        mask: Leaves to decay, as in `add_decayed_weights`.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nesterov: Use the Nesterov form of the first moment.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        TypeError: If `learning_rate` is a schedule (pass it as `schedule`).
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> params, zero_grads = jnp.array([1.0, -4.0]), jnp.zeros(2)
        >>> tx = gradtx.adamw_multiplier(0.1, weight_decay=0.5, schedule=0.5)
        >>> u, _ = tx.update(zero_grads, tx.init(params), params)
        >>> [round(float(x), 4) for x in u]  # -eta * wd * p: no lr
        [-0.25, 1.0]

    References:
        Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR
        2019, Algorithm 2.
    """
    if callable(learning_rate):
        raise TypeError(
            "adamw_multiplier: learning_rate is the constant base rate; pass the "
            "schedule multiplier as schedule=..."
        )
    check_in_range("adamw_multiplier", "learning_rate", learning_rate, 0.0)
    return chain(
        scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
        ),
        scale(learning_rate),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(schedule),
    )


def adamw_independent(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask = None,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam with weight decay independent of the learning rate and schedule.

    Each step removes the same fraction `weight_decay` of every weight,
    whatever the learning rate or its schedule::

        p -= lr_t * adam_step + weight_decay * p

    Chain: scale_by_adam -> scale_by_schedule(learning_rate) ->
    add_decayed_weights -> scale(-1).

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        weight_decay: Fraction of each weight removed per step, in [0, 1).
        mask: Leaves to decay, as in `add_decayed_weights`.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nesterov: Use the Nesterov form of the first moment.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> params, zero_grads = jnp.array([1.0, -4.0]), jnp.zeros(2)
        >>> tx = gradtx.adamw_independent(0.1, weight_decay=0.01)
        >>> u, _ = tx.update(zero_grads, tx.init(params), params)
        >>> [round(float(x), 4) for x in u]  # -wd * p: no lr, no schedule
        [-0.01, 0.04]
    """
    check_in_range("adamw_independent", "learning_rate", learning_rate, 0.0)
    check_in_range(
        "adamw_independent", "weight_decay", weight_decay, 0.0, 1.0, high_open=True
    )
    return chain(
        scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
        ),
        scale_by_schedule(learning_rate),
        add_decayed_weights(weight_decay, mask=mask),
        scale(-1.0),
    )


def sgd_l2(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule = 1e-4,
    momentum: ArrayLike | None = None,
    nesterov: bool = False,
    mask: Mask = None,
) -> GradientTransformation:
    """SGD on an L2-penalised loss: the decay enters the momentum buffer.

    Chain: add_decayed_weights -> [scale_by_momentum] ->
    scale_by_learning_rate. This is `torch.optim.SGD(weight_decay=...)`.
    Without momentum it takes the same steps as `sgdw`.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        weight_decay: L2 coefficient (gradient of `wd/2 * ||p||**2`).
        momentum: Momentum coefficient in [0, 1), or None.
        nesterov: Use Nesterov momentum (needs `momentum`).
        mask: Leaves to decay, as in `add_decayed_weights`.

    Returns:
        A `chain`; the equations are on its links.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.sgd_l2(0.1, weight_decay=1e-4, momentum=0.9)
        >>> [link.name for link in tx.children]
        ['add_decayed_weights', 'scale_by_momentum', 'scale_by_learning_rate']
    """
    return chain(
        add_decayed_weights(weight_decay, mask=mask),
        *_momentum_links("sgd_l2", momentum, nesterov),
        scale_by_learning_rate(learning_rate),
    )


def sgdw(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule = 1e-4,
    momentum: ArrayLike | None = None,
    nesterov: bool = False,
    mask: Mask = None,
) -> GradientTransformation:
    """SGD with decoupled weight decay (SGDW): the decay skips the momentum.

    Chain: [scale_by_momentum] -> add_decayed_weights ->
    scale_by_learning_rate, so each step is `p -= lr * (v + wd * p)`.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        weight_decay: Decay rate per unit of learning rate.
        momentum: Momentum coefficient in [0, 1), or None.
        nesterov: Use Nesterov momentum (needs `momentum`).
        mask: Leaves to decay, as in `add_decayed_weights`.

    Returns:
        A `chain`; the equations are on its links.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.sgdw(0.1, weight_decay=1e-4, momentum=0.9)
        >>> [link.name for link in tx.children]
        ['scale_by_momentum', 'add_decayed_weights', 'scale_by_learning_rate']

    References:
        Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR
        2019, Algorithm 1.
    """
    return chain(
        *_momentum_links("sgdw", momentum, nesterov),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# Adam's variants: AMSGrad, Adamax, RAdam, NAdam (links in gradtx/adam_variants.py)


def amsgrad(
    learning_rate: ScalarOrSchedule,
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
    """AMSGrad: Adam that never lets its denominator shrink.

    Chain: scale_by_amsgrad -> scale_by_learning_rate. The positional order
    and defaults are optax's; `max_before_correction=True` gives
    `torch.optim.Adam(amsgrad=True)`.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        bias_correction_mu: Divide the first moment by 1 - b1**t.
        bias_correction_nu: Divide the second moment by 1 - b2**t.
        max_before_correction: Take the maximum over the raw second moment,
            as torch does.

    Returns:
        A `chain`; the equations are on `scale_by_amsgrad`.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.amsgrad(1e-3)
        >>> [link.name for link in tx.children]
        ['scale_by_amsgrad', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_amsgrad(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            bias_correction_mu=bias_correction_mu,
            bias_correction_nu=bias_correction_nu,
            max_before_correction=max_before_correction,
        ),
        scale_by_learning_rate(learning_rate),
    )


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Adamax, with no weight decay.

    Chain: scale_by_adamax -> scale_by_learning_rate. optax's positional
    order; the same numbers as `optax.adamax` and `torch.optim.Adamax`
    (`betas=(b1, b2)`). torch's `Adamax(weight_decay=wd)` is coupled L2:
    `chain(add_decayed_weights(wd), scale_by_adamax(), scale_by_learning_rate(lr))`.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: Decay of the infinity norm, in [0, 1).
        eps: Added to |g| inside the maximum, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on `scale_by_adamax`.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.adamax(2e-3)
        >>> [link.name for link in tx.children]
        ['scale_by_adamax', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_adamax(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask = None,
    *,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Adamax with decoupled weight decay.

    Chain: scale_by_adamax -> add_decayed_weights -> scale_by_learning_rate,
    so each step is `p -= lr * (adamax_step + wd * p)`. optax's positional
    order and defaults; torch.optim has no decoupled Adamax.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: Decay of the infinity norm, in [0, 1).
        eps: Added to |g| inside the maximum, in [0, inf).
        weight_decay: Decay rate per unit of learning rate, a number in
            [0, inf) or a schedule.
        mask: Leaves to decay, as in `add_decayed_weights`.
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.adamaxw(2e-3, weight_decay=1e-2)
        >>> [link.name for link in tx.children]
        ['scale_by_adamax', 'add_decayed_weights', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_adamax(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def radam(
    learning_rate: ScalarOrSchedule,
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
    """Rectified Adam, with no weight decay.

    Chain: scale_by_radam -> scale_by_learning_rate. optax's positional
    order and defaults; `eps_before_correction=True` gives
    `torch.optim.RAdam`. torch's `RAdam(weight_decay=wd)` is coupled L2
    (`add_decayed_weights(wd)` first in the chain) and
    `RAdam(weight_decay=wd, decoupled_weight_decay=True)` is decoupled
    (`add_decayed_weights(wd)` just before `scale_by_learning_rate`).

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        threshold: Smallest rho_t with a rectified step, in [4, inf].
        nesterov: Use the Nesterov form of the first moment.
        eps_before_correction: Divide eps by sqrt(1 - b2**t), as torch does.
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on `scale_by_radam`.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.radam(1e-3)
        >>> [link.name for link in tx.children]
        ['scale_by_radam', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_radam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            threshold=threshold,
            nesterov=nesterov,
            eps_before_correction=eps_before_correction,
            mu_dtype=mu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


def _nadam_link(
    b1: ArrayLike,
    b2: ArrayLike,
    eps: ArrayLike,
    eps_root: ArrayLike,
    mu_dtype: Any,
    momentum_decay: ArrayLike | None,
    nesterov: bool = True,
    fn: str = "nadam",
) -> GradientTransformation:
    check_flag(fn, "nesterov", nesterov)
    if momentum_decay is None:
        return scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
        )
    if not nesterov:
        raise ValueError(
            f"{fn}: nesterov=False is plain Adam and has no momentum_decay; "
            "leave momentum_decay=None"
        )
    return scale_by_nadam(
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        momentum_decay=momentum_decay,
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    *,
    momentum_decay: ArrayLike | None = None,
    nesterov: bool = True,
) -> GradientTransformation:
    """NAdam: Adam with Nesterov momentum, in optax's form or torch's.

    Chain: scale_by_adam(nesterov=True) -> scale_by_learning_rate, which is
    `optax.nadam`; given `momentum_decay` (torch's default is 0.004) the
    first link is scale_by_nadam instead, which is `torch.optim.NAdam`.
    torch's `NAdam(weight_decay=wd)` is coupled L2 (`add_decayed_weights(wd)`
    first in the chain); `NAdam(weight_decay=wd, decoupled_weight_decay=True)`
    is `nadamw`.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        momentum_decay: None for optax's NAdam; a number in [0, inf) for
            torch's momentum schedule with that psi.
        nesterov: True (the default) is NAdam; False turns the first link
            into plain Adam, as optax's `nadam` (Adam with nesterov=True)
            allows. Only with `momentum_decay=None`.

    Returns:
        A `chain`; the equations are on `scale_by_adam` or `scale_by_nadam`.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> [link.name for link in gradtx.nadam(2e-3).children]
        ['scale_by_adam', 'scale_by_learning_rate']
        >>> tx = gradtx.nadam(2e-3, momentum_decay=0.004)
        >>> [link.name for link in tx.children]
        ['scale_by_nadam', 'scale_by_learning_rate']
    """
    fn = "nadam"
    return chain(
        _nadam_link(b1, b2, eps, eps_root, mu_dtype, momentum_decay, nesterov, fn),
        scale_by_learning_rate(learning_rate),
    )


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask = None,
    *,
    momentum_decay: ArrayLike | None = None,
    nesterov: bool = True,
) -> GradientTransformation:
    """NAdam with decoupled weight decay.

    Chain: scale_by_adam(nesterov=True) -> add_decayed_weights ->
    scale_by_learning_rate, which is `optax.nadamw`; given `momentum_decay`
    the first link is scale_by_nadam, which is `torch.optim.NAdam(...,
    decoupled_weight_decay=True)`. Each step is `p -= lr * (nadam_step + wd
    * p)`.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        weight_decay: Decay rate per unit of learning rate, a number in
            [0, inf) or a schedule.
        mask: Leaves to decay, as in `add_decayed_weights`.
        momentum_decay: None for optax's NAdam; a number in [0, inf) for
            torch's momentum schedule with that psi.
        nesterov: True (the default) is NAdam; False turns the first link
            into plain Adam, as optax's `nadam` (Adam with nesterov=True)
            allows. Only with `momentum_decay=None`.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.nadamw(2e-3, weight_decay=1e-2, momentum_decay=4e-3)
        >>> [link.name for link in tx.children]
        ['scale_by_nadam', 'add_decayed_weights', 'scale_by_learning_rate']
    """
    fn = "nadamw"
    return chain(
        _nadam_link(b1, b2, eps, eps_root, mu_dtype, momentum_decay, nesterov, fn),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# other moment estimators: AdaBelief, Yogi, ADOPT, AdEMAMix (links in gradtx/moments.py)


def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-16,
    eps_root: ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdaBelief, with optax's signature and defaults.

    Chain: scale_by_belief -> scale_by_learning_rate. The positional order
    is optax's (`learning_rate, b1, b2, eps, eps_root`); the rest is
    keyword-only. torch.optim has no AdaBelief.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the squared deviation, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added to the second moment at each step, in [0, inf).
        nesterov: Use the Nesterov form of the first moment.
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on `scale_by_belief`.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.adabelief(learning_rate=1e-3)
        >>> [link.name for link in tx.children]
        ['scale_by_belief', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_belief(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


def yogi(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-3,
    *,
    eps_root: ArrayLike = 0.0,
    initial_accumulator_value: ArrayLike = 1e-6,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Yogi, with optax's signature and defaults.

    Chain: scale_by_yogi -> scale_by_learning_rate. The positional order is
    optax's (`learning_rate, b1, b2, eps`); the arguments optax's `yogi`
    does not take are keyword-only. torch.optim has no Yogi.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: Rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        initial_accumulator_value: Starting value of both moments, in
            [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on `scale_by_yogi`.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.yogi(learning_rate=1e-2)
        >>> [link.name for link in tx.children]
        ['scale_by_yogi', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_yogi(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            initial_accumulator_value=initial_accumulator_value,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


def adopt(
    learning_rate: ScalarOrSchedule,
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
    """ADOPT, with optax's (`optax.contrib.adopt`) signature and defaults.

    Chain: scale_by_adopt -> scale_by_learning_rate. The first step does
    not move the parameters: it only measures the second moment. Like
    optax's, it has no weight decay; chain `add_decayed_weights` before
    `scale_by_learning_rate` for a decoupled one. torch.optim has no ADOPT.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Floor of the root of the second moment, in [0, inf).
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nesterov: Use the Nesterov form of the output.
        use_clipping: Clip the normalised gradient to [-c_k, c_k].
        clip_value_fn: The bound c_k as a function of the step count k;
            passed through `inject_hyperparams` unchanged.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on `scale_by_adopt`.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.adopt(learning_rate=1e-3)
        >>> [link.name for link in tx.children]
        ['scale_by_adopt', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_adopt(
            b1=b1,
            b2=b2,
            eps=eps,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask = None,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdEMAMix with decoupled weight decay, with optax's signature and defaults.

    Chain: scale_by_ademamix -> add_decayed_weights -> scale_by_learning_rate,
    so each step is `p -= lr * (ademamix_step + weight_decay * p)`, the
    decay multiplied by the full learning rate as in `adamw`. The positional
    order and defaults are `optax.contrib.ademamix`'s, whose `alpha` default
    (5.0) differs from its `scale_by_ademamix`'s (6.0); both are kept.
    torch.optim has no AdEMAMix.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the fast first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        b3: EMA rate of the slow first moment, in [0, 1), or a schedule.
        alpha: Weight of the slow average, in [0, inf), or a schedule.
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        mu_dtype: Dtype of both first moments; None keeps the params' dtype.
        weight_decay: Decay rate per unit of learning rate, in [0, inf), or a
            schedule.
        mask: Leaves to decay, as in `add_decayed_weights`.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is out of range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.ademamix(learning_rate=1e-3, weight_decay=1e-2)
        >>> [link.name for link in tx.children]
        ['scale_by_ademamix', 'add_decayed_weights', 'scale_by_learning_rate']
    """
    return chain(
        scale_by_ademamix(
            b1=b1,
            b2=b2,
            b3=b3,
            alpha=alpha,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# sign methods: signSGD, Signum, Lion, Rprop (links in gradtx/sign.py)


def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """signSGD: step every coordinate by the learning rate against its sign.

    Chain: scale_by_sign -> scale_by_learning_rate, so each step is
    `p -= lr * sign(g)`, as optax.sign_sgd. torch.optim has no signSGD.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.

    Returns:
        A `chain`; the equation is on `scale_by_sign`.

    Raises:
        ValueError: If `learning_rate` is a negative number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.sign_sgd(0.1)
        >>> [link.name for link in tx.children]
        ['scale_by_sign', 'scale_by_learning_rate']
        >>> tx.update(jnp.array([3.0, -1e-3]), tx.init(jnp.zeros(2)))[0]
        Array([-0.1,  0.1], dtype=float32)

    References:
        Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
        Problems", ICML 2018.
    """
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(
    learning_rate: ScalarOrSchedule,
    beta: ArrayLike = 0.9,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    """Signum: signSGD on an exponential moving average of the gradient.

    Each step is `m = beta * m + (1 - beta) * g` and `p -= lr * sign(m)`, as
    optax.signum (the average is not bias-corrected: a positive factor does
    not change a sign). Chain: scale_by_momentum(decay=beta,
    dampening=beta) -> scale_by_sign -> scale_by_learning_rate: the
    direction is the sign of the average as stored, so a step never points
    against the state it leaves behind. (Lion with `b1 == b2` is the same
    method; `scale_by_lion` compares its two terms instead of summing them,
    which keeps exact ties at zero under `jax.jit` too, at the price of a
    second pass over the moment that this chain does not pay.) torch.optim
    has no Signum.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        beta: EMA rate of the gradient, in [0, 1).
        accumulator_dtype: Dtype of the average; None keeps each param's
            dtype.

    Returns:
        A `chain`; the equations are on `scale_by_momentum` and
        `scale_by_sign`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `accumulator_dtype` is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.signum(0.01, beta=0.9)
        >>> [link.name for link in tx.children]
        ['scale_by_momentum', 'scale_by_sign', 'scale_by_learning_rate']
        >>> state = tx.init(jnp.zeros(1))
        >>> for g in (1.0, -2.0, -20.0):  # averages 0.1, -0.11, -2.099
        ...     u, state = tx.update(jnp.array([g]), state)
        ...     print(round(float(u[0]), 4))
        -0.01
        0.01
        0.01

    References:
        Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
        Problems", ICML 2018.
    """
    check_in_range("signum", "beta", beta, 0.0, 1.0, high_open=True)
    accumulator_dtype = check_dtype("signum", "accumulator_dtype", accumulator_dtype)
    return chain(
        scale_by_momentum(beta, dampening=beta, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
    )


def lion(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.99,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Mask = None,
) -> GradientTransformation:
    """Lion with decoupled weight decay.

    Chain: scale_by_lion -> add_decayed_weights -> scale_by_learning_rate, so
    each step is `p -= lr * (sign(c) + wd * p)`, as optax.lion, whose
    positional order and defaults these are. The update has norm about
    sqrt(n) whatever the gradient's, so Lion wants a learning rate a few
    times smaller than AdamW's and a weight decay as many times larger.

    Coupled decay (the L2 gradient goes into the momentum and the sign, so
    a coordinate never moves by more than lr) is the same links in another
    order::

        gradtx.chain(
            gradtx.add_decayed_weights(weight_decay),
            gradtx.scale_by_lion(b1, b2),
            gradtx.scale_by_learning_rate(learning_rate),
        )

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: Weight of the momentum in the step's direction, in [0, 1].
        b2: EMA rate of the momentum, in [0, 1).
        mu_dtype: Dtype of the momentum; None keeps each param's dtype.
        weight_decay: Decay rate per unit of learning rate, in [0, inf), or
            a schedule.
        mask: Leaves to decay, as in `add_decayed_weights`.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.lion(1e-4, weight_decay=1e-2)
        >>> [link.name for link in tx.children]
        ['scale_by_lion', 'add_decayed_weights', 'scale_by_learning_rate']
        >>> params = jnp.array([1.0, -2.0])
        >>> u, _ = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> [round(float(x), 8) for x in u]  # -lr * (sign(c) + wd * p)
        [-0.000101, -9.8e-05]

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS
        2023.
    """
    return chain(
        scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def rprop(
    learning_rate: ArrayLike,
    eta_minus: ArrayLike = 0.5,
    eta_plus: ArrayLike = 1.2,
    min_step_size: ArrayLike = 1e-6,
    max_step_size: ArrayLike = 50.0,
    *,
    clip_every_step: bool = False,
) -> GradientTransformation:
    """Rprop: resilient backpropagation, one adaptive step size per coordinate.

    Chain: scale_by_rprop -> scale(-1.0): each coordinate moves by its own
    step size against the sign of its gradient. The positional order and the
    defaults are optax.rprop's; `rprop(0.01, clip_every_step=True)` is
    torch.optim.Rprop with its defaults (torch clips the step size at every
    step, which differs only when `learning_rate` lies outside the bounds).
    optax 0.2.8 emits each step one step late (see `scale_by_rprop`); this
    does not.

    Args:
        learning_rate: Initial step size of every coordinate, in [0, inf).
        eta_minus: Factor that shrinks a step size after a sign flip, in
            (0, 1].
        eta_plus: Factor that grows a step size while the sign holds, in
            [1, inf).
        min_step_size: Smallest step size, in [0, inf).
        max_step_size: Largest step size, in [min_step_size, inf].
        clip_every_step: Clip the step size at every step, as torch does.

    Returns:
        A `chain`; the equations are on `scale_by_rprop`.

    Raises:
        TypeError: If `learning_rate` is a function.
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.rprop(0.01)
        >>> [link.name for link in tx.children]
        ['scale_by_rprop', 'scale']
        >>> tx.update(jnp.array([3.0, -1e-3]), tx.init(jnp.zeros(2)))[0]
        Array([-0.01,  0.01], dtype=float32)

    References:
        Riedmiller and Braun, "A direct adaptive method for faster
        backpropagation learning: the RPROP algorithm", ICNN 1993.
    """
    return chain(
        scale_by_rprop(
            learning_rate,
            eta_minus=eta_minus,
            eta_plus=eta_plus,
            min_step_size=min_step_size,
            max_step_size=max_step_size,
            clip_every_step=clip_every_step,
        ),
        scale(-1.0),
    )


# ----------------------------------------------------------------------------
# Adafactor (links in gradtx/factored.py)

_ADAFACTOR_CONVENTIONS = ("optax", "torch")


def _times(rate: ScalarOrSchedule, coefficient: ScalarOrSchedule) -> Any:
    """`rate * coefficient`, a schedule if either is one."""
    if not callable(rate) and not callable(coefficient):
        return rate * coefficient

    def product(count):
        return value_at(rate, count) * value_at(coefficient, count)

    return product


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: ArrayLike = 0.8,
    decay_offset: ArrayLike = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: ArrayLike | None = 1.0,
    momentum: ArrayLike | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: ArrayLike | None = None,
    factored: bool = True,
    weight_decay_mask: Mask = None,
    *,
    min_scale: ArrayLike = 1e-3,
    convention: str = "optax",
) -> GradientTransformation:
    """Adafactor: a factored second moment, clipped steps relative to the params.

    Chain (optax's, the default): scale_by_factored_rms -> [clip_by_block_rms]
    -> [scale(learning_rate), or scale_by_schedule for a schedule] ->
    [scale_by_param_block_rms] -> [scale_by_momentum, an EMA] ->
    [add_decayed_weights] -> scale(-1). The learning rate multiplies the
    clipped step before the parameter scale, the momentum and the weight
    decay, so the decay is independent of the learning rate:
    `p -= lr * rms(p) * clipped_step + weight_decay_rate * p`. With no
    learning rate the step is not scaled at all (as in optax).

    The signature, defaults and positional order are optax.adafactor's;
    `min_scale` and `convention` are keyword-only additions.

    `convention="torch"` gives torch.optim.Adafactor. Chain:
    scale_by_factored_rms(factor_last_axes=True, epsilon_as_floor=True) ->
    [clip_by_block_rms] -> scale_by_param_block_rms(max_relative_step=lr) ->
    [add_decayed_weights(lr * weight_decay_rate)] -> scale(-1). Against the
    optax convention:

    - the learning rate caps the relative step, `rho_t = min(lr, 1/sqrt(t))`
      (None: torch's default 0.01), instead of multiplying the step;
    - every leaf of two or more axes is factored over its last two axes,
      whatever their sizes (optax: the two largest, both at least
      `min_dim_size_to_factor`, which must stay at its default here);
    - `eps` floors the divisors instead of being added to the squared
      gradients (None: the machine epsilon of the params' dtype, torch's
      `eps=(None, ...)`; the optax convention's None is 1e-30);
    - the weight decay is multiplied by the learning rate,
      `p -= lr * weight_decay_rate * p`, as torch's `weight_decay`.

    The rest maps one to one: torch's `beta2_decay` is `-decay_rate`, `d` is
    `clipping_threshold`, `eps=(eps1, eps2)` is `eps=eps1, min_scale=eps2`.

    Args:
        learning_rate: A number in [0, inf) or a schedule; None for none
            (optax) or 0.01 (torch convention).
        min_dim_size_to_factor: Factor a leaf only if its two largest axes
            both have at least this many elements, in [0, inf).
        decay_rate: Exponent of the second moment's decay schedule
            `beta_t = 1 - t**(-decay_rate)`, in [0, inf).
        decay_offset: Steps before that schedule starts, in [0, inf).
        multiply_by_parameter_scale: Multiply the step by the root mean
            square of each parameter (at least `min_scale`).
        clipping_threshold: Largest root mean square of a leaf's step
            before the learning rate, in [1, inf]; None for no clipping.
        momentum: EMA rate of the steps, in [0, 1), or None for none.
        dtype_momentum: Dtype of the momentum buffer.
        weight_decay_rate: Decay rate, a number in [0, inf) or a schedule;
            None for none.
        eps: In [0, inf): added to the squared gradients (optax) or the
            floor of the divisors (torch). None: the convention's default.
        factored: Factor the second moment at all.
        weight_decay_mask: Leaves to decay, as in `add_decayed_weights`.
        min_scale: Floor of the parameter scale, in [0, inf).
        convention: "optax" or "torch", as above.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is out of range, `convention` is
            unknown, or the torch convention is given a
            `min_dim_size_to_factor` or no parameter scale.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.adafactor(learning_rate=1e-2)
        >>> for link in tx.children:
        ...     print(link.name)
        scale_by_factored_rms
        clip_by_block_rms
        scale
        scale_by_param_block_rms
        scale
        >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 1.0]])}
        >>> u, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
        >>> round(float(u["w"][0, 0]), 5)  # -lr * rms(w) * sign(g)
        -0.0125
        >>> torch_form = gradtx.adafactor(1e-2, convention="torch")
        >>> [link.name for link in torch_form.children][1:]
        ['clip_by_block_rms', 'scale_by_param_block_rms', 'scale']

    References:
        Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear
        Memory Cost", ICML 2018.
    """
    fn = "adafactor"
    if convention not in _ADAFACTOR_CONVENTIONS:
        raise ValueError(
            f"{fn}: convention must be one of {list(_ADAFACTOR_CONVENTIONS)}, "
            f"got {convention!r}"
        )
    check_in_range(fn, "learning_rate", learning_rate, 0.0)
    min_size = check_count(fn, "min_dim_size_to_factor", min_dim_size_to_factor, 0)
    check_in_range(fn, "decay_rate", decay_rate, 0.0)
    check_in_range(fn, "decay_offset", decay_offset, 0.0)
    check_flag(fn, "multiply_by_parameter_scale", multiply_by_parameter_scale)
    check_in_range(fn, "clipping_threshold", clipping_threshold, 1.0, allow_inf=True)
    check_in_range(fn, "momentum", momentum, 0.0, 1.0, high_open=True)
    check_in_range(fn, "weight_decay_rate", weight_decay_rate, 0.0)
    check_in_range(fn, "eps", eps, 0.0)
    check_flag(fn, "factored", factored)
    check_in_range(fn, "min_scale", min_scale, 0.0)
    torch = convention == "torch"
    if torch and min_size != 128:
        raise ValueError(
            f"{fn}: min_dim_size_to_factor belongs to the optax convention; the "
            "torch convention factors every leaf of two or more axes (build the "
            "chain from scale_by_factored_rms for another rule)"
        )
    if torch and not multiply_by_parameter_scale:
        raise ValueError(
            f"{fn}: the torch convention's step is relative to the parameter "
            "scale; multiply_by_parameter_scale=False needs convention='optax'"
        )

    if torch:
        rate: ScalarOrSchedule = 0.01 if learning_rate is None else learning_rate
        links = [
            scale_by_factored_rms(
                factored,
                decay_rate,
                decay_offset,
                0,
                eps,
                factor_last_axes=True,
                epsilon_as_floor=True,
            ),
        ]
        if clipping_threshold is not None:
            links.append(clip_by_block_rms(clipping_threshold))
        links.append(scale_by_param_block_rms(min_scale, max_relative_step=rate))
        decay = None if weight_decay_rate is None else _times(rate, weight_decay_rate)
    else:
        links = [
            scale_by_factored_rms(
                factored,
                decay_rate,
                decay_offset,
                min_size,
                1e-30 if eps is None else eps,
            ),
        ]
        if clipping_threshold is not None:
            links.append(clip_by_block_rms(clipping_threshold))
        if callable(learning_rate):
            links.append(scale_by_schedule(learning_rate))
        elif learning_rate is not None:
            links.append(scale(learning_rate))
        if multiply_by_parameter_scale:
            links.append(scale_by_param_block_rms(min_scale))
        decay = weight_decay_rate
    if momentum is not None:
        links.append(
            scale_by_momentum(
                momentum, dampening=momentum, accumulator_dtype=dtype_momentum
            )
        )
    if decay is not None:
        links.append(add_decayed_weights(decay, mask=weight_decay_mask))
    links.append(scale(-1.0))
    return chain(*links)


# ----------------------------------------------------------------------------
# per-layer scaling: LAMB, LARS, NovoGrad (links in gradtx/layerwise.py)


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-6,
    eps_root: ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask = None,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """LAMB: Adam's step plus decoupled decay, rescaled per leaf by a trust ratio.

    Chain: scale_by_adam -> add_decayed_weights -> scale_by_trust_ratio ->
    scale_by_learning_rate. Per leaf the step is `p -= lr * ||p|| / ||r|| *
    r` with `r = adam_step + weight_decay * p`, so each layer moves by the
    fraction `lr` of its own norm. The positional order and defaults are
    optax's (`eps=1e-6`); the dtypes are keyword-only.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to Adam's denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        weight_decay: Decay rate added after Adam's scaling, a number in
            [0, inf) or a schedule.
        mask: Leaves to decay, as in `add_decayed_weights`; None decays all.
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.
        nu_dtype: Dtype of the second moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.lamb(learning_rate=1e-3, weight_decay=1e-2)
        >>> [link.name for link in tx.children]  # doctest: +NORMALIZE_WHITESPACE
        ['scale_by_adam', 'add_decayed_weights', 'scale_by_trust_ratio',
         'scale_by_learning_rate']

    References:
        You et al., "Large Batch Optimization for Deep Learning: Training
        BERT in 76 minutes", ICLR 2020.
    """
    return chain(
        scale_by_adam(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Mask = True,
    trust_coefficient: ArrayLike = 0.001,
    eps: ArrayLike = 0.0,
    trust_ratio_mask: Mask = True,
    momentum: ArrayLike = 0.9,
    nesterov: bool = False,
    *,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """LARS: SGD with momentum on a per-leaf trust-ratio learning rate.

    Chain: add_decayed_weights -> masked(scale_by_trust_ratio) ->
    scale_by_learning_rate -> scale_by_momentum. Per leaf, with `r = g +
    weight_decay * p`, the momentum buffer receives `-lr *
    trust_coefficient * ||p|| / (||r|| + eps) * r`; the learning rate is
    applied before the momentum, as in optax. The decay sits inside the
    trust ratio's norm (the paper puts `weight_decay * ||p||` in the
    denominator instead). The positional order and defaults are optax's;
    `mu_dtype` is keyword-only.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        weight_decay: L2 coefficient added to the gradient, a number in
            [0, inf) or a schedule.
        weight_decay_mask: Leaves to decay: a bool tree (or prefix, `True`
            for all) or a function of the params returning one.
        trust_coefficient: Multiplier of the trust ratio, in (0, inf).
        eps: Added to the update norm in the trust ratio, in [0, inf).
        trust_ratio_mask: Leaves to rescale by the trust ratio, given like
            `weight_decay_mask`; the others keep the plain learning rate.
        momentum: Momentum decay, in [0, 1); 0 for none.
        nesterov: Use Nesterov momentum.
        mu_dtype: Dtype of the momentum buffer; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.lars(learning_rate=0.1, weight_decay=1e-4)
        >>> [link.name for link in tx.children]  # doctest: +NORMALIZE_WHITESPACE
        ['add_decayed_weights', 'masked', 'scale_by_learning_rate',
         'scale_by_momentum']

    References:
        You, Gitman and Ginsburg, "Large Batch Training of Convolutional
        Networks", 2017.
    """
    check_flag("lars", "nesterov", nesterov)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(
            scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
            mask=trust_ratio_mask,
        ),
        scale_by_learning_rate(learning_rate),
        scale_by_momentum(
            decay=momentum, nesterov=nesterov, accumulator_dtype=mu_dtype
        ),
    )


def novograd(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.25,
    eps: ArrayLike = 1e-6,
    eps_root: ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    *,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """NovoGrad: layer-wise normalised gradients with momentum.

    Chain: scale_by_novograd -> scale_by_learning_rate. The weight decay is
    added inside the momentum, after the normalisation, as in the paper and
    optax. The positional order and defaults are optax's (`eps=1e-6` here,
    1e-8 on the link); `mu_dtype` is keyword-only.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        b1: Momentum decay, in [0, 1).
        b2: EMA rate of the squared gradient norm, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added under the root, in [0, inf).
        weight_decay: Coefficient of the weight term inside the momentum, a
            number in [0, inf) or a schedule.
        mu_dtype: Dtype of the first moment; None keeps the params' dtype.

    Returns:
        A `chain`; the equations are on `scale_by_novograd`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.novograd(learning_rate=0.01, weight_decay=1e-3)
        >>> [link.name for link in tx.children]
        ['scale_by_novograd', 'scale_by_learning_rate']

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise
        Adaptive Moments for Training of Deep Networks", 2019.
    """
    return chain(
        scale_by_novograd(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            weight_decay=weight_decay,
            mu_dtype=mu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# schedule-free: AdamW and SGD (the wrapper is in gradtx/averaging.py)


def _warmed_up(fn: str, learning_rate: Any, warmup_steps: int | None) -> Any:
    """`learning_rate`, or a linear ramp from 0 to it over `warmup_steps`."""
    if warmup_steps is None:
        return learning_rate
    warmup_steps = check_count(fn, "warmup_steps", warmup_steps, 0)
    if callable(learning_rate):
        raise TypeError(
            f"{fn}: with warmup_steps, learning_rate must be a number (the peak "
            "rate); put a warmup into the schedule itself instead"
        )
    if warmup_steps == 0:
        return learning_rate
    return linear_schedule(0.0, learning_rate, warmup_steps)


def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_lr_power: ArrayLike = 2.0,
    state_dtype: Any = None,
    *,
    mask: Mask = None,
) -> GradientTransformation:
    """Schedule-free AdamW: Adam without momentum, made schedule-free.

    Chain: schedule_free(scale_by_rms(bias_correction=True) ->
    add_decayed_weights -> scale_by_learning_rate). The base chain divides
    each gradient by the root of Adam's bias-corrected second moment (Adam
    with b1 = 0, keeping no first moment), adds the decoupled decay
    `weight_decay * y` at the gradient point y, and scales by the learning
    rate; `schedule_free` then averages and interpolates (equations there).
    `b1` is the interpolation weight, not a moment rate. Evaluate at
    `schedule_free_eval_params(state, params)`.

    The names, order and defaults are optax.contrib's `schedule_free_adamw`,
    whose base chain is the same.

    Args:
        learning_rate: Peak step size, a number in [0, inf), or a schedule
            (then without `warmup_steps`).
        warmup_steps: Length of a linear warmup from 0 to `learning_rate`, an
            int in [0, inf), or None for none.
        b1: Weight of the average x in the gradient point y, in (0, 1].
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        weight_decay: Decoupled decay rate per unit of learning rate, a
            number in [0, inf) or a schedule.
        weight_lr_power: Power of the learning rate in the averaging weight,
            in [0, inf).
        state_dtype: Dtype of z; None keeps each param's dtype.
        mask: Leaves to decay, as in `add_decayed_weights`.

    Returns:
        A `schedule_free` wrapper around the chain.

    Raises:
        ValueError: If a hyperparameter is out of range.
        TypeError: If `warmup_steps` is given with a schedule.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.schedule_free_adamw(1e-3, warmup_steps=100, weight_decay=1e-4)
        >>> [link.name for link in tx.hyperparams["base_optimizer"].children]
        ['scale_by_rms', 'add_decayed_weights', 'scale_by_learning_rate']

    References:
        Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """
    fn = "schedule_free_adamw"
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    lr = _warmed_up(fn, learning_rate, warmup_steps)
    base = chain(
        scale_by_rms(decay=b2, eps=eps, bias_correction=True),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(lr),
    )
    return schedule_free(
        base,
        learning_rate=lr,
        b1=b1,
        weight_lr_power=weight_lr_power,
        state_dtype=state_dtype,
    )


def schedule_free_sgd(
    learning_rate: ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: ArrayLike = 0.9,
    weight_decay: ScalarOrSchedule | None = None,
    weight_lr_power: ArrayLike = 2.0,
    state_dtype: Any = None,
    *,
    mask: Mask = None,
) -> GradientTransformation:
    """Schedule-free SGD: plain gradient steps on z, averaged and interpolated.

    Chain: schedule_free([add_decayed_weights ->] scale_by_learning_rate).
    The base step is `-lr * (g + weight_decay * y)`: the decay, if any, is
    coupled (added to the gradient taken at y), as in optax.contrib's
    `schedule_free_sgd`, whose names, order and defaults these are. The
    averaging and interpolation are on `schedule_free`. Evaluate at
    `schedule_free_eval_params(state, params)`.

    Args:
        learning_rate: Peak step size, a number in [0, inf), or a schedule
            (then without `warmup_steps`).
        warmup_steps: Length of a linear warmup from 0 to `learning_rate`, an
            int in [0, inf), or None for none.
        b1: Weight of the average x in the gradient point y, in (0, 1].
        weight_decay: Coupled L2 decay rate, a number in [0, inf) or a
            schedule, or None for no decay link.
        weight_lr_power: Power of the learning rate in the averaging weight,
            in [0, inf).
        state_dtype: Dtype of z; None keeps each param's dtype.
        mask: Leaves to decay, as in `add_decayed_weights`.

    Returns:
        A `schedule_free` wrapper around the chain.

    Raises:
        ValueError: If a hyperparameter is out of range.
        TypeError: If `warmup_steps` is given with a schedule.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.schedule_free_sgd(0.5, weight_decay=1e-3)
        >>> [link.name for link in tx.hyperparams["base_optimizer"].children]
        ['add_decayed_weights', 'scale_by_learning_rate']

    References:
        Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """
    fn = "schedule_free_sgd"
    lr = _warmed_up(fn, learning_rate, warmup_steps)
    decay = [] if weight_decay is None else [add_decayed_weights(weight_decay, mask)]
    base = chain(*decay, scale_by_learning_rate(lr))
    return schedule_free(
        base,
        learning_rate=lr,
        b1=b1,
        weight_lr_power=weight_lr_power,
        state_dtype=state_dtype,
    )


# ----------------------------------------------------------------------------
# learning-rate-free: Prodigy (its link in gradtx/self_tuning.py)


def prodigy(
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
    """Prodigy: AdamW whose step size d is estimated as it goes.

    Chain: scale_by_prodigy -> scale_by_learning_rate, each given the same
    `learning_rate`, so each step is `p -= lr * d * c_t * (adam_step +
    weight_decay * p)` with the estimate d and Adam's bias correction c_t
    (the equations are on `scale_by_prodigy`). The learning rate is a
    multiplier on d: keep it at 1.0, or give a schedule that starts at (or
    warms up to) 1.0 and decays, such as a cosine or linear decay to 0.

    The signature, defaults and positional order are optax's
    `optax.contrib.prodigy` (0.2.8), and the steps are the same; only
    `mu_dtype` and `nu_dtype` are added. torch.optim has no Prodigy.

    Args:
        learning_rate: Multiplier on d, a number in [0, inf) or a schedule.
        betas: (b1, b2), the EMA rates of Adam's two moments, each in [0, 1).
        beta3: EMA rate of the sums behind d, in [0, 1); None is sqrt(b2).
        eps: Added to the root of the second moment (times d), in [0, inf).
        estim_lr0: The first estimate d_0, in (0, inf): an underestimate.
        estim_lr_coef: Multiplies every new estimate, in [0, inf).
        weight_decay: Decoupled decay in units of d, in [0, inf).
        safeguard_warmup: Leave the learning rate out of the denominator of
            the estimate (for a warmup from 0).
        mu_dtype: Dtype of the first moment; None keeps each param's dtype,
            except float32 for float16 params (see `nu_dtype`).
        nu_dtype: Dtype of the second moment; None keeps each param's dtype,
            except float32 for float16 params: both moments and the sum s
            hold d * g with d near estim_lr0 = 1e-6 at first, and in float16
            (d * g)**2 underflows to 0, which would make the first steps
            huge. Pass float16 explicitly to keep them in float16.

    Returns:
        A `chain`; the equations are on its links. Its update needs `params`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` or `nu_dtype` is not a floating-point dtype.
        TypeError: If `betas` is not a pair or `safeguard_warmup` not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx import prodigy
        >>> tx = prodigy(gradtx.cosine_decay_schedule(1.0, 1000))
        >>> [link.name for link in tx.children]
        ['scale_by_prodigy', 'scale_by_learning_rate']
        >>> params = jnp.array([1.0, -1.0])
        >>> u, state = tx.update(jnp.array([0.5, -2.0]), tx.init(params), params)
        >>> [round(float(x) / 1e-6, 4) for x in u]  # -lr * d_0 * sign(g)
        [-1.0, 1.0]

    References:
        Mishchenko and Defazio, "Prodigy: An Expeditiously Adaptive
        Parameter-Free Learner", ICML 2024 (arXiv:2306.06101, 2023).
    """
    return chain(
        scale_by_prodigy(
            learning_rate,
            betas,
            beta3,
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# Muon (its links in gradtx/orthogonal.py)


def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: Sequence[Any] | str = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: ArrayLike = 0.95,
    eps: ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Mask = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: ArrayLike = 0.9,
    adam_b2: ArrayLike = 0.999,
    adam_eps_root: ArrayLike = 0.0,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: DimensionNumbers = None,
    consistent_rms: ArrayLike | None = None,
    convention: str = "optax",
    adjust_lr_fn: str | None = None,
    ns_dtype: Any = None,
) -> GradientTransformation:
    """Muon for the matrices, AdamW for every other leaf.

    Chain, per parameter group (`multi_transform`), the matrices chosen by
    `muon_weight_dimension_numbers` (by default: every 2-D leaf):

    - "muon": scale_by_muon_momentum -> orthogonalize -> scale_by_shape ->
      add_decayed_weights -> scale_by_learning_rate, so each matrix moves by
      `-lr * (shape_factor * NS(momentum) + weight_decay * p)`;
    - "adam": scale_by_adam -> add_decayed_weights -> scale_by_learning_rate
      (AdamW with `adam_*`, `eps` and `nesterov`, as in optax).

    The arguments, their order and defaults are optax.contrib.muon's: flax's
    `(in, out)` kernels, debiased Nesterov momentum, `eps` added to the norm.
    `convention="torch"` gives torch.optim.Muon's form instead: its momentum
    (a plain EMA `m`, the step `lerp(g, m, beta)`), the norm clamped at
    `eps`, 2-D leaves read as torch's `(out, in)` weights for the shape
    factor, and plain (non-Nesterov) AdamW for the other leaves. Its
    decoupled decay `p *= 1 - lr * wd` is this same chain. torch's defaults
    differ (`weight_decay=0.1`, `eps=1e-7`): pass them to match. torch runs
    the iteration in bfloat16; `ns_dtype=jnp.bfloat16` does too.

    Args:
        learning_rate: Step size, a number in [0, inf) or a schedule.
        ns_coeffs: Newton-Schulz coefficients (a, b, c), a table of them or a
            preset name, as in `orthogonalize`.
        ns_steps: Newton-Schulz iterations, an int >= 1.
        beta: EMA rate of the momentum, in [0, 1).
        eps: Added to the norm before the iteration (and AdamW's eps), in
            [0, inf).
        weight_decay: Decoupled decay of the matrices, in [0, inf), or a
            schedule.
        weight_decay_mask: Matrices to decay, as in `add_decayed_weights`
            (a function of the params is called on the matrices' tree).
        mu_dtype: Dtype of both momenta; None keeps the params' dtype.
        nesterov: Nesterov momentum (for AdamW too, under optax's
            convention).
        adaptive: Scale by the dual norm, as in `orthogonalize`.
        preconditioning: "frobenius" or "spectral" (optax's "aol" and
            "schatten" are not offered).
        adam_b1: AdamW's first-moment rate, in [0, 1).
        adam_b2: AdamW's second-moment rate, in [0, 1).
        adam_eps_root: AdamW's eps under the root, in [0, inf).
        adam_weight_decay: AdamW's decoupled decay, in [0, inf).
        adam_learning_rate: AdamW's step size; None for `learning_rate`.
        muon_weight_dimension_numbers: Which leaves are matrices and how
            (see `orthogonalize`; None entries go to AdamW); a function of
            the params such as `muon_dimension_numbers` also works. None:
            2-D leaves are matrices.
        consistent_rms: Target RMS of the matrices' updates, or None for
            width scaling, as in `scale_by_shape`.
        convention: "optax" or "torch", as above.
        adjust_lr_fn: torch's name for the shape factor, as in
            `scale_by_shape`.
        ns_dtype: Dtype of the iteration; None for at least float32.

    Returns:
        A `multi_transform` of two `chain`s; the equations are on the links.

    Raises:
        ValueError: If a hyperparameter is outside its range or a string
            argument is not one of its choices.
        TypeError: If a flag is not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import muon
        >>> tx = muon(0.02)
        >>> [link.name for link in tx.hyperparams["transforms"]["muon"].children]
        ['scale_by_muon_momentum', 'orthogonalize', 'scale_by_shape', \
'add_decayed_weights', 'scale_by_learning_rate']
        >>> params = {"w": jnp.eye(2), "b": jnp.zeros(2)}
        >>> u, _ = tx.update(params, tx.init(params), params)
        >>> jnp.round(u["w"], 3)
        Array([[-0.022, -0.   ],
               [-0.   , -0.022]], dtype=float32)

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural
        networks", 2024, https://kellerjordan.github.io/posts/muon/.
        Liu et al., "Muon is Scalable for LLM Training", 2025,
        arXiv:2502.16982.
    """
    fn = "muon"
    if convention not in CONVENTIONS:
        raise ValueError(
            f"{fn}: convention must be 'optax' or 'torch', got {convention!r}"
        )
    check_flag(fn, "nesterov", nesterov)
    if not callable(learning_rate):
        check_in_range(fn, "learning_rate", learning_rate, 0.0)
    check_in_range(fn, "weight_decay", weight_decay, 0.0)
    check_in_range(fn, "adam_weight_decay", adam_weight_decay, 0.0)
    if adam_learning_rate is not None and not callable(adam_learning_rate):
        check_in_range(fn, "adam_learning_rate", adam_learning_rate, 0.0)
    torch_form = convention == "torch"
    layout = "out_in" if torch_form else "in_out"
    dims = muon_weight_dimension_numbers
    check_dims_argument(fn, dims)

    def labels(params: Params) -> Any:
        per_leaf = dims_per_leaf(fn, dims, params, layout)
        treedef = jax.tree.structure(params)
        return treedef.unflatten(["adam" if d is None else "muon" for d in per_leaf])

    matrices = chain(
        scale_by_muon_momentum(
            beta, nesterov=nesterov, debias=not torch_form, mu_dtype=mu_dtype
        ),
        orthogonalize(
            ns_coeffs,
            ns_steps,
            eps,
            weight_dimension_numbers=dims,
            layout=layout,
            preconditioning=preconditioning,
            clamp_norm=torch_form,
            adaptive=adaptive,
            ns_dtype=ns_dtype,
        ),
        scale_by_shape(dims, consistent_rms, layout=layout, adjust_lr_fn=adjust_lr_fn),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    others = chain(
        scale_by_adam(
            adam_b1,
            adam_b2,
            eps,
            adam_eps_root,
            mu_dtype,
            nesterov=nesterov and not torch_form,
        ),
        add_decayed_weights(adam_weight_decay),
        scale_by_learning_rate(
            learning_rate if adam_learning_rate is None else adam_learning_rate
        ),
    )
    return multi_transform({"muon": matrices, "adam": others}, labels)


# ----------------------------------------------------------------------------
# L-BFGS (its links in gradtx/quasi_newton.py)


# optax.lbfgs's default search: 'one' as the first trial, since the L-BFGS
# direction is already scaled like a Newton step.
_LBFGS_LINESEARCH = scale_by_zoom_linesearch(
    max_linesearch_steps=20, initial_guess_strategy="one"
)


def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = _LBFGS_LINESEARCH,
    *,
    convention: str = "optax",
) -> GradientTransformation:
    """L-BFGS: a quasi-Newton direction and a strong-Wolfe line search.

    Chain: scale_by_lbfgs -> scale(-1) (or scale_by_learning_rate when
    `learning_rate` is given) -> linesearch (when not None). One `update` is
    one L-BFGS iteration: it needs `params` and the keyword extras of the
    line search, `value_fn=` (the objective), and `value=`, `grad=` at the
    params (computed by the line search when omitted). Arguments, their
    order and defaults are optax.lbfgs's; `convention` is a keyword-only
    addition.

    How it differs from torch.optim.LBFGS (each `torch.optim.LBFGS.step`
    with `max_iter=1` is one `update` here):

    - memory: `memory_size=10` here (optax's default), `history_size=100`
      in torch.
    - first step: here the direction is g / max(1, |g|_2) and the line
      search starts at 1; torch steps `lr * min(1, 1 / |g|_1)` along -g.
    - curvature pairs: torch stores a pair only when s'y > 1e-10 and keeps
      the previous gamma otherwise; here (optax's rule) every pair is
      stored, one with s'y == 0 with weight 0 and one with s'y < 0 with its
      negative weight (a successful strong-Wolfe search gives s'y > 0).
    - line search: torch has none by default (a fixed step `lr`) and its
      own strong-Wolfe search with `line_search_fn="strong_wolfe"` (not
      reproduced here); here the zoom search is the default and
      `linesearch=None` gives fixed steps.
    - stopping: torch's `step(closure)` runs up to `max_iter=20` iterations
      per call and stops early on `tolerance_grad` (max |g| <= 1e-7) or
      `tolerance_change`; here each `update` is one iteration and the
      caller's loop decides when to stop.

    `convention="torch"` takes torch's first step and pair rule (see
    `scale_by_lbfgs`), so that `lbfgs(lr, memory_size=h, linesearch=None,
    convention="torch")` is `torch.optim.LBFGS(params, lr, max_iter=1,
    history_size=h)` step for step.

    Args:
        learning_rate: None (the line search alone sets the step), or a
            fixed step in [0, inf) or a schedule multiplying the direction
            before the line search.
        memory_size: Number of (s, y) pairs kept, an int >= 1.
        scale_init_precond: Scale the initial inverse Hessian by s'y / y'y.
        linesearch: The line search link, or None for none.
        convention: "optax" (the default) or "torch": the direction's first
            step and curvature-pair rule, as above.

    Returns:
        A `chain`; the equations are on its links.

    Raises:
        ValueError: If a hyperparameter is outside its range or `convention`
            is unknown.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> def f(w):
        ...     return jnp.sum(jnp.array([1.0, 10.0]) * (w - 2.0) ** 2)
        >>> tx = gradtx.lbfgs()
        >>> [link.name for link in tx.children]
        ['scale_by_lbfgs', 'scale', 'scale_by_zoom_linesearch']
        >>> @jax.jit
        ... def step(w, state):
        ...     value, grad = jax.value_and_grad(f)(w)
        ...     u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
        ...     return gradtx.apply_updates(w, u), state
        >>> w = jnp.zeros(2)
        >>> state = tx.init(w)
        >>> for _ in range(5):
        ...     w, state = step(w, state)
        >>> [round(float(x), 4) for x in w]
        [2.0, 2.0]

    References:
        Nocedal and Wright, "Numerical Optimization", 2nd ed., Springer 2006,
        Algorithms 3.5, 3.6, 7.4 and 7.5.
    """
    if learning_rate is None:
        step = scale(-1.0)
    else:
        step = scale_by_learning_rate(learning_rate)
    return chain(
        scale_by_lbfgs(
            memory_size=memory_size,
            scale_init_precond=scale_init_precond,
            convention=convention,
        ),
        step,
        identity() if linesearch is None else linesearch,
    )
