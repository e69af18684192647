"""signSGD, Signum, Lion and Rprop: equations, peers, hyperparameters, wrappers."""

import inspect
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
import torch
from peers import (
    gradtx_trajectory,
    max_relative_gap,
    optax_trajectory,
    torch_trajectory,
)

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
# Float32 against float32 with another order of operations. Every sign
# decision is the same on both sides (the margins below show that it cannot
# differ from float64's), so the gaps are the round-off of the param sums.
RTOL_OPTAX = 2e-5
RTOL_TORCH = 1e-5
MASK = {"w": True, "b": False, "s": True}
U32 = 2.0**-24  # unit round-off of float32


def lr_schedule(t):
    return 3e-3 * 0.98**t + 1e-4


# ----------------------------------------------------------------------------
# float64 references, written from the docstrings' equations
#
# The sign is discontinuous at zero: where the argument of a sign is within
# float32 round-off of zero, float32 may take the other sign, and from then
# on the two runs differ by a whole step. Rather than loosening the check,
# each reference carries, next to every quantity whose sign it takes, a
# first-order bound on the error of its float32 evaluation (`lin` below:
# the float32 operands' own errors plus one round-off for each constant,
# product and sum), and records the decision that comes closest to zero
# relative to twice that bound (`Closest`). Each test asserts that this
# ratio exceeds 1: then float32 cannot have taken another sign anywhere in
# the run, and the 1e-4 comparison holds for every element and step as it
# stands. With R.make_grads the moments cross zero now and then (the drift
# is of the order of the noise), but the nearest crossing stays over 50
# times farther from zero than the bound, so the precondition holds with
# room to spare. Rprop and signSGD need no bound: they take the sign of the
# gradient itself, which both sides hold exactly (float32-representable).


class Closest:
    """The sign decision nearest to zero in a run, as |argument| / bound."""

    def __init__(self):
        self.ratio = math.inf

    def check(self, argument, bound):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bound > 0, np.abs(argument) / bound, math.inf)
        self.ratio = min(self.ratio, float(np.min(ratio)))


def lin(a, x, ex, b, y, ey):
    """`a * x + b * y`, and a bound on the error of its float32 evaluation.

    `ex` and `ey` bound the errors already in float32's `x` and `y`; the
    evaluation rounds `a`, `b`, both products and the sum: to first order at
    most 3 round-offs of each term.
    """
    value = a * x + b * y
    error = abs(a) * ex + abs(b) * ey + 3 * U32 * (np.abs(a * x) + np.abs(b * y))
    return value, error


def zeros2(p):
    return np.zeros_like(p), np.zeros_like(p)


def ref_sign():
    return R.per_leaf(lambda p: None, lambda g, s, p, t: (np.sign(g), None))


def ref_lion(b1, b2, closest, mode="hard", smooth_beta=1.0):
    def step(g, s, p, t):
        m, e_m = s
        c, e_c = lin(b1, m, e_m, 1 - b1, g, 0.0)
        if mode == "hard":
            closest.check(c, 2 * e_c)
            u = np.sign(c)
        elif mode == "smooth":
            u = np.tanh(smooth_beta * c)
        else:
            u = np.clip(c, -1, 1)
        m, e_m = lin(b2, m, e_m, 1 - b2, g, 0.0)
        return u, (m, e_m)

    return R.per_leaf(zeros2, step)


def ref_lion_optimizer(lr, b1, b2, weight_decay, closest, mask=None):
    """Decoupled: u = -lr_t * (sign(c) + wd * p); c does not read p."""

    def step(g, s, p, t):
        m, e_m = s
        c, e_c = lin(b1, m, e_m, 1 - b1, g, 0.0)
        closest.check(c, 2 * e_c)
        m, e_m = lin(b2, m, e_m, 1 - b2, g, 0.0)
        return np.sign(c), (m, e_m)

    def scale(g, s, p, t):
        lr_t = lr(t - 1) if callable(lr) else lr
        return -lr_t * g, None

    decay = R.add_decayed_weights(weight_decay, mask=mask)
    return R.chain(R.per_leaf(zeros2, step), decay, R.per_leaf(lambda p: None, scale))


def ref_lion_coupled(lr, b1, b2, weight_decay, closest):
    """Coupled: the decay enters the momentum and the sign.

    Here c reads p, so the bound also follows the float32 params' error e_p:
    each step adds one round-off of lr and one of the sum p + u.
    """

    def step(g, s, p, t):
        m, e_m, e_p = s
        gd, e_gd = lin(1.0, g, 0.0, weight_decay, p, e_p)
        c, e_c = lin(b1, m, e_m, 1 - b1, gd, e_gd)
        closest.check(c, 2 * e_c)
        m, e_m = lin(b2, m, e_m, 1 - b2, gd, e_gd)
        u = -lr * np.sign(c)
        e_p = e_p + U32 * lr + U32 * np.abs(p + u)
        return u, (m, e_m, e_p)

    return R.per_leaf(lambda p: (*zeros2(p), np.zeros_like(p)), step)


def ref_signum(lr, beta, closest):
    def step(g, s, p, t):
        m, e_m = s
        m, e_m = lin(beta, m, e_m, 1 - beta, g, 0.0)
        closest.check(m, 2 * e_m)
        return -lr * np.sign(m), (m, e_m)

    return R.per_leaf(zeros2, step)


def ref_rprop(lr, eta_minus=0.5, eta_plus=1.2, lo=1e-6, hi=50.0, every_step=False):
    def step(g, s, p, t):
        size, d = s
        flip = np.sign(g) * d
        changed = np.clip(size * np.where(flip > 0, eta_plus, eta_minus), lo, hi)
        kept = np.clip(size, lo, hi) if every_step else size
        size = np.where(flip == 0, kept, changed)
        d = np.where(flip < 0, 0.0, np.sign(g))
        return size * d, (size, d)

    return R.per_leaf(lambda p: (np.full_like(p, lr), np.zeros_like(p)), step)


def descend(ref, lr):
    return R.chain(ref, R.scale_by_learning_rate(lr))


EQUATION_CASES = {
    # links
    "scale_by_sign": lambda c: (gradtx.scale_by_sign(), ref_sign()),
    "scale_by_lion": lambda c: (gradtx.scale_by_lion(), ref_lion(0.9, 0.99, c)),
    "scale_by_lion/betas": lambda c: (
        gradtx.scale_by_lion(0.5, 0.9),
        ref_lion(0.5, 0.9, c),
    ),
    "scale_by_lion/smooth": lambda c: (
        gradtx.scale_by_lion(mode="smooth", smooth_beta=3.0),
        ref_lion(0.9, 0.99, c, mode="smooth", smooth_beta=3.0),
    ),
    "scale_by_lion/refined": lambda c: (
        gradtx.scale_by_lion(0.8, 0.95, mode="refined"),
        ref_lion(0.8, 0.95, c, mode="refined"),
    ),
    "scale_by_rprop": lambda c: (gradtx.scale_by_rprop(0.01), ref_rprop(0.01)),
    "scale_by_rprop/bounds": lambda c: (
        gradtx.scale_by_rprop(0.3, 0.4, 1.5, 0.01, 0.2),
        ref_rprop(0.3, 0.4, 1.5, 0.01, 0.2),
    ),
    "scale_by_rprop/clip_every_step": lambda c: (
        gradtx.scale_by_rprop(0.3, 0.4, 1.5, 0.01, 0.2, clip_every_step=True),
        ref_rprop(0.3, 0.4, 1.5, 0.01, 0.2, every_step=True),
    ),
    # optimizers
    "sign_sgd": lambda c: (gradtx.sign_sgd(0.01), descend(ref_sign(), 0.01)),
    "signum": lambda c: (gradtx.signum(0.01, 0.8), ref_signum(0.01, 0.8, c)),
    "lion": lambda c: (
        gradtx.lion(3e-3, weight_decay=0.1),
        ref_lion_optimizer(3e-3, 0.9, 0.99, 0.1, c),
    ),
    "lion/schedule_mask": lambda c: (
        gradtx.lion(lr_schedule, 0.95, 0.98, weight_decay=0.5, mask=MASK),
        ref_lion_optimizer(lr_schedule, 0.95, 0.98, 0.5, c, mask=MASK),
    ),
    "lion/coupled": lambda c: (
        gradtx.chain(
            gradtx.add_decayed_weights(0.5),
            gradtx.scale_by_lion(0.9, 0.99),
            gradtx.scale_by_learning_rate(3e-3),
        ),
        ref_lion_coupled(3e-3, 0.9, 0.99, 0.5, c),
    ),
    "rprop": lambda c: (
        gradtx.rprop(0.01),
        descend(ref_rprop(0.01), 1.0),
    ),
    "rprop/clip_every_step": lambda c: (
        gradtx.rprop(0.3, max_step_size=0.1, clip_every_step=True),
        descend(ref_rprop(0.3, hi=0.1, every_step=True), 1.0),
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    closest = Closest()
    tx, ref = EQUATION_CASES[case](closest)
    got, want = R.run_side_by_side(tx, ref, steps=R.STEPS)
    error = R.max_relative_error(got, want)
    margin = "none taken" if math.isinf(closest.ratio) else f"{closest.ratio:.3g}"
    print(f"\n{case}: max relative error {error:.2e}; closest sign / bound: {margin}")
    assert closest.ratio > 1  # float32 cannot have taken another sign
    assert error < RTOL


def test_coupled_and_decoupled_lion_differ_only_by_order():
    decoupled = gradtx.lion(3e-3, weight_decay=0.5)
    coupled = gradtx.chain(
        gradtx.add_decayed_weights(0.5),
        gradtx.scale_by_lion(),
        gradtx.scale_by_learning_rate(3e-3),
    )
    names = [link.name for link in decoupled.children]
    assert [link.name for link in coupled.children] == [names[1], names[0], names[2]]
    a, b = gradtx_trajectory(decoupled, 30), gradtx_trajectory(coupled, 30)
    # coupled, no coordinate ever moves by more than lr in one step
    steps = [np.abs(y["w"] - x["w"]) for x, y in zip(b, b[1:], strict=False)]
    assert max(float(np.max(s)) for s in steps) <= 3e-3 * (1 + 1e-5)
    assert max_relative_gap(a, b) > 1e-4  # and the two really differ


# ----------------------------------------------------------------------------
# peers


OPTAX_CASES = {
    "sign_sgd": (gradtx.sign_sgd(0.01), optax.sign_sgd(0.01)),
    "signum": (gradtx.signum(0.01, 0.8), optax.signum(0.01, 0.8)),
    "lion": (gradtx.lion(3e-3), optax.lion(3e-3)),
    "lion/positional": (
        gradtx.lion(lr_schedule, 0.95, 0.98, None, 0.5, MASK),
        optax.lion(lr_schedule, 0.95, 0.98, None, 0.5, MASK),
    ),
    "lion/coupled": (
        gradtx.chain(
            gradtx.add_decayed_weights(0.5),
            gradtx.scale_by_lion(),
            gradtx.scale_by_learning_rate(3e-3),
        ),
        optax.chain(
            optax.add_decayed_weights(0.5),
            optax.scale_by_lion(),
            optax.scale_by_learning_rate(3e-3),
        ),
    ),
    "scale_by_lion/smooth": (
        gradtx.chain(
            gradtx.scale_by_lion(mode="smooth", smooth_beta=3.0),
            gradtx.scale_by_learning_rate(0.01),
        ),
        optax.chain(
            optax.scale_by_lion(mode="smooth", smooth_beta=3.0),
            optax.scale_by_learning_rate(0.01),
        ),
    ),
    "scale_by_lion/refined": (
        gradtx.chain(
            gradtx.scale_by_lion(0.8, 0.95, mode="refined"),
            gradtx.scale_by_learning_rate(0.01),
        ),
        optax.chain(
            optax.scale_by_lion(0.8, 0.95, mode="refined"),
            optax.scale_by_learning_rate(0.01),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_step_for_step_with_optax(case):
    ours, theirs = OPTAX_CASES[case]
    gap = max_relative_gap(gradtx_trajectory(ours), optax_trajectory(theirs))
    print(f"\noptax {case}: max relative gap {gap:.2e}")
    assert gap < RTOL_OPTAX


def test_rprop_computes_optax_step_but_emits_it_at_once():
    # optax 0.2.8's scale_by_rprop computes the step of the docstring and
    # keeps it in its state as `prev_updates`, but emits the previous step's
    # value, zeroed where the current gradient flips sign (its first update
    # is zero). gradtx emits the step it computes. This pins both halves:
    # the step sizes and the step are optax's, and what optax emits is our
    # previous update under that rule.
    args = (0.05, 0.4, 1.3, 1e-3, 0.2)
    ours, theirs = gradtx.scale_by_rprop(*args), optax.scale_by_rprop(*args)
    params = R.to_f32(R.make_params(0))
    state, their_state = ours.init(params), theirs.init(params)
    update, their_update = jax.jit(ours.update), jax.jit(theirs.update)
    previous = jax.tree.map(jnp.zeros_like, params)
    gap = 0.0
    for g in R.make_grads(100, 1):
        g = R.to_f32(g)
        flips = jax.tree.map(lambda g, d: jnp.sign(g) * d < 0, g, state.prev_signs)
        u, state = update(g, state)
        emitted, their_state = their_update(g, their_state)
        for k in u:
            gap = max(
                gap,
                float(np.max(np.abs(u[k] - their_state.prev_updates[k]))),
                float(np.max(np.abs(state.step_sizes[k] - their_state.step_sizes[k]))),
            )
            lagged = jnp.where(flips[k], 0.0, previous[k])
            np.testing.assert_array_equal(emitted[k], lagged)
        previous = u
    print(f"\noptax scale_by_rprop state: max gap {gap:.2e}")
    assert gap < RTOL_OPTAX * 0.2  # step sizes are at most 0.2


TORCH_CASES = {
    "Rprop": (
        gradtx.rprop(0.01, clip_every_step=True),
        lambda p: torch.optim.Rprop(p),  # torch's defaults
    ),
    "Rprop/etas_step_sizes": (
        gradtx.rprop(0.05, 0.4, 1.3, 1e-3, 0.2, clip_every_step=True),
        lambda p: torch.optim.Rprop(
            p, lr=0.05, etas=(0.4, 1.3), step_sizes=(1e-3, 0.2)
        ),
    ),
    "Rprop/lr_above_max": (
        gradtx.rprop(0.5, max_step_size=0.1, clip_every_step=True),
        lambda p: torch.optim.Rprop(p, lr=0.5, step_sizes=(1e-6, 0.1)),
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_step_for_step_with_torch(case):
    ours, make_theirs = TORCH_CASES[case]
    gap = max_relative_gap(gradtx_trajectory(ours), torch_trajectory(make_theirs))
    print(f"\ntorch {case}: max relative gap {gap:.2e}")
    assert gap < RTOL_TORCH


def test_clip_every_step_matters_only_for_a_learning_rate_out_of_bounds():
    g = {"w": jnp.array([1.0, -2.0])}
    params = {"w": jnp.zeros(2)}

    def first_step(**kwargs):
        tx = gradtx.rprop(**kwargs)
        return tx.update(g, tx.init(params), params)[0]["w"]

    # optax's form (the default) starts with the learning rate as given ...
    np.testing.assert_array_equal(
        first_step(learning_rate=0.5, max_step_size=0.1), [-0.5, 0.5]
    )
    optax_u, _ = optax.rprop(0.5, max_step_size=0.1).update(
        g, optax.rprop(0.5, max_step_size=0.1).init(params)
    )
    # (optax 0.2.8 emits it a step late: its first update is zero)
    np.testing.assert_array_equal(optax_u["w"], [0.0, 0.0])
    # ... torch's form clips it first
    np.testing.assert_array_equal(
        first_step(learning_rate=0.5, max_step_size=0.1, clip_every_step=True),
        np.float32([-0.1, 0.1]),
    )
    # within the bounds the two forms take the same steps, bit for bit
    a = gradtx_trajectory(gradtx.rprop(0.01), 20)
    b = gradtx_trajectory(gradtx.rprop(0.01, clip_every_step=True), 20)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gradtx.sign_sgd, optax.sign_sgd),
        (gradtx.signum, optax.signum),
        (gradtx.lion, optax.lion),
        (gradtx.rprop, optax.rprop),
        (gradtx.scale_by_lion, optax.scale_by_lion),
        (gradtx.scale_by_rprop, optax.scale_by_rprop),
        (gradtx.scale_by_sign, optax.scale_by_sign),
    ],
    ids=lambda f: getattr(f, "__name__", ""),
)
def test_signature_is_optax(ours, theirs):
    # same names, order, kinds and defaults; a torch-form flag may follow
    def params(f, drop=()):
        return [
            (p.name, p.kind, p.default)
            for p in inspect.signature(f).parameters.values()
            if p.name not in drop
        ]

    assert params(ours, drop={"clip_every_step"}) == params(theirs)


# ----------------------------------------------------------------------------
# hand-worked cases and state


def test_sign_of_zero_is_zero_and_signs_are_exact():
    tx = gradtx.sign_sgd(0.5)
    u, _ = tx.update(jnp.array([1e-30, -7.0, 0.0]), tx.init(jnp.zeros(3)))
    np.testing.assert_array_equal(u, [-0.5, 0.5, 0.0])


def test_lion_moments_use_the_two_rates():
    tx = gradtx.scale_by_lion(b1=0.5, b2=0.75)
    state = tx.init(jnp.zeros(1))
    u, state = tx.update(jnp.array([4.0]), state)  # c = 2, m = 1
    u, state = tx.update(jnp.array([-1.5]), state)  # c = 0.5 - 0.75 < 0
    assert float(u[0]) == -1.0
    assert float(state.mu[0]) == 0.75 * 1.0 + 0.25 * -1.5


def test_jitted_and_eager_lion_agree_at_ties():
    # bfloat16 moments make exact ties b1 * m == -(1 - b1) * g common. Summed,
    # a tie is 0 eagerly but a tiny nonzero number under jit, where XLA may
    # fuse a product into the addition (a summing form differed at 160 of
    # these 4096 elements); Lion decides its sign by comparing the terms.
    g = jnp.asarray(np.random.default_rng(0).normal(size=4096), jnp.bfloat16)
    m = (-(0.1 / 0.9) * g.astype(jnp.float32)).astype(jnp.bfloat16)
    lion = gradtx.scale_by_lion()
    state = gradtx.ScaleByLionState(mu=m)
    jitted, _ = jax.jit(lion.update)(g, state)
    eager, _ = lion.update(g, state)
    np.testing.assert_array_equal(jitted, eager)
    assert 100 < int(jnp.sum(eager == 0)) < 300  # the ties are there


def test_signum_steps_along_the_sign_of_the_average_it_stores():
    # Signum's promise is the sign of its stored average, under jit and
    # eagerly alike; at the same ties as above the two averages may differ
    # by round-off around zero, and each step follows its own average.
    g = jnp.asarray(np.random.default_rng(0).normal(size=4096), jnp.bfloat16)
    m = (-(0.1 / 0.9) * g.astype(jnp.float32)).astype(jnp.bfloat16)
    signum = gradtx.signum(1.0, beta=0.9)
    state = (gradtx.ScaleByMomentumState(velocity=m),) + signum.init(m)[1:]
    for update in (signum.update, jax.jit(signum.update)):
        u, new = update(g, state)
        np.testing.assert_array_equal(u, -jnp.sign(new[0].velocity))
        assert u.dtype == jnp.bfloat16
    (_, jitted), (_, eager) = jax.jit(signum.update)(g, state), signum.update(g, state)
    tiny = float(jnp.finfo(jnp.bfloat16).eps) * float(jnp.max(jnp.abs(g)))
    np.testing.assert_allclose(
        np.asarray(jitted[0].velocity, np.float32),
        np.asarray(eager[0].velocity, np.float32),
        atol=tiny,
    )


def test_rprop_skips_the_step_after_a_sign_flip_and_keeps_its_size_next():
    tx = gradtx.scale_by_rprop(learning_rate=1.0, eta_minus=0.5, eta_plus=2.0)
    state = tx.init(jnp.zeros(()))
    outs, sizes = [], []
    for g in [1.0, 1.0, -1.0, -1.0, -1.0, 0.0, -1.0]:
        u, state = tx.update(jnp.array(g), state)
        outs.append(float(u))
        sizes.append(float(state.step_sizes))
    assert outs == [1.0, 2.0, 0.0, -1.0, -2.0, 0.0, -2.0]
    assert sizes == [1.0, 2.0, 1.0, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "tx, moment",
    [
        (gradtx.scale_by_lion(mu_dtype=jnp.bfloat16), lambda s: s.mu),
        (
            gradtx.signum(0.01, accumulator_dtype=jnp.bfloat16),
            lambda s: s[0].velocity,
        ),
    ],
    ids=["lion", "signum"],
)
def test_the_first_moment_lives_in_the_chosen_dtype(tx, moment):
    params = {"w": jnp.zeros((2, 3))}
    update = jax.jit(tx.update)
    state = tx.init(params)
    for _ in range(3):
        u, state = update({"w": jnp.full((2, 3), 0.3)}, state, params)
    assert moment(state)["w"].dtype == jnp.bfloat16
    assert u["w"].dtype == jnp.float32
    assert bool(jnp.all(moment(state)["w"] > 0))


def test_state_types_are_named_and_hold_arrays_only():
    params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    expected = {
        gradtx.scale_by_sign(): gradtx.EmptyState,
        gradtx.scale_by_lion(): gradtx.ScaleByLionState,
        gradtx.scale_by_rprop(0.1): gradtx.ScaleByRpropState,
    }
    for tx, state_type in expected.items():
        state = tx.init(params)
        assert type(state) is state_type
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_mismatched_tree_is_named():
    tx = gradtx.scale_by_rprop(0.1)
    state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"scale_by_rprop: .*'b'"):
        tx.update({"a": jnp.zeros(2)}, state)


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (gradtx.scale_by_lion, {"b1": 1.5}, r"scale_by_lion: b1 must be in \[0, 1\]"),
        (gradtx.scale_by_lion, {"b2": 1.0}, r"scale_by_lion: b2 must be in \[0, 1\)"),
        (gradtx.scale_by_lion, {"b2": float("nan")}, r"b2 must be in"),
        (gradtx.scale_by_lion, {"mode": "soft"}, r"scale_by_lion: mode must be one"),
        (gradtx.scale_by_lion, {"smooth_beta": 0.0}, r"smooth_beta must be in \(0"),
        (gradtx.scale_by_lion, {"mu_dtype": jnp.int8}, r"mu_dtype must be a floating"),
        (
            gradtx.scale_by_rprop,
            {"learning_rate": -0.1},
            r"scale_by_rprop: learning_rate must be in \[0, inf\)",
        ),
        (
            gradtx.scale_by_rprop,
            {"learning_rate": 0.1, "eta_minus": 0.0},
            r"eta_minus must be in \(0, 1\]",
        ),
        (
            gradtx.scale_by_rprop,
            {"learning_rate": 0.1, "eta_plus": 0.9},
            r"eta_plus must be in \[1, inf\)",
        ),
        (
            gradtx.scale_by_rprop,
            {"learning_rate": 0.1, "min_step_size": -1.0},
            r"min_step_size must be in \[0, inf\)",
        ),
        (
            gradtx.scale_by_rprop,
            {"learning_rate": 0.1, "min_step_size": 0.5, "max_step_size": 0.1},
            r"max_step_size must be in \[0.5, inf\]",
        ),
        (gradtx.sign_sgd, {"learning_rate": -1.0}, r"learning_rate must be"),
        (gradtx.signum, {"learning_rate": 0.1, "beta": 1.0}, r"signum: beta must be"),
        (
            gradtx.signum,
            {"learning_rate": 0.1, "accumulator_dtype": jnp.int32},
            r"signum: accumulator_dtype must be a floating",
        ),
        (gradtx.lion, {"learning_rate": -0.1}, r"learning_rate must be"),
        (gradtx.lion, {"learning_rate": 0.1, "b1": -0.1}, r"b1 must be in \[0, 1\]"),
        (
            gradtx.lion,
            {"learning_rate": 0.1, "weight_decay": -1.0},
            r"weight_decay must be in \[0, inf\)",
        ),
        (gradtx.rprop, {"learning_rate": 0.1, "eta_plus": 0.5}, r"eta_plus must be"),
    ],
)
def test_out_of_range_hyperparameters_raise_at_construction(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_rprop_refuses_a_schedule_and_a_non_bool_flag():
    with pytest.raises(TypeError, match="scale_by_rprop: learning_rate is the initial"):
        gradtx.rprop(lambda t: 0.1)
    with pytest.raises(TypeError, match="clip_every_step must be True or False"):
        gradtx.rprop(0.1, clip_every_step=1)


# ----------------------------------------------------------------------------
# hyperparameters as arrays: inject_hyperparams and vmap


OPTIMIZERS = {
    "sign_sgd": (gradtx.sign_sgd, {"learning_rate": 0.01}),
    "signum": (gradtx.signum, {"learning_rate": 0.01, "beta": 0.8}),
    "lion": (gradtx.lion, {"learning_rate": 3e-3, "b1": 0.8, "weight_decay": 0.1}),
    "rprop": (gradtx.rprop, {"learning_rate": 0.01, "eta_plus": 1.3}),
}


def grads_sequence(steps, dtype=jnp.float32):
    return [
        jax.tree.map(lambda x: x.astype(dtype), R.to_f32(g))
        for g in R.make_grads(steps, 1)
    ]


def run(tx, grads, params):
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), state, updates

    for g in grads:
        params, state, updates = step(params, state, g)
    return params, state, updates


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_inject_hyperparams_bfloat16_and_same_numbers(name):
    factory, kwargs = OPTIMIZERS[name]
    injected = gradtx.inject_hyperparams(factory)(**kwargs)
    params32 = R.to_f32(R.make_params(0))
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32)
    p16, state16, u16 = run(injected, grads_sequence(3, jnp.bfloat16), params16)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(u16))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(p16))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(u16))
    assert set(state16.hyperparams) >= set(kwargs)
    assert all(v.dtype == jnp.float32 for v in state16.hyperparams.values())
    got, _, _ = run(injected, grads_sequence(5), params32)
    want, _, _ = run(factory(**kwargs), grads_sequence(5), params32)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


VMAP_CASES = {
    "sign_sgd": ("learning_rate", [0.001, 0.01, 0.05]),
    "signum": ("beta", [0.0, 0.5, 0.9]),
    "lion": ("b1", [0.0, 0.5, 0.95]),
    "rprop": ("eta_plus", [1.0, 1.2, 2.0]),
}


@pytest.mark.parametrize("name", sorted(VMAP_CASES))
def test_vmap_over_a_hyperparameter_equals_separate_runs(name):
    factory, kwargs = OPTIMIZERS[name]
    key, values = VMAP_CASES[name]
    opt = gradtx.inject_hyperparams(factory)(**kwargs)
    params = R.to_f32(R.make_params(0))
    grads = grads_sequence(5)

    def trajectory(value):
        state = opt.init(params)
        state = state._replace(hyperparams=dict(state.hyperparams, **{key: value}))
        p = params
        for g in grads:
            updates, state = opt.update(g, state, p)
            p = gradtx.apply_updates(p, updates)
        return p

    batched = jax.jit(jax.vmap(trajectory))(jnp.array(values, jnp.float32))
    for i, value in enumerate(values):
        alone = params
        tx = factory(**dict(kwargs, **{key: value}))
        state = tx.init(alone)
        for g in grads:
            updates, state = tx.update(g, state, alone)
            alone = gradtx.apply_updates(alone, updates)
        for got, want in zip(
            jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# inside the wrappers (eager: a few steps on a small tree)


def small_params():
    return R.to_f32(R.make_params(0))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masked_leaves_pass_through_and_the_rest_is_the_optimizer(name):
    factory, kwargs = OPTIMIZERS[name]
    tx = gradtx.masked(factory(**kwargs), MASK)
    alone = factory(**kwargs)
    params = small_params()
    selected = {k: v for k, v in params.items() if MASK[k]}
    state, alone_state = tx.init(params), alone.init(selected)
    for g in grads_sequence(4):
        u, state = tx.update(g, state, params)
        want, alone_state = alone.update(
            {k: g[k] for k in selected}, alone_state, selected
        )
        np.testing.assert_array_equal(u["b"], g["b"])  # unselected: unchanged
        chex.assert_trees_all_close({k: u[k] for k in selected}, want, rtol=1e-6)
        params = gradtx.apply_updates(params, u)
        selected = {k: params[k] for k in selected}


@pytest.mark.parametrize("name", ["lion", "rprop"])
def test_multi_transform_groups_equal_each_optimizer_alone(name):
    factory, kwargs = OPTIMIZERS[name]
    labels = {"w": "ours", "b": "sgd", "s": "ours"}
    tx = gradtx.multi_transform(
        {"ours": factory(**kwargs), "sgd": gradtx.sgd(0.1)}, labels
    )
    alone = factory(**kwargs)
    params = small_params()
    group = {k: params[k] for k in ("w", "s")}
    state, alone_state = tx.init(params), alone.init(group)
    for g in grads_sequence(4):
        u, state = tx.update(g, state, params)
        want, alone_state = alone.update({k: g[k] for k in group}, alone_state, group)
        np.testing.assert_allclose(u["b"], -0.1 * g["b"], rtol=1e-6)
        chex.assert_trees_all_close({k: u[k] for k in group}, want, rtol=1e-6)
        params = gradtx.apply_updates(params, u)
        group = {k: params[k] for k in group}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_apply_if_finite_skips_a_bad_step_without_a_trace(name):
    factory, kwargs = OPTIMIZERS[name]
    tx = gradtx.apply_if_finite(factory(**kwargs), max_consecutive_errors=2)
    params = small_params()
    grads = grads_sequence(4)
    bad = jax.tree.map(lambda g: g.at[()].set(jnp.nan) if g.ndim == 0 else g, grads[1])
    update = jax.jit(tx.update)
    state = tx.init(params)
    p = params
    for g in [grads[0], bad, *grads[2:]]:
        u, state = update(g, state, p)
        if g is bad:
            assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
        p = gradtx.apply_updates(p, u)
    q, clean_state = params, tx.init(params)
    for g in [grads[0], *grads[2:]]:
        u, clean_state = update(g, clean_state, q)
        q = gradtx.apply_updates(q, u)
    assert int(state.notfinite_total) == 1
    chex.assert_trees_all_close(p, q, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_accumulating_two_micro_steps_is_one_step_on_their_mean(name):
    factory, kwargs = OPTIMIZERS[name]
    tx = gradtx.accumulate_gradients(factory(**kwargs), every_k=2)
    inner = factory(**kwargs)
    params = small_params()
    state, inner_state = tx.init(params), inner.init(params)
    p, q = params, params
    grads = grads_sequence(6)
    update, inner_update = jax.jit(tx.update), jax.jit(inner.update)
    for i in range(0, 6, 2):
        u, state = update(grads[i], state, p)
        assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
        u, state = update(grads[i + 1], state, p)
        p = gradtx.apply_updates(p, u)
        mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[i], grads[i + 1])
        v, inner_state = inner_update(mean, inner_state, q)
        q = gradtx.apply_updates(q, v)
        chex.assert_trees_all_close(p, q, rtol=1e-6)


# ----------------------------------------------------------------------------
# describe


def test_describe_shows_links_and_hyperparameters():
    text = gradtx.describe(gradtx.lion(1e-4, weight_decay=1e-2, mask=MASK))
    assert "scale_by_lion(b1=0.9, b2=0.99, mu_dtype=None, mode='hard'" in text
    assert "add_decayed_weights(weight_decay=0.01, mask=" in text
    assert "scale_by_learning_rate(learning_rate=0.0001)" in text
    text = gradtx.describe(gradtx.rprop(0.01, clip_every_step=True))
    assert "scale_by_rprop(learning_rate=0.01, eta_minus=0.5, eta_plus=1.2" in text
    assert "clip_every_step=True" in text and "scale(factor=-1.0)" in text
    text = gradtx.describe(gradtx.signum(0.01))
    assert "scale_by_momentum(decay=0.9, nesterov=False, dampening=0.9" in text
    assert "scale_by_sign()" in text
    assert "scale_by_sign()" in gradtx.describe(gradtx.sign_sgd(0.1))
