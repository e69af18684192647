"""Transformations that rescale updates: by constants, schedules and moments.

Every equation runs in at least float32 (`compute_dtype`) and each result is
rounded once to the dtype it is stored in: updates keep the dtype of the
incoming updates, moments the dtype they were created with.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradtx._checks import check_dtype, check_flag, check_in_range, check_same_tree
from gradtx.base import (
    ArrayLike,
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
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

# scale_by_rms has an argument named bias_correction, like optax's.
_one_minus_power = bias_correction


def adam_factors(
    b1: ArrayLike, b2: ArrayLike, nesterov: bool, t: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """What Adam multiplies by in place of dividing by its bias corrections.

    Returns `(m_factor, g_factor, v_factor)` in `dtype` for step `t`:
    `m_hat = m * m_factor` (plus `g * g_factor` with Nesterov; None
    otherwise) and `v_hat = v * v_factor`. Each correction is cast to `dtype`
    before its reciprocal is taken. Code that runs Adam's step another way
    takes these, so that it multiplies by the same scalars.
    """
    inv_c1 = 1 / bias_correction(b1, t).astype(dtype)
    inv_c2 = 1 / bias_correction(b2, t).astype(dtype)
    if not nesterov:
        return inv_c1, None, inv_c2
    inv_c1_next = 1 / bias_correction(b1, t + 1).astype(dtype)
    return inv_c1_next * b1, inv_c1 * (1 - b1), inv_c2


def _multiply(updates: Updates, factor: ArrayLike) -> Updates:
    def leaf(g):
        return (g.astype(compute_dtype(g)) * factor).astype(g.dtype)

    return jax.tree.map(leaf, updates)


def optax_spelling(
    renames: Mapping[str, str], quiet_defaults: Mapping[str, Any] | None = None
) -> Callable[[Callable[..., GradientTransformation]], Any]:
    """Let a `described` factory also take optax's keyword names.

    `renames` maps an optax keyword to the gradtx argument of the same
    meaning: the optax one becomes a keyword-only alias, and giving both is a
    TypeError naming both. Arguments listed in `quiet_defaults` are left out
    of `describe` while they hold that default, so that printing a chain is
    unchanged for code that never sets them. The built transformation names
    the decorated function as its factory.
    """
    quiet = dict(quiet_defaults or {})

    def decorate(factory: Callable[..., GradientTransformation]) -> Any:
        signature = inspect.signature(factory)
        fn = factory.__name__

        @functools.wraps(factory)
        def build(*args, **kwargs):
            for optax_name, name in renames.items():
                if optax_name not in kwargs:
                    continue
                value = kwargs.pop(optax_name)
                if name in signature.bind_partial(*args, **kwargs).arguments:
                    raise TypeError(
                        f"{fn}: {name}= and its optax spelling {optax_name}= "
                        "mean the same thing; give one of them"
                    )
                kwargs[name] = value
            tx = factory(*args, **kwargs)
            shown = {
                k: v
                for k, v in tx.hyperparams.items()
                if not (k in quiet and _is_value(v, quiet[k]))
            }
            return GradientTransformation(
                tx.init,
                tx.update,
                name=tx.name,
                factory=build,
                children=tx.children,
                hyperparams=shown,
            )

        parameters = list(signature.parameters.values())
        tail = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
        head = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
        aliases = [
            inspect.Parameter(
                optax_name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=signature.parameters[name].annotation,
            )
            for optax_name, name in renames.items()
        ]
        build.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*head, *aliases, *tail]
        )
        return build

    return decorate


def _is_value(value: Any, default: Any) -> bool:
    """Whether `value` is the Python constant `default` (not an array)."""
    return isinstance(value, bool | int | float | type(None)) and value == default


# ----------------------------------------------------------------------------
# constants and schedules


@optax_spelling({"step_size": "factor"})
@described
def scale(factor: ArrayLike) -> GradientTransformation:
    """Multiply updates by a constant.

    Per leaf::

        u = factor * g

    Args:
        factor: The multiplier; any real number (negative flips the sign).
            optax's name for it, `step_size=`, is accepted too.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale(0.5)
        >>> tx.update(jnp.array([2.0, -4.0]), tx.init(None))[0]
        Array([ 1., -2.], dtype=float32)
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        return _multiply(updates, factor), state

    return GradientTransformation(init, update)


class ScaleByScheduleState(NamedTuple):
    """State of `scale_by_schedule`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_schedule(lambda t: 0.5**t)
        >>> _, state = tx.update(jnp.ones(2), tx.init(None))
        >>> state.count
        Array(1, dtype=int32)
    """

    count: jax.Array  # int32 scalar: updates applied so far


class ScaleByLearningRateState(NamedTuple):
    """State of `scale_by_learning_rate` when the rate is a schedule.

    Examples:
        >>> import gradtx
        >>> gradtx.scale_by_learning_rate(lambda t: 0.1 / (1 + t)).init(None)
        ScaleByLearningRateState(count=Array(0, dtype=int32))
    """

    count: jax.Array  # int32 scalar: updates applied so far


def _scale_by_step_function(
    schedule: Schedule, sign: float, state_type: type
) -> GradientTransformation:
    def init(params: Params) -> OptState:
        del params
        return state_type(count=jnp.zeros([], jnp.int32))

    def update(
        updates: Updates, state: OptState, params: Params | None = None, **extra
    ) -> tuple[Updates, OptState]:
        del params
        value = jnp.asarray(schedule(state.count))
        factor = -value if sign < 0 else value
        new_state = state_type(count=safe_increment(state.count))
        return _multiply(updates, factor), new_state

    return GradientTransformation(init, update)


@optax_spelling({"step_size_fn": "schedule"})
@described
def scale_by_schedule(schedule: Schedule | ArrayLike) -> GradientTransformation:
    """Multiply updates by a schedule of the step count.

    With t the number of updates already applied (0 at the first update)::

        u_t = schedule(t) * g_t

    Args:
        schedule: A function from the int32 step count to a scalar, or a
            constant (then this is `scale`; `inject_hyperparams` passes
            constants). optax's name for it, `step_size_fn=`, is accepted too.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByScheduleState`.

    Raises:
        TypeError: If `schedule` is neither callable nor a number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_schedule(gradtx.exponential_decay(1.0, 1, 0.5))
        >>> state = tx.init(None)
        >>> for _ in range(3):
        ...     u, state = tx.update(jnp.ones(1), state)
        >>> u
        Array([0.25], dtype=float32)
    """
    if not callable(schedule):
        try:
            constant = jnp.asarray(schedule)
        except TypeError as error:
            raise TypeError(
                "scale_by_schedule: schedule must be a function of the step count "
                f"or a number, got {type(schedule).__name__}"
            ) from error

        return _scale_by_step_function(
            lambda count: constant, 1.0, ScaleByScheduleState
        )
    return _scale_by_step_function(schedule, 1.0, ScaleByScheduleState)


@optax_spelling({}, quiet_defaults={"flip_sign": True})
@described
def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply updates by minus the learning rate, a step that descends.

    With t the number of updates already applied (0 at the first update)::

        u_t = -lr_t * g_t        (u_t = lr_t * g_t with flip_sign=False)

    where lr_t is `learning_rate` itself or `learning_rate(t)` for a schedule.

    Args:
        learning_rate: A number in [0, inf), an array, or a schedule.
        flip_sign: Multiply by minus the rate (the default, a descent step);
            False multiplies by the rate itself, as optax's argument of the
            same name does.

    Returns:
        A `GradientTransformation`; its state is a `ScaleByLearningRateState`
        for a schedule and an `EmptyState` otherwise.

    Raises:
        ValueError: If `learning_rate` is a negative number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_learning_rate(0.1)
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(None))[0]
        Array([-0.1,  0.2], dtype=float32)
    """
    check_flag("scale_by_learning_rate", "flip_sign", flip_sign)
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        return _scale_by_step_function(learning_rate, sign, ScaleByLearningRateState)
    check_in_range("scale_by_learning_rate", "learning_rate", learning_rate, 0.0)
    return scale(-learning_rate if flip_sign else learning_rate)


# ----------------------------------------------------------------------------
# momentum


class ScaleByMomentumState(NamedTuple):
    """State of `scale_by_momentum`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_momentum(decay=0.9)
        >>> _, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
        >>> state.velocity
        {'w': Array([1., 1.], dtype=float32)}
    """

    velocity: Updates  # the momentum buffer v, same tree as the params


@described
def scale_by_momentum(
    decay: ArrayLike = 0.9,
    nesterov: bool = False,
    dampening: ArrayLike = 0.0,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    """Heavy-ball or Nesterov momentum, optionally dampened.

    Per leaf, with v_0 = 0::

        v_t = decay * v_{t-1} + (1 - dampening) * g_t
        u_t = v_t                      (heavy ball)
        u_t = g_t + decay * v_t        (nesterov=True)

    `dampening=0` is the classical buffer of SGD with momentum;
    `dampening=decay` gives the exponential moving average
    m_t = b * m_{t-1} + (1 - b) * g_t.

    Args:
        decay: Momentum coefficient, in [0, 1).
        nesterov: Use the Nesterov look-ahead form.
        dampening: Damping of the incoming update, in [0, 1).
        accumulator_dtype: Dtype of the buffer; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByMomentumState`.

    Raises:
        ValueError: If `decay` or `dampening` is a number outside [0, 1), or
            `accumulator_dtype` is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_momentum(decay=0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> for _ in range(3):
        ...     u, state = tx.update(jnp.ones(1), state)
        >>> u
        Array([1.75], dtype=float32)

    References:
        Polyak, "Some methods of speeding up the convergence of iteration
        methods", 1964. Sutskever et al., "On the importance of initialization
        and momentum in deep learning", ICML 2013.
    """
    fn = "scale_by_momentum"
    check_in_range(fn, "decay", decay, 0.0, 1.0, high_open=True)
    check_in_range(fn, "dampening", dampening, 0.0, 1.0, high_open=True)
    check_flag(fn, "nesterov", nesterov)
    accumulator_dtype = check_dtype(fn, "accumulator_dtype", accumulator_dtype)

    def init(params: Params) -> ScaleByMomentumState:
        return ScaleByMomentumState(velocity=init_like(params, accumulator_dtype))

    def leaf(g, v):
        g_c = g.astype(compute_dtype(g, v))
        v_new = decay * v.astype(g_c.dtype) + (1 - dampening) * g_c
        u = g_c + decay * v_new if nesterov else v_new
        return u.astype(g.dtype), v_new.astype(v.dtype)

    def update(
        updates: Updates,
        state: ScaleByMomentumState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByMomentumState]:
        del params
        check_same_tree(fn, "updates", updates, "state.velocity", state.velocity)
        updates, velocity = map_leaves(leaf, 2, updates, state.velocity)
        return updates, ScaleByMomentumState(velocity=velocity)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# adaptive scalings


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_rms(decay=0.9)
        >>> _, state = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> state.nu, state.mean
        (Array([0.4], dtype=float32), None)
    """

    nu: Updates  # EMA of the squared updates, same tree as the params
    mean: Updates | None  # EMA of the updates when centered, else None
    count: jax.Array | None = None  # int32 steps taken with bias_correction, else None


@optax_spelling({}, quiet_defaults={"bias_correction": False})
@described
def scale_by_rms(
    decay: ArrayLike = 0.9,
    eps: ArrayLike = 1e-8,
    *,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    initial_scale: ArrayLike = 0.0,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Divide updates by the root of an EMA of their squares (RMSProp).

    Per leaf, with nu_0 = initial_scale, mean_0 = 0 and t = 1, 2, ...::

        nu_t   = decay * nu_{t-1} + (1 - decay) * g_t**2
        mean_t = decay * mean_{t-1} + (1 - decay) * g_t      (centered only)
        c_t    = 1 - decay**t if bias_correction else 1
        s_t    = nu_t / c_t - (mean_t / c_t)**2 if centered else nu_t / c_t
        u_t    = g_t / (sqrt(s_t) + eps)                     (default)
        u_t    = g_t / sqrt(s_t + eps)                       (eps_in_sqrt=True)

    The default puts eps outside the root, like torch.optim.RMSprop; optax
    puts it inside. In the centered form round-off can push s_t a hair below
    zero; it is clamped at zero. `bias_correction` (optax's argument of that
    name) divides the averages by c_t as Adam does; with `initial_scale=0`
    and no centring it is `scale_by_adam(b1=0, b2=decay)`.

    Args:
        decay: EMA rate of the squared updates, in [0, 1).
        eps: Added to the denominator, in [0, inf).
        eps_in_sqrt: Add eps under the root instead of after it.
        centered: Divide by an estimate of the standard deviation instead of
            the root mean square (Graves, 2013).
        initial_scale: Initial value of nu, in [0, inf).
        bias_correction: Divide the averages by `1 - decay**t`; the state
            then counts the steps.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByRmsState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_rms(decay=0.75)
        >>> u, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))
        >>> u
        Array([ 2., -2.], dtype=float32)

    References:
        Tieleman and Hinton, "Lecture 6.5 - RMSProp", Coursera, 2012.
        Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
    """
    fn = "scale_by_rms"
    check_in_range(fn, "decay", decay, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "initial_scale", initial_scale, 0.0)
    check_flag(fn, "eps_in_sqrt", eps_in_sqrt)
    check_flag(fn, "centered", centered)
    check_flag(fn, "bias_correction", bias_correction)

    def init(params: Params) -> ScaleByRmsState:
        nu = init_like(params, fill=initial_scale)
        return ScaleByRmsState(
            nu=nu,
            mean=init_like(params) if centered else None,
            count=jnp.zeros([], jnp.int32) if bias_correction else None,
        )

    def denominator(s):
        return jnp.sqrt(s + eps) if eps_in_sqrt else jnp.sqrt(s) + eps

    def update(
        updates: Updates, state: ScaleByRmsState, params: Params | None = None, **extra
    ) -> tuple[Updates, ScaleByRmsState]:
        del params
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = None
        inv_c = None  # 1 / (1 - decay**t), or None without bias correction
        if bias_correction:
            assert state.count is not None, f"{fn}: a state without a count"
            count = safe_increment(state.count)
            t = count.astype(scalar_dtype(updates))
            inv_c = 1 / _one_minus_power(decay, t)

        def corrected(x):
            return x if inv_c is None else x * inv_c.astype(x.dtype)

        def leaf(g, nu):
            g_c = g.astype(compute_dtype(g, nu))
            nu_new = decay * nu.astype(g_c.dtype) + (1 - decay) * abs_sq(g_c)
            u = g_c / denominator(corrected(nu_new))
            return u.astype(g.dtype), nu_new.astype(nu.dtype)

        def centered_leaf(g, nu, mean):
            g_c = g.astype(compute_dtype(g, nu, mean))
            nu_new = decay * nu.astype(g_c.dtype) + (1 - decay) * abs_sq(g_c)
            mean_new = decay * mean.astype(g_c.dtype) + (1 - decay) * g_c
            s = jnp.maximum(corrected(nu_new) - abs_sq(corrected(mean_new)), 0)
            u = g_c / denominator(s)
            return (
                u.astype(g.dtype),
                nu_new.astype(nu.dtype),
                mean_new.astype(mean.dtype),
            )

        if centered:
            check_same_tree(fn, "updates", updates, "state.mean", state.mean)
            updates, nu, mean = map_leaves(
                centered_leaf, 3, updates, state.nu, state.mean
            )
            return updates, ScaleByRmsState(nu=nu, mean=mean, count=count)
        updates, nu = map_leaves(leaf, 2, updates, state.nu)
        return updates, ScaleByRmsState(nu=nu, mean=None, count=count)

    return GradientTransformation(init, update)


class ScaleByAdagradState(NamedTuple):
    """State of `scale_by_adagrad`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adagrad()
        >>> _, state = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
        >>> state.sum_of_squares
        Array([9.], dtype=float32)
    """

    sum_of_squares: Updates  # running sum of squared updates


@described
def scale_by_adagrad(
    initial_accumulator_value: ArrayLike = 0.0, eps: ArrayLike = 1e-10
) -> GradientTransformation:
    """Divide updates by the root of the running sum of their squares.

    Per leaf, with r_0 = initial_accumulator_value::

        r_t = r_{t-1} + g_t**2
        u_t = g_t / (sqrt(r_t) + eps)

    The defaults are torch.optim.Adagrad's; optax starts r at 0.1 and puts eps
    (1e-7) under the root.

    Args:
        initial_accumulator_value: Starting value of r, in [0, inf).
        eps: Added to the denominator, in [0, inf).

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdagradState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adagrad()
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([3.0]), state)
        >>> u, state = tx.update(jnp.array([4.0]), state)
        >>> u
        Array([0.8], dtype=float32)

    References:
        Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
        Learning and Stochastic Optimization", JMLR 2011.
    """
    fn = "scale_by_adagrad"
    check_in_range(fn, "initial_accumulator_value", initial_accumulator_value, 0.0)
    check_in_range(fn, "eps", eps, 0.0)

    def init(params: Params) -> ScaleByAdagradState:
        return ScaleByAdagradState(
            sum_of_squares=init_like(params, fill=initial_accumulator_value)
        )

    def leaf(g, r):
        g_c = g.astype(compute_dtype(g, r))
        r_new = r.astype(g_c.dtype) + abs_sq(g_c)
        return (g_c / (jnp.sqrt(r_new) + eps)).astype(g.dtype), r_new.astype(r.dtype)

    def update(
        updates: Updates,
        state: ScaleByAdagradState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByAdagradState]:
        del params
        check_same_tree(
            fn, "updates", updates, "state.sum_of_squares", state.sum_of_squares
        )
        updates, r = map_leaves(leaf, 2, updates, state.sum_of_squares)
        return updates, ScaleByAdagradState(sum_of_squares=r)

    return GradientTransformation(init, update)


class ScaleByAdadeltaState(NamedTuple):
    """State of `scale_by_adadelta`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> state = gradtx.scale_by_adadelta().init(jnp.zeros(2))
        >>> state.grad_sq_avg, state.delta_sq_avg
        (Array([0., 0.], dtype=float32), Array([0., 0.], dtype=float32))
    """

    grad_sq_avg: Updates  # E[g^2], EMA of squared incoming updates
    delta_sq_avg: Updates  # E[dx^2], EMA of squared outgoing updates


@described
def scale_by_adadelta(
    rho: ArrayLike = 0.9, eps: ArrayLike = 1e-6
) -> GradientTransformation:
    """Zeiler's Adadelta: a step size in the units of the parameters.

    Per leaf, with both averages starting at 0::

        Eg_t = rho * Eg_{t-1} + (1 - rho) * g_t**2
        d_t  = sqrt(Ex_{t-1} + eps) / sqrt(Eg_t + eps) * g_t
        Ex_t = rho * Ex_{t-1} + (1 - rho) * d_t**2
        u_t  = d_t

    The update points along the gradient; `adadelta` chains it with
    `scale_by_learning_rate` to descend.

    Args:
        rho: EMA rate of both averages, in [0, 1).
        eps: Conditioning constant, in (0, inf); it also sets the size of the
            first steps, so it cannot be zero.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdadeltaState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adadelta(rho=0.9, eps=1e-6)
        >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> round(float(u[0]), 6)  # sqrt(1e-6) / sqrt(0.1 * 4 + 1e-6) * 2
        0.003162

    References:
        Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    fn = "scale_by_adadelta"
    check_in_range(fn, "rho", rho, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0, low_open=True)

    def init(params: Params) -> ScaleByAdadeltaState:
        return ScaleByAdadeltaState(
            grad_sq_avg=init_like(params), delta_sq_avg=init_like(params)
        )

    def leaf(g, eg, ex):
        g_c = g.astype(compute_dtype(g, eg, ex))
        eg_new = rho * eg.astype(g_c.dtype) + (1 - rho) * abs_sq(g_c)
        ex_c = ex.astype(g_c.dtype)
        d = jnp.sqrt(ex_c + eps) / jnp.sqrt(eg_new + eps) * g_c
        ex_new = rho * ex_c + (1 - rho) * abs_sq(d)
        return d.astype(g.dtype), eg_new.astype(eg.dtype), ex_new.astype(ex.dtype)

    def update(
        updates: Updates,
        state: ScaleByAdadeltaState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByAdadeltaState]:
        del params
        check_same_tree(fn, "updates", updates, "state.grad_sq_avg", state.grad_sq_avg)
        check_same_tree(
            fn, "updates", updates, "state.delta_sq_avg", state.delta_sq_avg
        )
        updates, eg, ex = map_leaves(
            leaf, 3, updates, state.grad_sq_avg, state.delta_sq_avg
        )
        return updates, ScaleByAdadeltaState(grad_sq_avg=eg, delta_sq_avg=ex)

    return GradientTransformation(init, update)


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adam(mu_dtype=jnp.bfloat16)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> state.count, state.mu["w"].dtype, state.nu["w"].dtype
        (Array(0, dtype=int32), dtype(bfloat16), dtype('float32'))
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # first moment, in mu_dtype or the params' dtype
    nu: Updates  # second moment, in nu_dtype or the params' dtype


@described
def scale_by_adam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam: bias-corrected first moment over the root of the second.

    Per leaf, with t = 1, 2, ... and both moments starting at 0::

        m_t     = b1 * m_{t-1} + (1 - b1) * g_t
        v_t     = b2 * v_{t-1} + (1 - b2) * g_t**2
        m_hat_t = m_t / (1 - b1**t)
        v_hat_t = v_t / (1 - b2**t)
        u_t     = m_hat_t / (sqrt(v_hat_t + eps_root) + eps)

    With `nesterov=True` (NAdam without momentum decay, as in optax), the
    first moment looks one step ahead::

        m_hat_t = b1 * m_t / (1 - b1**(t+1)) + (1 - b1) * g_t / (1 - b1**t)

    The divisions by the bias corrections are multiplications by their
    reciprocals, taken once per step, so a leaf's update has the same bits
    whatever else is in the tree and whichever way the compiler would have
    rewritten a division.

    Args:
        b1: EMA rate of the first moment, in [0, 1).
        b2: EMA rate of the second moment, in [0, 1).
        eps: Added to the denominator outside the root, in [0, inf).
        eps_root: Added to v_hat under the root, in [0, inf); a positive value
            keeps the gradient of the update finite (meta-learning).
        mu_dtype: Dtype of the first moment (for example bfloat16 to save
            memory); None keeps each param's dtype.
        nesterov: Use the Nesterov form of the first moment (keyword-only:
            the positional order is optax's).
        nu_dtype: Dtype of the second moment; None keeps each param's dtype.
            For float16 params pass float32: float16 cannot hold g**2 for
            |g| above 256 (it overflows and the parameter stops moving) or
            (1 - b2) * g**2 for |g| below about 8e-3 (it underflows to 0 and
            the next small gradient gives an infinite step). bfloat16 has
            float32's range and needs nothing.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdamState`.

    Raises:
        ValueError: If a hyperparameter is a number outside its range or
            `mu_dtype` is not a floating-point dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.scale_by_adam()
        >>> u, state = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> u
        Array([ 1., -1.], dtype=float32)

    References:
        Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
    """
    fn = "scale_by_adam"
    check_in_range(fn, "b1", b1, 0.0, 1.0, high_open=True)
    check_flag(fn, "nesterov", nesterov)
    check_in_range(fn, "b2", b2, 0.0, 1.0, high_open=True)
    check_in_range(fn, "eps", eps, 0.0)
    check_in_range(fn, "eps_root", eps_root, 0.0)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)
    nu_dtype = check_dtype(fn, "nu_dtype", nu_dtype)

    def init(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=init_like(params, mu_dtype),
            nu=init_like(params, nu_dtype),
        )

    def leaf(g, m, v, factors):
        g_c = g.astype(compute_dtype(g, m, v))
        m_factor, g_factor, v_factor = factors(g_c.dtype)
        m_new = b1 * m.astype(g_c.dtype) + (1 - b1) * g_c
        v_new = b2 * v.astype(g_c.dtype) + (1 - b2) * abs_sq(g_c)
        m_hat = m_new * m_factor
        if nesterov:
            m_hat = m_hat + g_c * g_factor
        v_hat = v_new * v_factor
        u = m_hat / (jnp.sqrt(v_hat + eps_root) + eps)
        return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

    def update(
        updates: Updates, state: ScaleByAdamState, params: Params | None = None, **extra
    ) -> tuple[Updates, ScaleByAdamState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        check_same_tree(fn, "updates", updates, "state.nu", state.nu)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))
        # Dividing by a bias correction is multiplying by its reciprocal,
        # taken once per step and leaf dtype: written out, a leaf's update
        # does not depend on how XLA's simplifier would rewrite `m / c`,
        # which differs with the size of the tree.
        factors = functools.cache(
            lambda dtype: adam_factors(b1, b2, nesterov, t, dtype)
        )
        updates, mu, nu = map_leaves(
            functools.partial(leaf, factors=factors),
            3,
            updates,
            state.mu,
            state.nu,
        )
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)
