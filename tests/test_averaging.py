"""EMA and SWA of the params, and Lookahead: equations, peers, wrappers."""

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
import torch
from peers import max_relative_gap

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
# float32 against float32 with another order of operations: the average is
# a convex combination of params, so the gaps are the params' round-off.
# Measured: torch 1.2e-7 to 2.7e-7. optax.lookahead is 5.8e-6 (6.3e-6 with
# reset_state) from the float64 reference, where gradtx is 4e-7: optax adds
# `u - (1 - alpha) * (fast + u - slow)` to the fast weights, which cancels;
# the gaps to optax (5.4e-6 and 6.2e-6) are optax's round-off.
RTOL_OPTAX = 2e-5
RTOL_TORCH = 1e-5
LR = 0.05
MASK = {"w": True, "b": False, "s": True}


def grads_sequence(steps, dtype=jnp.float32):
    return [
        jax.tree.map(lambda x: x.astype(dtype), R.to_f32(g))
        for g in R.make_grads(steps, 1)
    ]


def params32():
    return R.to_f32(R.make_params(0))


@functools.cache  # one compile per transformation across the tests
def make_step(tx):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, updates

    return step


def trajectory(tx, grads, params=None):
    """(params, state, updates) after each step of a jitted loop."""
    params = params32() if params is None else params
    state = tx.init(params)
    step = make_step(tx)
    out = []
    for g in grads:
        params, state, updates = step(params, state, g)
        out.append((params, state, updates))
    return out


def numpy_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ----------------------------------------------------------------------------
# float64 references, written from the docstrings' equations


def ref_sgd(lr=LR, momentum=0.9):
    return R.chain(R.momentum(momentum), R.scale_by_learning_rate(lr))


def ref_adam(lr=LR):
    return R.chain(R.adam(), R.scale_by_learning_rate(lr))


def ref_averaging(inner, kind, steps, decay=None, every_k=1, start_step=0):
    """Per step: (params, average, n_averaged), all float64."""
    params = R.make_params(0)
    state = inner.init(params)
    average, n = dict(params), 0
    out = []
    for t, g in enumerate(R.make_grads(steps, 1), start=1):
        u, state = inner.update(g, state, params)
        params = {k: params[k] + u[k] for k in params}
        if t > start_step and (t - start_step) % every_k == 0:
            if n == 0:
                average = dict(params)
            elif kind == "ema":
                average = {
                    k: decay * average[k] + (1 - decay) * params[k] for k in params
                }
            else:
                average = {
                    k: average[k] + (params[k] - average[k]) / (n + 1) for k in params
                }
            n += 1
        out.append((params, average, n))
    return out


def ref_lookahead(inner, sync_period, slow_step_size, steps, reset_state=False):
    """Per step: (fast params, slow params), float64."""
    params = R.make_params(0)
    slow = dict(params)
    state = inner.init(params)
    since = 0
    out = []
    for g in R.make_grads(steps, 1):
        u, state = inner.update(g, state, params)
        fast = {k: params[k] + u[k] for k in params}
        since += 1
        if since == sync_period:
            slow = {k: slow[k] + slow_step_size * (fast[k] - slow[k]) for k in slow}
            params, since = dict(slow), 0
            if reset_state:
                state = inner.init(params)
        else:
            params = fast
        out.append((params, slow))
    return out


AVERAGING_CASES = {
    "ema_sgd": (
        lambda: gradtx.ema_params(gradtx.sgd(LR, momentum=0.9), decay=0.9),
        ref_sgd(),
        {"kind": "ema", "decay": 0.9},
    ),
    "ema_adam_start": (
        lambda: gradtx.ema_params(gradtx.adam(LR), 0.99, start_step=30),
        ref_adam(),
        {"kind": "ema", "decay": 0.99, "start_step": 30},
    ),
    "swa_sgd": (
        lambda: gradtx.swa_params(gradtx.sgd(LR, momentum=0.9)),
        ref_sgd(),
        {"kind": "swa"},
    ),
    "swa_adam_every": (
        lambda: gradtx.swa_params(gradtx.adam(LR), every_k=7, start_step=20),
        ref_adam(),
        {"kind": "swa", "every_k": 7, "start_step": 20},
    ),
}


@pytest.mark.parametrize("name", sorted(AVERAGING_CASES))
def test_average_matches_float64_equation(name):
    make, inner_ref, kwargs = AVERAGING_CASES[name]
    got = trajectory(make(), grads_sequence(R.STEPS))
    want = ref_averaging(inner_ref, steps=R.STEPS, **kwargs)
    got_avg = [numpy_tree(gradtx.averaged_params(s)) for _, s, _ in got]
    assert [int(s.n_averaged) for _, s, _ in got] == [n for _, _, n in want]
    err_avg = max_relative_gap(got_avg, [a for _, a, _ in want])
    err_params = max_relative_gap(
        [numpy_tree(p) for p, _, _ in got], [p for p, _, _ in want]
    )
    print(f"{name}: average {err_avg:.2e}, params {err_params:.2e} vs float64")
    assert err_avg < RTOL and err_params < RTOL


LOOKAHEAD_CASES = {
    "adam_k5": (gradtx.adam(LR), ref_adam(), 5, 0.5, False),
    "sgd_k1": (gradtx.sgd(LR, momentum=0.9), ref_sgd(), 1, 0.3, False),
    "adam_k6_reset": (gradtx.adam(LR), ref_adam(), 6, 0.8, True),
}


@pytest.mark.parametrize("name", sorted(LOOKAHEAD_CASES))
def test_lookahead_matches_float64_equation(name):
    inner, inner_ref, k, alpha, reset = LOOKAHEAD_CASES[name]
    tx = gradtx.lookahead(inner, k, alpha, reset)
    got = trajectory(tx, grads_sequence(R.STEPS))
    want = ref_lookahead(inner_ref, k, alpha, R.STEPS, reset)
    err_fast = max_relative_gap(
        [numpy_tree(p) for p, _, _ in got], [f for f, _ in want]
    )
    err_slow = max_relative_gap(
        [numpy_tree(gradtx.lookahead_slow_params(s)) for _, s, _ in got],
        [s for _, s in want],
    )
    print(f"lookahead {name}: fast {err_fast:.2e}, slow {err_slow:.2e} vs float64")
    assert err_fast < RTOL and err_slow < RTOL


# ----------------------------------------------------------------------------
# peers: torch's AveragedModel, optax's lookahead


class Tensors(torch.nn.Module):
    """A module holding R.make_params' leaves as parameters."""

    def __init__(self, start):
        super().__init__()
        self.p = torch.nn.ParameterDict(
            {
                k: torch.nn.Parameter(torch.tensor(start[k], dtype=torch.float32))
                for k in sorted(start)
            }
        )


def torch_averages(make_opt, kind, steps, decay=None, every_k=1, start_step=0):
    """torch SGD/Adam steps, AveragedModel updated as torch users do."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = Tensors(R.make_params(0))
    opt = make_opt(model.parameters())
    if kind == "ema":
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    else:
        averaged = AveragedModel(model)  # the default: equal-weight SWA
    out = []
    for t, g in enumerate(R.make_grads(steps, 1), start=1):
        for k, p in model.p.items():
            p.grad = torch.tensor(g[k], dtype=torch.float32)
        opt.step()
        if t > start_step and (t - start_step) % every_k == 0:  # swa_start
            averaged.update_parameters(model)
        out.append(
            {
                k: p.detach().numpy().astype(np.float64)
                for k, p in averaged.module.p.items()
            }
        )
    return out, int(averaged.n_averaged)


TORCH_CASES = {
    "ema_sgd": (
        lambda: gradtx.ema_params(gradtx.sgd(LR, momentum=0.9), 0.95),
        lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9),
        {"kind": "ema", "decay": 0.95},
    ),
    "ema_adam": (
        lambda: gradtx.ema_params(gradtx.adam(LR), 0.999),
        lambda ps: torch.optim.Adam(ps, lr=LR),
        {"kind": "ema", "decay": 0.999},
    ),
    "swa_sgd": (
        lambda: gradtx.swa_params(gradtx.sgd(LR, momentum=0.9), 5, start_step=40),
        lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9),
        {"kind": "swa", "every_k": 5, "start_step": 40},
    ),
    "swa_adam": (
        lambda: gradtx.swa_params(gradtx.adam(LR)),
        lambda ps: torch.optim.Adam(ps, lr=LR),
        {"kind": "swa"},
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_average_step_for_step_with_torch_averaged_model(name):
    make, make_opt, kwargs = TORCH_CASES[name]
    steps = 100
    got = trajectory(make(), grads_sequence(steps))
    want, n_torch = torch_averages(make_opt, steps=steps, **kwargs)
    gap = max_relative_gap(
        [numpy_tree(gradtx.averaged_params(s)) for _, s, _ in got], want
    )
    print(f"{name}: gap to torch AveragedModel {gap:.2e}")
    assert int(got[-1][1].n_averaged) == n_torch
    assert gap < RTOL_TORCH


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_step_for_step_with_optax(reset_state):
    steps = 100
    tx = gradtx.lookahead(gradtx.adam(LR), 5, 0.5, reset_state)
    got = trajectory(tx, grads_sequence(steps))
    opt = optax.lookahead(optax.adam(LR), 5, 0.5, reset_state=reset_state)

    @jax.jit
    def optax_step(pair, state, g):
        updates, state = opt.update(g, state, pair)
        return optax.apply_updates(pair, updates), state

    pair = optax.LookaheadParams.init_synced(params32())
    state = opt.init(pair)
    fast, slow = [], []
    for g in grads_sequence(steps):
        pair, state = optax_step(pair, state, g)
        fast.append(numpy_tree(pair.fast))
        slow.append(numpy_tree(pair.slow))
    gap_fast = max_relative_gap([numpy_tree(p) for p, _, _ in got], fast)
    gap_slow = max_relative_gap(
        [numpy_tree(gradtx.lookahead_slow_params(s)) for _, s, _ in got], slow
    )
    print(
        f"lookahead reset={reset_state}: optax fast {gap_fast:.2e}, slow {gap_slow:.2e}"
    )
    assert gap_fast < RTOL_OPTAX and gap_slow < RTOL_OPTAX


def test_signature_follows_optax_lookahead():
    # positional order: inner optimizer, sync_period, slow_step_size, reset_state
    ours = list(inspect.signature(gradtx.lookahead).parameters)
    theirs = list(inspect.signature(optax.lookahead).parameters)
    assert ours[1:4] == theirs[1:4]


# ----------------------------------------------------------------------------
# semantics


def test_wrapper_returns_the_inner_updates_bit_for_bit():
    grads = grads_sequence(6)
    plain = trajectory(gradtx.adam(LR), grads)
    for tx in (
        gradtx.ema_params(gradtx.adam(LR)),
        gradtx.swa_params(gradtx.adam(LR), 2),
    ):
        for (_, _, want), (_, _, got) in zip(plain, trajectory(tx, grads), strict=True):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_array_equal(a, b)


def test_average_starts_as_a_copy_and_the_first_taken_params_are_copied():
    params = params32()
    tx = gradtx.ema_params(gradtx.sgd(1.0), decay=0.999)
    state = tx.init(params)
    for a, p in zip(
        jax.tree.leaves(gradtx.averaged_params(state)),
        jax.tree.leaves(params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, p)
        assert a is not p
    g = grads_sequence(1)[0]
    updates, state = tx.update(g, state, params)
    moved = gradtx.apply_updates(params, updates)
    chex.assert_trees_all_equal(gradtx.averaged_params(state), moved)
    assert int(state.n_averaged) == 1


def test_lookahead_returns_to_the_slow_weights_on_a_sync_step():
    tx = gradtx.lookahead(gradtx.sgd(0.1), sync_period=3, slow_step_size=0.5)
    before = params32()  # the slow weights before the first step
    for i, (params, state, _) in enumerate(trajectory(tx, grads_sequence(6)), 1):
        slow = gradtx.lookahead_slow_params(state)
        assert int(state.steps_since_sync) == i % 3
        if i % 3 == 0:  # params land on the slow weights, up to one rounding
            chex.assert_trees_all_close(params, slow, rtol=2e-7, atol=1e-7)
        else:  # the slow weights have not moved since the last sync
            chex.assert_trees_all_equal(slow, before)
        before = slow


def test_slow_step_size_one_is_the_inner_optimizer_and_zero_stays_put():
    grads = grads_sequence(8)
    plain = trajectory(gradtx.sgd(LR, momentum=0.9), grads)
    ones = trajectory(gradtx.lookahead(gradtx.sgd(LR, momentum=0.9), 4, 1.0), grads)
    zeros = trajectory(gradtx.lookahead(gradtx.sgd(LR, momentum=0.9), 4, 0.0), grads)
    chex.assert_trees_all_close(ones[-1][0], plain[-1][0], rtol=1e-6)
    chex.assert_trees_all_close(zeros[3][0], params32(), rtol=1e-7, atol=1e-7)
    chex.assert_trees_all_close(zeros[7][0], params32(), rtol=1e-7, atol=1e-7)


def test_state_copies_are_not_aliases_and_params_and_state_can_be_donated():
    for tx in (
        gradtx.ema_params(gradtx.adam(LR), dtype=None),
        gradtx.lookahead(gradtx.adam(LR), 2, 0.5),
    ):
        params = params32()
        state = tx.init(params)
        pointers = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)}
        assert not pointers & {
            x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)
        }

        def step(params, state, g, tx=tx):
            updates, state = tx.update(g, state, params)
            return gradtx.apply_updates(params, updates), state

        donated = jax.jit(step, donate_argnums=(0, 1))
        for g in grads_sequence(3):
            params, state = donated(params, state, g)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_complex_params_keep_their_imaginary_part():
    params = {"z": jnp.array([1.0 + 2.0j, -1.0j], jnp.complex64)}
    tx = gradtx.ema_params(gradtx.sgd(0.5), 0.5)
    state = tx.init(params)
    assert gradtx.averaged_params(state)["z"].dtype == jnp.complex64
    grads = {"z": jnp.array([2.0 + 2.0j, 2.0j], jnp.complex64)}
    for _ in range(2):  # params: (1j, -2j) copied, then (-1, -3j)
        updates, state = tx.update(grads, state, params)
        params = gradtx.apply_updates(params, updates)
    np.testing.assert_allclose(gradtx.averaged_params(state)["z"], [-0.5 + 0.5j, -2.5j])


def test_update_without_params_is_refused():
    for tx in (
        gradtx.ema_params(gradtx.sgd(0.1)),
        gradtx.swa_params(gradtx.sgd(0.1)),
        gradtx.lookahead(gradtx.sgd(0.1), 2, 0.5),
    ):
        state = tx.init(params32())
        with pytest.raises(ValueError, match=f"{tx.name} reads the parameters"):
            tx.update(grads_sequence(1)[0], state)


def test_mismatched_trees_are_named():
    tx = gradtx.ema_params(gradtx.sgd(0.1))
    state = tx.init(params32())
    bad = dict(params32(), extra=jnp.zeros(2))
    with pytest.raises(ValueError, match="ema_params: the structure of updates"):
        tx.update(bad, state, params32())
    with pytest.raises(ValueError, match="ema_params: the structure of params"):
        tx.update(bad, state, bad)


def test_state_types_are_named_and_hold_int32_counts_and_arrays_only():
    cases = [
        (gradtx.ema_params(gradtx.adam(LR)), gradtx.EmaParamsState),
        (gradtx.swa_params(gradtx.adam(LR)), gradtx.SwaParamsState),
        (gradtx.lookahead(gradtx.adam(LR), 3, 0.5), gradtx.LookaheadState),
    ]
    for tx, state_type in cases:
        state = tx.init(params32())
        assert type(state) is state_type
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    ema = cases[0][0].init(params32())
    assert ema.count.dtype == ema.n_averaged.dtype == jnp.int32
    look = cases[2][0].init(params32())
    assert look.steps_since_sync.dtype == jnp.int32


# ----------------------------------------------------------------------------
# finding the state


def test_accessors_find_the_state_inside_chains_and_wrappers():
    params = params32()
    ema = gradtx.ema_params(gradtx.sgd(0.1))
    for tx in (
        gradtx.chain(gradtx.clip_by_global_norm(1.0), ema),
        gradtx.apply_if_finite(ema, 3),
        gradtx.accumulate_gradients(ema, 2),
        gradtx.inject_hyperparams(gradtx.ema_params)(inner=gradtx.sgd(0.1)),
    ):
        chex.assert_trees_all_equal(gradtx.averaged_params(tx.init(params)), params)
    look = gradtx.chain(gradtx.clip(1.0), gradtx.lookahead(gradtx.sgd(0.1), 2, 0.5))
    chex.assert_trees_all_equal(gradtx.lookahead_slow_params(look.init(params)), params)


def test_accessors_name_what_they_searched():
    state = gradtx.adam(LR).init(params32())
    with pytest.raises(
        ValueError,
        match="averaged_params: no EmaParamsState or SwaParamsState in the state; "
        "searched a tuple",
    ):
        gradtx.averaged_params(state)
    with pytest.raises(ValueError, match="lookahead_slow_params: no LookaheadState"):
        gradtx.lookahead_slow_params(state)
    two = gradtx.chain(
        gradtx.ema_params(gradtx.sgd(0.1)), gradtx.swa_params(gradtx.sgd(0.1))
    )
    with pytest.raises(ValueError, match="holds 2 EmaParamsState or SwaParamsState"):
        gradtx.averaged_params(two.init(params32()))


# ----------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: gradtx.ema_params(gradtx.sgd(0.1), 1.5), ValueError, "decay"),
        (lambda: gradtx.ema_params(gradtx.sgd(0.1), -0.1), ValueError, "decay"),
        (lambda: gradtx.ema_params(gradtx.sgd(0.1), float("nan")), ValueError, "decay"),
        (
            lambda: gradtx.ema_params(gradtx.sgd(0.1), start_step=-1),
            ValueError,
            "start_step",
        ),
        (
            lambda: gradtx.ema_params(gradtx.sgd(0.1), start_step=1.5),
            TypeError,
            "start_step",
        ),
        (
            lambda: gradtx.ema_params(gradtx.sgd(0.1), dtype=jnp.int32),
            ValueError,
            "dtype",
        ),
        (lambda: gradtx.ema_params(0.999), TypeError, "inner"),
        (lambda: gradtx.swa_params(gradtx.sgd(0.1), 0), ValueError, "every_k"),
        (lambda: gradtx.swa_params(gradtx.sgd(0.1), True), TypeError, "every_k"),
        (
            lambda: gradtx.swa_params(gradtx.sgd(0.1), start_step=-3),
            ValueError,
            "start_step",
        ),
        (lambda: gradtx.swa_params(gradtx.sgd(0.1), dtype="int8"), ValueError, "dtype"),
        (lambda: gradtx.lookahead(gradtx.sgd(0.1), 0, 0.5), ValueError, "sync_period"),
        (lambda: gradtx.lookahead(gradtx.sgd(0.1), 2.5, 0.5), TypeError, "sync_period"),
        (
            lambda: gradtx.lookahead(gradtx.sgd(0.1), 5, 1.5),
            ValueError,
            "slow_step_size",
        ),
        (
            lambda: gradtx.lookahead(gradtx.sgd(0.1), 5, -0.5),
            ValueError,
            "slow_step_size",
        ),
        (
            lambda: gradtx.lookahead(gradtx.sgd(0.1), 5, 0.5, 1),
            TypeError,
            "reset_state",
        ),
        (
            lambda: gradtx.lookahead(gradtx.sgd(0.1), 5, 0.5, slow_dtype=jnp.int32),
            ValueError,
            "slow_dtype",
        ),
        (lambda: gradtx.lookahead(None, 5, 0.5), TypeError, "inner"),
    ],
)
def test_out_of_range_arguments_raise_at_construction(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ----------------------------------------------------------------------------
# jit, scan, low precision, hyperparameters as arrays


SCAN_CASES = {
    "ema": lambda: gradtx.ema_params(gradtx.adam(LR), 0.9, start_step=2),
    "swa": lambda: gradtx.swa_params(gradtx.adam(LR), 3, start_step=1),
    "lookahead": lambda: gradtx.lookahead(gradtx.adam(LR), 3, 0.5, True),
}


@pytest.mark.parametrize("name", sorted(SCAN_CASES))
def test_lax_scan_equals_the_jitted_loop(name):
    tx = SCAN_CASES[name]()
    grads = grads_sequence(10)
    loop = trajectory(tx, grads)[-1]

    def body(carry, g):
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (gradtx.apply_updates(params, updates), state), None

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
    (params, state), _ = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), stacked))(
        params32(), tx.init(params32())
    )
    chex.assert_trees_all_close((params, state), loop[:2], rtol=1e-6, atol=1e-7)


def test_bfloat16_params_stay_bfloat16_and_are_averaged_in_float32():
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32())
    grads = grads_sequence(20, jnp.bfloat16)
    decay = 0.9
    out = trajectory(gradtx.ema_params(gradtx.adam(LR), decay), grads, params16)
    average = None
    for params, state, updates in out:
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
        assert all(
            a.dtype == jnp.float32
            for a in jax.tree.leaves(gradtx.averaged_params(state))
        )
        # the EMA of the bfloat16 params the loop holds, in float64
        p64 = numpy_tree(params)
        average = (
            p64
            if average is None
            else {k: decay * average[k] + (1 - decay) * p64[k] for k in p64}
        )
        gap = max_relative_gap([numpy_tree(gradtx.averaged_params(state))], [average])
        assert gap < 1e-6
    look = trajectory(
        gradtx.lookahead(gradtx.adam(LR), 3, 0.5, slow_dtype=jnp.float32),
        grads,
        params16,
    )
    for _, state, updates in look:
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
        slow = gradtx.lookahead_slow_params(state)
        assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(slow))
    # after a sync (step 18) the bfloat16 params are the slow weights, rounded
    chex.assert_trees_all_close(
        jax.tree.map(lambda p: p.astype(jnp.float32), look[17][0]),
        gradtx.lookahead_slow_params(look[17][1]),
        rtol=2**-7,
        atol=1e-3,
    )


INJECTED = {
    "ema_params": (gradtx.ema_params, {"inner": gradtx.adam(LR), "decay": 0.9}),
    "swa_params": (gradtx.swa_params, {"inner": gradtx.adam(LR), "every_k": 2}),
    "lookahead": (
        gradtx.lookahead,
        {"inner": gradtx.adam(LR), "sync_period": 3, "slow_step_size": 0.3},
    ),
}


@pytest.mark.parametrize("name", sorted(INJECTED))
def test_inject_hyperparams_bfloat16_and_same_numbers(name):
    factory, kwargs = INJECTED[name]
    injected = gradtx.inject_hyperparams(factory)(**kwargs)
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32())
    p16, state16, u16 = trajectory(injected, grads_sequence(4, jnp.bfloat16), params16)[
        -1
    ]
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(u16))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(p16))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(u16))
    assert all(v.dtype == jnp.float32 for v in state16.hyperparams.values())
    numeric = {
        "ema_params": {"decay"},
        "swa_params": set(),
        "lookahead": {"slow_step_size"},
    }[name]
    assert set(state16.hyperparams) == numeric
    got = trajectory(injected, grads_sequence(7))[-1]
    want = trajectory(factory(**kwargs), grads_sequence(7))[-1]
    chex.assert_trees_all_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    read = (
        gradtx.lookahead_slow_params
        if name == "lookahead"
        else (gradtx.averaged_params)
    )
    chex.assert_trees_all_close(read(got[1]), read(want[1]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name, key, values",
    [
        ("ema_params", "decay", [0.0, 0.5, 0.95]),
        ("lookahead", "slow_step_size", [0.0, 0.5, 1.0]),
    ],
)
def test_vmap_over_a_hyperparameter_equals_separate_runs(name, key, values):
    factory, kwargs = INJECTED[name]
    opt = gradtx.inject_hyperparams(factory)(**kwargs)
    read = (
        gradtx.lookahead_slow_params
        if name == "lookahead"
        else (gradtx.averaged_params)
    )
    grads = grads_sequence(6)

    def run(value):
        state = opt.init(params32())
        state = state._replace(hyperparams=dict(state.hyperparams, **{key: value}))
        p = params32()
        for g in grads:
            updates, state = opt.update(g, state, p)
            p = gradtx.apply_updates(p, updates)
        return p, read(state)

    values = jnp.array(values, jnp.float32)
    batched = jax.jit(jax.vmap(run))(values)
    alone = jax.jit(run)  # injected = plain: test_inject_hyperparams_...
    for i, value in enumerate(values):
        want = alone(value)
        got = jax.tree.map(lambda x, i=i: x[i], batched)
        chex.assert_trees_all_close(got, want, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# inside the other wrappers


def test_inside_accumulate_gradients_only_real_steps_are_averaged():
    # accumulate_gradients(ema_params(adam)) averages the params of the real
    # steps; the other order would also average the unchanged params of the
    # micro-steps in between (documented in ema_params).
    grads = grads_sequence(12)
    decay = 0.8
    tx = gradtx.accumulate_gradients(gradtx.ema_params(gradtx.adam(LR), decay), 2)
    out = trajectory(tx, grads)
    plain = trajectory(gradtx.accumulate_gradients(gradtx.adam(LR), 2), grads)
    average = None
    for i in range(1, 12, 2):  # the real steps
        p = numpy_tree(plain[i][0])
        average = (
            p
            if average is None
            else {k: decay * average[k] + (1 - decay) * p[k] for k in p}
        )
        assert int(out[i][1].inner_state.n_averaged) == (i + 1) // 2
        gap = max_relative_gap(
            [numpy_tree(gradtx.averaged_params(out[i][1]))], [average]
        )
        assert gap < 1e-6
    # SWA taking every 2nd micro-step from outside sees the same params
    outside = trajectory(
        gradtx.swa_params(gradtx.accumulate_gradients(gradtx.adam(LR), 2), 2), grads
    )
    inside = trajectory(
        gradtx.accumulate_gradients(gradtx.swa_params(gradtx.adam(LR)), 2), grads
    )
    chex.assert_trees_all_close(
        gradtx.averaged_params(outside[-1][1]),
        gradtx.averaged_params(inside[-1][1]),
        rtol=1e-6,
    )


def test_inside_apply_if_finite_a_skipped_step_leaves_no_trace():
    grads = grads_sequence(5)
    bad = jax.tree.map(lambda g: jnp.full_like(g, jnp.nan), grads[2])
    for wrapper in (
        gradtx.ema_params(gradtx.adam(LR), 0.7),
        gradtx.swa_params(gradtx.adam(LR)),
        gradtx.lookahead(gradtx.adam(LR), 2, 0.5),
    ):
        tx = gradtx.apply_if_finite(wrapper, max_consecutive_errors=3)
        with_bad = trajectory(tx, [*grads[:2], bad, *grads[2:]])[-1]
        clean = trajectory(tx, grads)[-1]
        chex.assert_trees_all_close(with_bad[0], clean[0], rtol=1e-7)
        chex.assert_trees_all_close(
            with_bad[1].inner_state, clean[1].inner_state, rtol=1e-7
        )


def test_inside_masked_only_the_selected_leaves_are_averaged():
    tx = gradtx.masked(gradtx.ema_params(gradtx.sgd(LR), 0.5), MASK)
    params = params32()
    state = tx.init(params)
    average = gradtx.averaged_params(state)
    assert average["b"] is None and average["w"] is not None
    alone = gradtx.ema_params(gradtx.sgd(LR), 0.5)
    selected = {k: params[k] for k in MASK if MASK[k]}
    alone_state = alone.init(selected)
    for g in grads_sequence(3):
        u, state = tx.update(g, state, params)
        v, alone_state = alone.update(
            {k: g[k] for k in selected}, alone_state, selected
        )
        np.testing.assert_array_equal(u["b"], g["b"])  # unselected: unchanged
        params = gradtx.apply_updates(params, u)
        selected = gradtx.apply_updates(selected, v)
    average = gradtx.averaged_params(state)
    chex.assert_trees_all_close(
        {k: average[k] for k in selected}, gradtx.averaged_params(alone_state)
    )


def test_in_a_chain_and_in_multi_transform():
    grads = grads_sequence(6)
    clipped = gradtx.chain(
        gradtx.clip_by_global_norm(1.0), gradtx.ema_params(gradtx.adam(LR), 0.5)
    )
    plain = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(LR))
    got, want = trajectory(clipped, grads), trajectory(plain, grads)
    chex.assert_trees_all_close(got[-1][0], want[-1][0], rtol=1e-7)
    average = numpy_tree(want[0][0])
    for p, _, _ in want[1:]:
        p = numpy_tree(p)
        average = {k: 0.5 * average[k] + 0.5 * p[k] for k in p}
    gap = max_relative_gap([numpy_tree(gradtx.averaged_params(got[-1][1]))], [average])
    assert gap < 1e-6
    labels = {"w": "look", "b": "sgd", "s": "look"}
    multi = gradtx.multi_transform(
        {"look": gradtx.lookahead(gradtx.adam(LR), 2, 0.5), "sgd": gradtx.sgd(LR)},
        labels,
    )
    out = trajectory(multi, grads)
    alone = trajectory(
        gradtx.lookahead(gradtx.adam(LR), 2, 0.5),
        [{k: g[k] for k in ("w", "s")} for g in grads],
        {k: params32()[k] for k in ("w", "s")},
    )
    chex.assert_trees_all_close(
        {k: out[-1][0][k] for k in ("w", "s")}, alone[-1][0], rtol=1e-7
    )


# ----------------------------------------------------------------------------
# describe


def test_describe_shows_the_inner_optimizer_and_the_arguments():
    text = gradtx.describe(gradtx.ema_params(gradtx.adam(1e-3), 0.99, start_step=10))
    assert text.startswith("ema_params(") and "inner=chain(" in text
    assert "scale_by_adam(b1=0.9" in text
    assert "decay=0.99" in text and "start_step=10" in text and "dtype=float32" in text
    text = gradtx.describe(gradtx.swa_params(gradtx.sgd(0.1), 100))
    assert text.startswith("swa_params(") and "scale_by_learning_rate(" in text
    assert "every_k=100" in text
    text = gradtx.describe(gradtx.lookahead(gradtx.sgd(0.1), 5, 0.5))
    assert text == (
        "lookahead(\n"
        "    inner=chain(scale_by_learning_rate(learning_rate=0.1)),\n"
        "    sync_period=5,\n"
        "    slow_step_size=0.5,\n"
        "    reset_state=False,\n"
        "    slow_dtype=None,\n"
        ")"
    )
