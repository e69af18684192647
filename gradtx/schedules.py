"""Learning-rate schedules: pure, jit-safe closed forms of the step count.

A schedule maps `t`, the number of updates already applied (0 at the first
update), to a float32 scalar. Every schedule here is written without Python
branching on `t`, so it can be traced, jitted, vmapped and differentiated
with respect to its numeric arguments; after its last transition it holds
its final value. Each one prints as the call that built it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from gradtx._checks import check_count, check_in_range
from gradtx._describing import format_value, recorded_call
from gradtx.base import ArrayLike, Schedule


class _NamedSchedule:
    """A schedule function that remembers the call that built it."""

    def __init__(self, fn: Schedule, text: str):
        self._fn = fn
        self._text = text

    def __call__(self, count: ArrayLike) -> jax.Array:
        return jnp.asarray(self._fn(jnp.asarray(count)))

    def __repr__(self) -> str:
        return self._text


# Arguments taken over from optax that a schedule prints only when set.
_QUIET_DEFAULTS = {"exponent": 1.0}


def _is_default(value: object, default: float) -> bool:
    return isinstance(value, int | float) and value == default


def _named(factory: Callable[..., Schedule]):
    """Wrap a schedule factory so that its schedules print as its call."""
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def build(*args, **kwargs) -> Schedule:
        fn = factory(*args, **kwargs)
        _, arguments = recorded_call(signature, args, kwargs)
        items = ", ".join(
            f"{k}={format_value(v)}"
            for k, v in arguments.items()
            if not (k in _QUIET_DEFAULTS and _is_default(v, _QUIET_DEFAULTS[k]))
        )
        return _NamedSchedule(fn, f"{factory.__name__}({items})")

    return build


def _steps(count: jax.Array) -> jax.Array:
    return count.astype(jnp.float32)


# ----------------------------------------------------------------------------
# the schedules


@_named
def constant_schedule(value: ArrayLike) -> Schedule:
    """The same value at every step.

    Args:
        value: The value.

    Returns:
        A schedule `t -> value`.

    Examples:
        >>> import gradtx
        >>> gradtx.constant_schedule(0.1)(7)
        Array(0.1, dtype=float32)
    """

    def schedule(count):
        del count
        return jnp.asarray(value, jnp.float32)

    return schedule


@_named
def linear_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Move linearly from `init_value` to `end_value`, then hold.

    With s = clip((t - transition_begin) / transition_steps, 0, 1)::

        value(t) = init_value + (end_value - init_value) * s

    Linear warmup is `linear_schedule(0.0, peak, warmup_steps)`; linear decay
    the other way round. torch's `LinearLR(start_factor, end_factor,
    total_iters)` is `linear_schedule(lr * start_factor, lr * end_factor,
    total_iters)`.

    Args:
        init_value: Value up to `transition_begin`.
        end_value: Value from `transition_begin + transition_steps` on.
        transition_steps: Length of the ramp, an integer >= 1.
        transition_begin: Steps to hold `init_value` first, an integer >= 0.

    Returns:
        The schedule.

    Raises:
        ValueError: If a step count is negative or `transition_steps` is 0.

    Examples:
        >>> import gradtx
        >>> warmup = gradtx.linear_schedule(0.0, 1.0, transition_steps=4)
        >>> [float(warmup(t)) for t in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    fn = "linear_schedule"
    transition_steps = check_count(
        fn, "transition_steps", transition_steps, 0, strict=True
    )
    transition_begin = check_count(fn, "transition_begin", transition_begin, 0)

    def schedule(count):
        s = jnp.clip((_steps(count) - transition_begin) / transition_steps, 0.0, 1.0)
        return init_value + (end_value - init_value) * s

    return schedule


@_named
def polynomial_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    power: ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Decay polynomially from `init_value` to `end_value`, then hold.

    With s = clip((t - transition_begin) / transition_steps, 0, 1)::

        value(t) = (init_value - end_value) * (1 - s)**power + end_value

    `power=1` is `linear_schedule`.

    Args:
        init_value: Value up to `transition_begin`.
        end_value: Value from `transition_begin + transition_steps` on.
        power: Exponent of the decay, in (0, inf).
        transition_steps: Length of the decay, an integer >= 1.
        transition_begin: Steps to hold `init_value` first, an integer >= 0.

    Returns:
        The schedule.

    Raises:
        ValueError: If a step count is negative, `transition_steps` is 0 or
            `power` is not positive.

    Examples:
        >>> import gradtx
        >>> sched = gradtx.polynomial_schedule(1.0, 0.0, power=2, transition_steps=2)
        >>> [float(sched(t)) for t in range(4)]
        [1.0, 0.25, 0.0, 0.0]
    """
    fn = "polynomial_schedule"
    check_in_range(fn, "power", power, 0.0, low_open=True)
    transition_steps = check_count(
        fn, "transition_steps", transition_steps, 0, strict=True
    )
    transition_begin = check_count(fn, "transition_begin", transition_begin, 0)

    def schedule(count):
        s = jnp.clip((_steps(count) - transition_begin) / transition_steps, 0.0, 1.0)
        return (init_value - end_value) * (1 - s) ** power + end_value

    return schedule


@_named
def piecewise_constant_schedule(
    init_value: ArrayLike, boundaries_and_scales: Mapping[int, ArrayLike] | None = None
) -> Schedule:
    """Step decay: multiply the value by a factor at each boundary.

    From step `b` on, every scale whose boundary is at most `b` has been
    applied::

        value(t) = init_value * prod(scale for boundary, scale in
                                     boundaries_and_scales if t >= boundary)

    torch's `MultiStepLR(milestones, gamma)` is
    `piecewise_constant_schedule(lr, {m: gamma for m in milestones})`.

    Args:
        init_value: Value before the first boundary.
        boundaries_and_scales: Mapping from step (an integer >= 0) to the
            factor, in [0, inf), applied from that step on.

    Returns:
        The schedule.

    Raises:
        ValueError: If a boundary is negative or not an integer, or a scale is
            negative.

    Examples:
        >>> import gradtx
        >>> sched = gradtx.piecewise_constant_schedule(1.0, {2: 0.5, 4: 0.1})
        >>> [round(float(sched(t)), 4) for t in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.05, 0.05]
    """
    fn = "piecewise_constant_schedule"
    items = sorted(
        (check_count(fn, "boundaries_and_scales key", b, 0), s)
        for b, s in (boundaries_and_scales or {}).items()
    )
    for _, s in items:
        check_in_range(fn, "boundaries_and_scales value", s, 0.0)

    def schedule(count):
        value = jnp.asarray(init_value, jnp.float32)
        for boundary, scale in items:
            value = jnp.where(count >= boundary, value * scale, value)
        return value

    return schedule


@_named
def exponential_decay(
    init_value: ArrayLike,
    transition_steps: int,
    decay_rate: ArrayLike,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    """Multiply the value by `decay_rate` every `transition_steps` steps.

    With s = max(t - transition_begin, 0) / transition_steps (rounded down
    when `staircase`)::

        value(t) = init_value * decay_rate**s

    clipped at `end_value` when one is given (from below for a decay, from
    above for a growth). torch's `ExponentialLR(gamma)` is
    `exponential_decay(lr, 1, gamma)` and `StepLR(step_size, gamma)` is
    `exponential_decay(lr, step_size, gamma, staircase=True)`.

    Args:
        init_value: Value up to `transition_begin`.
        transition_steps: Steps per factor of `decay_rate`, an integer >= 1.
        decay_rate: The factor, in (0, inf).
        transition_begin: Steps to hold `init_value` first, an integer >= 0.
        staircase: Apply the factor in whole steps instead of smoothly.
        end_value: Optional bound the value never passes.

    Returns:
        The schedule.

    Raises:
        ValueError: If a step count is negative, `transition_steps` is 0 or
            `decay_rate` is not positive.

    Examples:
        >>> import gradtx
        >>> sched = gradtx.exponential_decay(1.0, 2, 0.5, staircase=True)
        >>> [float(sched(t)) for t in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    fn = "exponential_decay"
    transition_steps = check_count(
        fn, "transition_steps", transition_steps, 0, strict=True
    )
    transition_begin = check_count(fn, "transition_begin", transition_begin, 0)
    check_in_range(fn, "decay_rate", decay_rate, 0.0, low_open=True)

    def schedule(count):
        s = jnp.maximum(_steps(count) - transition_begin, 0.0) / transition_steps
        if staircase:
            s = jnp.floor(s)
        value = init_value * jnp.power(jnp.asarray(decay_rate, jnp.float32), s)
        if end_value is not None:
            bound = jnp.asarray(end_value, jnp.float32)
            value = jnp.where(
                decay_rate < 1, jnp.maximum(value, bound), jnp.minimum(value, bound)
            )
        return value

    return schedule


@_named
def cosine_decay_schedule(
    init_value: ArrayLike,
    decay_steps: int,
    alpha: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    """Cosine annealing from `init_value` to `alpha * init_value`, then hold.

    With T = decay_steps, s = min(t, T) and c = 0.5 * (1 + cos(pi * s / T))::

        value(t) = init_value * ((1 - alpha) * c ** exponent + alpha)

    torch's `CosineAnnealingLR(T_max, eta_min)` agrees up to `T_max` with
    `alpha = eta_min / lr`; past it torch climbs back up the cosine, while
    this schedule holds its floor.

    Args:
        init_value: Value at step 0.
        decay_steps: Length of the decay, an integer >= 1.
        alpha: Final value as a fraction of `init_value`, in [0, 1].
        exponent: Power applied to the cosine factor, in (0, inf); 1 is plain
            cosine annealing, larger values fall faster at first (as optax's
            argument of the same name).

    Returns:
        The schedule.

    Raises:
        ValueError: If `decay_steps` is not positive, `alpha` is outside
            [0, 1] or `exponent` is not positive.

    Examples:
        >>> import gradtx
        >>> sched = gradtx.cosine_decay_schedule(1.0, decay_steps=4)
        >>> [round(float(sched(t)), 4) for t in range(6)]
        [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """
    fn = "cosine_decay_schedule"
    decay_steps = check_count(fn, "decay_steps", decay_steps, 0, strict=True)
    check_in_range(fn, "alpha", alpha, 0.0, 1.0)
    check_in_range(fn, "exponent", exponent, 0.0, low_open=True)

    steps = float(decay_steps)  # a Python int past int32 would overflow in jnp

    def schedule(count):
        s = jnp.minimum(_steps(count), steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * s / steps))
        return init_value * ((1 - alpha) * _power(cosine, exponent) + alpha)

    return schedule


def _cosine(start, end, s):
    """`end + (start - end) * (1 + cos(pi * s)) / 2` for s in [0, 1]."""
    return end + (start - end) * 0.5 * (1 + jnp.cos(jnp.pi * s))


def _power(base, exponent):
    """`base ** exponent`, with no arithmetic at all for the usual exponent 1."""
    return base if _is_default(exponent, 1.0) else base**exponent


@_named
def warmup_cosine_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    """Linear warmup to `peak_value`, then cosine decay to `end_value`.

    `decay_steps` counts the whole schedule, warmup included::

        value(t) = init + (peak - init) * t / warmup_steps          t < warmup_steps
        value(t) = end + (peak - end) * ((1 + cos(pi * s)) / 2) ** exponent   after,
                   s = min(t - warmup_steps, D) / D,  D = decay_steps - warmup_steps

    Args:
        init_value: Value at step 0.
        peak_value: Value at the end of the warmup.
        warmup_steps: Length of the warmup, an integer >= 0.
        decay_steps: Length of the whole schedule, an integer greater than
            `warmup_steps`.
        end_value: Value held from `decay_steps` on.
        exponent: Power applied to the cosine factor, in (0, inf); 1 is plain
            cosine annealing (as optax's argument of the same name).

    Returns:
        The schedule.

    Raises:
        ValueError: If a step count is negative, `decay_steps` is not
            greater than `warmup_steps` or `exponent` is not positive.

    Examples:
        >>> import gradtx
        >>> sched = gradtx.warmup_cosine_decay_schedule(0.0, 1.0, 2, 6)
        >>> [round(float(sched(t)), 4) for t in range(8)]
        [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """
    fn = "warmup_cosine_decay_schedule"
    warmup_steps = check_count(fn, "warmup_steps", warmup_steps, 0)
    decay_steps = check_count(fn, "decay_steps", decay_steps, 0, strict=True)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"{fn}: decay_steps counts the whole schedule and must be greater than "
            f"warmup_steps ({warmup_steps}), got {decay_steps}"
        )
    check_in_range(fn, "exponent", exponent, 0.0, low_open=True)
    cosine_steps = float(decay_steps - warmup_steps)  # no int32 overflow in jnp

    def schedule(count):
        t = _steps(count)
        warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
        s = jnp.clip(t - warmup_steps, 0.0, cosine_steps) / cosine_steps
        if _is_default(exponent, 1.0):
            decayed = _cosine(peak_value, end_value, s)
        else:
            c = 0.5 * (1 + jnp.cos(jnp.pi * s))
            decayed = end_value + (peak_value - end_value) * c**exponent
        return jnp.where(t < warmup_steps, warm, decayed)

    return schedule


@_named
def inverse_sqrt_schedule(peak_value: ArrayLike, warmup_steps: int = 0) -> Schedule:
    """Linear warmup, then decay as the inverse square root of the step.

    The Transformer schedule (Vaswani et al., 2017), scaled so that its peak
    is `peak_value`. With n = t + 1, the number of the update being made, and
    w = max(warmup_steps, 1)::

        value(t) = peak_value * min(n / w, sqrt(w / n))

    Args:
        peak_value: Value reached at update number `warmup_steps`.
        warmup_steps: Length of the warmup, an integer >= 0.

    Returns:
        The schedule.

    Raises:
        ValueError: If `warmup_steps` is negative.

    Examples:
        >>> import gradtx
        >>> sched = gradtx.inverse_sqrt_schedule(1.0, warmup_steps=4)
        >>> [round(float(sched(t)), 4) for t in (0, 1, 3, 15)]
        [0.25, 0.5, 1.0, 0.5]
    """
    fn = "inverse_sqrt_schedule"
    warmup = max(check_count(fn, "warmup_steps", warmup_steps, 0), 1)

    def schedule(count):
        n = _steps(count) + 1
        return peak_value * jnp.minimum(n / warmup, jnp.sqrt(warmup / n))

    return schedule


_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


@_named
def cyclic_schedule(
    base_value: ArrayLike,
    max_value: ArrayLike,
    step_size: int,
    mode: str = "triangular",
    gamma: ArrayLike = 1.0,
    step_size_down: int | None = None,
) -> Schedule:
    """Cyclical learning rates (Smith, 2017): ramps between two values.

    Each cycle climbs from `base_value` to `max_value` in `step_size` steps
    and comes back in `step_size_down` (default `step_size`). With c the
    index of the cycle (from 1) and h in [0, 1] the position on the ramp::

        value(t) = base_value + (max_value - base_value) * h * amplitude

    where amplitude is 1 ("triangular"), 1 / 2**(c - 1) ("triangular2", the
    height halves every cycle) or gamma**t ("exp_range"). The same formula as
    torch's `CyclicLR` with `cycle_momentum=False`.

    Args:
        base_value: Lower value, reached at the start of each cycle.
        max_value: Upper value of the first cycle.
        step_size: Steps from the bottom to the top, an integer >= 1.
        mode: "triangular", "triangular2" or "exp_range".
        gamma: Decay per step of the amplitude in "exp_range", in (0, 1].
        step_size_down: Steps from the top back down; None for `step_size`.

    Returns:
        The schedule.

    Raises:
        ValueError: If a step count is not positive, `mode` is unknown or
            `gamma` is outside (0, 1].

    Examples:
        >>> import gradtx
        >>> sched = gradtx.cyclic_schedule(0.0, 1.0, step_size=2, mode="triangular2")
        >>> [float(sched(t)) for t in range(9)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.25, 0.5, 0.25, 0.0]
    """
    fn = "cyclic_schedule"
    up = check_count(fn, "step_size", step_size, 0, strict=True)
    down = up if step_size_down is None else step_size_down
    down = check_count(fn, "step_size_down", down, 0, strict=True)
    if mode not in _CYCLIC_MODES:
        raise ValueError(f"{fn}: mode must be one of {_CYCLIC_MODES}, got {mode!r}")
    check_in_range(fn, "gamma", gamma, 0.0, 1.0, low_open=True)
    total = up + down

    def schedule(count):
        t = _steps(count)
        cycle = jnp.floor(1 + t / total)
        x = 1 + t / total - cycle  # position in the cycle, in [0, 1)
        ratio = up / total
        height = jnp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        if mode == "triangular":
            amplitude = 1.0
        elif mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:
            amplitude = jnp.asarray(gamma, jnp.float32) ** t
        return base_value + (max_value - base_value) * height * amplitude

    return schedule


@_named
def sgdr_schedule(
    peak_value: ArrayLike,
    first_period: int,
    period_mult: int = 1,
    end_value: ArrayLike = 0.0,
    peak_decay: ArrayLike = 1.0,
) -> Schedule:
    """Cosine annealing with warm restarts (SGDR, Loshchilov and Hutter 2017).

    The steps are cut into periods of length first_period * period_mult**i;
    within period i, at position s of its length T_i::

        value(t) = end_value + (peak_i - end_value) * (1 + cos(pi * s / T_i)) / 2
        peak_i   = peak_value * peak_decay**i

    and at the start of each period the value jumps back to its peak. torch's
    `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)` is
    `sgdr_schedule(lr, T_0, T_mult, eta_min)`.

    Args:
        peak_value: Value at the start of the first period.
        first_period: Length of the first period, an integer >= 1.
        period_mult: Growth factor of the periods, an integer >= 1.
        end_value: Floor each period anneals towards.
        peak_decay: Factor applied to the peak at every restart, in (0, 1].

    Returns:
        The schedule.

    Raises:
        ValueError: If `first_period` or `period_mult` is not a positive
            integer, or `peak_decay` is outside (0, 1].

    Examples:
        >>> import gradtx
        >>> sched = gradtx.sgdr_schedule(1.0, first_period=2, period_mult=2)
        >>> [round(float(sched(t)), 4) for t in range(7)]
        [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0]
    """
    fn = "sgdr_schedule"
    first = check_count(fn, "first_period", first_period, 0, strict=True)
    mult = check_count(fn, "period_mult", period_mult, 0, strict=True)
    check_in_range(fn, "peak_decay", peak_decay, 0.0, 1.0, low_open=True)
    # With growing periods, the first step of every period that begins before
    # int32 runs out (at most 31 of them), computed in exact integers.
    starts, length = [0], first
    while mult > 1 and starts[-1] + length < 2**31 - 1:
        starts.append(starts[-1] + length)
        length *= mult

    def schedule(count):
        count = jnp.asarray(count, jnp.int32)
        if mult == 1:
            index = count // first
            position = count - index * first
            period = jnp.full_like(count, first)
        else:
            bounds = jnp.asarray(starts[1:], jnp.int32)
            index = jnp.sum(count >= bounds)
            begin = jnp.asarray(starts, jnp.int32)[index]
            position = count - begin
            period = first * jnp.asarray(mult, jnp.int32) ** index
        s = position.astype(jnp.float32) / period.astype(jnp.float32)
        peak = peak_value * jnp.asarray(peak_decay, jnp.float32) ** _steps(index)
        return _cosine(peak, end_value, s)

    return schedule


@_named
def one_cycle_schedule(
    transition_steps: int,
    peak_value: ArrayLike,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    three_phase: bool = False,
) -> Schedule:
    """The 1cycle policy (Smith and Topin, 2018), as torch's `OneCycleLR`.

    The value climbs from `peak_value / div_factor` to `peak_value` over the
    first `pct_start` of `transition_steps`, then anneals to
    `peak_value / div_factor / final_div_factor` at step
    `transition_steps - 1`, and holds. With `three_phase`, it first comes back
    down to the starting value symmetrically, then anneals to the minimum.
    Each phase follows a half cosine ("cos") or a straight line ("linear").

    Args:
        transition_steps: Total number of steps, an integer >= 2.
        peak_value: Largest value.
        pct_start: Fraction of the steps spent climbing, in (0, 1).
        div_factor: `peak_value / div_factor` is the starting value, > 0.
        final_div_factor: Starting value / `final_div_factor` is the final
            value, > 0.
        anneal_strategy: "cos" or "linear".
        three_phase: Use torch's three-phase variant.

    Returns:
        The schedule.

    Raises:
        ValueError: If an argument is outside its range.

    Examples:
        >>> import gradtx
        >>> sched = gradtx.one_cycle_schedule(
        ...     10, 1.0, pct_start=0.5, div_factor=10, anneal_strategy="linear"
        ... )
        >>> [round(float(sched(t)), 3) for t in (0, 2, 4, 6, 9, 20)]
        [0.1, 0.55, 1.0, 0.6, 0.0, 0.0]
    """
    fn = "one_cycle_schedule"
    total = check_count(fn, "transition_steps", transition_steps, 1, strict=True)
    check_in_range(fn, "pct_start", pct_start, 0.0, 1.0, low_open=True, high_open=True)
    check_in_range(fn, "div_factor", div_factor, 0.0, low_open=True)
    check_in_range(fn, "final_div_factor", final_div_factor, 0.0, low_open=True)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"{fn}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
        )
    initial = peak_value / div_factor
    minimum = initial / final_div_factor
    up_end = float(pct_start * total) - 1
    if three_phase:
        phases = [
            (up_end, initial, peak_value),
            (2 * up_end, peak_value, initial),
            (total - 1.0, initial, minimum),
        ]
    else:
        phases = [(up_end, initial, peak_value), (total - 1.0, peak_value, minimum)]

    def anneal(start, end, s):
        if anneal_strategy == "cos":
            return _cosine(start, end, s)
        return start + (end - start) * s

    def schedule(count):
        t = _steps(count)
        value = jnp.asarray(minimum, jnp.float32)
        begin = 0.0
        # Walk the phases backwards so the first phase containing t wins.
        spans = []
        for end_step, start, end in phases:
            spans.append((begin, end_step, start, end))
            begin = end_step
        for begin, end_step, start, end in reversed(spans):
            span = end_step - begin  # a phase shorter than a step ends at once
            s = jnp.clip((t - begin) / span, 0.0, 1.0) if span > 0 else 1.0
            value = jnp.where(t <= end_step, anneal(start, end, s), value)
        return value

    return schedule


@_named
def join_schedules(
    schedules: Sequence[Schedule], boundaries: Sequence[int]
) -> Schedule:
    """Run schedules one after the other.

    Schedule i runs from boundary i - 1 (0 for the first) and sees the steps
    counted from its own start::

        value(t) = schedules[i](t - boundaries[i - 1])
                   for boundaries[i - 1] <= t < boundaries[i]

    Args:
        schedules: The schedules, in order.
        boundaries: Strictly increasing integer steps >= 0 at which the next
            schedule takes over, one fewer than `schedules`.

    Returns:
        The schedule.

    Raises:
        ValueError: If the counts do not match, a boundary is negative, or the
            boundaries are not strictly increasing.

    Examples:
        >>> import gradtx
        >>> warmup = gradtx.linear_schedule(0.0, 1.0, 2)
        >>> decay = gradtx.exponential_decay(1.0, 1, 0.5)
        >>> sched = gradtx.join_schedules([warmup, decay], [2])
        >>> [float(sched(t)) for t in range(5)]
        [0.0, 0.5, 1.0, 0.5, 0.25]
    """
    fn = "join_schedules"
    schedules = list(schedules)
    boundaries = [check_count(fn, "boundaries", b, 0) for b in boundaries]
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{fn}: boundaries must have one entry fewer than schedules "
            f"({len(schedules) - 1}), got {len(boundaries)}"
        )
    for before, after in zip(boundaries, boundaries[1:], strict=False):
        if after <= before:
            raise ValueError(
                f"{fn}: boundaries must be strictly increasing, got {boundaries}"
            )
    for i, piece in enumerate(schedules):
        if not callable(piece):
            raise TypeError(f"{fn}: schedules[{i}] is not callable: {piece!r}")

    def schedule(count):
        count = jnp.asarray(count)
        value = jnp.asarray(schedules[0](count), jnp.float32)
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            shifted = jnp.asarray(later(count - boundary), jnp.float32)
            value = jnp.where(count >= boundary, shifted, value)
        return value

    return schedule
