import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import gradtx

# ----------------------------------------------------------------------------
# float64 closed forms, written from the docstrings


def ref_linear(t, init, end, steps, begin=0):
    s = min(max((t - begin) / steps, 0.0), 1.0)
    return init + (end - init) * s


def ref_polynomial(t, init, end, power, steps, begin=0):
    s = min(max((t - begin) / steps, 0.0), 1.0)
    return (init - end) * (1 - s) ** power + end


def ref_piecewise(t, init, boundaries_and_scales):
    value = init
    for boundary, scale in boundaries_and_scales.items():
        if t >= boundary:
            value *= scale
    return value


def ref_exponential(t, init, steps, rate, begin=0, staircase=False, end=None):
    s = max(t - begin, 0) / steps
    if staircase:
        s = math.floor(s)
    value = init * rate**s
    if end is not None:
        value = max(value, end) if rate < 1 else min(value, end)
    return value


def ref_cosine(t, init, steps, alpha=0.0):
    s = min(t, steps)
    return init * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / steps)) + alpha)


def ref_warmup_cosine(t, init, peak, warmup, total, end=0.0):
    if t < warmup:
        return init + (peak - init) * t / warmup
    s = min(t - warmup, total - warmup) / (total - warmup)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * s))


def ref_inverse_sqrt(t, peak, warmup):
    n, w = t + 1, max(warmup, 1)
    return peak * min(n / w, math.sqrt(w / n))


def ref_cyclic(t, base, top, up, mode="triangular", gamma=1.0, down=None):
    down = up if down is None else down
    cycle, position = divmod(t, up + down)
    height = position / up if position <= up else (up + down - position) / down
    amplitude = {
        "triangular": 1.0,
        "triangular2": 0.5**cycle,
        "exp_range": gamma**t,
    }[mode]
    return base + (top - base) * height * amplitude


def ref_sgdr(t, peak, first, mult=1, end=0.0, peak_decay=1.0):
    start, length, index = 0, first, 0
    while t >= start + length:
        start, length, index = start + length, length * mult, index + 1
    top = peak * peak_decay**index
    return end + (top - end) * 0.5 * (1 + math.cos(math.pi * (t - start) / length))


def ref_one_cycle(t, total, peak, pct=0.3, div=25.0, final_div=1e4, cos=True):
    initial = peak / div
    low = initial / final_div
    up_end = pct * total - 1
    if t <= up_end:
        start, end, s = initial, peak, t / up_end
    elif t <= total - 1:
        start, end, s = peak, low, (t - up_end) / (total - 1 - up_end)
    else:
        return low
    if cos:
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * s))
    return start + (end - start) * s


CASES = {
    "constant": (gradtx.constant_schedule(0.3), lambda t: 0.3, 10),
    "linear/warmup": (
        gradtx.linear_schedule(0.0, 0.1, 50),
        lambda t: ref_linear(t, 0.0, 0.1, 50),
        80,
    ),
    "linear/begin": (
        gradtx.linear_schedule(1.0, 0.2, 30, transition_begin=10),
        lambda t: ref_linear(t, 1.0, 0.2, 30, 10),
        60,
    ),
    "polynomial": (
        gradtx.polynomial_schedule(1.0, 0.01, 2.0, 40, transition_begin=5),
        lambda t: ref_polynomial(t, 1.0, 0.01, 2.0, 40, 5),
        60,
    ),
    "piecewise": (
        gradtx.piecewise_constant_schedule(0.1, {30: 0.1, 10: 0.5, 31: 2.0}),
        lambda t: ref_piecewise(t, 0.1, {10: 0.5, 30: 0.1, 31: 2.0}),
        50,
    ),
    "exponential": (
        gradtx.exponential_decay(0.1, 7, 0.5, transition_begin=3),
        lambda t: ref_exponential(t, 0.1, 7, 0.5, 3),
        60,
    ),
    "exponential/staircase_end": (
        gradtx.exponential_decay(1.0, 5, 0.5, staircase=True, end_value=0.1),
        lambda t: ref_exponential(t, 1.0, 5, 0.5, 0, True, 0.1),
        40,
    ),
    "exponential/growth": (
        gradtx.exponential_decay(0.01, 4, 2.0, end_value=0.5),
        lambda t: ref_exponential(t, 0.01, 4, 2.0, 0, False, 0.5),
        40,
    ),
    "cosine": (
        gradtx.cosine_decay_schedule(0.1, 100),
        lambda t: ref_cosine(t, 0.1, 100),
        130,
    ),
    "cosine/alpha": (
        gradtx.cosine_decay_schedule(2.0, 30, alpha=0.25),
        lambda t: ref_cosine(t, 2.0, 30, 0.25),
        50,
    ),
    "warmup_cosine": (
        gradtx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 60, end_value=0.05),
        lambda t: ref_warmup_cosine(t, 0.0, 1.0, 10, 60, 0.05),
        80,
    ),
    "warmup_cosine/no_warmup": (
        gradtx.warmup_cosine_decay_schedule(0.5, 1.0, 0, 20),
        lambda t: ref_warmup_cosine(t, 0.5, 1.0, 0, 20),
        30,
    ),
    "inverse_sqrt": (
        gradtx.inverse_sqrt_schedule(1e-3, 16),
        lambda t: ref_inverse_sqrt(t, 1e-3, 16),
        100,
    ),
    "inverse_sqrt/no_warmup": (
        gradtx.inverse_sqrt_schedule(1.0),
        lambda t: ref_inverse_sqrt(t, 1.0, 0),
        30,
    ),
    "cyclic/triangular": (
        gradtx.cyclic_schedule(0.1, 1.0, 5),
        lambda t: ref_cyclic(t, 0.1, 1.0, 5),
        40,
    ),
    "cyclic/triangular2": (
        gradtx.cyclic_schedule(0.1, 1.0, 4, mode="triangular2"),
        lambda t: ref_cyclic(t, 0.1, 1.0, 4, "triangular2"),
        40,
    ),
    "cyclic/exp_range_asymmetric": (
        gradtx.cyclic_schedule(
            0.1, 1.0, 3, mode="exp_range", gamma=0.97, step_size_down=6
        ),
        lambda t: ref_cyclic(t, 0.1, 1.0, 3, "exp_range", 0.97, 6),
        40,
    ),
    "sgdr": (
        gradtx.sgdr_schedule(1.0, 10, end_value=0.1),
        lambda t: ref_sgdr(t, 1.0, 10, 1, 0.1),
        45,
    ),
    "sgdr/mult": (
        gradtx.sgdr_schedule(1.0, 3, period_mult=2, peak_decay=0.5),
        lambda t: ref_sgdr(t, 1.0, 3, 2, 0.0, 0.5),
        100,
    ),
    "one_cycle": (
        gradtx.one_cycle_schedule(50, 1.0),
        lambda t: ref_one_cycle(t, 50, 1.0),
        70,
    ),
    "one_cycle/linear": (
        gradtx.one_cycle_schedule(40, 0.5, pct_start=0.25, anneal_strategy="linear"),
        lambda t: ref_one_cycle(t, 40, 0.5, pct=0.25, cos=False),
        50,
    ),
    "join": (
        gradtx.join_schedules(
            [
                gradtx.linear_schedule(0.0, 1.0, 10),
                gradtx.cosine_decay_schedule(1.0, 20),
            ],
            [10],
        ),
        lambda t: (
            ref_linear(t, 0.0, 1.0, 10) if t < 10 else ref_cosine(t - 10, 1.0, 20)
        ),
        40,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_schedule_equals_its_closed_form_at_every_step(case):
    schedule, reference, steps = CASES[case]
    ts = np.arange(steps)
    got = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(ts, jnp.int32)))
    want = np.array([reference(int(t)) for t in ts])
    assert got.dtype == np.float32
    # float32 round-off of a closed form whose terms (t / step_size, the
    # cycle count) exceed its value: a few tens of ulps of the result where
    # they cancel, and which of them XLA fuses into multiply-adds depends on
    # the CPU's instruction set (seen: 20 ulps with AVX, none with AVX2).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # A plain Python int gives the same value as a traced int32.
    for t in (0, steps // 3, steps - 1):
        np.testing.assert_allclose(float(schedule(t)), want[t], rtol=1e-5, atol=1e-7)


def test_boundaries_are_exact():
    step = gradtx.piecewise_constant_schedule(1.0, {5: 0.1})
    assert [float(step(t)) for t in (4, 5, 6)] == [
        1.0,
        np.float32(0.1),
        np.float32(0.1),
    ]
    sgdr = gradtx.sgdr_schedule(1.0, 3, period_mult=2)
    assert [float(sgdr(t)) for t in (2, 3, 8, 9, 20, 21)][1::2] == [1.0, 1.0, 1.0]
    cosine = gradtx.cosine_decay_schedule(1.0, 10, alpha=0.1)
    assert float(cosine(10)) == float(cosine(10_000)) == np.float32(0.1)


def test_sgdr_is_exact_far_out():
    # Period starts at 2**k - 1 for first_period=1, period_mult=2.
    sgdr = gradtx.sgdr_schedule(1.0, 1, period_mult=2)
    for k in (10, 20, 30):
        assert float(sgdr(2**k - 1)) == 1.0
        assert float(sgdr(2**k - 2)) < 1e-3


def test_schedules_print_as_their_call():
    assert repr(gradtx.cosine_decay_schedule(0.1, 100)) == (
        "cosine_decay_schedule(init_value=0.1, decay_steps=100, alpha=0.0)"
    )
    tx = gradtx.adam(gradtx.linear_schedule(0.0, 1e-3, 10))
    assert "learning_rate=linear_schedule(init_value=0.0, end_value=0.001" in repr(tx)


def test_schedules_are_differentiable_in_their_values():
    def value(peak):
        return gradtx.warmup_cosine_decay_schedule(0.0, peak, 5, 20)(12)

    grad = jax.grad(value)(0.5)
    np.testing.assert_allclose(grad, ref_warmup_cosine(12, 0.0, 1.0, 5, 20), rtol=1e-6)


# ----------------------------------------------------------------------------
# parity with torch.optim.lr_scheduler on the same step indexing


def torch_lrs(make_scheduler, steps, lr=1.0):
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        param.grad = torch.zeros(1)
        opt.step()
        scheduler.step()
    return np.array(lrs)


S = torch.optim.lr_scheduler

TORCH_CASES = {
    "StepLR": (
        lambda o: S.StepLR(o, step_size=7, gamma=0.5),
        gradtx.exponential_decay(1.0, 7, 0.5, staircase=True),
        40,
    ),
    "MultiStepLR": (
        lambda o: S.MultiStepLR(o, milestones=[5, 12, 30], gamma=0.3),
        gradtx.piecewise_constant_schedule(1.0, {5: 0.3, 12: 0.3, 30: 0.3}),
        40,
    ),
    "ExponentialLR": (
        lambda o: S.ExponentialLR(o, gamma=0.9),
        gradtx.exponential_decay(1.0, 1, 0.9),
        40,
    ),
    "CosineAnnealingLR": (
        lambda o: S.CosineAnnealingLR(o, T_max=30, eta_min=0.05),
        gradtx.cosine_decay_schedule(1.0, 30, alpha=0.05),
        31,  # within T_max (see test_conventions for what happens after)
    ),
    "CosineAnnealingWarmRestarts/T_mult=1": (
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=8, T_mult=1, eta_min=0.01),
        gradtx.sgdr_schedule(1.0, 8, 1, end_value=0.01),
        40,
    ),
    "CosineAnnealingWarmRestarts/T_mult=2": (
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.0),
        gradtx.sgdr_schedule(1.0, 3, 2),
        60,
    ),
    "LinearLR": (
        lambda o: S.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=15),
        gradtx.linear_schedule(0.1, 0.9, 15),
        30,
    ),
    "CyclicLR/triangular": (
        lambda o: S.CyclicLR(o, 0.1, 1.0, step_size_up=5, cycle_momentum=False),
        gradtx.cyclic_schedule(0.1, 1.0, 5),
        40,
    ),
    "CyclicLR/triangular2": (
        lambda o: S.CyclicLR(
            o,
            0.1,
            1.0,
            step_size_up=4,
            step_size_down=6,
            mode="triangular2",
            cycle_momentum=False,
        ),
        gradtx.cyclic_schedule(0.1, 1.0, 4, "triangular2", step_size_down=6),
        50,
    ),
    "CyclicLR/exp_range": (
        lambda o: S.CyclicLR(
            o,
            0.1,
            1.0,
            step_size_up=3,
            mode="exp_range",
            gamma=0.95,
            cycle_momentum=False,
        ),
        gradtx.cyclic_schedule(0.1, 1.0, 3, "exp_range", gamma=0.95),
        40,
    ),
    "OneCycleLR": (
        lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=60, cycle_momentum=False),
        gradtx.one_cycle_schedule(60, 1.0),
        60,
    ),
    "OneCycleLR/three_phase_linear": (
        lambda o: S.OneCycleLR(
            o,
            max_lr=0.5,
            total_steps=40,
            pct_start=0.25,
            anneal_strategy="linear",
            three_phase=True,
            cycle_momentum=False,
        ),
        gradtx.one_cycle_schedule(
            40, 0.5, 0.25, anneal_strategy="linear", three_phase=True
        ),
        40,
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch_lr_scheduler(case):
    make_scheduler, schedule, steps = TORCH_CASES[case]
    want = torch_lrs(make_scheduler, steps)
    got = np.asarray(jax.vmap(schedule)(jnp.arange(steps, dtype=jnp.int32)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: gradtx.linear_schedule(0, 1, 0),
            r"linear_schedule: transition_steps must be in \(0, inf\)",
        ),
        (
            lambda: gradtx.linear_schedule(0, 1, 5, -1),
            r"transition_begin must be in \[0, inf\)",
        ),
        (
            lambda: gradtx.polynomial_schedule(1, 0, 0.0, 5),
            r"power must be in \(0, inf\)",
        ),
        (
            lambda: gradtx.piecewise_constant_schedule(1.0, {-3: 0.1}),
            r"boundaries_and_scales key must be in \[0, inf\)",
        ),
        (
            lambda: gradtx.piecewise_constant_schedule(1.0, {3: -0.1}),
            r"boundaries_and_scales value must be",
        ),
        (
            lambda: gradtx.exponential_decay(1.0, -2, 0.5),
            r"exponential_decay: transition_steps must be",
        ),
        (
            lambda: gradtx.exponential_decay(1.0, 2, 0.0),
            r"decay_rate must be in \(0, inf\)",
        ),
        (
            lambda: gradtx.cosine_decay_schedule(1.0, 0),
            r"cosine_decay_schedule: decay_steps must be in \(0, inf\), got 0",
        ),
        (
            lambda: gradtx.cosine_decay_schedule(1.0, -5),
            r"decay_steps must be in \(0, inf\)",
        ),
        (
            lambda: gradtx.cosine_decay_schedule(1.0, 5, alpha=2.0),
            r"alpha must be in \[0, 1\]",
        ),
        (
            lambda: gradtx.warmup_cosine_decay_schedule(0, 1, 10, 10),
            r"decay_steps counts the whole schedule",
        ),
        (
            lambda: gradtx.warmup_cosine_decay_schedule(0, 1, -1, 10),
            r"warmup_steps must be in \[0, inf\)",
        ),
        (
            lambda: gradtx.inverse_sqrt_schedule(1.0, -4),
            r"inverse_sqrt_schedule: warmup_steps must be",
        ),
        (
            lambda: gradtx.cyclic_schedule(0, 1, 0),
            r"cyclic_schedule: step_size must be in \(0, inf\)",
        ),
        (lambda: gradtx.cyclic_schedule(0, 1, 2, mode="sine"), r"mode must be one of"),
        (
            lambda: gradtx.cyclic_schedule(0, 1, 2, gamma=1.5),
            r"gamma must be in \(0, 1\]",
        ),
        (lambda: gradtx.sgdr_schedule(1.0, 0), r"sgdr_schedule: first_period must be"),
        (lambda: gradtx.sgdr_schedule(1.0, 5, period_mult=0), r"period_mult must be"),
        (
            lambda: gradtx.one_cycle_schedule(10, 1.0, pct_start=1.0),
            r"pct_start must be in \(0, 1\)",
        ),
        (
            lambda: gradtx.one_cycle_schedule(10, 1.0, anneal_strategy="exp"),
            r"anneal_strategy must be",
        ),
        (
            lambda: gradtx.join_schedules([gradtx.constant_schedule(1)] * 3, [5, 5]),
            r"join_schedules: boundaries must be strictly increasing",
        ),
        (
            lambda: gradtx.join_schedules([gradtx.constant_schedule(1)] * 3, [8, 4]),
            r"strictly increasing, got \[8, 4\]",
        ),
        (
            lambda: gradtx.join_schedules([gradtx.constant_schedule(1)] * 2, [-1]),
            r"boundaries must be in \[0, inf\)",
        ),
        (
            lambda: gradtx.join_schedules([gradtx.constant_schedule(1)] * 2, [1, 2]),
            r"one entry fewer than schedules",
        ),
    ],
)
def test_bad_arguments_raise_naming_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()
