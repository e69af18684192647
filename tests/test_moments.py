"""AdaBelief, Yogi, ADOPT and AdEMAMix: equations, optax parity, contract.

Float64 NumPy references written from the docstrings' equations, step for
step parity with optax (torch.optim has none of these four), construction
checks, inject_hyperparams (ADOPT's clip_value_fn static, AdEMAMix's b3 and
alpha schedules), vmap over hyperparameters, the wrappers and describe.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
from peers import gradtx_trajectory, max_relative_gap, optax_trajectory

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
# Float32 against float32 in another order of operations. optax takes 1 - b**t
# with b rounded to float32 (1.3e-5 relative for b2 = 0.999), hence 2e-5.
RTOL_OPTAX = 2e-5

MEASURED: dict[str, float] = {}  # printed with -s; quoted in the report


def record(kind, case, value):
    MEASURED[f"{kind}:{case}"] = value
    print(f"\n{kind} {case}: {value:.3g}")


# ----------------------------------------------------------------------------
# float64 references, one line per equation


def ref_belief(b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False):
    def step(g, s, p, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g - m) ** 2 + eps_root
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return m_hat / (np.sqrt(v_hat) + eps), (m, v)

    return R.per_leaf(lambda p: (np.zeros_like(p), np.zeros_like(p)), step)


def ref_yogi(b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, initial=1e-6):
    def step(g, s, p, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * np.sign(v - g**2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return m_hat / (np.sqrt(v_hat + eps_root) + eps), (m, v)

    return R.per_leaf(
        lambda p: (np.full_like(p, initial), np.full_like(p, initial)), step
    )


def quarter_power(k):
    return k**0.25


def ref_adopt(
    b1=0.9, b2=0.9999, eps=1e-6, nesterov=False, clipping=True, clip=quarter_power
):
    def step(g, s, p, t):
        m, v = s
        k = t - 1  # updates already applied
        if k == 0:
            return np.zeros_like(g), (m, g**2)
        d = g / np.maximum(np.sqrt(v), eps)
        if clipping:
            c = float(clip(k))
            d = np.clip(d, -c, c)
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * g**2
        u = b1 * m + (1 - b1) * d if nesterov else m
        return u, (m, v)

    return R.per_leaf(lambda p: (np.zeros_like(p), np.zeros_like(p)), step)


def at(value, k):
    return float(value(k)) if callable(value) else value


def ref_ademamix(b1=0.9, b2=0.999, b3=0.9999, alpha=6.0, eps=1e-8, eps_root=0.0):
    def step(g, s, p, t):
        m1, m2, v = s
        b3_t, alpha_t = at(b3, t - 1), at(alpha, t - 1)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b3_t * m2 + (1 - b3_t) * g
        v = b2 * v + (1 - b2) * g**2
        m1_hat = m1 / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return (m1_hat + alpha_t * m2) / (np.sqrt(v_hat + eps_root) + eps), (m1, m2, v)

    return R.per_leaf(lambda p: tuple(np.zeros_like(p) for _ in range(3)), step)


def slow_clip(k):
    return 0.5 * (k + 1) ** 0.5


B3_SCHEDULE = gradtx.linear_schedule(0.9, 0.99, 60)
ALPHA_SCHEDULE = gradtx.linear_schedule(0.0, 5.0, 50)
LR_SCHEDULE = gradtx.cosine_decay_schedule(0.02, 120, alpha=0.1)
MASK = {"w": True, "b": False, "s": True}


EQUATION_CASES = {
    "scale_by_belief": (gradtx.scale_by_belief(), ref_belief()),
    "scale_by_belief/paper_eps_nesterov": (
        gradtx.scale_by_belief(b1=0.8, b2=0.99, eps=1e-8, eps_root=0.0, nesterov=True),
        ref_belief(b1=0.8, b2=0.99, eps=1e-8, eps_root=0.0, nesterov=True),
    ),
    "scale_by_yogi": (gradtx.scale_by_yogi(), ref_yogi()),
    "scale_by_yogi/eps_root_initial": (
        gradtx.scale_by_yogi(
            b2=0.99, eps=1e-4, eps_root=1e-6, initial_accumulator_value=0.1
        ),
        ref_yogi(b2=0.99, eps=1e-4, eps_root=1e-6, initial=0.1),
    ),
    "scale_by_adopt": (gradtx.scale_by_adopt(), ref_adopt()),
    "scale_by_adopt/nesterov_unclipped": (
        gradtx.scale_by_adopt(b2=0.999, nesterov=True, use_clipping=False),
        ref_adopt(b2=0.999, nesterov=True, clipping=False),
    ),
    "scale_by_adopt/clip_value_fn": (
        gradtx.scale_by_adopt(b1=0.8, clip_value_fn=slow_clip),
        ref_adopt(b1=0.8, clip=slow_clip),
    ),
    "scale_by_ademamix": (gradtx.scale_by_ademamix(), ref_ademamix()),
    "scale_by_ademamix/schedules": (
        gradtx.scale_by_ademamix(b3=B3_SCHEDULE, alpha=ALPHA_SCHEDULE, eps_root=1e-8),
        ref_ademamix(b3=B3_SCHEDULE, alpha=ALPHA_SCHEDULE, eps_root=1e-8),
    ),
    "adabelief": (
        gradtx.adabelief(0.01),
        R.chain(ref_belief(), R.scale_by_learning_rate(0.01)),
    ),
    "yogi": (gradtx.yogi(0.01), R.chain(ref_yogi(), R.scale_by_learning_rate(0.01))),
    "adopt": (
        gradtx.adopt(LR_SCHEDULE),
        R.chain(ref_adopt(), R.scale_by_learning_rate(LR_SCHEDULE)),
    ),
    "ademamix": (
        gradtx.ademamix(0.01, b3=0.999, weight_decay=0.1, mask=MASK),
        R.chain(
            ref_ademamix(b3=0.999, alpha=5.0),
            R.add_decayed_weights(0.1, MASK),
            R.scale_by_learning_rate(0.01),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    tx, ref = EQUATION_CASES[case]
    got, want = R.run_side_by_side(tx, ref, steps=R.STEPS)
    error = R.max_relative_error(got, want)
    record("float64", case, error)
    assert error < RTOL


def test_adopt_first_step_only_sets_nu():
    tx = gradtx.scale_by_adopt(nesterov=True)
    g = jnp.array([0.5, -2.0, 3.0])
    u, state = tx.update(g, tx.init(jnp.zeros(3)))
    np.testing.assert_array_equal(u, 0.0)
    np.testing.assert_array_equal(state.mu, 0.0)
    np.testing.assert_array_equal(state.nu, g**2)
    assert int(state.count) == 1


# ----------------------------------------------------------------------------
# parity with optax (torch.optim has none of these optimizers)


OPTAX_CASES = {
    "adabelief": (gradtx.adabelief(0.01), optax.adabelief(0.01)),
    "adabelief/nesterov_paper_eps": (
        gradtx.adabelief(0.01, 0.8, 0.99, 1e-8, 0.0, nesterov=True),
        optax.adabelief(0.01, 0.8, 0.99, 1e-8, 0.0, nesterov=True),
    ),
    "yogi": (gradtx.yogi(0.01), optax.yogi(0.01)),
    "yogi/positional": (
        gradtx.yogi(0.02, 0.8, 0.99, 1e-4),
        optax.yogi(0.02, 0.8, 0.99, 1e-4),
    ),
    "scale_by_yogi/eps_root_initial": (
        gradtx.chain(
            gradtx.scale_by_yogi(0.9, 0.99, 1e-3, 1e-6, 0.1),
            gradtx.scale_by_learning_rate(0.01),
        ),
        optax.chain(
            optax.scale_by_yogi(0.9, 0.99, 1e-3, 1e-6, 0.1), optax.scale(-0.01)
        ),
    ),
    "adopt": (gradtx.adopt(0.01), optax.contrib.adopt(0.01)),
    "adopt/nesterov_unclipped": (
        gradtx.adopt(0.01, 0.9, 0.999, nesterov=True, use_clipping=False),
        optax.contrib.adopt(0.01, 0.9, 0.999, nesterov=True, use_clipping=False),
    ),
    "adopt/clip_value_fn": (
        gradtx.adopt(0.01, clip_value_fn=slow_clip),
        optax.contrib.adopt(0.01, clip_value_fn=slow_clip),
    ),
    "ademamix": (gradtx.ademamix(0.01), optax.contrib.ademamix(0.01)),
    "ademamix/positional_decay_mask": (
        gradtx.ademamix(0.01, 0.9, 0.99, 0.999, 3.0, 1e-8, 1e-8, None, 0.1, MASK),
        optax.contrib.ademamix(
            0.01, 0.9, 0.99, 0.999, 3.0, 1e-8, 1e-8, None, 0.1, MASK
        ),
    ),
    "ademamix/schedules": (
        gradtx.ademamix(LR_SCHEDULE, b3=B3_SCHEDULE, alpha=ALPHA_SCHEDULE),
        optax.contrib.ademamix(LR_SCHEDULE, b3=B3_SCHEDULE, alpha=ALPHA_SCHEDULE),
    ),
    "scale_by_ademamix": (
        gradtx.chain(gradtx.scale_by_ademamix(), gradtx.scale_by_learning_rate(0.01)),
        optax.chain(optax.contrib.scale_by_ademamix(), optax.scale(-0.01)),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_step_for_step_with_optax(case):
    ours, theirs = OPTAX_CASES[case]
    gap = max_relative_gap(gradtx_trajectory(ours), optax_trajectory(theirs))
    record("optax", case, gap)
    assert gap < RTOL_OPTAX


def _numbers(parameters):
    """(name, default) of each parameter; callables' defaults left out."""
    return [(p.name, None if callable(p.default) else p.default) for p in parameters]


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gradtx.scale_by_belief, optax.scale_by_belief),
        (gradtx.adabelief, optax.adabelief),
        (gradtx.scale_by_yogi, optax.scale_by_yogi),
        (gradtx.yogi, optax.yogi),
        (gradtx.scale_by_adopt, optax.contrib.scale_by_adopt),
        (gradtx.adopt, optax.contrib.adopt),
        (gradtx.scale_by_ademamix, optax.contrib.scale_by_ademamix),
        (gradtx.ademamix, optax.contrib.ademamix),
    ],
    ids=lambda f: getattr(f, "__name__", ""),
)
def test_signature_follows_optax(ours, theirs):
    # Same positional order and defaults; optax's keyword-only arguments are
    # keyword-only here too; what gradtx adds is keyword-only.
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    mine = inspect.signature(ours).parameters.values()
    optax_params = inspect.signature(theirs).parameters.values()
    positional = [p for p in mine if p.kind == kinds[0]]
    assert _numbers(positional) == _numbers(
        [p for p in optax_params if p.kind == kinds[0]]
    )
    keyword = {n: d for n, d in _numbers(p for p in mine if p.kind == kinds[1])}
    for name, default in _numbers(p for p in optax_params if p.kind == kinds[1]):
        assert keyword[name] == default, name


# ----------------------------------------------------------------------------
# construction


REFUSED = [
    (gradtx.scale_by_belief, {"b1": 1.0}, "b1"),
    (gradtx.scale_by_belief, {"b2": -0.1}, "b2"),
    (gradtx.scale_by_belief, {"eps": -1e-8}, "eps"),
    (gradtx.scale_by_belief, {"eps_root": -1.0}, "eps_root"),
    (gradtx.scale_by_belief, {"mu_dtype": jnp.int32}, "mu_dtype"),
    (gradtx.scale_by_yogi, {"b1": 1.5}, "b1"),
    (gradtx.scale_by_yogi, {"b2": 1.0}, "b2"),
    (gradtx.scale_by_yogi, {"eps": np.nan}, "eps"),
    (gradtx.scale_by_yogi, {"eps_root": -1e-6}, "eps_root"),
    (
        gradtx.scale_by_yogi,
        {"initial_accumulator_value": -1e-6},
        "initial_accumulator_value",
    ),
    (gradtx.scale_by_yogi, {"nu_dtype": jnp.int8}, "nu_dtype"),
    (gradtx.scale_by_adopt, {"b1": -0.5}, "b1"),
    (gradtx.scale_by_adopt, {"b2": 1.0}, "b2"),
    (gradtx.scale_by_adopt, {"eps": -1e-6}, "eps"),
    (gradtx.scale_by_adopt, {"mu_dtype": "int32"}, "mu_dtype"),
    (gradtx.scale_by_ademamix, {"b1": 1.0}, "b1"),
    (gradtx.scale_by_ademamix, {"b2": 2.0}, "b2"),
    (gradtx.scale_by_ademamix, {"b3": 1.0}, "b3"),
    (gradtx.scale_by_ademamix, {"alpha": -1.0}, "alpha"),
    (gradtx.scale_by_ademamix, {"eps": -1.0}, "eps"),
    (gradtx.scale_by_ademamix, {"eps_root": np.inf}, "eps_root"),
    (gradtx.adabelief, {"learning_rate": -0.1}, "learning_rate"),
    (gradtx.adabelief, {"learning_rate": 0.1, "b1": 1.0}, "b1"),
    (
        gradtx.yogi,
        {"learning_rate": 0.1, "initial_accumulator_value": -1.0},
        "initial_accumulator_value",
    ),
    (gradtx.adopt, {"learning_rate": 0.1, "b2": jnp.float32(1.0)}, "b2"),
    (gradtx.ademamix, {"learning_rate": 0.1, "weight_decay": -0.1}, "weight_decay"),
    (gradtx.ademamix, {"learning_rate": 0.1, "b3": 1.2}, "b3"),
    (gradtx.ademamix, {"learning_rate": -1.0}, "learning_rate"),
]


@pytest.mark.parametrize(
    "factory, kwargs, name", REFUSED, ids=[f"{f.__name__}-{n}" for f, _, n in REFUSED]
)
def test_construction_refuses_out_of_range(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (gradtx.scale_by_belief, {"nesterov": 1}),
        (gradtx.scale_by_adopt, {"use_clipping": "yes"}),
        (gradtx.scale_by_adopt, {"clip_value_fn": 1.0}),
    ],
)
def test_flags_and_functions_are_checked(factory, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        factory(**kwargs)


def test_positional_mu_dtype_where_optax_has_it():
    # scale_by_adopt and scale_by_ademamix take mu_dtype positionally, as in
    # optax; scale_by_belief and scale_by_yogi take it by keyword only.
    params = jnp.zeros(3)
    assert gradtx.scale_by_adopt(0.9, 0.99, 1e-6, jnp.bfloat16).init(
        params
    ).mu.dtype == (jnp.bfloat16)
    state = gradtx.scale_by_ademamix(
        0.9, 0.99, 0.999, 5.0, 1e-8, 0.0, jnp.bfloat16
    ).init(params)
    assert state.m1.dtype == state.m2.dtype == jnp.bfloat16
    assert state.nu.dtype == jnp.float32
    with pytest.raises(TypeError):
        gradtx.scale_by_belief(0.9, 0.999, 1e-16, 1e-16, jnp.bfloat16)


@pytest.mark.parametrize(
    "factory, first",
    [
        (gradtx.scale_by_belief, "mu"),
        (gradtx.scale_by_yogi, "mu"),
        (gradtx.scale_by_adopt, "mu"),
        (gradtx.scale_by_ademamix, "m1"),
    ],
)
def test_moment_dtypes(factory, first):
    params = {"w": jnp.ones(3, jnp.float32)}
    tx = factory(mu_dtype=jnp.bfloat16)
    state = tx.init(params)
    assert getattr(state, first)["w"].dtype == jnp.bfloat16
    assert state.nu["w"].dtype == jnp.float32
    for _ in range(2):
        u, state = tx.update({"w": jnp.array([0.3, -0.2, 0.1])}, state)
    assert (
        u["w"].dtype == jnp.float32 and getattr(state, first)["w"].dtype == jnp.bfloat16
    )
    # float16 params: moments in float16 by default, nu_dtype widens the second
    half = {"w": jnp.ones(3, jnp.float16)}
    tx = factory(nu_dtype=jnp.float32)
    state = tx.init(half)
    assert state.nu["w"].dtype == jnp.float32
    assert getattr(state, first)["w"].dtype == jnp.float16
    for g in (1e-3, 300.0, 1e-3):
        u, state = tx.update({"w": jnp.full(3, g, jnp.float16)}, state)
        assert u["w"].dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(u["w"])))


# ----------------------------------------------------------------------------
# inject_hyperparams and vmap over hyperparameters


def _steps(tx, params, grads):
    """Params after each step, and the last updates and state."""

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), updates, state

    step = jax.jit(step)
    state = tx.init(params)
    out = []
    for g in grads:
        params, updates, state = step(params, state, g)
        out.append(params)
    return out, updates, state


INJECT_CASES = {
    "adabelief": (
        gradtx.adabelief,
        {"learning_rate": 0.01, "b1": 0.85, "nesterov": True},
    ),
    "yogi": (gradtx.yogi, {"learning_rate": LR_SCHEDULE, "b2": 0.99, "eps_root": 1e-8}),
    "adopt": (
        gradtx.adopt,
        {"learning_rate": 0.01, "b2": 0.999, "clip_value_fn": slow_clip},
    ),
    "ademamix": (
        gradtx.ademamix,
        {
            "learning_rate": 0.01,
            "b3": B3_SCHEDULE,
            "alpha": ALPHA_SCHEDULE,
            "weight_decay": 0.05,
            "mask": MASK,
        },
    ),
}


@pytest.mark.parametrize("case", sorted(INJECT_CASES))
def test_inject_hyperparams(case):
    factory, kwargs = INJECT_CASES[case]
    injected = gradtx.inject_hyperparams(factory)(**kwargs)
    params = R.to_f32(R.make_params(0))
    grads = [R.to_f32(g) for g in R.make_grads(6, 1)]
    # float32 params: the same numbers as the plain optimizer
    want, _, _ = _steps(factory(**kwargs), params, grads)
    got, _, state = _steps(injected, params, grads)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # bfloat16 params: updates finite and bfloat16, hyperparameters float32
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    half_grads = [jax.tree.map(lambda x: x.astype(jnp.bfloat16), g) for g in grads[:3]]
    out, updates, half_state = _steps(injected, half, half_grads)
    for u in jax.tree.leaves(updates):
        assert u.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(u)))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(out[-1]))
    for value in half_state.hyperparams.values():
        assert value.dtype == jnp.float32
    numeric = {
        k
        for k, v in kwargs.items()
        if not isinstance(v, bool | dict) and k != "clip_value_fn"
    }
    assert set(state.hyperparams) == numeric


def test_adopt_clip_value_fn_is_static_under_inject():
    parameter = inspect.signature(gradtx.adopt).parameters["clip_value_fn"]
    assert not any(
        word in str(parameter.annotation)
        for word in ("float", "ArrayLike", "Schedule", "Array", "Scalar")
    )
    calls = []

    def bound(k):
        calls.append(k)
        return 0.5 + 0.0 * k

    opt = gradtx.inject_hyperparams(gradtx.adopt)(
        learning_rate=1.0, clip_value_fn=bound
    )
    state = opt.init(jnp.zeros(2))
    assert "clip_value_fn" not in state.hyperparams
    _, state = opt.update(jnp.array([1.0, -1.0]), state)
    u, state = opt.update(jnp.array([100.0, -100.0]), state)
    # (1 - b1) * clip(100 / 1, -0.5, 0.5) times -lr: the function was called
    # as a clipping bound on the step count, not stored as a hyperparameter
    np.testing.assert_allclose(u, [-0.05, 0.05], rtol=1e-6)
    assert calls and all(jnp.asarray(k).dtype == jnp.int32 for k in calls)


def test_ademamix_schedules_under_inject_are_logged():
    opt = gradtx.inject_hyperparams(gradtx.ademamix)(
        learning_rate=0.01, b3=B3_SCHEDULE, alpha=ALPHA_SCHEDULE
    )
    params = jnp.zeros(2)
    state = opt.init(params)
    for _ in range(4):
        _, state = opt.update(jnp.ones(2), state, params)
    np.testing.assert_allclose(state.hyperparams["b3"], B3_SCHEDULE(3), rtol=1e-7)
    np.testing.assert_allclose(state.hyperparams["alpha"], ALPHA_SCHEDULE(3), rtol=1e-7)


VMAP_CASES = {
    "adabelief": (gradtx.adabelief, {"learning_rate": 0.01}, "b1", [0.8, 0.9, 0.95]),
    "yogi": (
        gradtx.yogi,
        {"learning_rate": 0.01},
        "learning_rate",
        [0.005, 0.01, 0.05],
    ),
    "adopt": (gradtx.adopt, {"learning_rate": 0.01}, "b2", [0.9, 0.99, 0.9999]),
    "ademamix": (
        gradtx.ademamix,
        {"learning_rate": 0.01, "b3": 0.999, "weight_decay": 0.01},
        "alpha",
        [0.0, 2.0, 8.0],
    ),
}


@pytest.mark.parametrize("case", sorted(VMAP_CASES))
def test_vmap_over_a_hyperparameter(case):
    factory, kwargs, name, values = VMAP_CASES[case]
    opt = gradtx.inject_hyperparams(factory)(**{**kwargs, name: values[0]})
    params = R.to_f32(R.make_params(0))
    grads = [R.to_f32(g) for g in R.make_grads(8, 1)]

    def start(value):
        return gradtx.set_hyperparams(opt.init(params), **{name: value})

    def step(p, state, g):
        updates, state = opt.update(g, state, p)
        return gradtx.apply_updates(p, updates), state

    def trajectory(value):
        p, state = params, start(value)
        for g in grads:
            p, state = step(p, state, g)
        return p

    batched = jax.jit(jax.vmap(trajectory))(jnp.asarray(values, jnp.float32))
    one_step = jax.jit(step)
    for i, value in enumerate(values):
        p, state = params, start(value)
        for g in grads:
            p, state = one_step(p, state, g)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(p), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# inside the wrappers


WRAPPED = {
    "adabelief": lambda: gradtx.adabelief(0.01),
    "yogi": lambda: gradtx.yogi(0.01),
    "adopt": lambda: gradtx.adopt(0.01),
    "ademamix": lambda: gradtx.ademamix(0.01, weight_decay=0.1),
}


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)


def _wrapped_runs(opt, params, g1, g2, g3):
    """Every wrapper's updates on the same gradients, in one compiled call."""
    out = {}
    plain = opt.init(params)
    _, plain = opt.update(g1, plain, params)
    out["plain"], _ = opt.update(g2, plain, params)

    tx = gradtx.masked(opt, {"w": True, "b": False, "s": True})
    _, state = tx.update(g1, tx.init(params), params)
    out["masked"], _ = tx.update(g2, state, params)

    tx = gradtx.multi_transform(
        {"new": opt, "sgd": gradtx.sgd(0.1)}, {"w": "new", "b": "sgd", "s": "new"}
    )
    _, state = tx.update(g1, tx.init(params), params)
    out["multi"], _ = tx.update(g2, state, params)

    tx = gradtx.apply_if_finite(opt, max_consecutive_errors=2)
    _, state = tx.update(g1, tx.init(params), params)
    bad = dict(g3, s=jnp.full_like(g3["s"], jnp.nan))
    out["skipped"], state = tx.update(bad, state, params)
    out["after_skip"], _ = tx.update(g2, state, params)

    tx = gradtx.accumulate_gradients(opt, every_k=2)
    out["micro"], state = tx.update(g1, tx.init(params), params)
    out["accumulated"], _ = tx.update(g2, state, params)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    out["mean_step"], _ = opt.update(mean, opt.init(params), params)
    return out


@pytest.mark.parametrize("case", sorted(WRAPPED))
def test_inside_wrappers(case):
    opt = WRAPPED[case]()
    params = R.to_f32(R.make_params(0))
    g1, g2, g3 = (R.to_f32(g) for g in R.make_grads(3, 1))
    out = jax.jit(_wrapped_runs, static_argnums=0)(opt, params, g1, g2, g3)
    plain = out["plain"]
    # masked: "b" passes through unchanged, the others as without the mask
    np.testing.assert_array_equal(out["masked"]["b"], g2["b"])
    _close((out["masked"]["w"], out["masked"]["s"]), (plain["w"], plain["s"]))
    # multi_transform: "b" gets plain SGD, the others the optimizer
    np.testing.assert_allclose(out["multi"]["b"], -0.1 * g2["b"], rtol=1e-6)
    _close((out["multi"]["w"], out["multi"]["s"]), (plain["w"], plain["s"]))
    # apply_if_finite: a NaN step is skipped, the run goes on as without it
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(out["skipped"]))
    _close(out["after_skip"], plain)
    # accumulate_gradients: two micro-steps are one step on the mean gradient
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(out["micro"]))
    _close(out["accumulated"], out["mean_step"])


# ----------------------------------------------------------------------------
# describe


def test_describe_names_links_and_hyperparameters():
    text = gradtx.describe(gradtx.adopt(1e-3, nesterov=True))
    assert (
        "scale_by_adopt(" in text
        and "scale_by_learning_rate(learning_rate=0.001)" in text
    )
    assert "b2=0.9999" in text and "nesterov=True" in text
    assert "clip_value_fn=<function fourth_root_of_count>" in text
    text = gradtx.describe(gradtx.ademamix(1e-3, b3=B3_SCHEDULE, weight_decay=0.1))
    assert "scale_by_ademamix(" in text and "alpha=5.0" in text and "b3=" in text
    assert "add_decayed_weights(weight_decay=0.1, mask=None)" in text
    assert (
        "scale_by_belief(b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16"
        in gradtx.describe(gradtx.adabelief(0.1))
    )
    assert "initial_accumulator_value=1e-06" in gradtx.describe(gradtx.yogi(0.1))
