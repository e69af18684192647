import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import peers as P
import pytest
import references as R

import gradtx

# float32 against float64 over 120 steps. x is not stored but recovered from
# (y, z) at every step, so its rounding accumulates (about t/2 ulps of the
# params after t steps with uniform weights): observed errors are 1e-5-5e-5.
RTOL = 1e-4
OPTAX_TOL = 2e-5
MASK = {"w": True, "b": False, "s": True}


def grads_sequence(steps, dtype=jnp.float32):
    return [
        jax.tree.map(lambda x: x.astype(dtype), R.to_f32(g))
        for g in R.make_grads(steps, 1)
    ]


def small_params(dtype=jnp.float32):
    return jax.tree.map(lambda x: x.astype(dtype), R.to_f32(R.make_params(0)))


def finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------
# float64 reference, written from the paper's equations with x kept explicitly


def ref_schedule_free(base, learning_rate, b1=0.9, weight_lr_power=2.0):
    """y (the params) = b1 x + (1 - b1) z; z moved by `base`; x an average."""

    def lr_at(t):
        return float(learning_rate(t)) if callable(learning_rate) else learning_rate

    def init(params):
        return {
            "t": 0,
            "x": dict(params),
            "z": dict(params),
            "weights": 0.0,
            "max_lr": 0.0,
            "base": base.init(params),
        }

    def update(grads, state, params):
        t = state["t"] + 1
        steps, base_state = base.update(grads, state["base"], params)
        max_lr = max(state["max_lr"], lr_at(t))
        weight = max_lr**weight_lr_power
        weights = state["weights"] + weight
        c = weight / weights if weights > 0 else 0.0
        z = {k: state["z"][k] + steps[k] for k in grads}
        x = {k: (1 - c) * state["x"][k] + c * z[k] for k in grads}
        y = {k: b1 * x[k] + (1 - b1) * z[k] for k in grads}
        updates = {k: y[k] - params[k] for k in grads}
        new = {
            "t": t,
            "x": x,
            "z": z,
            "weights": weights,
            "max_lr": max_lr,
            "base": base_state,
        }
        return updates, new

    return R.Ref(init, update)


def warmup64(peak, steps):
    return lambda t: peak * min(t, steps) / steps


EQUATION_CASES = {
    "schedule_free/sgd": (
        lambda: gradtx.schedule_free(gradtx.sgd(0.05), 0.05, b1=0.8),
        lambda: ref_schedule_free(R.scale_by_learning_rate(0.05), 0.05, b1=0.8),
    ),
    "schedule_free/adam_b1_0/power_1": (
        lambda: gradtx.schedule_free(
            gradtx.adam(0.01, b1=0.0), 0.01, weight_lr_power=1.0
        ),
        lambda: ref_schedule_free(
            R.chain(R.adam(b1=0.0), R.scale_by_learning_rate(0.01)),
            0.01,
            weight_lr_power=1.0,
        ),
    ),
    "schedule_free_adamw/warmup_decay": (
        lambda: gradtx.schedule_free_adamw(
            0.02, warmup_steps=10, b1=0.95, b2=0.99, weight_decay=0.1
        ),
        lambda: ref_schedule_free(
            R.chain(
                R.adam(b1=0.0, b2=0.99),
                R.add_decayed_weights(0.1),
                R.scale_by_learning_rate(warmup64(0.02, 10)),
            ),
            warmup64(0.02, 10),
            b1=0.95,
        ),
    ),
    "schedule_free_sgd/warmup_decay": (
        lambda: gradtx.schedule_free_sgd(0.05, warmup_steps=10, weight_decay=0.1),
        lambda: ref_schedule_free(
            R.chain(
                R.add_decayed_weights(0.1),
                R.scale_by_learning_rate(warmup64(0.05, 10)),
            ),
            warmup64(0.05, 10),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(EQUATION_CASES))
def test_matches_float64_equations(name):
    make_tx, make_ref = EQUATION_CASES[name]
    got, want = R.run_side_by_side(make_tx(), make_ref())
    error = R.max_relative_error(got, want)
    print(f"{name}: max relative error against float64 {error:.2e}")
    assert error < RTOL


def test_eval_params_match_the_float64_average():
    tx = gradtx.schedule_free_adamw(0.02, warmup_steps=5, weight_decay=0.1)
    ref = ref_schedule_free(
        R.chain(
            R.adam(b1=0.0),
            R.add_decayed_weights(0.1),
            R.scale_by_learning_rate(warmup64(0.02, 5)),
        ),
        warmup64(0.02, 5),
    )
    params64 = R.make_params(0)
    params32 = R.to_f32(params64)
    state32, state64 = tx.init(params32), ref.init(params64)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        params = gradtx.apply_updates(params, updates)
        return params, state, gradtx.schedule_free_eval_params(state, params)

    worst = 0.0
    for g in R.make_grads(R.STEPS, 1):
        params32, state32, x32 = step(params32, state32, R.to_f32(g))
        u64, state64 = ref.update(g, state64, params64)
        params64 = {k: params64[k] + u64[k] for k in params64}
        for k, x in state64["x"].items():
            err = np.max(np.abs(np.asarray(x32[k], np.float64) - x))
            worst = max(worst, float(err / np.max(np.abs(params64[k]))))
    print(f"schedule_free_eval_params: max relative error against float64 {worst:.2e}")
    assert worst < RTOL


# ----------------------------------------------------------------------------
# parity with optax.contrib, step for step


def eval_trajectory(tx, apply, eval_params, steps=P.STEPS):
    """Params and eval params after each step, from make_params(0)."""
    params = R.to_f32(R.make_params(0))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        params = apply(params, updates)
        return params, state, eval_params(state, params)

    out, evals = [], []
    for g in R.make_grads(steps, 1):
        params, state, x = step(params, state, R.to_f32(g))
        out.append(jax.tree.map(np.asarray, params))
        evals.append(jax.tree.map(np.asarray, x))
    return out, evals


PEER_CASES = {
    "schedule_free_adamw": (
        lambda: gradtx.schedule_free_adamw(),
        lambda: optax.contrib.schedule_free_adamw(),
    ),
    "schedule_free_adamw/warmup_decay": (
        lambda: gradtx.schedule_free_adamw(
            0.02, 10, b1=0.95, b2=0.99, eps=1e-6, weight_decay=0.1
        ),
        lambda: optax.contrib.schedule_free_adamw(
            0.02, 10, b1=0.95, b2=0.99, eps=1e-6, weight_decay=0.1
        ),
    ),
    "schedule_free_sgd/warmup_decay": (
        lambda: gradtx.schedule_free_sgd(0.05, 10, 0.8, 0.1, 1.0),
        lambda: optax.contrib.schedule_free_sgd(0.05, 10, 0.8, 0.1, 1.0),
    ),
    "schedule_free/sgd_schedule": (
        lambda: gradtx.schedule_free(
            gradtx.sgd(gradtx.exponential_decay(0.05, 10, 0.9)),
            gradtx.exponential_decay(0.05, 10, 0.9),
        ),
        lambda: optax.contrib.schedule_free(
            optax.sgd(optax.exponential_decay(0.05, 10, 0.9)),
            optax.exponential_decay(0.05, 10, 0.9),
        ),
    ),
    "schedule_free/adam_b1_0": (
        lambda: gradtx.schedule_free(gradtx.adam(0.01, b1=0.0), 0.01, 0.9, 1.5),
        lambda: optax.contrib.schedule_free(optax.adam(0.01, b1=0.0), 0.01, 0.9, 1.5),
    ),
}


@pytest.mark.parametrize("name", sorted(PEER_CASES))
def test_matches_optax_step_for_step(name):
    make_tx, make_peer = PEER_CASES[name]
    ours, our_eval = eval_trajectory(
        make_tx(), gradtx.apply_updates, gradtx.schedule_free_eval_params
    )
    theirs, their_eval = eval_trajectory(
        make_peer(), optax.apply_updates, optax.contrib.schedule_free_eval_params
    )
    gap = P.max_relative_gap(ours, theirs)
    eval_gap = P.max_relative_gap(our_eval, their_eval)
    print(f"{name}: max gap to optax {gap:.2e} (params), {eval_gap:.2e} (eval)")
    assert gap < OPTAX_TOL
    assert eval_gap < OPTAX_TOL


def test_positional_call_means_the_same_as_in_optax():
    ours = gradtx.schedule_free_adamw(0.01, 5, 0.8, 0.99, 1e-6, 0.1, 1.0)
    hp = ours.hyperparams
    assert (hp["b1"], hp["weight_lr_power"]) == (0.8, 1.0)
    base = hp["base_optimizer"].children
    assert base[0].hyperparams["decay"] == 0.99
    assert base[0].hyperparams["eps"] == 1e-6
    assert base[1].hyperparams["weight_decay"] == 0.1
    with pytest.raises(TypeError):
        gradtx.schedule_free_adamw(0.01, 5, 0.8, 0.99, 1e-6, 0.1, 1.0, None, None)


# ----------------------------------------------------------------------------
# construction refuses bad hyperparameters


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: gradtx.schedule_free(gradtx.sgd(0.1), -0.1), "learning_rate"),
        (lambda: gradtx.schedule_free(gradtx.sgd(0.1), 0.1, b1=0.0), "b1"),
        (lambda: gradtx.schedule_free(gradtx.sgd(0.1), 0.1, b1=1.5), "b1"),
        (lambda: gradtx.schedule_free(gradtx.sgd(0.1), 0.1, b1=math.nan), "b1"),
        (
            lambda: gradtx.schedule_free(gradtx.sgd(0.1), 0.1, weight_lr_power=-1.0),
            "weight_lr_power",
        ),
        (
            lambda: gradtx.schedule_free(gradtx.sgd(0.1), 0.1, state_dtype=jnp.int32),
            "state_dtype",
        ),
        (lambda: gradtx.schedule_free_adamw(-1.0), "learning_rate"),
        (lambda: gradtx.schedule_free_adamw(warmup_steps=-1), "warmup_steps"),
        (lambda: gradtx.schedule_free_adamw(b1=0.0), "b1"),
        (lambda: gradtx.schedule_free_adamw(b2=1.0), "b2"),
        (lambda: gradtx.schedule_free_adamw(eps=-1e-8), "eps"),
        (lambda: gradtx.schedule_free_adamw(weight_decay=-0.1), "weight_decay"),
        (lambda: gradtx.schedule_free_adamw(weight_lr_power=-2.0), "weight_lr_power"),
        (lambda: gradtx.schedule_free_adamw(state_dtype="int8"), "state_dtype"),
        (lambda: gradtx.schedule_free_sgd(-1.0), "learning_rate"),
        (lambda: gradtx.schedule_free_sgd(b1=2.0), "b1"),
        (lambda: gradtx.schedule_free_sgd(weight_decay=-1.0), "weight_decay"),
        (lambda: gradtx.schedule_free_sgd(warmup_steps=-3), "warmup_steps"),
    ],
)
def test_construction_refuses_out_of_range(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_construction_refuses_wrong_types():
    with pytest.raises(TypeError, match="base_optimizer"):
        gradtx.schedule_free(0.1, 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="warmup_steps"):
        gradtx.schedule_free_sgd(0.1, warmup_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="learning_rate must be a number"):
        gradtx.schedule_free_adamw(lambda t: 0.1, warmup_steps=10)
    tx = gradtx.schedule_free_sgd(0.1)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="params=None"):
        tx.update(params, tx.init(params))
    with pytest.raises(
        ValueError, match="schedule_free_eval_params: no ScheduleFreeState in the state"
    ):
        gradtx.schedule_free_eval_params(gradtx.sgd(0.1).init(params), params)
    twice = gradtx.chain(tx, tx)
    with pytest.raises(ValueError, match="2 ScheduleFreeState side by side"):
        gradtx.schedule_free_eval_params(twice.init(params), params)


def test_warmup_of_zero_steps_is_the_constant_rate():
    params, grads = small_params(), grads_sequence(3)
    a = run(gradtx.schedule_free_sgd(0.1, warmup_steps=0), grads, params)[0]
    b = run(gradtx.schedule_free_sgd(0.1), grads, params)[0]
    chex.assert_trees_all_equal(a, b)


# ----------------------------------------------------------------------------
# dtypes, donation, jit and scan


def run(tx, grads, params):
    state = tx.init(params)
    step = jitted_step(tx)
    updates = None
    for g in grads:
        params, state, updates = step(params, state, g)
    return params, state, updates


def jitted_step(tx):
    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), state, updates

    return step


def test_low_precision_params_stay_in_their_dtype_and_state_dtype_is_honoured():
    params = small_params(jnp.bfloat16)
    grads = grads_sequence(4, jnp.bfloat16)
    tx = gradtx.schedule_free_adamw(0.01, warmup_steps=2, weight_decay=0.1)
    p, state, u = run(tx, grads, params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((p, u, state.z)))
    assert finite((p, u))
    assert state.weight_sum.dtype == state.max_lr.dtype == jnp.float32
    wide = gradtx.schedule_free_adamw(0.01, state_dtype=jnp.float32)
    p, state, u = run(wide, grads, params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.z))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((p, u)))
    assert finite((p, u))
    x = gradtx.schedule_free_eval_params(state, p)
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(x))
    p16, _, u16 = run(
        gradtx.schedule_free_sgd(0.1),
        grads_sequence(4, jnp.float16),
        small_params(jnp.float16),
    )
    assert all(v.dtype == jnp.float16 for v in jax.tree.leaves((p16, u16)))
    assert finite((p16, u16))


def test_init_copies_the_params_and_donation_gives_the_same_numbers():
    tx = gradtx.schedule_free_adamw(0.01, warmup_steps=2, weight_decay=0.1)
    params = small_params()
    state = tx.init(params)
    for p, z in zip(jax.tree.leaves(params), jax.tree.leaves(state.z), strict=True):
        assert p is not z
        assert p.unsafe_buffer_pointer() != z.unsafe_buffer_pointer()
    b1 = jnp.asarray(0.9, jnp.float32)  # a user's array is copied too
    assert gradtx.schedule_free_sgd(0.1, b1=b1).init(params).b1 is not b1

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), state

    grads = grads_sequence(4)
    plain_params, plain_state = small_params(), tx.init(small_params())
    plain = jax.jit(step)
    donated = jax.jit(step, donate_argnums=(0, 1))
    with warnings.catch_warnings():
        # donation must really happen: any "donated buffers were not usable"
        # warning fails the test (pytest runs with filterwarnings=error)
        don_params = small_params()
        don_state = tx.init(don_params)
        for g in grads:
            old = don_params
            don_params, don_state = donated(don_params, don_state, g)
            plain_params, plain_state = plain(plain_params, plain_state, g)
        assert all(x.is_deleted() for x in jax.tree.leaves(old))
    chex.assert_trees_all_equal(don_params, plain_params)
    chex.assert_trees_all_equal(don_state, plain_state)


def test_runs_inside_lax_scan_like_a_python_loop():
    tx = gradtx.schedule_free_adamw(0.01, warmup_steps=3)
    params = small_params()
    grads = grads_sequence(6)
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)

    @jax.jit
    def scanned(params):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (gradtx.apply_updates(p, u), s), None

        (p, s), _ = jax.lax.scan(body, (params, tx.init(params)), stacked)
        return p, gradtx.schedule_free_eval_params(s, p)

    p_scan, x_scan = scanned(params)
    p_loop, s_loop, _ = run(tx, grads, params)
    chex.assert_trees_all_close(p_scan, p_loop, rtol=1e-6, atol=1e-7)
    x_loop = gradtx.schedule_free_eval_params(s_loop, p_loop)
    chex.assert_trees_all_close(x_scan, x_loop, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# hyperparameters as arrays: inject_hyperparams and vmap

OPTIMIZERS = {
    "schedule_free_adamw": (
        gradtx.schedule_free_adamw,
        {"learning_rate": 0.01, "warmup_steps": 3, "b1": 0.9, "weight_decay": 0.1},
    ),
    "schedule_free_sgd": (
        gradtx.schedule_free_sgd,
        {"learning_rate": 0.05, "warmup_steps": 3, "b1": 0.8, "weight_decay": 0.1},
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_inject_hyperparams_bfloat16_and_same_numbers(name):
    # optax.inject_hyperparams(optax.contrib.schedule_free_adamw) stores its
    # hyperparams in the params' dtype: in bfloat16 b2 = 0.999 becomes 1.0,
    # 1 - b2**t is 0 and the updates are non-finite. gradtx keeps float32.
    factory, kwargs = OPTIMIZERS[name]
    injected = gradtx.inject_hyperparams(factory)(**kwargs)
    p16, state16, u16 = run(
        injected, grads_sequence(3, jnp.bfloat16), small_params(jnp.bfloat16)
    )
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((p16, u16)))
    assert finite((p16, u16))
    assert set(state16.hyperparams) == {"learning_rate", "b1", "weight_decay"}
    assert all(v.dtype == jnp.float32 for v in state16.hyperparams.values())
    x16 = gradtx.schedule_free_eval_params(state16, p16)  # found inside
    assert finite(x16)
    got, got_state, _ = run(injected, grads_sequence(5), small_params())
    want, want_state, _ = run(factory(**kwargs), grads_sequence(5), small_params())
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(
        gradtx.schedule_free_eval_params(got_state, got),
        gradtx.schedule_free_eval_params(want_state, want),
        rtol=1e-6,
        atol=1e-7,
    )


VMAP_CASES = {
    "schedule_free_adamw": ("learning_rate", [0.001, 0.01, 0.05]),
    "schedule_free_sgd": ("b1", [0.5, 0.9, 1.0]),
}


@pytest.mark.parametrize("name", sorted(VMAP_CASES))
def test_vmap_over_a_hyperparameter_equals_separate_runs(name):
    factory, kwargs = OPTIMIZERS[name]
    key, values = VMAP_CASES[name]
    opt = gradtx.inject_hyperparams(factory)(**kwargs)
    params = small_params()
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
        alone, _, _ = run(factory(**dict(kwargs, **{key: value})), grads, params)
        for got, want in zip(
            jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# inside the wrappers


def test_masked_leaves_pass_through_and_eval_params_skip_them():
    tx = gradtx.masked(gradtx.schedule_free_adamw(0.01), MASK)
    alone = gradtx.schedule_free_adamw(0.01)
    params = small_params()
    selected = {k: v for k, v in params.items() if MASK[k]}
    state, alone_state = tx.init(params), alone.init(selected)
    p, q = params, selected
    for g in grads_sequence(4):
        u, state = tx.update(g, state, p)
        np.testing.assert_array_equal(u["b"], g["b"])
        v, alone_state = alone.update({k: g[k] for k in q}, alone_state, q)
        p, q = gradtx.apply_updates(p, u), gradtx.apply_updates(q, v)
    chex.assert_trees_all_close({k: p[k] for k in q}, q, rtol=1e-6)
    x = gradtx.schedule_free_eval_params(state, p)
    np.testing.assert_array_equal(x["b"], p["b"])
    chex.assert_trees_all_close(
        {k: x[k] for k in q},
        gradtx.schedule_free_eval_params(alone_state, q),
        rtol=1e-6,
    )


def test_multi_transform_group_is_the_optimizer_on_its_leaves():
    labels = {"w": "sf", "b": "sgd", "s": "sf"}
    tx = gradtx.multi_transform(
        {"sf": gradtx.schedule_free_sgd(0.05), "sgd": gradtx.sgd(0.05)}, labels
    )
    alone = gradtx.schedule_free_sgd(0.05)
    params = small_params()
    mine = {k: v for k, v in params.items() if labels[k] == "sf"}
    p, _, _ = run(tx, grads_sequence(4), params)
    q, _, _ = run(alone, [{k: g[k] for k in mine} for g in grads_sequence(4)], mine)
    chex.assert_trees_all_close({k: p[k] for k in q}, q, rtol=1e-6)
    want_b = params["b"] - 0.05 * sum(g["b"] for g in grads_sequence(4))
    np.testing.assert_allclose(p["b"], want_b, rtol=1e-6)


def test_apply_if_finite_skips_a_bad_step_as_if_it_never_came():
    tx = gradtx.apply_if_finite(gradtx.schedule_free_adamw(0.01), 3)
    grads = grads_sequence(4)
    bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan), grads[1])
    p_bad, s_bad, _ = run(tx, [grads[0], bad, *grads[1:]], small_params())
    p_ok, s_ok, _ = run(tx, grads, small_params())
    chex.assert_trees_all_equal(p_bad, p_ok)
    chex.assert_trees_all_equal(s_bad.inner_state, s_ok.inner_state)
    assert int(s_bad.notfinite_total) == 1


def test_accumulate_every_2_is_one_step_on_the_mean():
    tx = gradtx.accumulate_gradients(gradtx.schedule_free_sgd(0.1), every_k=2)
    alone = gradtx.schedule_free_sgd(0.1)
    grads = grads_sequence(4)
    p, _, _ = run(tx, grads, small_params())
    means = [
        jax.tree.map(lambda a, b: (a + b) / 2, grads[i], grads[i + 1]) for i in (0, 2)
    ]
    q, _, _ = run(alone, means, small_params())
    chex.assert_trees_all_close(p, q, rtol=1e-6, atol=1e-7)


def test_describe_names_the_links_and_hyperparameters():
    text = gradtx.describe(
        gradtx.schedule_free_adamw(0.01, warmup_steps=10, weight_decay=0.1)
    )
    for word in (
        "schedule_free(",
        "scale_by_rms(",
        "bias_correction=True",
        "add_decayed_weights(",
        "scale_by_learning_rate(",
        "weight_lr_power=2.0",
        "b1=0.9",
        "weight_decay=0.1",
    ):
        assert word in text, (word, text)
    text = gradtx.describe(gradtx.schedule_free(gradtx.sgd(0.1), 0.1, b1=0.8))
    assert "schedule_free(" in text and "b1=0.8" in text
    assert "scale_by_learning_rate(learning_rate=0.1)" in text


def test_halves_the_contract_quadratic():
    tx = gradtx.schedule_free_adamw(0.05)
    params = {
        "w": jnp.linspace(-1.0, 2.0, 12).reshape(4, 3),
        "b": jnp.array([0.5, -1.5, 1.0]),
        "s": jnp.array(-2.0),
    }

    def loss(p):
        return sum(jnp.sum(jnp.square(x - 0.25)) for x in jax.tree.leaves(p))

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return gradtx.apply_updates(p, u), s

    state, start = tx.init(params), float(loss(params))
    p = params
    for _ in range(100):
        p, state = step(p, state)
    print(f"contract quadratic: {start:.3f} -> {float(loss(p)):.3f}")
    assert float(loss(p)) < 0.5 * start
