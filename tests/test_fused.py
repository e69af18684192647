"""gradtx.fused_step: the one-pass CPU kernel against the plain step.

The plain step (`tx.update`, then `apply_updates`) is what the fused step
means. The two are not held to the same bits: which multiply-adds XLA:CPU
contracts, and how, depends on the instruction set it compiles for
(`XLA_FLAGS=--xla_cpu_max_isa=AVX` has no fused multiply-add at all), on
the chain and on the jax version. What is held, on every CPU, is a bound
(docs/fused.md, "Same numbers"): after one step from the same params, state
and gradients, every parameter and every float32 moment of the fused step
is within `ULPS` float32 epsilons of the plain step's, and both are within
`ULPS` of the step evaluated in float64, each epsilon taken at the size of
the terms the value is a rounding of (`_reference_step`). Over 120 steps
both trajectories stay within `TRAJECTORY_EPS` epsilons of the float64 one
(relative to each leaf's largest value). A moment kept in bfloat16 may be
one bfloat16 place further.

What is exact is checked exactly: counts, the decay mask, flat moments
against per-leaf ones (the same kernel code on the same scalars), the
fallback (the plain step itself). Which chains run the kernel is read from
the factories that built them (`gradtx/fused/_plan.py`), and each reader is
held to its factory's signature here.

Tests that need the kernel are marked `needs_kernel`; the others run on a
machine without a C++ compiler too, where the fused step is the plain one.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
import gradtx.fused
from gradtx.fused import _build, _call, _plan, _step
from tests import references as refs

EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).tiny)
EPS_BF16 = 2.0**-7  # the spacing of bfloat16 numbers at 1

# The bounds gradtx promises (docs/fused.md, "Same numbers"): a factor of
# about two over the largest distances seen under XLA's default, AVX2 and
# AVX code generation, with and without x64, so that code generation not
# tried here (AVX-512, other CPUs) fits too.
ULPS = 8
TRAJECTORY_EPS = 32

with warnings.catch_warnings():
    # Without a compiler the first use warns why; the tests that expect it
    # (test_without_a_compiler_the_plain_step_runs) load afresh.
    warnings.simplefilter("ignore")
    KERNEL = gradtx.fused.kernel_available()

needs_kernel = pytest.mark.skipif(
    not KERNEL, reason="the CPU kernel is not available here (no C++ compiler?)"
)


def _mask(params):
    return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


ADAM_CHAINS = {
    "adam": lambda: gradtx.adam(1e-2),
    "adam_nesterov": lambda: gradtx.adam(1e-2, nesterov=True),
    "adam_eps_root": lambda: gradtx.adam(1e-2, eps_root=1e-10),
    "adam_eps0": lambda: gradtx.adam(1e-2, eps=0.0),
    "adamw": lambda: gradtx.adamw(1e-2, weight_decay=0.1),
    "adamw_mask_schedules": lambda: gradtx.adamw(
        gradtx.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20),
        weight_decay=gradtx.linear_schedule(0.1, 0.0, 10),
        mask=_mask,
    ),
    "adam_l2": lambda: gradtx.adam_l2(1e-2, weight_decay=0.1),
    "clip_adamw": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-2, weight_decay=0.1)
    ),
    "clip_adam_l2": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(1.0), gradtx.adam_l2(1e-2, weight_decay=0.1)
    ),
    "clip_l2_nesterov": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.add_decayed_weights(0.1),
        gradtx.adam(1e-2, nesterov=True),
    ),
}
SGD_CHAINS = {
    "sgd": lambda: gradtx.sgd(0.1),
    "sgd_schedule": lambda: gradtx.sgd(gradtx.exponential_decay(0.1, 2, 0.5)),
    "momentum": lambda: gradtx.sgd(0.1, momentum=0.9),
    "nesterov": lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True),
    "dampening": lambda: gradtx.sgd(0.1, momentum=0.9, dampening=0.3),
    "sgd_l2": lambda: gradtx.sgd_l2(0.1, momentum=0.9, weight_decay=0.01),
    "clip_momentum": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(0.5), gradtx.sgd(0.1, momentum=0.9)
    ),
    "clip_sgd_l2": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(0.5),
        gradtx.sgd_l2(0.1, momentum=0.9, weight_decay=0.01),
    ),
}
CHAINS = {**ADAM_CHAINS, **SGD_CHAINS}

BF16 = jnp.bfloat16


def _momentum_chain(*front, **momentum):
    return gradtx.chain(
        *front,
        gradtx.scale_by_momentum(0.9, accumulator_dtype=BF16, **momentum),
        gradtx.scale_by_learning_rate(0.1),
    )


BF16_CHAINS = {
    "adam_mu": lambda: gradtx.adam(1e-2, mu_dtype=BF16),
    "adam_nu": lambda: gradtx.adam(1e-2, nu_dtype=BF16),
    "adam_both": lambda: gradtx.adam(1e-2, mu_dtype=BF16, nu_dtype=BF16),
    "adam_nesterov": lambda: gradtx.adam(
        1e-2, nesterov=True, mu_dtype=BF16, nu_dtype=BF16
    ),
    "adam_eps_root": lambda: gradtx.adam(1e-2, eps_root=1e-10, mu_dtype=BF16),
    "adamw": lambda: gradtx.adamw(1e-2, weight_decay=0.1, mu_dtype=BF16, nu_dtype=BF16),
    "adam_l2": lambda: gradtx.adam_l2(1e-2, weight_decay=0.1, mu_dtype=BF16),
    "clip_adamw": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.adamw(1e-2, weight_decay=0.1, mu_dtype=BF16),
    ),
    "momentum": lambda: _momentum_chain(),
    "nesterov_dampening": lambda: _momentum_chain(nesterov=True, dampening=0.3),
    "clip_l2_momentum": lambda: _momentum_chain(
        gradtx.clip_by_global_norm(0.5),
        gradtx.add_decayed_weights(0.01),
        nesterov=True,
        dampening=0.3,
    ),
}


def _tree(shapes, seed=0, scale=1.0):
    key = jax.random.PRNGKey(seed)
    return {
        f"leaf{i:03d}": scale
        * jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32)
        for i, s in enumerate(shapes)
    }


# A matrix, vectors, a scalar, an empty leaf and a leaf of several kernel
# chunks (so several threads); MANY adds small leaves past what one kernel
# call takes (`_call.GROUP`), so that the step spans several calls.
FEW = [(4, 3), (5,), (), (0,), (70_000,), (17, 33)]
MANY = FEW + [(7,)] * 28


def _grads(shapes, step):
    # Gradients of changing size (1e-2 .. 1e2), so that clipping both acts
    # and does not.
    return _tree(shapes, seed=1000 + step, scale=10.0 ** (step % 5 - 2))


def _run(tx, shapes, steps, fused=True, donate=True):
    step = gradtx.fused_step(tx) if fused else gradtx.fused_step(tx).plain
    step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    params = _tree(shapes)
    state = tx.init(params)
    for k in range(steps):
        params, state = step(params, state, _grads(shapes, k))
    return params, state


def _assert_identical(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_near(a, b, n_eps):
    """Leaf by leaf within n_eps float32 epsilons of the leaf's largest value."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if np.issubdtype(x.dtype, np.integer) or x.size == 0:
            np.testing.assert_array_equal(x, y)
            continue
        size = float(np.max(np.abs(y)))
        np.testing.assert_allclose(x, y, rtol=0, atol=n_eps * EPS32 * size + TINY32)


def _custom_calls(step, *args) -> int:
    return jax.jit(step).lower(*args).as_text().count("gradtx_fused")


# ----------------------------------------------------------------------------
# the float64 step and the size of its terms


def _links(tx, state):
    """(factory, hyperparams, state) of each link of a (nested) chain, in order."""
    if tx.factory is gradtx.chain:
        return [
            link
            for child, s in zip(tx.children, state, strict=True)
            for link in _links(child, s)
        ]
    return [(tx.factory, tx.hyperparams, state)]


def _at(value, t):
    """A hyperparameter (a number or a schedule) at step t = 1, 2, ..."""
    return float(value(t - 1)) if callable(value) else float(value)


def _f64(tree):
    return {k: np.asarray(x, np.float64) for k, x in tree.items()}


def _reference_step(tx, params, state, grads, t):
    """Step t of a kernel chain in float64 from the same inputs, with its scale.

    Returns `(params, moments)`: `params[k]` is `(value, size)` and
    `moments` the new moment trees in the order of the state (Adam's mu and
    nu, the momentum's velocity), each leaf a `(value, size)` too. The size
    of a value is what it would be with every term taken in absolute value
    (|p| + lr * |u|', with |u|' built from |g|, |decay * p|, |m|, ...), and
    for Adam's quotient also its sensitivity to the terms of the second
    moment: a float32 evaluation of the step is a few epsilons of that size
    away from the value, wherever the terms cancel.
    """
    p = _f64(params)
    u = _f64(grads)
    a = {k: np.abs(x) for k, x in u.items()}
    moments = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for factory, hp, s in _links(tx, state):
            if factory is gradtx.clip_by_global_norm:
                norm = np.sqrt(sum(np.sum(x * x) for x in u.values()))
                bound = float(hp["max_norm"])
                c = 1.0 if norm <= bound else bound / norm  # NaN norm: NaN
                u = {k: c * x for k, x in u.items()}
                a = {k: c * x for k, x in a.items()}
            elif factory is gradtx.add_decayed_weights:
                rate = _at(hp["weight_decay"], t)
                mask = hp["mask"]
                mask = mask(params) if callable(mask) else mask
                for k in u:
                    if mask is None or mask[k]:
                        u[k] = u[k] + rate * p[k]
                        a[k] = a[k] + np.abs(rate * p[k])
            elif factory is gradtx.scale_by_adam:
                b1, b2 = float(hp["b1"]), float(hp["b2"])
                eps, eps_root = float(hp["eps"]), float(hp["eps_root"])
                c1, c2 = 1 - b1**t, 1 - b2**t
                mu, nu = _f64(s.mu), _f64(s.nu)
                new_mu, new_nu = {}, {}
                for k in u:
                    m = b1 * mu[k] + (1 - b1) * u[k]
                    m_size = b1 * np.abs(mu[k]) + (1 - b1) * a[k]
                    v = b2 * nu[k] + (1 - b2) * u[k] ** 2
                    v_size = b2 * nu[k] + (1 - b2) * a[k] ** 2
                    if hp["nesterov"]:
                        c1_next = 1 - b1 ** (t + 1)
                        m_hat = b1 * m / c1_next + (1 - b1) * u[k] / c1
                        m_hat_size = b1 * m_size / c1_next + (1 - b1) * a[k] / c1
                    else:
                        m_hat, m_hat_size = m / c1, m_size / c1
                    under = v / c2 + eps_root
                    out = m_hat / (np.sqrt(under) + eps)
                    # an error e * v_size in v moves the root by e * v_size / 2v
                    shift = np.where(
                        v_size > 0, np.abs(out) * (v_size / c2) / (2 * under), 0.0
                    )
                    u[k], a[k] = out, m_hat_size / (np.sqrt(under) + eps) + shift
                    new_mu[k], new_nu[k] = (m, m_size), (v, v_size)
                moments += [new_mu, new_nu]
            elif factory is gradtx.scale_by_momentum:
                decay, undamped = float(hp["decay"]), 1 - float(hp["dampening"])
                velocity = _f64(s.velocity)
                new = {}
                for k in u:
                    v = decay * velocity[k] + undamped * u[k]
                    v_size = decay * np.abs(velocity[k]) + undamped * a[k]
                    new[k] = (v, v_size)
                    if hp["nesterov"]:
                        u[k], a[k] = u[k] + decay * v, a[k] + decay * v_size
                    else:
                        u[k], a[k] = v, v_size
                moments.append(new)
            elif factory is gradtx.scale_by_learning_rate:
                rate = _at(hp["learning_rate"], t)
                u = {k: -rate * x for k, x in u.items()}
                a = {k: rate * x for k, x in a.items()}
            else:
                raise AssertionError(f"no reference for {factory.__name__}")
    return {k: (p[k] + u[k], np.abs(p[k]) + a[k]) for k in p}, moments


def _moment_trees(tx, state):
    """The moment trees of a chain's state, in the order of `_reference_step`."""
    trees = []
    for factory, _, s in _links(tx, state):
        if factory is gradtx.scale_by_adam:
            trees += [s.mu, s.nu]
        elif factory is gradtx.scale_by_momentum:
            trees.append(s.velocity)
    return trees


def _assert_within(what, got, want, size, n):
    """|got - want| <= n float32 epsilons of `size` (one bfloat16 place more
    for a bfloat16 `got`); NaN only where `want` is NaN."""
    got64 = np.asarray(got, np.float64)
    want64 = np.asarray(want, np.float64)
    allowed = n * EPS32 * size + TINY32
    if np.asarray(got).dtype == BF16:
        allowed = allowed + EPS_BF16 * np.maximum(np.abs(got64), np.abs(want64))
    error = np.abs(got64 - want64)
    ok = (error <= allowed) | (got64 == want64) | (np.isnan(got64) & np.isnan(want64))
    if not np.all(ok):
        worst = float(np.max(np.where(ok, 0.0, error / (EPS32 * size + TINY32))))
        raise AssertionError(
            f"{what}: {int(np.sum(~ok))} of {ok.size} elements beyond {n} "
            f"epsilons of their terms (worst {worst:.2f})"
        )


def _check_step(tx, fused, plain, params, state, grads, t):
    """Step t fused and plain from the same inputs, both held to the bounds.

    Returns the plain step's params and state, to go on from.
    """
    p_fused, s_fused = fused(params, state, grads)
    p_plain, s_plain = plain(params, state, grads)
    want, moments = _reference_step(tx, params, state, grads, t)
    for k, (value, size) in want.items():
        _assert_within(f"step {t} {k}: fused/plain", p_fused[k], p_plain[k], size, ULPS)
        _assert_within(f"step {t} {k}: fused/float64", p_fused[k], value, size, ULPS)
        _assert_within(f"step {t} {k}: plain/float64", p_plain[k], value, size, ULPS)
    trees = zip(
        _moment_trees(tx, s_fused), _moment_trees(tx, s_plain), moments, strict=True
    )
    for j, (m_fused, m_plain, m_want) in enumerate(trees):
        for k, (value, size) in m_want.items():
            assert m_fused[k].dtype == m_plain[k].dtype
            what = f"step {t} moment {j} {k}"
            _assert_within(f"{what}: fused/plain", m_fused[k], m_plain[k], size, ULPS)
            _assert_within(f"{what}: fused/float64", m_fused[k], value, size, ULPS)
            _assert_within(f"{what}: plain/float64", m_plain[k], value, size, ULPS)
    # counts are exact
    assert jax.tree.structure(s_fused) == jax.tree.structure(s_plain)
    for x, y in zip(jax.tree.leaves(s_fused), jax.tree.leaves(s_plain), strict=True):
        if jnp.issubdtype(x.dtype, jnp.integer):
            np.testing.assert_array_equal(x, y)
    return p_plain, s_plain


def _check_steps(tx, shapes, steps):
    """`steps` steps of `tx` on a tree of `shapes`, each held to the bounds."""
    step = gradtx.fused_step(tx)
    fused, plain = jax.jit(step), jax.jit(step.plain)
    params = _tree(shapes)
    state = tx.init(params)
    for t in range(1, steps + 1):
        params, state = _check_step(
            tx, fused, plain, params, state, _grads(shapes, t), t
        )


# ----------------------------------------------------------------------------
# which chains have a kernel


def test_kernel_builds():
    if _build.compiler() is None:
        pytest.skip("no C++ compiler to build the kernel")
    assert KERNEL
    library = Path(_build.load())
    assert library.parent == _build.cache_dir()
    assert _build.verified(library)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_known_chains_are_fused(name):
    step = gradtx.fused_step(CHAINS[name]())
    assert step.fused and step.reason is None
    params = _tree([(3,)])
    state = step.tx.init(params)
    # one kernel call where the kernel is built; the plain step where not
    assert _custom_calls(step, params, state, params) == (1 if KERNEL else 0)


@pytest.mark.parametrize(
    "tx",
    [
        gradtx.rmsprop(1e-3),
        gradtx.adamw_multiplier(1e-3, weight_decay=0.1),
        gradtx.adam(1e-3, mu_dtype=jnp.float16),
        gradtx.chain(gradtx.adamw(1e-3), gradtx.clip_by_global_norm(1.0)),
        gradtx.inject_hyperparams(gradtx.adamw)(learning_rate=1e-3),
        gradtx.apply_if_finite(gradtx.adam(1e-3), 3),
    ],
    ids=["rmsprop", "alg2", "f16-moments", "clip-last", "injected", "wrapped"],
)
def test_other_chains_run_the_plain_step(tx):
    step = gradtx.fused_step(tx)
    assert not step.fused and step.reason
    params = _tree([(3,), (2, 2)])
    grads = _grads([(3,), (2, 2)], 0)
    state = tx.init(params)
    assert _custom_calls(step, params, state, grads) == 0
    _assert_identical(step(params, state, grads), step.plain(params, state, grads))


def test_a_nested_chain_is_flattened():
    tx = gradtx.chain(
        gradtx.chain(gradtx.clip_by_global_norm(1.0)),
        gradtx.chain(gradtx.scale_by_adam(), gradtx.add_decayed_weights(0.1)),
        gradtx.scale_by_learning_rate(1e-2),
    )
    assert gradtx.fused_step(tx).fused
    _check_steps(tx, [(9,)], 5)


def _parameters(fn):
    return [
        (p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()
    ]


def test_the_kernel_chains_are_read_from_their_factories():
    assert set(_plan.READERS) == {
        gradtx.chain,
        gradtx.clip_by_global_norm,
        gradtx.add_decayed_weights,
        gradtx.scale_by_adam,
        gradtx.scale_by_momentum,
        gradtx.scale_by_learning_rate,
    }


@pytest.mark.parametrize("factory", list(_plan.READERS), ids=lambda f: f.__name__)
def test_each_reader_has_its_factorys_signature(factory):
    """A factory argument renamed, added, removed or given another default in
    the core fails here until its reader in gradtx/fused/_plan.py follows."""
    assert _parameters(_plan.READERS[factory]) == _parameters(factory)


def test_a_recorded_call_its_reader_cannot_take_fails_when_the_step_is_built():
    adam = gradtx.scale_by_adam()
    drifted = gradtx.GradientTransformation(
        adam.init,
        adam.update,
        name="scale_by_adam",
        factory=gradtx.scale_by_adam,
        hyperparams={**adam.hyperparams, "new_argument": 1.0},
    )
    tx = gradtx.chain(drifted, gradtx.scale_by_learning_rate(1e-3))
    with pytest.raises(TypeError, match=r"reader of scale_by_adam.*new_argument"):
        gradtx.fused_step(tx)


def test_a_name_alone_does_not_make_a_link_the_kernel_runs():
    """A link is known by the factory that built it, not by its name."""
    adam = gradtx.scale_by_adam()
    lookalike = gradtx.GradientTransformation(
        adam.init, adam.update, name="scale_by_adam", hyperparams=adam.hyperparams
    )
    tx = gradtx.chain(lookalike, gradtx.scale_by_learning_rate(1e-3))
    step = gradtx.fused_step(tx)
    assert not step.fused
    assert "scale_by_adam -> scale_by_learning_rate" in step.reason


def test_the_plan_is_made_once_when_the_step_is_built(monkeypatch):
    step = gradtx.fused_step(gradtx.adamw(1e-3, weight_decay=0.1))

    def no_second_plan(tx):
        raise AssertionError("planned again")

    monkeypatch.setattr(_step, "make_plan", no_second_plan)
    params = _tree([(3,)])
    state = step.tx.init(params)
    _assert_identical(step(params, state, params), step(params, state, params))


# ----------------------------------------------------------------------------
# the numbers: bounds against the plain step and against float64


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_each_step_is_within_the_bounds(name):
    """12 steps on `MANY`, params and moments held to `ULPS`.

    Among them the chains whose bits XLA:CPU happens to compute differently
    even with its default code generation: clipping with L2 (`clip_adam_l2`,
    `clip_sgd_l2`, `clip_l2_nesterov`) and `adam(eps=0)`.
    """
    _check_steps(CHAINS[name](), MANY, 12)


@pytest.mark.parametrize("name", sorted(BF16_CHAINS))
def test_bfloat16_moments_are_within_the_bounds(name):
    """With a moment in bfloat16 the plain step computes it twice (in the loop
    that stores it and in the parameter's loop), and the two can be
    contracted differently; the kernel computes it once. The bound is the
    float32 one plus one bfloat16 place for the stored moment. (Across
    kernel calls: `test_bfloat16_flat_moments_give_the_per_leaf_bits`.)"""
    _check_steps(BF16_CHAINS[name](), FEW, 12)


def test_x64_with_float64_hyperparameters_is_within_the_bounds():
    """Under x64, float64 hyperparameters make the plain step compute in
    float64 and round once; the kernel computes in float32."""
    f64 = np.float64
    with jax.enable_x64(True):
        chains = [
            gradtx.adamw(
                f64(1e-2), b1=f64(0.9), b2=f64(0.999), eps=f64(1e-8),
                weight_decay=f64(0.1),
            ),
            gradtx.chain(
                gradtx.clip_by_global_norm(f64(1.0)),
                gradtx.adam_l2(f64(1e-2), b1=f64(0.9), weight_decay=f64(0.1)),
            ),
            gradtx.sgd(f64(0.1), momentum=f64(0.9), nesterov=True, dampening=f64(0.3)),
            gradtx.chain(
                gradtx.clip_by_global_norm(f64(0.5)),
                gradtx.sgd_l2(f64(0.1), momentum=f64(0.9), weight_decay=f64(0.01)),
            ),
        ]  # fmt: skip
        for tx in chains:
            params = _tree([(3,)])
            assert params["leaf000"].dtype == jnp.float32
            step = gradtx.fused_step(tx)
            state = tx.init(params)
            assert _custom_calls(step, params, state, params) == (1 if KERNEL else 0)
            _check_steps(tx, FEW, 8)


def _reference_chain(tx, params):
    """The float64 reference of a kernel chain (tests/references.py)."""
    links = []
    for factory, hp, _ in _links(tx, tx.init(params)):
        if factory is gradtx.clip_by_global_norm:
            links.append(refs.clip_by_global_norm(float(hp["max_norm"])))
        elif factory is gradtx.add_decayed_weights:
            mask = hp["mask"]
            mask = mask(params) if callable(mask) else mask
            links.append(refs.add_decayed_weights(hp["weight_decay"], mask))
        elif factory is gradtx.scale_by_adam:
            links.append(
                refs.adam(
                    float(hp["b1"]),
                    float(hp["b2"]),
                    float(hp["eps"]),
                    float(hp["eps_root"]),
                    hp["nesterov"],
                )
            )
        elif factory is gradtx.scale_by_momentum:
            links.append(
                refs.momentum(
                    float(hp["decay"]), hp["nesterov"], float(hp["dampening"])
                )
            )
        else:
            assert factory is gradtx.scale_by_learning_rate, factory
            links.append(refs.scale_by_learning_rate(hp["learning_rate"]))
    return refs.chain(*links)


# Every chain is held to the one-step bounds above; the trajectory of one
# chain of each shape over 120 steps (`adam_l2` comes furthest).
TRAJECTORY_CHAINS = [
    "adam_nesterov",
    "adam_eps0",
    "adam_l2",
    "adamw_mask_schedules",
    "clip_l2_nesterov",
    "sgd_schedule",
    "dampening",
    "clip_sgd_l2",
]


@pytest.mark.parametrize("name", TRAJECTORY_CHAINS)
def test_trajectory_against_float64(name):
    """120 steps, fused and plain, against the float64 equations."""
    tx = CHAINS[name]()
    step = gradtx.fused_step(tx)
    fused, plain = jax.jit(step), jax.jit(step.plain)
    params64 = refs.make_params()
    ref = _reference_chain(tx, params64)
    p_fused = p_plain = refs.to_f32(params64)
    s_fused = s_plain = tx.init(p_fused)
    state64 = ref.init(params64)
    scale = {k: 0.0 for k in params64}
    trajectory = []
    for g in refs.make_grads():
        p_fused, s_fused = fused(p_fused, s_fused, refs.to_f32(g))
        p_plain, s_plain = plain(p_plain, s_plain, refs.to_f32(g))
        u64, state64 = ref.update(g, state64, params64)
        params64 = {k: params64[k] + u64[k] for k in params64}
        trajectory.append((p_fused, p_plain, params64))
        for k in params64:
            scale[k] = max(scale[k], float(np.max(np.abs(params64[k]))))
    for key, i in (("fused", 0), ("plain", 1)):
        worst = max(
            float(np.max(np.abs(np.asarray(got[i][k], np.float64) - got[2][k])))
            / scale[k]
            for got in trajectory
            for k in scale
        )
        assert worst <= TRAJECTORY_EPS * EPS32, (key, worst / EPS32)


def test_schedules_masks_and_counts_follow_the_plain_step():
    tx = ADAM_CHAINS["adamw_mask_schedules"]()
    p_fused, s_fused = _run(tx, MANY, 25)
    p_plain, s_plain = _run(tx, MANY, 25, fused=False)
    # every count (Adam's, the decay schedule's, the learning rate's) agrees
    counts = [x for x in jax.tree.leaves(s_fused) if x.dtype == jnp.int32]
    assert [int(c) for c in counts] == [25, 25, 25]
    _assert_identical(
        [x for x in jax.tree.leaves(s_fused) if x.dtype == jnp.int32],
        [x for x in jax.tree.leaves(s_plain) if x.dtype == jnp.int32],
    )
    for a, b in zip(jax.tree.leaves(p_fused), jax.tree.leaves(p_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_decay_mask_is_applied():
    """With lr 1 and Adam's update pushed to zero, only masked-in leaves shrink."""
    tx = gradtx.adamw(1.0, weight_decay=0.5, mask=_mask)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    out, _ = gradtx.fused_step(tx)(params, tx.init(params), zero)
    np.testing.assert_array_equal(out["w"], 0.5 * np.ones((2, 2)))
    np.testing.assert_array_equal(out["b"], np.ones(2))


def test_clipping_bounds_the_gradient():
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.sgd(1.0))
    params = {"a": jnp.zeros(3), "b": jnp.zeros(4)}
    grads = {"a": jnp.full(3, 1e30), "b": jnp.full(4, -1e30)}
    out, _ = jax.jit(gradtx.fused_step(tx))(params, tx.init(params), grads)
    np.testing.assert_allclose(gradtx.global_norm(out), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["clip_adamw", "clip_momentum"])
@pytest.mark.parametrize("path", ["kernel", "plain"])
def test_a_nan_gradient_turns_every_leaf_nan(monkeypatch, name, path):
    """One NaN makes the norm NaN, and the clip then NaN everywhere.

    A clip that tested `norm > max_norm` would stay off for a NaN norm and
    pass the other leaves through unclipped: here `w` would move by a whole
    1e6 * lr instead of the clipped step, silently.
    """
    if path == "kernel" and not KERNEL:
        pytest.skip("the CPU kernel is not available here")
    if path == "plain":
        monkeypatch.setenv("GRADTX_FUSED", "0")
    tx = CHAINS[name]()
    params = {"frozen": jnp.zeros(2), "w": jnp.ones(2)}
    grads = {"frozen": jnp.array([np.nan, 0.0]), "w": jnp.array([1e6, -1e6])}
    state = tx.init(params)
    step = gradtx.fused_step(tx)
    assert _custom_calls(step, params, state, grads) == (1 if path == "kernel" else 0)
    got = jax.jit(step)(params, state, grads)
    want = jax.jit(step.plain)(params, state, grads)
    _assert_identical(got, want)
    new_params, new_state = got
    for leaf in [*jax.tree.leaves(new_params), *_moment_trees(tx, new_state)]:
        for x in jax.tree.leaves(leaf):
            assert np.all(np.isnan(x)), new_params


# Gradients whose float32 sum of squares overflows (an element above about
# 1.8e19, or the sum of finite squares) or underflows (every element below
# about 1e-19), and degenerate ones: both steps take the clip's factors from
# the core's norm, and the kernel must apply them as the plain step does.
# Values cycled over a large leaf (several kernel chunks, so several
# threads) and two small ones.
OUT_OF_RANGE = {
    "overflow": [1e30, -3e29, 1e-3, 0.0],
    "finite_squares_overflowing_sum": [1.5e19, -1.5e19, 1.0],
    "underflow": [1e-25, -3e-26, 4e-30],
    "zero": [0.0],
    "inf": [np.inf, 1.0],
    "nan": [np.nan, 1e30],
}


def _out_of_range_grads(values):
    def leaf(n, shift):
        return jnp.asarray(np.resize(np.roll(values, shift), n), jnp.float32)

    return {"big": leaf(100_003, 0), "small": leaf(7, 1), "one": leaf(1, 2)}


@pytest.mark.parametrize("case", OUT_OF_RANGE)
def test_out_of_range_gradients_are_clipped_as_in_the_plain_step(case):
    grads = _out_of_range_grads(OUT_OF_RANGE[case])
    tx = gradtx.chain(gradtx.clip_by_global_norm(2.0), gradtx.sgd(1.0, momentum=0.9))
    params = jax.tree.map(jnp.ones_like, grads)
    state = tx.init(params)
    step = gradtx.fused_step(tx)
    assert _custom_calls(step, params, state, grads) == (1 if KERNEL else 0)
    got = jax.jit(step)(params, state, grads)
    want = jax.jit(step.plain)(params, state, grads)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=4 * EPS32, equal_nan=True)
    moved = jax.tree.map(lambda p: p - 1.0, got[0])
    if case in ("overflow", "finite_squares_overflowing_sum"):
        np.testing.assert_allclose(gradtx.global_norm(moved), 2.0, rtol=1e-6)


# ----------------------------------------------------------------------------
# JAX transformations, donation


@needs_kernel
def test_donation_updates_in_place():
    tx = gradtx.adamw(1e-3, weight_decay=0.1)
    shapes = [(256, 256), (1000,), (3,)]
    params = _tree(shapes)
    state = tx.init(params)
    grads = _grads(shapes, 0)
    step = jax.jit(gradtx.fused_step(tx), donate_argnums=(0, 1))
    # every kernel output is aliased to its input
    assert "output_operand_aliases" in step.lower(params, state, grads).as_text()
    before = [x.unsafe_buffer_pointer() for x in jax.tree.leaves((params, state))]
    old = jax.tree.leaves(params)[0]
    # filterwarnings=error: no "donated buffers were not usable" warning
    params, state = step(params, state, grads)
    assert old.is_deleted()
    after = [x.unsafe_buffer_pointer() for x in jax.tree.leaves((params, state))]
    # params and moments come out in the buffers they came in (counts aside)
    moments = [x.size > 1 for x in jax.tree.leaves((params, state))]
    assert [b for b, m in zip(before, moments, strict=True) if m] == [
        a for a, m in zip(after, moments, strict=True) if m
    ]


@needs_kernel
def test_xla_counts_the_step_as_real_work():
    # XLA counts a custom call as -1 flops and the CPU client runs programs of
    # under 1000 flops synchronously on the calling thread; the fused step
    # must count as real work, whatever the number of kernel calls.
    tx = gradtx.adamw(1e-3)
    for n_leaves in (1, 300):
        params = _tree([(8,)] * n_leaves)
        step = jax.jit(gradtx.fused_step(tx), donate_argnums=(0, 1))
        lowered = step.lower(params, tx.init(params), params)
        assert "gradtx_fused" in lowered.as_text()
        assert lowered.compile().cost_analysis()["flops"] >= 1000


def test_without_donation_inputs_survive():
    tx = gradtx.adam(1e-3)
    params = _tree([(10,)])
    state = tx.init(params)
    before = np.asarray(params["leaf000"])
    out, _ = jax.jit(gradtx.fused_step(tx))(params, state, params)
    np.testing.assert_array_equal(params["leaf000"], before)
    assert not np.array_equal(out["leaf000"], before)


def test_eager_call_works():
    tx = gradtx.sgd(0.5, momentum=0.9)
    params = {"w": jnp.ones(4)}
    out, state = gradtx.fused_step(tx)(params, tx.init(params), {"w": jnp.ones(4)})
    np.testing.assert_array_equal(out["w"], 0.5 * np.ones(4))
    np.testing.assert_array_equal(state[0].velocity["w"], np.ones(4))


def test_inside_scan():
    tx = gradtx.sgd(0.1, momentum=0.9)
    params = _tree([(5,), (2, 3)])
    grads = _grads([(5,), (2, 3)], 0)

    def loop(step):
        def body(carry, _):
            return step(*carry, grads), None

        return jax.lax.scan(body, (params, tx.init(params)), None, length=7)[0]

    _assert_near(
        loop(gradtx.fused_step(tx)), loop(gradtx.fused_step(tx).plain), 7 * ULPS
    )


def test_vmap_runs_each_batch_row_with_its_own_scalars():
    """Under vmap the kernel gets batched scalars (here: per-row clip factors)."""
    tx = gradtx.chain(
        gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-2, weight_decay=0.1)
    )
    shapes = [(6,), (2, 3)]
    params = jax.vmap(lambda i: _tree(shapes, seed=0, scale=1.0 + i))(jnp.arange(3))
    grads = jax.vmap(lambda i: _tree(shapes, seed=5, scale=10.0**i))(jnp.arange(3))
    state = jax.vmap(tx.init)(params)
    step = gradtx.fused_step(tx)
    got = jax.jit(jax.vmap(step))(params, state, grads)
    want = jax.jit(jax.vmap(step.plain))(params, state, grads)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


@needs_kernel
def test_no_derivative():
    tx = gradtx.sgd(0.1)
    params = {"w": jnp.ones(3)}
    step = gradtx.fused_step(tx)

    def loss(p):
        return jnp.sum(step(p, tx.init(p), p)[0]["w"])

    with pytest.raises(ValueError, match="cannot be differentiated"):
        jax.grad(loss)(params)
    # the plain step is the differentiable one
    assert jax.grad(lambda p: jnp.sum(step.plain(p, tx.init(p), p)[0]["w"]))(params)


@pytest.mark.parametrize("flat_moments", [False, True])
def test_the_kernel_is_absent_from_other_platforms(flat_moments):
    """Lowered for CUDA or TPU from this CPU host, the step has no kernel in it.

    The choice is made when the step is lowered (`platform_dependent`), not
    from the backends of the process that traces it.
    """
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3))
    step = gradtx.fused_step(tx, flat_moments=flat_moments)
    params = _tree([(8,), (2, 3)])
    state = step.init(params)
    with warnings.catch_warnings():
        # without the kernel a flat step warns what its moments cost
        warnings.simplefilter("ignore" if not KERNEL else "error", RuntimeWarning)
        for platform in ("cuda", "tpu"):
            exported = jax.export.export(jax.jit(step), platforms=(platform,))(
                params, state, params
            )
            assert "gradtx_" not in exported.mlir_module(), platform
        traced = jax.jit(step).trace(params, state, params)
        cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    assert cpu.count("gradtx_fused") == (1 if KERNEL else 0)


# ----------------------------------------------------------------------------
# other dtypes, the switch, errors


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_trees_run_the_plain_step(dtype):
    tx = gradtx.adam(1e-3)
    params = jax.tree.map(lambda x: x.astype(dtype), _tree([(4,)]))
    state = tx.init(params)
    step = gradtx.fused_step(tx)
    assert _custom_calls(step, params, state, params) == 0
    _assert_identical(step(params, state, params), step.plain(params, state, params))


def test_empty_tree():
    tx = gradtx.adam(1e-3)
    out, state = gradtx.fused_step(tx)({}, tx.init({}), {})
    assert out == {} and int(state[0].count) == 1


@needs_kernel
def test_environment_switch(monkeypatch):
    monkeypatch.setenv("GRADTX_FUSED", "0")
    assert not gradtx.fused.kernel_available()
    tx = gradtx.adam(1e-3)
    params = _tree([(4,)])
    step = gradtx.fused_step(tx)
    assert _custom_calls(step, params, tx.init(params), params) == 0
    monkeypatch.delenv("GRADTX_FUSED")
    # read when a step is traced: a new step (a new jit cache entry) sees it
    step = gradtx.fused_step(tx)
    assert _custom_calls(step, params, tx.init(params), params) == 1


def test_mismatched_grads_name_the_path():
    tx = gradtx.adamw(1e-3)
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match="fused_step"):
        gradtx.fused_step(tx)(params, tx.init(params), {"a": jnp.ones(2)})


def test_rejects_a_non_transformation():
    with pytest.raises(TypeError, match="fused_step"):
        gradtx.fused_step(lambda g: g)


@pytest.mark.parametrize(
    "other",
    [gradtx.chain(), gradtx.chain(gradtx.identity(), gradtx.identity())],
    ids=["empty", "no-moments"],
)
def test_a_state_from_another_chain_is_refused(other):
    tx = gradtx.adamw(1e-3)
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"fused_step: .*state.*this chain's init"):
        gradtx.fused_step(tx)(params, other.init(params), params)


# ----------------------------------------------------------------------------
# building and loading the kernel


@pytest.fixture
def fresh_load(monkeypatch):
    """`_build.load` as in a new process; the kernel loaded before comes back.

    Only for tests in which no kernel gets loaded (a second registration of
    the same FFI targets is not what a process does).
    """
    monkeypatch.setattr(_build, "_loaded", [])


_STEP_SCRIPT = """
import jax
import jax.numpy as jnp
import gradtx
from gradtx import fused

assert fused.kernel_available()
step = gradtx.fused_step(gradtx.sgd(0.5))
params = {"w": jnp.ones(2)}
args = (params, step.tx.init(params), {"w": jnp.array([1.0, -1.0])})
assert "gradtx_fused" in jax.jit(step).lower(*args).as_text()
print(step(*args)[0]["w"].tolist())
"""


@needs_kernel
def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    """A library cut short in the cache is not loaded (SIGBUS), but rebuilt.

    A crash or a full disk between the build and the file's blocks reaching
    the disk, or a partial copy of the cache, leaves such a file; loading it
    kills the process inside `ctypes.CDLL`, where nothing can catch it. Run
    in a subprocess, so that it cannot take pytest with it. The rebuilt
    library is then in `$GRADTX_CACHE_DIR`, checked and taken as it is.
    """
    library = Path(_build.load())
    damaged = tmp_path / library.name
    data = library.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    checksum = _build.checksum_path(library)
    if checksum.exists():
        shutil.copy(checksum, tmp_path / checksum.name)
    env = dict(os.environ, GRADTX_CACHE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", _STEP_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert result.stdout.split("\n")[-2] == "[0.5, 1.5]"
    assert damaged.stat().st_size == len(data)  # rebuilt in full
    assert _build.verified(damaged)
    # the library and its checksum in $GRADTX_CACHE_DIR, no temporary left
    assert sorted(os.listdir(tmp_path)) == [damaged.name, f"{damaged.name}.sha256"]
    monkeypatch.setenv("GRADTX_CACHE_DIR", str(tmp_path))
    built = damaged.stat().st_mtime_ns
    assert _build.build(_build.compiler()) == damaged
    assert damaged.stat().st_mtime_ns == built  # cached: not rebuilt
    _build.checksum_path(damaged).unlink()
    assert not _build.verified(damaged)  # built again by the next process


def test_without_a_compiler_the_plain_step_runs(monkeypatch, fresh_load):
    monkeypatch.setattr(_build, "compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert not gradtx.fused.kernel_available()
    tx = gradtx.adam(1e-3)
    params = _tree([(4,)])
    step = gradtx.fused_step(tx)
    assert step.fused  # the chain has a kernel, but the kernel is not there
    state = tx.init(params)
    assert _custom_calls(step, params, state, params) == 0
    _assert_identical(step(params, state, params), step.plain(params, state, params))


def test_a_cxx_that_is_not_there_is_refused(monkeypatch, fresh_load):
    """$CXX names the compiler: if it is not there, no other one is taken."""
    monkeypatch.setenv("CXX", "/nonexistent")
    with pytest.raises(
        RuntimeError, match=r"^\$CXX=/nonexistent is not an executable$"
    ):
        _build.compiler()
    with pytest.warns(
        RuntimeWarning, match=r"unavailable.*\$CXX=/nonexistent is not an executable"
    ):
        assert not gradtx.fused.kernel_available()
    tx = gradtx.sgd(0.1)
    params = _tree([(4,)])
    assert _custom_calls(gradtx.fused_step(tx), params, tx.init(params), params) == 0
    # set but empty: as if not set
    monkeypatch.setenv("CXX", "")
    assert _build.compiler() in (None, "c++", "g++", "clang++")


# ----------------------------------------------------------------------------
# flat moments


def _run_flat(tx, shapes, steps):
    step = gradtx.fused_step(tx, flat_moments=True)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    params = _tree(shapes)
    state = step.init(params)
    for k in range(steps):
        params, state = jitted(params, state, _grads(shapes, k))
    return params, step.chain_state(state, params)


# One chain of each shape for the flat layout: Adam with and without the
# clip, either decay, masks, schedules and Nesterov; SGD without moments and
# with momentum, the clip and L2.
FLAT_CHAINS = [
    "adam",
    "adamw_mask_schedules",
    "clip_l2_nesterov",
    "sgd",
    "nesterov",
    "clip_sgd_l2",
]


@needs_kernel
@pytest.mark.parametrize("name", FLAT_CHAINS)
def test_flat_moments_give_the_same_bits(name):
    """The same kernel code on the same scalars: flat or per-leaf moments."""
    assert len(MANY) > _call.GROUP  # the flat moments go through several calls
    tx = CHAINS[name]()
    _assert_identical(_run_flat(tx, MANY, 8), _run(tx, MANY, 8))


def test_flat_state_layout_and_round_trip():
    tx = gradtx.adamw(1e-3, weight_decay=0.1)
    step = gradtx.fused_step(tx, flat_moments=True)
    params = _tree([(2, 3), (4,), ()])
    state = step.init(params)
    assert state[0].mu.shape == (11,) and state[0].nu.shape == (11,)
    chain = step.chain_state(state, params)
    _assert_identical(chain, tx.init(params))
    _assert_identical(step.flat_state(chain), state)
    with pytest.raises(ValueError, match="flat array of 11 elements"):
        step.chain_state(tx.init(params), params)


def test_flat_moments_with_a_plain_fallback():
    """bfloat16 params: the plain step runs, on the unflattened state."""
    tx = gradtx.sgd(0.1, momentum=0.9)
    step = gradtx.fused_step(tx, flat_moments=True)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree([(3,), (2, 2)]))
    grads = jax.tree.map(jnp.ones_like, params)
    state = step.init(params)
    with pytest.warns(
        RuntimeWarning, match=r"not all float32\).*a copy of each moment"
    ):
        assert _custom_calls(step, params, state, grads) == 0
    new, state = step(params, state, grads)  # warned once per step only
    want, want_state = gradtx.fused_step(tx).plain(params, tx.init(params), grads)
    _assert_identical(new, want)
    _assert_identical(step.chain_state(state, params), want_state)


def test_flat_moments_need_a_kernel():
    with pytest.raises(ValueError, match="flat_moments"):
        gradtx.fused_step(gradtx.rmsprop(1e-3), flat_moments=True)


@needs_kernel
def test_flat_moments_update_in_place():
    tx = gradtx.adam(1e-3)
    shapes = [(64,)] * 70 + [(128, 128)]
    params = _tree(shapes)
    step = gradtx.fused_step(tx, flat_moments=True)
    state = step.init(params)
    # 71 leaves: several kernel calls, the flat moments going through each
    calls = -(-len(shapes) // _call.GROUP)
    assert calls > 1 and _custom_calls(step, params, state, params) == calls
    jitted = jax.jit(step, donate_argnums=(0, 1))
    before = [state[0].mu.unsafe_buffer_pointer(), state[0].nu.unsafe_buffer_pointer()]
    params, state = jitted(params, state, _grads(shapes, 0))
    after = [state[0].mu.unsafe_buffer_pointer(), state[0].nu.unsafe_buffer_pointer()]
    assert after == before


@needs_kernel
def test_flat_moments_under_vmap():
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-2))
    shapes = [(6,), (2, 3)]
    step = gradtx.fused_step(tx, flat_moments=True)
    params = jax.vmap(lambda i: _tree(shapes, scale=1.0 + i))(jnp.arange(3))
    grads = jax.vmap(lambda i: _tree(shapes, seed=5, scale=10.0**i))(jnp.arange(3))
    state = jax.vmap(step.init)(params)
    got = jax.jit(jax.vmap(step))(params, state, grads)
    want = jax.jit(jax.vmap(step.plain))(params, state, grads)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_flat_moments_warn_once_where_the_kernel_is_off(monkeypatch):
    """Off the kernel, flat moments are cut and joined each step: say so."""
    tx = gradtx.adamw(1e-3)
    params = _tree([(3,), (2, 2)])
    per_leaf = jax.jit(gradtx.fused_step(tx).plain)
    monkeypatch.setenv("GRADTX_FUSED", "0")
    step = gradtx.fused_step(tx, flat_moments=True)
    state = step.init(params)
    with pytest.warns(RuntimeWarning, match=r"turned off.*a copy of each moment"):
        new, new_state = step(params, state, params)
    step(params, state, params)  # once per step: no second warning
    # the plain step on the cut moments: per-leaf numbers to round-off only
    # (XLA may contract the multiply-adds differently; see docs/fused.md)
    want, want_state = per_leaf(params, tx.init(params), params)
    _assert_near(new, want, ULPS)
    _assert_near(step.chain_state(new_state, params), want_state, ULPS)


@needs_kernel
def test_flat_moments_warn_on_an_accelerator_backend(monkeypatch):
    tx = gradtx.adamw(1e-3)
    params = _tree([(3,), (2, 2)])
    # a process whose default backend is an accelerator lowers the plain step
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    step = gradtx.fused_step(tx, flat_moments=True)
    state = step.init(params)
    with pytest.warns(RuntimeWarning, match="default backend is gpu"):
        jax.jit(step).trace(params, state, params)
    # per-leaf moments cost nothing extra on the plain path: no warning
    jax.jit(gradtx.fused_step(tx)).trace(params, tx.init(params), params)


def test_a_per_leaf_state_given_to_a_flat_step_is_refused():
    tx = gradtx.adamw(1e-3)
    params = _tree([(3,), (2, 2)])
    step = gradtx.fused_step(tx, flat_moments=True)
    with pytest.raises(ValueError, match="flat array of 7 elements"):
        step(params, tx.init(params), params)


# ----------------------------------------------------------------------------
# moments kept in bfloat16 (their bounds: test_bfloat16_moments_are_within_...)


@pytest.mark.parametrize("name", sorted(BF16_CHAINS))
def test_bfloat16_moments_run_in_the_kernel(name):
    tx = BF16_CHAINS[name]()
    step = gradtx.fused_step(tx)
    assert step.fused and step.reason is None
    shapes = [(3,), (2, 2), ()]
    params = _tree(shapes)
    state = tx.init(params)
    grads = _grads(shapes, 1)
    assert _custom_calls(step, params, state, grads) == (1 if KERNEL else 0)
    _, new_state = jax.jit(step)(params, state, grads)
    assert [x.dtype for x in jax.tree.leaves(new_state)] == [
        x.dtype for x in jax.tree.leaves(state)
    ]


def test_bfloat16_moments_stay_on_the_plain_trajectory():
    """120 steps of AdamW with both moments in bfloat16: fused and plain track
    float64 alike (the bfloat16 moments, not the kernel, set the distance)."""
    lr = 1e-2
    ref = refs.chain(
        refs.adam(), refs.add_decayed_weights(0.1), refs.scale_by_learning_rate(lr)
    )
    tx = gradtx.adamw(lr, weight_decay=0.1, mu_dtype=BF16, nu_dtype=BF16)
    fused = jax.jit(gradtx.fused_step(tx))
    plain = jax.jit(gradtx.fused_step(tx).plain)
    params64 = refs.make_params()
    p_fused = p_plain = refs.to_f32(params64)
    s_fused = s_plain = tx.init(p_fused)
    state64 = ref.init(params64)
    worst = {"fused": 0.0, "plain": 0.0, "apart": 0.0}
    for g in refs.make_grads():
        p_fused, s_fused = fused(p_fused, s_fused, refs.to_f32(g))
        p_plain, s_plain = plain(p_plain, s_plain, refs.to_f32(g))
        u64, state64 = ref.update(g, state64, params64)
        params64 = {k: params64[k] + u64[k] for k in params64}
        for k in params64:
            size = float(np.max(np.abs(params64[k])))
            for key, got in (("fused", p_fused[k]), ("plain", p_plain[k])):
                err = float(np.max(np.abs(np.asarray(got) - params64[k]))) / size
                worst[key] = max(worst[key], err)
            apart = float(
                np.max(np.abs(np.asarray(p_fused[k]) - np.asarray(p_plain[k])))
            )
            worst["apart"] = max(worst["apart"], apart / size)
    assert worst["fused"] < 2 * worst["plain"] + 1e-5, worst
    assert worst["apart"] < 1e-5, worst


@needs_kernel
def test_bfloat16_flat_moments_give_the_per_leaf_bits():
    tx = BF16_CHAINS["clip_adamw"]()
    p_flat, s_flat = _run_flat(tx, MANY, 8)
    assert s_flat[1][0].mu["leaf000"].dtype == BF16
    _assert_identical((p_flat, s_flat), _run(tx, MANY, 8))


def test_bfloat16_moments_under_vmap():
    """Each `jax.vmap` row is the unbatched step (to the bounds: the clip's
    norm is a batched reduction in one program and not in the other)."""
    tx = BF16_CHAINS["clip_l2_momentum"]()
    shapes = [(6,), (2, 3)]
    params = jax.vmap(lambda i: _tree(shapes, scale=1.0 + i))(jnp.arange(3))
    grads = jax.vmap(lambda i: _tree(shapes, seed=5, scale=10.0**i))(jnp.arange(3))
    state = jax.vmap(tx.init)(params)
    step = jax.jit(jax.vmap(gradtx.fused_step(tx)))
    got = step(params, state, grads)
    for r in range(3):
        row = jax.tree.map(lambda x, r=r: x[r], (params, state, grads))
        want = jax.jit(gradtx.fused_step(tx))(*row)
        got_r = jax.tree.map(lambda x, r=r: x[r], got)
        _assert_near(got_r[0], want[0], ULPS)
        for a, b in zip(
            jax.tree.leaves(got_r[1]), jax.tree.leaves(want[1]), strict=True
        ):
            # the stored bfloat16 velocity: at most one bfloat16 place apart
            diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
            assert np.all(diff <= EPS_BF16 * np.abs(np.asarray(b, np.float64)) + 1e-30)


def test_mixed_moment_dtypes_within_a_tree_run_the_plain_step():
    tx = gradtx.adam(1e-2)
    params = _tree([(3,), (4,)])
    state = tx.init(params)
    mu = dict(state[0].mu, leaf001=state[0].mu["leaf001"].astype(BF16))
    state = (state[0]._replace(mu=mu), *state[1:])
    step = gradtx.fused_step(tx)
    assert _custom_calls(step, params, state, params) == 0


def test_an_ascending_learning_rate_link_runs_the_plain_step():
    """`scale_by_learning_rate(flip_sign=False)` has no kernel: the plain step."""
    tx = gradtx.chain(
        gradtx.scale_by_adam(), gradtx.scale_by_learning_rate(0.1, flip_sign=False)
    )
    with pytest.raises(_plan.Unsupported, match="flip_sign"):
        _plan.make_plan(tx)
    params = _tree([(3,), (2, 2)])
    grads = jax.tree.map(jnp.ones_like, params)
    new, _ = gradtx.fused_step(tx)(params, tx.init(params), grads)
    want, _ = gradtx.fused_step(tx).plain(params, tx.init(params), grads)
    _assert_identical(new, want)
    assert all(
        bool(jnp.all(n > p))
        for n, p in zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True)
    )
