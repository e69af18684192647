"""The classic optimizers, each one chain of transformations.

Every alias returns a plain `chain`, so `print(optimizer)` shows the links it
is made of, and the equations live on those links.
"""

from __future__ import annotations

from typing import Any

from gradtx._checks import check_flag, check_in_range
from gradtx.base import ArrayLike, GradientTransformation, ScalarOrSchedule, chain
from gradtx.decay import Mask, add_decayed_weights
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


def _momentum_links(
    fn: str, momentum: ArrayLike | None, nesterov: bool, dampening: ArrayLike = 0.0
) -> list[GradientTransformation]:
    check_flag(fn, "nesterov", nesterov)
    if momentum is None:
        if nesterov or (isinstance(dampening, int | float) and dampening != 0):
            raise ValueError(
                f"{fn}: nesterov and dampening need a momentum; pass momentum=0.9 "
                "(for example) or leave them at their defaults"
            )
        return []
    return [scale_by_momentum(decay=momentum, nesterov=nesterov, dampening=dampening)]


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ArrayLike | None = None,
    nesterov: bool = False,
    *,
    dampening: ArrayLike = 0.0,
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
    return chain(
        *_momentum_links("sgd", momentum, nesterov, dampening),
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
        scale_by_rms(decay=decay, eps=eps, eps_in_sqrt=eps_in_sqrt, centered=centered),
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
    learning_rate: ScalarOrSchedule = 1.0, rho: ArrayLike = 0.9, eps: ArrayLike = 1e-6
) -> GradientTransformation:
    """Adadelta, which needs no learning rate (it defaults to 1).

    Chain: scale_by_adadelta -> scale_by_learning_rate, so the default
    descends (optax's `adadelta()` without a learning rate ascends).

    Args:
        learning_rate: Multiplier of Zeiler's step, 1.0 in the paper.
        rho: EMA rate of both averages, in [0, 1).
        eps: Conditioning constant, in (0, inf).

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
    return chain(
        scale_by_adadelta(rho=rho, eps=eps), scale_by_learning_rate(learning_rate)
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
