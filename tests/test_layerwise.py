"""Layer-wise methods: the trust ratio (LARS, LAMB) and NovoGrad.

Each link and optimizer is checked against a float64 NumPy reference written
here from its docstring's equations, step for step against optax (torch.optim
has none of LAMB, LARS or NovoGrad, so optax is the only peer), and under
inject_hyperparams, jax.vmap and the wrappers.
"""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
from peers import gradtx_trajectory, max_relative_gap, optax_trajectory

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
RTOL_OPTAX = 2e-5  # float32 against float32, another order of operations

MASK = {"w": True, "b": False, "s": True}


# ----------------------------------------------------------------------------
# float64 references, one line per equation of the docstrings


def norm(x):
    return math.sqrt(float(np.sum(np.square(x))))


def ref_trust_ratio(min_norm=0.0, trust_coefficient=1.0, eps=0.0):
    def step(g, s, p, t):
        p_norm = max(norm(p), min_norm)
        g_norm = max(norm(g), min_norm)
        if p_norm == 0 or g_norm == 0:
            ratio = 1.0
        else:
            ratio = trust_coefficient * p_norm / (g_norm + eps)
        return ratio * g, None

    return R.per_leaf(lambda p: None, step)


def ref_novograd(b1=0.9, b2=0.25, eps=1e-8, eps_root=0.0, weight_decay=0.0):
    def step(g, s, p, t):
        m, n = s
        wd = weight_decay(t - 1) if callable(weight_decay) else weight_decay
        sq = float(np.sum(np.square(g)))
        n = sq if t == 1 else b2 * n + (1 - b2) * sq
        m = b1 * m + g / (math.sqrt(n + eps_root) + eps) + wd * p
        return m, (m, n)

    return R.per_leaf(lambda p: (np.zeros_like(p), 0.0), step)


def ref_masked(ref, mask):
    def update(grads, state, params):
        out, state = ref.update(grads, state, params)
        return {k: out[k] if mask[k] else grads[k] for k in grads}, state

    return R.Ref(ref.init, update)


def ref_lamb(lr, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, weight_decay=0.0, mask=None):
    return R.chain(
        R.adam(b1, b2, eps, eps_root),
        R.add_decayed_weights(weight_decay, mask),
        ref_trust_ratio(),
        R.scale_by_learning_rate(lr),
    )


def ref_lars(
    lr,
    weight_decay=0.0,
    weight_decay_mask=None,
    trust_coefficient=0.001,
    eps=0.0,
    trust_ratio_mask=None,
    momentum=0.9,
    nesterov=False,
):
    trust = ref_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    return R.chain(
        R.add_decayed_weights(weight_decay, weight_decay_mask),
        trust if trust_ratio_mask is None else ref_masked(trust, trust_ratio_mask),
        R.scale_by_learning_rate(lr),
        R.momentum(momentum, nesterov),
    )


def ref_novograd_opt(lr, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0):
    return R.chain(
        ref_novograd(b1, b2, eps, eps_root, weight_decay), R.scale_by_learning_rate(lr)
    )


def lr_schedule(t):
    return 0.02 * 0.98**t


def wd_schedule(t):
    return 1e-2 / (1 + t)


EQUATION_CASES = {
    "scale_by_trust_ratio/min_norm_eps": (
        gradtx.chain(
            gradtx.scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.1, eps=0.3),
            gradtx.scale(-0.1),
        ),
        R.chain(ref_trust_ratio(0.5, 0.1, 0.3), R.scale(-0.1)),
    ),
    "scale_by_novograd/all": (
        gradtx.chain(
            gradtx.scale_by_novograd(0.8, 0.6, 1e-4, 1e-6, wd_schedule),
            gradtx.scale(-0.01),
        ),
        R.chain(ref_novograd(0.8, 0.6, 1e-4, 1e-6, wd_schedule), R.scale(-0.01)),
    ),
    "lamb": (gradtx.lamb(0.01), ref_lamb(0.01)),
    "lamb/all": (
        gradtx.lamb(lr_schedule, 0.8, 0.99, 1e-5, 1e-8, 0.05, MASK),
        ref_lamb(lr_schedule, 0.8, 0.99, 1e-5, 1e-8, 0.05, MASK),
    ),
    "lars": (gradtx.lars(1.0, trust_coefficient=0.01), ref_lars(1.0, 0.0, None, 0.01)),
    "lars/all": (
        gradtx.lars(
            lr_schedule,
            0.05,
            MASK,
            0.5,
            0.1,
            {"w": True, "b": True, "s": False},
            0.8,
            True,
        ),
        ref_lars(
            lr_schedule,
            0.05,
            MASK,
            0.5,
            0.1,
            {"w": True, "b": True, "s": False},
            0.8,
            True,
        ),
    ),
    "novograd": (gradtx.novograd(0.01), ref_novograd_opt(0.01)),
    "novograd/all": (
        gradtx.novograd(lr_schedule, 0.7, 0.5, 1e-5, 1e-7, wd_schedule),
        ref_novograd_opt(lr_schedule, 0.7, 0.5, 1e-5, 1e-7, wd_schedule),
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    tx, ref = EQUATION_CASES[case]
    error = R.max_relative_error(*R.run_side_by_side(tx, ref))
    print(f"{case}: max relative error against float64 {error:.2e}")
    assert error < RTOL


# ----------------------------------------------------------------------------
# step for step with optax (torch.optim has no LAMB, LARS or NovoGrad)


OPTAX_CASES = {
    "scale_by_trust_ratio": (
        gradtx.chain(gradtx.scale_by_trust_ratio(0.1, 0.5, 1e-3), gradtx.sgd(0.01)),
        optax.chain(optax.scale_by_trust_ratio(0.1, 0.5, 1e-3), optax.sgd(0.01)),
    ),
    "scale_by_novograd": (
        gradtx.chain(
            gradtx.scale_by_novograd(0.8, 0.5, 1e-6, 1e-8, 1e-3), gradtx.sgd(0.01)
        ),
        optax.chain(
            optax.scale_by_novograd(0.8, 0.5, 1e-6, 1e-8, 1e-3), optax.sgd(0.01)
        ),
    ),
    "lamb": (gradtx.lamb(0.01), optax.lamb(0.01)),
    # every argument positional: the orders are the same
    "lamb/positional": (
        gradtx.lamb(0.01, 0.8, 0.99, 1e-5, 1e-8, 0.1, MASK),
        optax.lamb(0.01, 0.8, 0.99, 1e-5, 1e-8, 0.1, MASK),
    ),
    "lars": (gradtx.lars(0.5), optax.lars(0.5)),
    "lars/positional": (
        gradtx.lars(
            0.5, 1e-2, MASK, 0.01, 1e-6, {"w": True, "b": True, "s": False}, 0.8, True
        ),
        optax.lars(
            0.5, 1e-2, MASK, 0.01, 1e-6, {"w": True, "b": True, "s": False}, 0.8, True
        ),
    ),
    "novograd": (gradtx.novograd(0.01), optax.novograd(0.01)),
    "novograd/positional": (
        gradtx.novograd(0.01, 0.8, 0.5, 1e-5, 1e-8, 1e-2),
        optax.novograd(0.01, 0.8, 0.5, 1e-5, 1e-8, 1e-2),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_step_for_step_with_optax(case):
    ours, theirs = OPTAX_CASES[case]
    trajectory = gradtx_trajectory(ours)
    gap = max_relative_gap(trajectory, optax_trajectory(theirs))
    print(f"{case}: max relative gap to optax {gap:.2e}")
    assert gap < RTOL_OPTAX
    start = R.make_params(0)
    assert all(np.max(np.abs(trajectory[-1][k] - start[k])) > 1e-2 for k in start)


def test_defaults_are_optax_defaults():
    for name in [
        "lamb",
        "lars",
        "novograd",
        "scale_by_trust_ratio",
        "scale_by_novograd",
    ]:
        ours = inspect.signature(getattr(gradtx, name)).parameters
        theirs = inspect.signature(getattr(optax, name)).parameters
        for arg, parameter in theirs.items():
            assert list(ours).index(arg) == list(theirs).index(arg), (name, arg)
            if parameter.default is not inspect.Parameter.empty:
                assert ours[arg].default == parameter.default, (name, arg)
        extra = [p for p in ours if p not in theirs]
        kinds = {ours[p].kind for p in extra}
        assert kinds <= {inspect.Parameter.KEYWORD_ONLY}, (name, extra)


# ----------------------------------------------------------------------------
# what the equations promise


def test_trust_ratio_gives_each_leaf_the_norm_of_its_parameter():
    params = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "b": jnp.array([1.0, -1.0])}
    grads = {"w": jnp.array([[0.1, 0.2], [0.3, 0.4]]), "b": jnp.array([10.0, 0.0])}
    tx = gradtx.scale_by_trust_ratio()
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(jnp.linalg.norm(u["w"]), 5.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(u["b"]), math.sqrt(2), rtol=1e-6)


def test_trust_ratio_passes_zero_norm_leaves_through_with_finite_derivatives():
    tx = gradtx.scale_by_trust_ratio()
    params = {"zero_param": jnp.zeros(3), "zero_grad": jnp.ones(3)}
    grads = {"zero_param": jnp.array([1.0, 2.0, 3.0]), "zero_grad": jnp.zeros(3)}
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(u["zero_param"], grads["zero_param"])
    np.testing.assert_array_equal(u["zero_grad"], 0.0)

    def total(p, g):
        return sum(jnp.sum(x) for x in jax.tree.leaves(tx.update(g, None, p)[0]))

    d_params, d_grads = jax.jit(jax.grad(total, argnums=(0, 1)))(params, grads)
    for x in jax.tree.leaves((d_params, d_grads)):
        assert bool(jnp.all(jnp.isfinite(x)))


def test_trust_ratio_min_norm_bounds_both_norms():
    tx = gradtx.scale_by_trust_ratio(min_norm=1.0)
    params, grads = jnp.array([0.0, 0.1]), jnp.array([0.0, 0.01])
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(u, grads, rtol=1e-6)  # ratio 1 / 1


def test_novograd_first_second_moment_is_the_squared_norm():
    tx = gradtx.scale_by_novograd(b1=0.9, b2=0.25, eps=0.0)
    params = {"w": jnp.zeros(2), "b": jnp.zeros(1)}
    state = tx.init(params)
    u, state = tx.update({"w": jnp.array([3.0, 4.0]), "b": jnp.array([-2.0])}, state)
    assert float(state.nu["w"]) == 25.0 and float(state.nu["b"]) == 4.0
    np.testing.assert_allclose(u["w"], [0.6, 0.8], rtol=1e-6)
    u, state = tx.update({"w": jnp.array([0.0, 2.0]), "b": jnp.array([0.0])}, state)
    np.testing.assert_allclose(state.nu["w"], 0.25 * 25 + 0.75 * 4, rtol=1e-6)
    np.testing.assert_allclose(
        u["w"], [0.9 * 0.6, 0.9 * 0.8 + 2 / math.sqrt(9.25)], rtol=1e-6
    )


def test_novograd_needs_params_only_for_its_weight_decay():
    grads = {"w": jnp.ones(2)}
    tx = gradtx.scale_by_novograd()
    tx.update(grads, tx.init(grads))  # no decay: no params needed
    decayed = gradtx.scale_by_novograd(weight_decay=1e-2)
    with pytest.raises(ValueError, match="params"):
        decayed.update(grads, decayed.init(grads))


def test_novograd_second_moment_is_float32_and_float16_does_not_overflow():
    params = {"w": jnp.zeros(4, jnp.float16), "b": jnp.zeros(2, jnp.bfloat16)}
    tx = gradtx.novograd(0.1)
    state = tx.init(params)
    assert state[0].nu["w"].dtype == jnp.float32 == state[0].nu["b"].dtype
    assert state[0].mu["w"].dtype == jnp.float16
    grads = {"w": jnp.full(4, 500.0, jnp.float16), "b": jnp.ones(2, jnp.bfloat16)}
    updates, state = jax.jit(tx.update)(grads, state, params)  # ||g||**2 = 1e6
    assert updates["w"].dtype == jnp.float16
    np.testing.assert_allclose(updates["w"].astype(jnp.float32), -0.05, rtol=1e-3)
    assert float(state[0].nu["w"]) == 1e6


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda: gradtx.lamb(0.1, mu_dtype=jnp.bfloat16), lambda s: s[0].mu),
        (lambda: gradtx.novograd(0.1, mu_dtype=jnp.bfloat16), lambda s: s[0].mu),
        (lambda: gradtx.lars(0.1, mu_dtype=jnp.bfloat16), lambda s: s[3].velocity),
    ],
)
def test_mu_dtype_sets_the_first_moment(make, where):
    tx = make()
    params = R.to_f32(R.make_params(0))
    state = tx.init(params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(where(state)))
    updates, state = jax.jit(tx.update)(params, state, params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(where(state)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(updates))


def test_lars_trust_ratio_mask_leaves_plain_momentum_sgd():
    params = R.to_f32(R.make_params(0))
    grads = [R.to_f32(g) for g in R.make_grads(3, 1)]
    tx = gradtx.lars(0.1, trust_ratio_mask={"w": True, "b": True, "s": False})
    sgd = gradtx.sgd(0.1, momentum=0.9)
    state, sgd_state = tx.init(params), sgd.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
        v, sgd_state = sgd.update(g, sgd_state, params)
        np.testing.assert_allclose(u["s"], v["s"], rtol=1e-6)
        assert not np.allclose(u["w"], v["w"])


# ----------------------------------------------------------------------------
# construction refuses out-of-range hyperparameters


@pytest.mark.parametrize(
    "factory, kwargs, name",
    [
        (gradtx.scale_by_trust_ratio, {"min_norm": -1.0}, "min_norm"),
        (gradtx.scale_by_trust_ratio, {"trust_coefficient": 0.0}, "trust_coefficient"),
        (gradtx.scale_by_trust_ratio, {"eps": -1e-3}, "eps"),
        (gradtx.scale_by_novograd, {"b1": 1.0}, "b1"),
        (gradtx.scale_by_novograd, {"b2": -0.1}, "b2"),
        (gradtx.scale_by_novograd, {"eps": -1.0}, "eps"),
        (gradtx.scale_by_novograd, {"eps_root": math.nan}, "eps_root"),
        (gradtx.scale_by_novograd, {"weight_decay": -1e-4}, "weight_decay"),
        (gradtx.scale_by_novograd, {"mu_dtype": jnp.int32}, "mu_dtype"),
        (gradtx.lamb, {"learning_rate": -0.1}, "learning_rate"),
        (gradtx.lamb, {"learning_rate": 0.1, "b1": 1.5}, "b1"),
        (gradtx.lamb, {"learning_rate": 0.1, "b2": 1.0}, "b2"),
        (gradtx.lamb, {"learning_rate": 0.1, "eps": -1.0}, "eps"),
        (gradtx.lamb, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
        (gradtx.lars, {"learning_rate": -0.1}, "learning_rate"),
        (gradtx.lars, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
        (
            gradtx.lars,
            {"learning_rate": 0.1, "trust_coefficient": 0.0},
            "trust_coefficient",
        ),
        (gradtx.lars, {"learning_rate": 0.1, "eps": -1.0}, "eps"),
        (gradtx.lars, {"learning_rate": 0.1, "momentum": 1.0}, "decay"),
        (gradtx.novograd, {"learning_rate": -0.1}, "learning_rate"),
        (gradtx.novograd, {"learning_rate": 0.1, "b2": 1.0}, "b2"),
        (gradtx.novograd, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_out_of_range_hyperparameters_raise_at_construction(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


def test_a_flag_given_a_number_raises():
    with pytest.raises(TypeError, match="nesterov"):
        gradtx.lars(0.1, nesterov=1)


def test_trust_ratio_needs_params():
    tx = gradtx.scale_by_trust_ratio()
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(2), tx.init(None))


# ----------------------------------------------------------------------------
# inject_hyperparams, vmap, wrappers: each optimizer and each link (chained
# with a learning rate)

SUBJECTS = {
    # b2 is given so that it is injected (see test_inject_hyperparams_in_bfloat16)
    "lamb": (gradtx.lamb, {"learning_rate": 0.02, "b2": 0.999, "weight_decay": 1e-2}),
    "lars": (
        gradtx.lars,
        {"learning_rate": 0.5, "weight_decay": 1e-3, "trust_coefficient": 0.02},
    ),
    "novograd": (gradtx.novograd, {"learning_rate": 0.02, "weight_decay": 1e-3}),
    "scale_by_trust_ratio": (
        gradtx.scale_by_trust_ratio,
        {"min_norm": 0.1, "trust_coefficient": 0.5},
    ),
    "scale_by_novograd": (gradtx.scale_by_novograd, {"b1": 0.8, "weight_decay": 1e-3}),
}
LINK_LR = 0.05

# Under the wrappers, the two links are checked together, in one chain (the
# wrappers see only its init and update), to save compiles.
SUBJECTS["links"] = (
    lambda **kw: gradtx.chain(
        gradtx.scale_by_novograd(b1=0.8), gradtx.scale_by_trust_ratio(**kw)
    ),
    {"trust_coefficient": 0.5},
)
WRAPPED = ["lamb", "lars", "novograd", "links"]

# one hyperparameter per subject, and a batch of values for it
VMAPPED = {
    "lamb": ("learning_rate", [0.01, 0.02, 0.05]),
    "lars": ("trust_coefficient", [0.01, 0.02, 0.05]),
    "novograd": ("b2", [0.25, 0.5, 0.9]),
    "scale_by_trust_ratio": ("trust_coefficient", [0.25, 0.5, 1.0]),
    "scale_by_novograd": ("b1", [0.5, 0.8, 0.95]),
}


def build(name, wrap=None, **overrides):
    factory, kwargs = SUBJECTS[name]
    tx = (wrap(factory) if wrap else factory)(**{**kwargs, **overrides})
    if name in ("lamb", "lars", "novograd"):
        return tx
    return gradtx.chain(tx, gradtx.scale_by_learning_rate(LINK_LR))


def injected_state(state):
    """The InjectHyperparamsState of an optimizer, or of a link's chain."""
    return state if isinstance(state, gradtx.InjectHyperparamsState) else state[0]


def bf16_values(tree):
    """Float32 arrays holding bfloat16-representable values."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), tree
    )


def stepper(tx):
    """`tx` with one jitted step, reused by every trajectory of it."""

    @jax.jit
    def step(params, state, g):
        g = jax.tree.map(lambda g, p: g.astype(p.dtype), g, params)
        updates, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, updates), state, updates

    return tx, step


@functools.cache
def plain(name):
    """The subject as built from constants, compiled once for all tests."""
    return stepper(build(name))


def trajectory(tx_and_step, params, grads):
    """(updates, params, state) after each step."""
    tx, step = tx_and_step
    state, out = tx.init(params), []
    for g in grads:
        params, state, updates = step(params, state, g)
        out.append((updates, params, state))
    return out


PARAMS = bf16_values(R.to_f32(R.make_params(0)))
GRADS = [bf16_values(R.to_f32(g)) for g in R.make_grads(3, 1)]


@pytest.mark.parametrize("name", sorted(VMAPPED))
def test_inject_hyperparams_in_bfloat16(name):
    reference = trajectory(plain(name), PARAMS, GRADS)
    injected = stepper(build(name, wrap=gradtx.inject_hyperparams))
    # float32 params: the same numbers as the optimizer built from constants
    for (u, p, _), (ui, pi, _) in zip(
        reference, trajectory(injected, PARAMS, GRADS), strict=True
    ):
        for a, b in zip(
            jax.tree.leaves((u, p)), jax.tree.leaves((ui, pi)), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # bfloat16 params: finite, bfloat16, float32 hyperparameters, and the first
    # update is the float32 one up to bfloat16 rounding: the arithmetic is
    # float32, and each link rounds its output to bfloat16 once (up to four).
    # optax issue 1414: optax.inject_hyperparams stores LAMB's hyperparameters
    # in the params' dtype, where b2 = 0.999 rounds to 1.0, the bias
    # correction 1 - b2**t is 0 and the updates are NaN.
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    steps = trajectory(injected, low, GRADS)
    for updates, params, state in steps:
        for x in jax.tree.leaves((updates, params)):
            assert x.dtype == jnp.bfloat16
            assert bool(jnp.all(jnp.isfinite(x)))
        hyperparams = injected_state(state).hyperparams
        assert hyperparams and all(v.dtype == jnp.float32 for v in hyperparams.values())
        if name == "lamb":
            assert float(hyperparams["b2"]) == np.float32(0.999)
    for a, b in zip(
        jax.tree.leaves(steps[0][0]), jax.tree.leaves(reference[0][0]), strict=True
    ):
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=4 * 2**-8, atol=0)


@pytest.mark.parametrize("name", sorted(VMAPPED))
def test_vmap_over_a_hyperparameter_equals_separate_runs(name):
    arg, values = VMAPPED[name]
    injected = build(name, wrap=gradtx.inject_hyperparams, **{arg: values[0]})

    def run(value):
        state = injected.init(PARAMS)
        inner = injected_state(state)
        inner = inner._replace(hyperparams=dict(inner.hyperparams, **{arg: value}))
        alone = isinstance(state, gradtx.InjectHyperparamsState)
        state = inner if alone else (inner, *state[1:])
        params = PARAMS
        for g in GRADS:
            updates, state = injected.update(g, state, params)
            params = gradtx.apply_updates(params, updates)
        return params

    values = jnp.array(values, jnp.float32)
    batched = jax.jit(jax.vmap(run))(values)
    separate = jax.jit(run)
    for i, value in enumerate(values):
        alone = separate(value)
        for got, want in zip(
            jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)
    # the injected value is the one used: the runs differ
    assert not np.allclose(batched["w"][0], batched["w"][-1])


def close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_inside_masked_and_multi_transform(name):
    # every subject acts leaf by leaf, so on the selected leaves it moves them
    # as it would the whole tree
    whole = trajectory(plain(name), PARAMS, GRADS)
    inside = trajectory(stepper(gradtx.masked(build(name), MASK)), PARAMS, GRADS)
    groups = gradtx.multi_transform(
        {"layerwise": build(name), "frozen": gradtx.set_to_zero()},
        {"w": "layerwise", "b": "frozen", "s": "layerwise"},
    )
    grouped = trajectory(stepper(groups), PARAMS, GRADS)
    for (u, _, _), (um, _, _), (ug, pg, _), g in zip(
        whole, inside, grouped, GRADS, strict=True
    ):
        close((u["w"], u["s"]), (um["w"], um["s"]))
        close((u["w"], u["s"]), (ug["w"], ug["s"]))
        np.testing.assert_array_equal(um["b"], g["b"])  # masked off: passed through
        np.testing.assert_array_equal(ug["b"], 0.0)  # frozen group
        np.testing.assert_array_equal(pg["b"], PARAMS["b"])


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_inside_apply_if_finite_and_accumulate_gradients(name):
    mean = jax.tree.map(lambda a, b: (a + b) / 2, GRADS[0], GRADS[1])
    (u_mean, _, _), (u_next, _, _) = trajectory(plain(name), PARAMS, [mean, GRADS[2]])

    nan = jax.tree.map(lambda g: g * jnp.nan, GRADS[0])
    guarded = trajectory(
        stepper(gradtx.apply_if_finite(build(name), 3)), PARAMS, [nan, mean, GRADS[2]]
    )
    for x in jax.tree.leaves(guarded[0][0]):  # the NaN step is skipped
        np.testing.assert_array_equal(x, 0.0)
    assert int(guarded[0][2].notfinite_total) == 1
    close(guarded[1][0], u_mean)  # then it steps as if the NaN never came
    close(guarded[2][0], u_next)

    accumulated = trajectory(
        stepper(gradtx.accumulate_gradients(build(name), every_k=2)),
        PARAMS,
        GRADS[:2],
    )
    for x in jax.tree.leaves(accumulated[0][0]):
        np.testing.assert_array_equal(x, 0.0)
    close(accumulated[1][0], u_mean)  # one step on the mean gradient


# ----------------------------------------------------------------------------
# describe


@pytest.mark.parametrize(
    "tx, expected",
    [
        (
            gradtx.scale_by_trust_ratio(trust_coefficient=0.5),
            ["scale_by_trust_ratio(min_norm=0.0, trust_coefficient=0.5, eps=0.0)"],
        ),
        (
            gradtx.scale_by_novograd(b2=0.5),
            ["scale_by_novograd(b1=0.9, b2=0.5, eps=1e-08, eps_root=0.0,"],
        ),
        (
            gradtx.lamb(0.01, weight_decay=0.1),
            [
                "scale_by_adam(b1=0.9, b2=0.999, eps=1e-06",
                "add_decayed_weights(weight_decay=0.1, mask=None)",
                "scale_by_trust_ratio(min_norm=0.0, trust_coefficient=1.0, eps=0.0)",
                "scale_by_learning_rate(learning_rate=0.01)",
            ],
        ),
        (
            gradtx.lars(0.1),
            [
                "add_decayed_weights(weight_decay=0.0, mask=True)",
                "masked(",
                "scale_by_trust_ratio(min_norm=0.0, trust_coefficient=0.001, eps=0.0)",
                "scale_by_learning_rate(learning_rate=0.1)",
                "scale_by_momentum(decay=0.9, nesterov=False",
            ],
        ),
        (
            gradtx.novograd(0.01),
            [
                "scale_by_novograd(b1=0.9, b2=0.25, eps=1e-06, eps_root=0.0, "
                "weight_decay=0.0, mu_dtype=None)",
                "scale_by_learning_rate(learning_rate=0.01)",
            ],
        ),
    ],
)
def test_describe_shows_links_and_hyperparameters(tx, expected):
    text = gradtx.describe(tx)
    for part in expected:
        assert part in text, (part, text)
