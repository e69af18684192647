"""gradtx.fused_step: the one-pass CPU kernel against the plain step.

The plain step (`tx.update`, then `apply_updates`) is what the fused step
means. With float32 moments the two agree bit for bit, parameters and state,
on one leaf and on trees of many leaves (scale_by_adam writes its bias
corrections as reciprocals, so XLA has no division to fold one way in one
tree and another way in the next); the Adam parameters are also checked
against a float64 evaluation of the same step. Moments kept in bfloat16 are
held to the plain step's value or its bfloat16 neighbour (see below).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx import fused as fused_module
from tests import references as refs

EPS32 = float(np.finfo(np.float32).eps)

pytestmark = pytest.mark.skipif(
    fused_module._compiler() is None, reason="no C++ compiler to build the kernel"
)


def _mask(params):
    return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


ADAM_CHAINS = {
    "adam": lambda: gradtx.adam(1e-2),
    "adam_nesterov": lambda: gradtx.adam(1e-2, nesterov=True),
    "adam_eps_root": lambda: gradtx.adam(1e-2, eps_root=1e-10),
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
}
CHAINS = {**ADAM_CHAINS, **SGD_CHAINS}


def _tree(shapes, seed=0, scale=1.0):
    key = jax.random.PRNGKey(seed)
    return {
        f"leaf{i:03d}": scale * jax.random.normal(jax.random.fold_in(key, i), s)
        for i, s in enumerate(shapes)
    }


# A matrix, vectors, a scalar, an empty leaf, and more leaves than one kernel
# call takes (`_GROUP`), so that the step spans several calls.
MANY = [(4, 3), (5,), (), (0,), (70_000,), (17, 33)] + [(7,)] * 40


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


def _custom_calls(step, *args) -> int:
    return jax.jit(step).lower(*args).as_text().count("gradtx_fused")


# ----------------------------------------------------------------------------
# which chains have a kernel


def test_kernel_builds():
    assert fused_module.kernel_available()


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_known_chains_are_fused(name):
    step = gradtx.fused_step(CHAINS[name]())
    assert step.fused and step.reason is None
    params = _tree([(3,)])
    state = step.tx.init(params)
    assert _custom_calls(step, params, state, params) == 1


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
    _assert_identical(_run(tx, [(9,)], 5), _run(tx, [(9,)], 5, fused=False))


# ----------------------------------------------------------------------------
# same numbers as the plain step


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_single_leaf_is_bit_identical(name):
    tx = CHAINS[name]()
    for shape in [(1,), (1000,), (300, 301)]:
        _assert_identical(_run(tx, [shape], 12), _run(tx, [shape], 12, fused=False))


@pytest.mark.parametrize("name", sorted(SGD_CHAINS))
def test_sgd_on_many_leaves_is_bit_identical(name):
    tx = SGD_CHAINS[name]()
    _assert_identical(_run(tx, MANY, 12), _run(tx, MANY, 12, fused=False))


def _adam_reference_step(tx_name, params, grads, mu, nu, t, lr, wd, flags):
    """One step in float64 from the same float32 inputs, and its scale.

    Returns the new params and, per leaf, the size of the terms the float32
    result is a rounding of: |p| + lr * (|m_hat|' / denominator + |wd * p|),
    where |m_hat|' is m_hat with every term taken in absolute value.
    """
    nesterov = tx_name == "adam_nesterov"
    eps_root = 1e-10 if tx_name == "adam_eps_root" else 0.0
    coupled = tx_name == "adam_l2"
    b1, b2, eps = 0.9, 0.999, 1e-8
    out, scales = {}, {}
    for k, p in params.items():
        p = np.asarray(p, np.float64)
        g = np.asarray(grads[k], np.float64)
        wd_k = wd if flags[k] else 0.0
        g_abs = np.abs(g)
        if coupled:
            g, g_abs = g + wd_k * p, g_abs + np.abs(wd_k * p)
        m_prev = np.asarray(mu[k], np.float64)
        m = b1 * m_prev + (1 - b1) * g
        m_abs = b1 * np.abs(m_prev) + (1 - b1) * g_abs
        v = b2 * np.asarray(nu[k], np.float64) + (1 - b2) * g * g
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            terms = b1 * m_abs / (1 - b1 ** (t + 1)) + (1 - b1) * g_abs / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
            terms = m_abs / (1 - b1**t)
        denom = np.sqrt(v / (1 - b2**t) + eps_root) + eps
        decay = 0.0 if coupled else wd_k
        out[k] = p - lr * (m_hat / denom + decay * p)
        scales[k] = np.abs(p) + lr * (terms / denom + np.abs(decay * p))
    return out, scales


@pytest.mark.parametrize(
    "name", ["adam", "adam_nesterov", "adam_eps_root", "adamw", "adam_l2"]
)
def test_adam_on_many_leaves_is_bit_identical_and_rounds_the_float64_step(name):
    """Params and state bit-identical, both within round-off of float64.

    On a tree of several leaves XLA used to fold the bias corrections of the
    plain step differently (`m / (c1 * d)`), until scale_by_adam wrote them
    as reciprocals; the bits must stay the same on every leaf.
    """
    tx = ADAM_CHAINS[name]()
    lr, wd = 1e-2, (0.1 if name in ("adamw", "adam_l2") else 0.0)
    fused = jax.jit(gradtx.fused_step(tx))
    plain = jax.jit(gradtx.fused_step(tx).plain)
    params = _tree(MANY)
    state = tx.init(params)
    flags = {k: True for k in params}
    for t in range(1, 16):
        grads = _grads(MANY, t)
        p_fused, s_fused = fused(params, state, grads)
        p_plain, s_plain = plain(params, state, grads)
        _assert_identical((p_fused, s_fused), (p_plain, s_plain))
        i = [type(x).__name__ for x in state].index("ScaleByAdamState")
        want, scale = _adam_reference_step(
            name, params, grads, state[i].mu, state[i].nu, t, lr, wd, flags
        )
        for k in params:
            err = np.abs(np.asarray(p_fused[k], np.float64) - want[k])
            bound = 8 * EPS32 * scale[k] + np.finfo(np.float32).tiny
            assert np.all(err <= bound), (k, float(np.max(err / bound)))
        params, state = p_plain, s_plain


@pytest.mark.parametrize(
    "name",
    ["adam", "adam_nesterov", "adam_eps_root", "adamw", "adam_l2", "clip_adamw"],
)
def test_adam_trajectory_against_float64(name):
    """120 fused steps follow the float64 equations as closely as plain ones."""
    lr = 1e-2
    ref_links = {
        "adam": [refs.adam()],
        "adam_nesterov": [refs.adam(nesterov=True)],
        "adam_eps_root": [refs.adam(eps_root=1e-10)],
        "adamw": [refs.adam(), refs.add_decayed_weights(0.1)],
        "adam_l2": [refs.add_decayed_weights(0.1), refs.adam()],
        "clip_adamw": [
            refs.clip_by_global_norm(1.0),
            refs.adam(),
            refs.add_decayed_weights(0.1),
        ],
    }
    ref = refs.chain(*ref_links[name], refs.scale_by_learning_rate(lr))
    tx = ADAM_CHAINS[name]()
    step = jax.jit(gradtx.fused_step(tx), donate_argnums=(0, 1))
    params64 = refs.make_params()
    params32 = refs.to_f32(params64)
    state32, state64 = tx.init(params32), ref.init(params64)
    scale = {k: 0.0 for k in params64}
    trajectory = []
    for g in refs.make_grads():
        params32, state32 = step(params32, state32, refs.to_f32(g))
        u64, state64 = ref.update(g, state64, params64)
        params64 = {k: params64[k] + u64[k] for k in params64}
        trajectory.append((jax.tree.map(np.asarray, params32), dict(params64)))
        for k in params64:
            scale[k] = max(scale[k], float(np.max(np.abs(params64[k]))))
    worst = max(
        float(np.max(np.abs(got[k] - want[k]))) / scale[k]
        for got, want in trajectory
        for k in want
    )
    assert worst < 1e-4


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


# When XLA's float32 sum of squares of the gradients overflows (an element
# above about 1.8e19, or the sum of finite squares) or underflows (every
# element below about 1e-19), the plain step takes the norm again from
# rescaled elements under `lax.cond`; the fused step asks its norm kernel,
# which sums the squares in float64. Gradients: values cycled over a large
# leaf (several kernel chunks, so several threads) and two small ones.
OUT_OF_RANGE = {
    "overflow": [1e30, -3e29, 1e-3, 0.0],
    "finite_squares_overflowing_sum": [1.5e19, -1.5e19, 1.0],
    "underflow": [1e-25, -3e-26, 4e-30],
    "zero": [0.0],
    "inf": [np.inf, 1.0],
    "nan": [np.nan, 1e30],
}


def _out_of_range_grads(values, scale=1.0):
    def leaf(n, shift):
        return jnp.asarray(np.resize(np.roll(values, shift), n) * scale, jnp.float32)

    return {"big": leaf(100_003, 0), "small": leaf(7, 1), "one": leaf(1, 2)}


def _norms(grads):
    assert fused_module.kernel_available()  # builds and registers the kernels
    plain = jax.jit(lambda g: gradtx.clipping._scaled_norm(g))(grads)
    kernel = jax.jit(
        lambda g: gradtx.clipping._scaled_norm(g, fused_module._NORM_KERNELS)
    )(grads)
    return [np.asarray(x) for x in (*plain, *kernel)]


@pytest.mark.parametrize("case", OUT_OF_RANGE)
def test_an_out_of_range_norm_comes_from_the_kernel(case):
    grads = _out_of_range_grads(OUT_OF_RANGE[case])
    root, scale, k_root, k_scale = _norms(grads)
    np.testing.assert_array_equal(k_scale, scale)
    # float64 sum: the kernel's root is the exact norm, rounded once
    exact = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values()))
    np.testing.assert_allclose(k_root / k_scale, exact, rtol=EPS32)
    np.testing.assert_allclose(k_root, root, rtol=2 * EPS32)

    tx = gradtx.chain(gradtx.clip_by_global_norm(2.0), gradtx.sgd(1.0, momentum=0.9))
    params = jax.tree.map(jnp.ones_like, grads)
    step = gradtx.fused_step(tx)
    got = jax.jit(step)(params, tx.init(params), grads)
    want = jax.jit(step.plain)(params, tx.init(params), grads)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=4 * EPS32, equal_nan=True)


def test_an_in_range_norm_skips_the_kernel_and_keeps_the_bits():
    grads = _out_of_range_grads([3.0, -4.0, 1e-3])
    root, scale, k_root, k_scale = _norms(grads)
    np.testing.assert_array_equal(k_root, root)
    np.testing.assert_array_equal(k_scale, scale)


def test_the_norm_kernel_under_vmap_takes_each_row_on_its_own():
    assert fused_module.kernel_available()
    # rows: overflow, in range, underflow
    grads = jax.vmap(lambda s: _out_of_range_grads([3.0, -4.0, 1e-3], s))(
        jnp.asarray([1e25, 1.0, 1e-25])
    )
    root, scale, k_root, k_scale = jax.vmap(
        lambda g: jnp.stack(
            [
                *gradtx.clipping._scaled_norm(g),
                *gradtx.clipping._scaled_norm(g, fused_module._NORM_KERNELS),
            ]
        )
    )(grads).T
    np.testing.assert_array_equal(k_scale, scale)
    assert k_root[1] == root[1]
    np.testing.assert_allclose(k_root, root, rtol=2 * EPS32)
    assert scale[0] < 1 < scale[2]


def test_the_clipped_step_has_no_conditional_and_no_concatenation():
    # The plain clipped step branches with lax.cond over every gradient leaf
    # and joins the small leaves with concatenations (seconds of XLA compile
    # time for thousands of leaves); the fused one has kernels for both.
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3))
    params = _tree([(3,), (4, 5), (6,)])
    step = gradtx.fused_step(tx)
    args = (params, tx.init(params), params)
    joined = "f32[29]{0} concatenate("  # the three gradient leaves, 29 elements
    plain = jax.jit(step.plain).lower(*args).compile().as_text()
    assert "conditional(" in plain and joined in plain
    text = jax.jit(step).lower(*args).compile().as_text()
    assert "conditional(" not in text and joined not in text
    assert "gradtx_scaled_norm" in text and "gradtx_gather" in text


def test_clipped_sgd_over_many_pieces_is_bit_identical(monkeypatch):
    # Pieces of 1024 elements: the norm joins the 200 small leaves in 13
    # chained pieces, through the gather kernel in the fused step.
    monkeypatch.setattr(gradtx.sharding, "_PIECE", 1024)
    shapes = [(64,)] * 200 + [(70_000,)]
    tx = gradtx.chain(gradtx.clip_by_global_norm(0.5), gradtx.sgd(0.1, momentum=0.9))
    fused = _run(tx, shapes, 3)
    plain = _run(tx, shapes, 3, fused=False)
    _assert_identical(fused, plain)


def test_the_gather_kernel_is_concatenate():
    assert fused_module.kernel_available()
    arrays = [jnp.arange(n, dtype=jnp.float32) * (n + 1) for n in (1, 5, 0, 64, 3)]
    got = jax.jit(fused_module._kernel_concatenate)(arrays)
    _assert_identical(got, jnp.concatenate(arrays))
    rows = [jnp.stack([x, -x, 2 * x]) for x in arrays]  # batch of 3 rows
    got = jax.jit(jax.vmap(fused_module._kernel_concatenate))(rows)
    _assert_identical(got, jnp.concatenate(rows, axis=1))


# ----------------------------------------------------------------------------
# JAX transformations, donation, memory


def test_donation_updates_in_place():
    tx = gradtx.adamw(1e-3, weight_decay=0.1)
    shapes = [(256, 256), (1000,), (3,)]
    params = _tree(shapes)
    state = tx.init(params)
    grads = _grads(shapes, 0)
    step = jax.jit(gradtx.fused_step(tx), donate_argnums=(0, 1))
    compiled = step.lower(params, state, grads).compile()
    text = compiled.as_text()
    assert "output_to_operand_aliasing" in text
    assert " copy(" not in text and "copy-start" not in text
    memory = compiled.memory_analysis()
    # the scalars and their copies for XLA's cost model (`_priced`), a few KB;
    # no leaf-sized scratch
    assert memory.temp_size_in_bytes <= 16384
    old = jax.tree.leaves(params)[0]
    params, state = step(params, state, grads)  # filterwarnings=error: no warning
    assert old.is_deleted()


def test_xla_counts_the_step_as_real_work():
    # XLA counts a custom call as -1 flops and the CPU client runs programs of
    # under 1000 flops synchronously on the calling thread; the fused step
    # must count as real work, whatever the number of kernel calls.
    tx = gradtx.adamw(1e-3)
    for n_leaves in (1, 300):
        params = _tree([(8,)] * n_leaves)
        step = jax.jit(gradtx.fused_step(tx), donate_argnums=(0, 1))
        compiled = step.lower(params, tx.init(params), params).compile()
        assert "custom-call" in compiled.as_text()
        assert compiled.cost_analysis()["flops"] >= 1000


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

    _assert_identical(loop(gradtx.fused_step(tx)), loop(gradtx.fused_step(tx).plain))


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


@pytest.mark.parametrize("clip", [False, True])
def test_gpu_lowering_takes_the_plain_step(monkeypatch, clip):
    """Lowered for CUDA the step has no CPU kernel in it (checked on a CPU).

    A process with a GPU backend traces both branches and lets the lowering
    pick; a CPU-only one (this one, really) traces the kernel's alone.
    """
    monkeypatch.setattr(fused_module, "_cpu_only", lambda: False)
    tx = gradtx.adamw(1e-3, weight_decay=0.1)
    if clip:
        tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), tx)
    params = _tree([(8,)])
    state = tx.init(params)
    traced = jax.jit(gradtx.fused_step(tx)).trace(params, state, params)
    try:
        text = traced.lower(lowering_platforms=("cuda",)).as_text()
    except Exception as error:  # noqa: BLE001 - a jax without cross-lowering
        pytest.skip(f"cannot lower for cuda here: {error}")
    assert "gradtx_fused" not in text and "gradtx_scaled_norm" not in text
    cpu_text = traced.lower(lowering_platforms=("cpu",)).as_text()
    assert "gradtx_fused" in cpu_text
    assert ("gradtx_scaled_norm" in cpu_text) == clip


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


def test_environment_switch(monkeypatch):
    monkeypatch.setenv("GRADTX_FUSED", "0")
    assert not fused_module.kernel_available()
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


def test_a_state_from_another_chain_gets_the_plain_error():
    tx = gradtx.adamw(1e-3)
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match="chain"):
        gradtx.fused_step(tx)(params, (), params)


def test_the_cache_directory_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADTX_CACHE_DIR", str(tmp_path))
    compiler = fused_module._compiler()
    path = fused_module._build(compiler)
    assert path.parent == tmp_path and path.exists()
    assert fused_module._build(compiler) == path  # cached: not rebuilt
    assert os.listdir(tmp_path) == [path.name]  # no temporary left behind


def test_without_a_compiler_the_plain_step_runs(monkeypatch):
    assert fused_module.kernel_available()
    saved = list(fused_module._loaded)
    monkeypatch.setattr(fused_module, "_compiler", lambda: None)
    fused_module._loaded.clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
            assert not fused_module.kernel_available()
        tx = gradtx.adam(1e-3)
        params = _tree([(4,)])
        step = gradtx.fused_step(tx)
        assert _custom_calls(step, params, tx.init(params), params) == 0
    finally:
        fused_module._loaded[:] = saved
    assert fused_module.kernel_available()


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


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_flat_moments_give_the_same_bits(name):
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


def test_flat_moments_update_in_place():
    tx = gradtx.adam(1e-3)
    shapes = [(64,)] * 70 + [(128, 128)]
    params = _tree(shapes)
    step = gradtx.fused_step(tx, flat_moments=True)
    state = step.init(params)
    compiled = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, state, _grads(shapes, 0))
        .compile()
    )
    assert " copy(" not in compiled.as_text()
    # the scalars and their priced copies only
    assert compiled.memory_analysis().temp_size_in_bytes <= 16384
    assert (
        jax.jit(step).lower(params, state, params).as_text().count("gradtx_fused") == 3
    )


def test_flat_moments_under_vmap_and_on_gpu_lowering(monkeypatch):
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
    monkeypatch.setattr(fused_module, "_cpu_only", lambda: False)
    one = _tree(shapes)
    traced = jax.jit(step).trace(one, step.init(one), one)
    try:
        text = traced.lower(lowering_platforms=("cuda",)).as_text()
    except Exception as error:  # noqa: BLE001 - a jax without cross-lowering
        pytest.skip(f"cannot lower for cuda here: {error}")
    assert "gradtx_fused" not in text


def test_a_cpu_only_process_traces_the_kernel_alone():
    assert fused_module._cpu_only()  # the test machine has no accelerator
    tx = gradtx.adam(1e-3)
    params = _tree([(4,)])
    text = jax.jit(gradtx.fused_step(tx)).lower(params, tx.init(params), params)
    assert "platform_index" not in text.as_text() and "case" not in text.as_text()


def test_flat_moments_warn_once_where_the_kernel_does_not_run(monkeypatch):
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
    for got, expected in [
        (new, want),
        (step.chain_state(new_state, params), want_state),
    ]:
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    monkeypatch.delenv("GRADTX_FUSED")
    # a process whose default backend is an accelerator lowers the plain step
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.warns(RuntimeWarning, match="default backend is gpu"):
        jax.jit(gradtx.fused_step(tx, flat_moments=True)).trace(params, state, params)
    # per-leaf moments cost nothing extra on the plain path: no warning
    jax.jit(gradtx.fused_step(tx)).trace(params, tx.init(params), params)


def test_a_per_leaf_state_given_to_a_flat_step_is_refused():
    tx = gradtx.adamw(1e-3)
    params = _tree([(3,), (2, 2)])
    step = gradtx.fused_step(tx, flat_moments=True)
    with pytest.raises(ValueError, match="flat array of 7 elements"):
        step(params, tx.init(params), params)


# ----------------------------------------------------------------------------
# moments kept in bfloat16

BF16 = jnp.bfloat16


def _momentum_chain(*front, **momentum):
    return gradtx.chain(
        *front,
        gradtx.scale_by_momentum(0.9, accumulator_dtype=BF16, **momentum),
        gradtx.scale_by_learning_rate(0.1),
    )


BF16_ADAM_CHAINS = {  # name -> (chain, the name of its float32 form above)
    "adam_mu": (lambda: gradtx.adam(1e-2, mu_dtype=BF16), "adam"),
    "adam_nu": (lambda: gradtx.adam(1e-2, nu_dtype=BF16), "adam"),
    "adam_both": (lambda: gradtx.adam(1e-2, mu_dtype=BF16, nu_dtype=BF16), "adam"),
    "adam_nesterov": (
        lambda: gradtx.adam(1e-2, nesterov=True, mu_dtype=BF16, nu_dtype=BF16),
        "adam_nesterov",
    ),
    "adam_eps_root": (
        lambda: gradtx.adam(1e-2, eps_root=1e-10, mu_dtype=BF16),
        "adam_eps_root",
    ),
    "adamw": (
        lambda: gradtx.adamw(1e-2, weight_decay=0.1, mu_dtype=BF16, nu_dtype=BF16),
        "adamw",
    ),
    "adam_l2": (
        lambda: gradtx.adam_l2(1e-2, weight_decay=0.1, mu_dtype=BF16),
        "adam_l2",
    ),
}
BF16_CHAINS = {
    **{name: chain for name, (chain, _) in BF16_ADAM_CHAINS.items()},
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


def _bits(x):
    """The bit patterns of a float array as signed integers, ordered like the values."""
    x = np.asarray(x)
    signed = x.view({2: np.int16, 4: np.int32}[x.dtype.itemsize]).astype(np.int64)
    # two's complement order -> value order (negative floats count downwards)
    return np.where(signed < 0, np.iinfo(np.int64).min // 2 - signed, signed)


@pytest.mark.parametrize("name", sorted(BF16_CHAINS))
def test_bfloat16_moments_run_in_the_kernel(name):
    tx = BF16_CHAINS[name]()
    step = gradtx.fused_step(tx)
    assert step.fused and step.reason is None
    shapes = [(3,), (2, 2), ()]
    params = _tree(shapes)
    state = tx.init(params)
    grads = _grads(shapes, 1)
    assert _custom_calls(step, params, state, grads) == 1
    _, new_state = jax.jit(step)(params, state, grads)
    assert [x.dtype for x in jax.tree.leaves(new_state)] == [
        x.dtype for x in jax.tree.leaves(state)
    ]


@pytest.mark.parametrize("name", sorted(BF16_CHAINS))
def test_bfloat16_moments_round_like_the_plain_step(name):
    """Each stored moment is the plain step's or its bfloat16 neighbour.

    With a moment in bfloat16 the plain step computes the new moment twice,
    in the loop that stores it and again in the parameter's loop, and LLVM
    contracts the two into fused multiply-adds differently from chain to
    chain: the plain step's own two values can differ in the last float32
    place, and the stored one then by one bfloat16 place. The kernel computes
    the moment once and uses it for both. Parameters agree to float32
    round-off of the update (against float64 for Adam in the next test).
    """
    tx = BF16_CHAINS[name]()
    fused = jax.jit(gradtx.fused_step(tx))
    plain = jax.jit(gradtx.fused_step(tx).plain)
    params = _tree(MANY)
    state = tx.init(params)
    for t in range(1, 13):
        grads = _grads(MANY, t)
        p_fused, s_fused = fused(params, state, grads)
        p_plain, s_plain = plain(params, state, grads)
        assert jax.tree.structure(s_fused) == jax.tree.structure(s_plain)
        for a, b in zip(
            jax.tree.leaves(s_fused), jax.tree.leaves(s_plain), strict=True
        ):
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.dtype == jnp.float32:
                np.testing.assert_array_equal(a, b)  # float32 moments: as ever
            else:
                assert np.all(np.abs(_bits(a) - _bits(b)) <= 1)
        for a, b in zip(
            jax.tree.leaves(p_fused), jax.tree.leaves(p_plain), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        params, state = p_plain, s_plain


@pytest.mark.parametrize("name", sorted(BF16_ADAM_CHAINS))
def test_bfloat16_adam_rounds_the_float64_step(name):
    """From the same float32 params and bfloat16 moments, one step as in float64."""
    chain, f32_name = BF16_ADAM_CHAINS[name]
    tx = chain()
    lr, wd = 1e-2, (0.1 if f32_name in ("adamw", "adam_l2") else 0.0)
    fused = jax.jit(gradtx.fused_step(tx))
    params = _tree(MANY)
    state = tx.init(params)
    flags = {k: True for k in params}
    i = [type(x).__name__ for x in state].index("ScaleByAdamState")
    for t in range(1, 13):
        grads = _grads(MANY, t)
        p_fused, s_fused = fused(params, state, grads)
        want, scale = _adam_reference_step(
            f32_name, params, grads, state[i].mu, state[i].nu, t, lr, wd, flags
        )
        for k in params:
            err = np.abs(np.asarray(p_fused[k], np.float64) - want[k])
            bound = 8 * EPS32 * scale[k] + np.finfo(np.float32).tiny
            assert np.all(err <= bound), (k, float(np.max(err / bound, initial=0)))
        params, state = p_fused, s_fused


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


def test_bfloat16_flat_moments_give_the_per_leaf_bits():
    tx = BF16_CHAINS["clip_adamw"]()
    p_flat, s_flat = _run_flat(tx, MANY, 8)
    assert s_flat[1][0].mu["leaf000"].dtype == BF16
    _assert_identical((p_flat, s_flat), _run(tx, MANY, 8))


def test_bfloat16_moments_under_vmap():
    tx = BF16_CHAINS["clip_l2_momentum"]()
    shapes = [(6,), (2, 3)]
    params = jax.vmap(lambda i: _tree(shapes, scale=1.0 + i))(jnp.arange(3))
    grads = jax.vmap(lambda i: _tree(shapes, seed=5, scale=10.0**i))(jnp.arange(3))
    state = jax.vmap(tx.init)(params)
    step = jax.jit(jax.vmap(gradtx.fused_step(tx)))
    got = step(params, state, grads)
    for r in range(3):
        row = jax.tree.map(lambda x, r=r: x[r], (params, state, grads))
        _assert_identical(
            jax.tree.map(lambda x, r=r: x[r], got), jax.jit(gradtx.fused_step(tx))(*row)
        )


def test_mixed_moment_dtypes_within_a_tree_run_the_plain_step():
    tx = gradtx.adam(1e-2)
    params = _tree([(3,), (4,)])
    state = tx.init(params)
    mu = dict(state[0].mu, leaf001=state[0].mu["leaf001"].astype(BF16))
    state = (state[0]._replace(mu=mu), *state[1:])
    step = gradtx.fused_step(tx)
    assert _custom_calls(step, params, state, params) == 0
