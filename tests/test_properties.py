"""Properties over random trees, dtypes and hyperparameters (hypothesis).

Trees nest dicts, lists and tuples, hold `None` leaves, scalars, zero-size
and large arrays, in float32, bfloat16, float16 or float64 (under
`jax.enable_x64`). Every transformation of the contract list (tests/
test_contract.py) takes part, with random valid hyperparameters where
`RANDOM` gives them. Examples are few and derandomized, so that the suite
stays fast and every run checks the same cases.
"""

import functools
import os
import tempfile

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from test_contract import CONTRACT

import gradtx
from gradtx.wrappers import masked

# Fixed profile: the same examples every run, no deadline (the first call of
# a shape compiles), and no example database. Hypothesis's other files (its
# cache of constants) go to the temporary directory, not the repository.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "gradtx-hypothesis"))
PROFILE = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SHAPES = [(), (0,), (3, 0), (3,), (2, 3), (4, 1, 2), (128, 257)]
DTYPES = ["float32", "bfloat16", "float16", "float64"]

# ----------------------------------------------------------------------------
# trees


@st.composite
def trees(draw):
    """A nested tree of shapes (tuples) and None: the skeleton of params."""
    leaf = st.one_of(st.sampled_from(SHAPES[:-1]), st.just(None))
    big = st.sampled_from([SHAPES[-1]])
    leaves = st.one_of(leaf, leaf, leaf, big)
    keys = st.sampled_from(["w", "b", "kernel", "scale", "x"])
    skeleton = draw(
        st.recursive(
            leaves,
            lambda inner: st.one_of(
                st.dictionaries(keys, inner, min_size=1, max_size=3),
                st.lists(inner, min_size=1, max_size=3),
                st.lists(inner, min_size=1, max_size=3).map(tuple),
            ),
            max_leaves=6,
        ).filter(lambda tree: tree is not None)  # params=None means no params
    )
    return skeleton


def is_shape(x):
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def fill(skeleton, dtype, seed, scale=1.0):
    """Arrays of the skeleton's shapes: normal values times `scale`."""
    rng = np.random.default_rng(seed)

    def leaf(shape):
        return jnp.asarray(rng.normal(size=shape) * scale, dtype)

    return jax.tree.map(leaf, skeleton, is_leaf=is_shape)


@st.composite
def problems(draw, zero_grads=None):
    """(skeleton, dtype, seed, scale): a tree and gradients for a few steps."""
    skeleton = draw(trees())
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    if zero_grads is None:  # either
        scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 10.0]))
    else:
        scale = 0.0 if zero_grads else draw(st.sampled_from([1.0, 1e-3, 10.0]))
    return skeleton, dtype, seed, scale


def materialise(problem, steps=3):
    """Params and `steps` gradient trees; notes what the example holds."""
    skeleton, dtype, seed, scale = problem
    shapes = jax.tree.leaves(skeleton, is_leaf=is_shape)
    with_none = jax.tree.leaves(skeleton, is_leaf=lambda x: x is None)
    event(f"dtype {dtype}")  # reported by --hypothesis-show-statistics
    event(f"gradient scale {scale:g}")
    kinds = {
        "a None leaf": None in with_none,
        "a scalar leaf": () in shapes,
        "a zero-size leaf": any(0 in shape for shape in shapes),
        "a large leaf": SHAPES[-1] in shapes,
    }
    for kind, seen in kinds.items():
        if seen:
            event(f"tree with {kind}")
    params = fill(skeleton, dtype, seed)
    grads = [fill(skeleton, dtype, seed + 1 + i, scale) for i in range(steps)]
    return params, grads


def x64(dtype):
    """Float64 trees need JAX's 64-bit mode, switched on for the example."""
    return jax.enable_x64(dtype == "float64")


# ----------------------------------------------------------------------------
# transformations with random valid hyperparameters

unit = st.floats(0.0, 0.99)
eps = st.sampled_from([1e-8, 1e-6, 1e-3])
rate = st.floats(1e-4, 1.0)
decay = st.floats(0.0, 0.1)

# name -> keyword strategies replacing the contract's fixed values
RANDOM = {
    "scale": {"factor": st.floats(-2.0, 2.0)},
    "scale_by_learning_rate": {"learning_rate": rate},
    "scale_by_momentum": {
        "decay": unit,
        "nesterov": st.booleans(),
        "dampening": unit,
    },
    "scale_by_rms": {
        "decay": unit,
        "eps": eps,
        "eps_in_sqrt": st.booleans(),
        "centered": st.booleans(),
        "initial_scale": st.floats(0.0, 1.0),
    },
    "scale_by_adagrad": {"initial_accumulator_value": st.floats(0.0, 1.0), "eps": eps},
    "scale_by_adadelta": {"rho": unit, "eps": eps},
    "scale_by_adam": {
        "b1": unit,
        "b2": st.floats(0.5, 0.9999),
        "eps": eps,
        "eps_root": st.sampled_from([0.0, 1e-8]),
        "nesterov": st.booleans(),
    },
    "add_decayed_weights": {"weight_decay": decay},
    "add_l1_penalty": {"strength": decay},
    "clip": {"max_delta": st.floats(0.0, 10.0)},
    "clip_by_global_norm": {"max_norm": st.floats(0.0, 10.0)},
    "reduce_on_plateau": {"factor": st.floats(0.1, 0.9), "patience": st.integers(0, 2)},
    "accumulate_gradients": {"every_k": st.integers(1, 3)},
    "apply_if_finite": {"max_consecutive_errors": st.integers(0, 3)},
    "sgd": {"learning_rate": rate, "momentum": st.none() | unit},
    "rmsprop": {
        "learning_rate": rate,
        "decay": unit,
        "eps": eps,
        "centered": st.booleans(),
        "momentum": st.none() | unit,
    },
    "adagrad": {"learning_rate": rate, "eps": eps},
    "adadelta": {"learning_rate": rate, "rho": unit, "eps": eps},
    "adam": {"learning_rate": rate, "b1": unit, "b2": st.floats(0.5, 0.9999)},
    "adam_l2": {"learning_rate": rate, "weight_decay": decay},
    "adamw": {"learning_rate": rate, "weight_decay": decay, "nesterov": st.booleans()},
    "adamw_multiplier": {"learning_rate": rate, "weight_decay": decay},
    "adamw_independent": {"learning_rate": rate, "weight_decay": decay},
    "sgd_l2": {"learning_rate": rate, "weight_decay": decay},
    "sgdw": {"learning_rate": rate, "weight_decay": decay},
}


def every_other(params, values=(True, False)):
    """A mask or labels for any tree: leaf i gets values[i % 2]."""
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([values[i % 2] for i in range(len(leaves))])


# the contract's masks and labels name the leaves w, b and s of its own tree;
# random trees get functions of the tree instead
STRUCTURAL = {
    "masked": {"mask": every_other},
    "freeze": {"mask": every_other},
    "multi_transform": {
        "labels": functools.partial(every_other, values=("adam", "sgd"))
    },
}


@st.composite
def transformations(draw, names=None):
    name = draw(st.sampled_from(sorted(names or CONTRACT)))
    event(f"transformation {name}")
    factory, kwargs, _ = CONTRACT[name]
    kwargs = dict(kwargs, **STRUCTURAL.get(name, {}))
    for key, strategy in RANDOM.get(name, {}).items():
        kwargs[key] = draw(strategy)
    return name, factory(**kwargs)


def run(tx, params, grads, update=None):
    """Updates and states of a few steps; params move with the updates."""
    update = update or tx.update
    state = tx.init(params)
    outputs = []
    for g in grads:
        updates, state = update(g, state, params, loss=jnp.float32(1.0))
        outputs.append((updates, state))
        params = gradtx.apply_updates(params, updates)
    return outputs


def specs(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(
            np.asarray(x).view(f"u{x.dtype.itemsize}"),
            np.asarray(y).view(f"u{y.dtype.itemsize}"),
        )


# ----------------------------------------------------------------------------
# properties


def known_float16_fault(tx, dtype):
    """Whether a case meets the known float16 Adam fault, left out of the test.

    Adam keeps its second moment in float16 for float16 params, where it
    underflows to 0 for |g| < 7.7e-3 while the first moment does not: the
    next small gradient divides by eps alone and overflows (pinned as an
    expected failure in tests/test_faults.py).
    """
    return dtype == "float16" and "adam" in repr(tx)


NAMES = sorted(CONTRACT)


@pytest.mark.parametrize("name", NAMES)
@settings(PROFILE, max_examples=4)
@given(st.data())
def test_finite_gradients_give_finite_updates(name, data):
    _, tx = data.draw(transformations([name]))
    problem = data.draw(problems())
    assume(not known_float16_fault(tx, problem[1]))
    with x64(problem[1]):
        params, grads = materialise(problem)
        for updates, _ in run(tx, params, grads):
            for u in jax.tree.leaves(updates):
                assert bool(jnp.all(jnp.isfinite(u)))


@pytest.mark.parametrize("name", NAMES)
@settings(PROFILE, max_examples=2)
@given(st.data())
def test_zero_gradients_from_the_first_step_give_finite_updates(name, data):
    # Adam's (and RMSProp's, Adagrad's) second moment is zero at first
    _, tx = data.draw(transformations([name]))
    problem = data.draw(problems(zero_grads=True))
    assume(not known_float16_fault(tx, problem[1]))
    with x64(problem[1]):
        params, grads = materialise(problem)
        for updates, _ in run(tx, params, grads):
            for u in jax.tree.leaves(updates):
                assert bool(jnp.all(jnp.isfinite(u)))


@pytest.mark.parametrize("name", NAMES)
@settings(PROFILE, max_examples=2)
@given(st.data())
def test_outputs_keep_the_input_structure_and_dtypes(name, data):
    _, tx = data.draw(transformations([name]))
    problem = data.draw(problems(zero_grads=False))
    with x64(problem[1]):
        params, grads = materialise(problem, steps=2)
        first_state = tx.init(params)
        for (updates, state), g in zip(run(tx, params, grads), grads, strict=True):
            assert specs(updates) == specs(g)
            assert specs(state) == specs(first_state)


@settings(PROFILE, max_examples=30)
@given(
    transformations(), transformations(), transformations(), problems(zero_grads=False)
)
def test_chain_is_associative_with_identity_as_its_unit(a, b, c, problem):
    (_, a), (_, b), (_, c) = a, b, c
    with x64(problem[1]):
        params, grads = materialise(problem, steps=2)
        flat = run(gradtx.chain(a, b, c), params, grads)
        left = run(gradtx.chain(gradtx.chain(a, b), c), params, grads)
        right = run(gradtx.chain(a, gradtx.chain(b, c)), params, grads)
        for got in (left, right):
            for (u, _), (v, _) in zip(got, flat, strict=True):
                assert_identical(u, v)
        alone = run(a, params, grads)
        for unit in (
            gradtx.chain(gradtx.identity(), a),
            gradtx.chain(a, gradtx.identity()),
        ):
            for (u, _), (v, _) in zip(run(unit, params, grads), alone, strict=True):
                assert_identical(u, v)


@settings(PROFILE, max_examples=30)
@given(transformations(), problems(zero_grads=False))
def test_a_mask_of_all_true_is_no_mask(named, problem):
    _, tx = named
    with x64(problem[1]):
        params, grads = materialise(problem, steps=2)
        plain = run(tx, params, grads)
        every = jax.tree.map(lambda _: True, params)
        for mask in (every, lambda p: jax.tree.map(lambda _: True, p), True):
            wrapped = run(masked(tx, mask), params, grads)
            for (u, s), (v, t) in zip(wrapped, plain, strict=True):
                assert_identical(u, v)
                assert_identical(s.inner_state, t)


def round_off(dtype):
    """How far jitted and eager results may differ, relative to a leaf's size.

    XLA fuses the equations and may contract a multiply-add into one
    rounding, so the float32 arithmetic differs in the last bits; where an
    update cancels (a gradient against its weight decay, say) the difference
    grows. Leaves stored in 16 bits round those float32 results once: two
    of their ulps.
    """
    if not jnp.issubdtype(dtype, jnp.inexact):
        return 0.0
    if jnp.finfo(dtype).bits == 16:
        return 2 * float(jnp.finfo(dtype).eps)
    return 1e-4 if jnp.finfo(dtype).bits == 32 else 1e-9


# Optimizers whose update is the sign of an average they store (the average
# taken from the state). What they promise under jit and eagerly alike is
# that sign, of the average each one stored: the averages agree to
# round-off, and where an average is within round-off of zero (an exact tie
# of its two terms, summed with one rounding or two) the steps may differ.
SIGN_OF_STATE = {"signum": lambda state: state[0].velocity}


def leaves_where_the_sign_is_settled(updates, state, name):
    """Each update leaf, NaN where its stored average is within round-off of 0."""

    def leaf(u, m):
        m = np.asarray(m, np.float64)
        tol = round_off(u.dtype) * np.max(np.abs(m), initial=0.0)
        return np.where(np.abs(m) > tol, np.asarray(u, np.float64), np.nan)

    return jax.tree.map(leaf, updates, SIGN_OF_STATE[name](state))


# Their update is the difference of two points of the params' scale
# (y_t - y_{t-1}, or the slow weights minus the fast ones): its round-off is
# that of the params, even where the difference itself is 0.
MOVES_BETWEEN_POINTS = {
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "lookahead",
}


@pytest.mark.parametrize("name", NAMES)
@settings(PROFILE, max_examples=2)
@given(st.data())
def test_jit_and_eager_agree(name, data):
    _, tx = data.draw(transformations([name]))
    problem = data.draw(problems(zero_grads=False))
    with x64(problem[1]):
        params, grads = materialise(problem, steps=2)
        largest_param = max(
            (
                float(np.max(np.abs(np.asarray(p, np.float64)), initial=0.0))
                for p in jax.tree.leaves(params)
            ),
            default=0.0,
        )
        eager = run(tx, params, grads)
        jitted = run(tx, params, grads, update=jax.jit(tx.update))
        for (u, s), (v, t) in zip(jitted, eager, strict=True):
            assert specs(u) == specs(v) and specs(s) == specs(t)
            if name in SIGN_OF_STATE:
                for updates, state in ((u, s), (v, t)):
                    for x, m in zip(
                        jax.tree.leaves(updates),
                        jax.tree.leaves(SIGN_OF_STATE[name](state)),
                        strict=True,
                    ):
                        np.testing.assert_array_equal(
                            np.sign(np.asarray(x, np.float64)),
                            -np.sign(np.asarray(m, np.float64)),
                        )
                u = leaves_where_the_sign_is_settled(u, t, name)
                v = leaves_where_the_sign_is_settled(v, t, name)
            for x, y in zip(
                jax.tree.leaves((u, s)), jax.tree.leaves((v, t)), strict=True
            ):
                got, want = np.asarray(x, np.float64), np.asarray(y, np.float64)
                big = np.max(np.abs(want[np.isfinite(want)]), initial=0.0)
                if name in MOVES_BETWEEN_POINTS:
                    big = max(big, largest_param)
                tol = round_off(x.dtype)
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * big)
