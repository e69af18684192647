"""SAM and ASAM: equations, optax's opaque mode, grad_fn, dtypes and wrappers."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
RTOL_OPTAX = 2e-5
STEPS_OPTAX = 100

# ----------------------------------------------------------------------------
# the problem: softmax regression on 3 classes with a learned temperature s


SHAPES = {"w": (4, 3), "b": (3,), "s": ()}
N = 16


def make_data():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, N, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=(3, N))
    y = np.eye(3, dtype=np.float32)[labels]
    return x, y  # three batches: the step's (0) and one per ascent step


X, Y = make_data()


def start_params():
    rng = np.random.default_rng(0)
    return {
        k: rng.normal(size=shape).astype(np.float32).astype(np.float64)
        for k, shape in SHAPES.items()
    }


def loss(params, batch=0):
    z = params["s"] * (jnp.asarray(X)[batch] @ params["w"]) + params["b"][None, :]
    return -jnp.mean(jnp.sum(jnp.asarray(Y)[batch] * jax.nn.log_softmax(z), axis=1))


grad_step = jax.grad(loss)  # a function of the params alone: batch 0


def grad_at(params, i):  # optax's (params, i) form: ascent step i, batch 1 + i
    return jax.grad(loss)(params, 1 + i)


def grad64(p, batch=0):
    xw = X[batch].astype(np.float64) @ p["w"]
    z = p["s"] * xw + p["b"]
    z = z - z.max(axis=1, keepdims=True)
    q = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    r = (q - Y[batch]) / N
    return {
        "w": p["s"] * (X[batch].T.astype(np.float64) @ r),
        "b": r.sum(0),
        "s": np.sum(r * xw),
    }


# ----------------------------------------------------------------------------
# float64 reference, written from sam's docstring


def ref_sam(inner, rho=0.05, adaptive=False, eta=0.0, sync_period=2, indexed=False):
    def update(g, state, w):
        point = w
        for i in range(sync_period - 1):
            t = {k: np.abs(point[k]) + eta if adaptive else 1.0 for k in point}
            norm = math.sqrt(sum(float(np.sum((t[k] * g[k]) ** 2)) for k in g))
            point = {k: point[k] + rho * t[k] ** 2 * g[k] / norm for k in point}
            g = grad64(point, 1 + i) if indexed else grad64(point)
        return inner.update(g, state, w)

    return R.Ref(inner.init, update)


def run_side_by_side(tx, ref, grad_fn, steps=R.STEPS):
    """gradtx (float32, jitted step) and the reference, each on its own params.

    The ascent direction g / ||g|| is as sensitive to round-off as ||g|| is
    small, so the problem is one whose gradient does not vanish over the run
    (a minimum SAM would circle at float32's resolution): a softmax
    regression, unregularised, whose loss decreases throughout.
    """
    params64 = start_params()
    params32 = R.to_f32(params64)
    state32, state64 = tx.init(params32), ref.init(params64)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grad_step(params), state, params, grad_fn=grad_fn)
        return updates, state

    got, want = [], []
    for _ in range(steps):
        u32, state32 = step(params32, state32)
        u64, state64 = ref.update(grad64(params64), state64, params64)
        params32 = jax.tree.map(lambda p, u: p + u, params32, u32)
        params64 = {k: params64[k] + u64[k] for k in params64}
        got.append((jax.tree.map(np.asarray, u32), jax.tree.map(np.asarray, params32)))
        want.append((u64, dict(params64)))
    return got, want


def sgd_momentum_ref(lr, momentum):
    return R.chain(R.momentum(momentum), R.scale_by_learning_rate(lr))


EQUATION_CASES = {
    "sam(sgd momentum)": (
        lambda: gradtx.sam(gradtx.sgd(0.05, momentum=0.5)),
        lambda: ref_sam(sgd_momentum_ref(0.05, 0.5)),
        grad_step,
    ),
    "sam(adam), adaptive": (
        lambda: gradtx.sam(gradtx.adam(0.01), 0.5, adaptive=True, eta=0.01),
        lambda: ref_sam(
            R.chain(R.adam(), R.scale_by_learning_rate(0.01)),
            0.5,
            adaptive=True,
            eta=0.01,
        ),
        grad_step,
    ),
    "sam(sgd), two ascent steps on their own batches": (
        lambda: gradtx.sam(gradtx.sgd(0.1), 0.1, sync_period=3),
        lambda: ref_sam(
            R.scale_by_learning_rate(0.1), 0.1, sync_period=3, indexed=True
        ),
        grad_at,
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    make_tx, make_ref, grad_fn = EQUATION_CASES[case]
    got, want = run_side_by_side(make_tx(), make_ref(), grad_fn)
    error = R.max_relative_error(got, want)
    print(f"\n{case}: max relative error {error:.2e}")
    assert error < RTOL
    # and the run did move: SAM's steps are not the plain optimizer's
    assert float(np.max(np.abs(got[-1][1]["w"] - start_params()["w"]))) > 0.05


# ----------------------------------------------------------------------------
# optax.contrib.sam in opaque mode (torch.optim has no SAM)


def optax_sam(opt, rho, sync_period):
    adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    return optax.contrib.sam(opt, adversary, sync_period, opaque_mode=True)


OPTAX_CASES = {
    "sgd momentum": (
        lambda: gradtx.sam(gradtx.sgd(0.1, momentum=0.9)),
        lambda: optax_sam(optax.sgd(0.1, momentum=0.9), 0.05, 2),
    ),
    "adam, sync_period=3": (
        lambda: gradtx.sam(gradtx.adam(0.01), 0.2, sync_period=3),
        lambda: optax_sam(optax.adam(0.01), 0.2, 3),
    ),
}


def trajectory(tx, apply):
    params = R.to_f32(start_params())
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grad_step(params), state, params, grad_fn=grad_at)
        return apply(params, updates), state

    out = []
    for _ in range(STEPS_OPTAX):
        params, state = step(params, state)
        out.append(jax.tree.map(np.asarray, params))
    return out


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_step_for_step_with_optax_opaque_mode(case):
    ours, theirs = OPTAX_CASES[case]
    a = trajectory(ours(), gradtx.apply_updates)
    b = trajectory(theirs(), optax.apply_updates)
    from peers import max_relative_gap

    gap = max_relative_gap(a, b)
    print(f"\noptax sam {case}: max relative gap {gap:.2e}")
    assert gap < RTOL_OPTAX


def test_an_optax_call_raises_instead_of_meaning_something_else():
    adversary = optax.chain(optax.contrib.normalize(), optax.sgd(0.05))
    with pytest.raises(TypeError, match="sam: rho must be a real number"):
        gradtx.sam(gradtx.sgd(0.1), adversary)
    with pytest.raises(TypeError):
        gradtx.sam(gradtx.sgd(0.1), adversary, 2)
    with pytest.raises(TypeError):
        gradtx.sam(gradtx.sgd(0.1), rho=0.05, opaque_mode=True)


# ----------------------------------------------------------------------------
# hand-worked cases, grad_fn's forms, state


def small_params(dtype=jnp.float32):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), start_params())


def test_ascent_point_is_rho_along_the_normalised_gradient():
    seen = []

    def grad_fn(point):
        seen.append(point)
        return jax.tree.map(jnp.ones_like, point)

    tx = gradtx.sam(gradtx.sgd(1.0), rho=0.5)
    w = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(0.0)}
    g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array(4.0)}
    u, _ = tx.update(g, tx.init(w), w, grad_fn=grad_fn)
    np.testing.assert_allclose(seen[0]["a"], [1.3, 2.0], rtol=1e-6)
    np.testing.assert_allclose(seen[0]["b"], 0.4, rtol=1e-6)
    np.testing.assert_array_equal(u["a"], [-1.0, -1.0])  # the gradient there


def test_adaptive_ascent_scales_by_the_weights():
    seen = []

    def grad_fn(point):
        seen.append(point)
        return point

    tx = gradtx.sam(gradtx.sgd(1.0), rho=1.0, adaptive=True, eta=0.5)
    w = jnp.array([1.5, -0.5, 0.0])
    g = jnp.array([1.0, 2.0, 3.0])
    tx.update(g, tx.init(w), w, grad_fn=grad_fn)
    t = np.abs(np.asarray(w)) + 0.5  # [2, 1, 0.5]
    want = np.asarray(w) + t**2 * np.asarray(g) / np.linalg.norm(t * np.asarray(g))
    np.testing.assert_allclose(seen[0], want, rtol=1e-6)


def test_a_zero_gradient_stays_put_and_rho_zero_is_the_optimizer():
    w = small_params()
    zero = jax.tree.map(jnp.zeros_like, w)
    points = []
    tx = gradtx.sam(gradtx.sgd(0.1))
    tx.update(zero, tx.init(w), w, grad_fn=lambda p: points.append(p) or zero)
    chex.assert_trees_all_equal(points[0], w)
    g = grad_step(w)
    tx = gradtx.sam(gradtx.sgd(0.1), 0.0)
    u, _ = tx.update(g, tx.init(w), w, grad_fn=grad_step)
    chex.assert_trees_all_close(u, jax.tree.map(lambda x: -0.1 * x, g), rtol=1e-6)


def test_grad_fn_takes_the_index_only_when_it_asks_for_it():
    calls = []
    tx = gradtx.sam(gradtx.sgd(0.1), sync_period=3)
    w = jnp.array([1.0, 2.0])

    def indexed(params, i):
        calls.append(("indexed", i))
        return params

    def with_default(params, batch=None):
        calls.append(("default", batch))
        return params

    tx.update(w, tx.init(w), w, grad_fn=indexed)
    tx.update(w, tx.init(w), w, grad_fn=with_default)
    tx.update(w, tx.init(w), w, grad_fn=lambda *args: calls.append(args[1:]) or w)
    assert calls == [
        ("indexed", 0),
        ("indexed", 1),
        ("default", None),
        ("default", None),
        (0,),
        (1,),
    ]


def test_state_is_named_and_holds_the_inner_state():
    tx = gradtx.sam(gradtx.adam(1e-3))
    state = tx.init(small_params())
    assert type(state) is gradtx.SamState
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert jax.tree.structure(state.inner_state) == jax.tree.structure(
        gradtx.adam(1e-3).init(small_params())
    )


def test_sync_period_one_is_the_plain_optimizer_and_needs_no_grad_fn():
    w = small_params()
    g = grad_step(w)
    tx = gradtx.sam(gradtx.sgd(0.1), sync_period=1)
    u, _ = tx.update(g, tx.init(w), w)
    chex.assert_trees_all_close(u, jax.tree.map(lambda x: -0.1 * x, g), rtol=1e-6)


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rho": -0.1}, ValueError, r"sam: rho must be in \[0, inf\)"),
        ({"rho": float("nan")}, ValueError, r"sam: rho must be in"),
        ({"eta": -1.0}, ValueError, r"sam: eta must be in \[0, inf\)"),
        ({"sync_period": 0}, ValueError, r"sam: sync_period must be in \[1, inf\)"),
        ({"sync_period": 1.5}, TypeError, r"sam: sync_period must be a whole"),
        ({"adaptive": 1}, TypeError, r"sam: adaptive must be True or False"),
        ({"batch_axis_name": 3}, TypeError, r"sam: batch_axis_name must be a str"),
        ({"optimizer": 3}, TypeError, r"sam: optimizer must be an \(init, update\)"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, message):
    kwargs = {"optimizer": gradtx.sgd(0.1), **kwargs}
    with pytest.raises(error, match=message):
        gradtx.sam(**kwargs)


def test_missing_or_bad_grad_fn_and_params_are_named():
    tx = gradtx.sam(gradtx.sgd(0.1))
    w = small_params()
    state = tx.init(w)
    g = grad_step(w)
    with pytest.raises(ValueError, match="sam needs the gradient at the ascent point"):
        tx.update(g, state, w)
    with pytest.raises(ValueError, match="sam reads the parameters"):
        tx.update(g, state, grad_fn=grad_step)
    with pytest.raises(TypeError, match="sam: grad_fn must be a function"):
        tx.update(g, state, w, grad_fn=g)
    with pytest.raises(ValueError, match="sam: the structure of the gradients from"):
        tx.update(g, state, w, grad_fn=lambda p: {"w": p["w"]})


# ----------------------------------------------------------------------------
# jit, scan, dtypes, chains and wrappers


def test_scan_equals_the_loop():
    tx = gradtx.sam(gradtx.adam(0.01), 0.1)
    params = small_params()

    def step(carry, _):
        p, s = carry
        u, s = tx.update(grad_step(p), s, p, grad_fn=grad_step)
        return (gradtx.apply_updates(p, u), s), None

    (scanned, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, length=5))(
        (params, tx.init(params))
    )
    carry = (params, tx.init(params))
    jitted = jax.jit(lambda c: step(c, None)[0])
    for _ in range(5):
        carry = jitted(carry)
    chex.assert_trees_all_close(scanned, carry[0], rtol=1e-6, atol=1e-7)


def test_bfloat16_params_stay_bfloat16_and_follow_the_float32_run():
    tx = gradtx.sam(gradtx.sgd(0.1, momentum=0.9), adaptive=True, eta=0.01)

    def grad_fn(p):  # a bfloat16 model: gradients in bfloat16
        return jax.tree.map(lambda g, x: g.astype(x.dtype), grad_step(p), p)

    @jax.jit
    def step(params, state):
        u, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
        return gradtx.apply_updates(params, u), u, state

    def run(params):
        state = tx.init(params)
        for _ in range(5):
            params, u, state = step(params, state)
        return params, u, state

    p16, u16, state16 = run(small_params(jnp.bfloat16))
    p32, _, _ = run(small_params())
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((p16, u16, state16)))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(u16))
    for a, b in zip(jax.tree.leaves(p16), jax.tree.leaves(p32), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0.05, atol=0.05)


def test_clipping_inside_clips_the_step_and_before_only_shapes_the_ascent():
    w = small_params()
    g = grad_step(w)
    # inside: the gradient at the ascent point is clipped, then the step
    inside = gradtx.sam(gradtx.chain(gradtx.clip_by_global_norm(0.01), gradtx.sgd(1.0)))
    u, _ = jax.jit(lambda g, w: inside.update(g, inside.init(w), w, grad_fn=grad_step))(
        g, w
    )
    assert float(gradtx.global_norm(u)) == pytest.approx(0.01, rel=1e-5)
    # before: element-wise clipping changes the ascent direction only
    before = gradtx.chain(gradtx.clip(1e-3), gradtx.sam(gradtx.sgd(1.0)))
    u, _ = before.update(g, before.init(w), w, grad_fn=grad_step)
    clipped = jax.tree.map(lambda x: jnp.clip(x, -1e-3, 1e-3), g)
    norm = gradtx.global_norm(clipped)
    point = jax.tree.map(lambda p, c: p + 0.05 * c / norm, w, clipped)
    want = jax.tree.map(lambda x: -x, grad_step(point))
    chex.assert_trees_all_close(u, want, rtol=1e-5, atol=1e-7)


def test_batch_axis_name_averages_the_ascent_gradients():
    # two replicas see different batches; their ascent gradients are averaged
    tx = gradtx.sam(gradtx.sgd(1.0), batch_axis_name="replica")
    w = small_params()
    g = jax.tree.map(lambda *x: (x[0] + x[1]) / 2, grad_at(w, 0), grad_at(w, 1))

    def replica(i):
        u, _ = tx.update(g, tx.init(w), w, grad_fn=lambda p: jax.grad(loss)(p, i + 1))
        return u

    got = jax.jit(jax.vmap(replica, axis_name="replica"))(jnp.arange(2))
    point = jax.tree.map(lambda p, x: p + 0.05 * x / gradtx.global_norm(g), w, g)
    mean = jax.tree.map(
        lambda *x: -(x[0] + x[1]) / 2, grad_at(point, 0), grad_at(point, 1)
    )
    for i in range(2):
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], got), mean, rtol=1e-5
        )


def test_vmap_over_rho_through_inject_hyperparams():
    opt = gradtx.inject_hyperparams(gradtx.sam)(optimizer=gradtx.sgd(0.1), rho=0.05)
    params = small_params()
    values = [0.0, 0.05, 0.3]

    def run(value):
        state = opt.init(params)
        state = state._replace(hyperparams=dict(state.hyperparams, rho=value))
        p = params
        for _ in range(3):
            u, state = opt.update(grad_step(p), state, p, grad_fn=grad_step)
            p = gradtx.apply_updates(p, u)
        return p

    batched = jax.jit(jax.vmap(run))(jnp.array(values, jnp.float32))
    assert opt.init(params).hyperparams["rho"].dtype == jnp.float32
    separate = jax.jit(run)  # one compile for the three runs
    for i, value in enumerate(values):
        alone = separate(jnp.float32(value))
        for got, want in zip(
            jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-7)
    # and the injected rho is the plain wrapper's (one value, one compile)
    tx, p = gradtx.sam(gradtx.sgd(0.1), values[-1]), params
    state = tx.init(p)
    step = jax.jit(lambda p, s: tx.update(grad_step(p), s, p, grad_fn=grad_step))
    for _ in range(3):
        u, state = step(p, state)
        p = gradtx.apply_updates(p, u)
    for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(got[-1], want, rtol=2e-6, atol=1e-7)


def test_around_parameter_groups_a_frozen_group_stays_put():
    # sam wraps the whole optimizer (grad_fn needs the whole tree); inside
    # it, multi_transform gives each group its rule, and the frozen group's
    # gradient still counts in the ascent's norm.
    labels = {"w": "sgd", "b": "adam", "s": "frozen"}
    inner = gradtx.multi_transform(
        {
            "sgd": gradtx.sgd(0.1),
            "adam": gradtx.adam(0.01),
            "frozen": gradtx.set_to_zero(),
        },
        labels,
    )
    tx = gradtx.sam(inner, 0.1)
    w = small_params()
    g = grad_step(w)
    u, state = jax.jit(lambda g, s, w: tx.update(g, s, w, grad_fn=grad_step))(
        g, tx.init(w), w
    )
    point = jax.tree.map(lambda p, x: p + 0.1 * x / gradtx.global_norm(g), w, g)
    g_point = grad_step(point)
    np.testing.assert_array_equal(u["s"], 0.0)
    np.testing.assert_allclose(u["w"], -0.1 * g_point["w"], rtol=1e-5, atol=1e-8)
    want_b, _ = inner.update(g_point, inner.init(w), w)
    np.testing.assert_allclose(u["b"], want_b["b"], rtol=1e-5, atol=1e-8)
    assert type(state.inner_state) is gradtx.MultiTransformState


def test_apply_if_finite_skips_the_step_and_accumulation_takes_the_mean():
    w = small_params()
    g = grad_step(w)
    guarded = gradtx.apply_if_finite(gradtx.sam(gradtx.sgd(0.1)), 2)
    bad = dict(g, s=jnp.float32(jnp.nan))
    u, state = guarded.update(bad, guarded.init(w), w, grad_fn=grad_step)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    assert int(state.notfinite_total) == 1
    # accumulate_gradients: the ascent follows the mean of the micro-steps'
    # gradients, and grad_fn of the last micro-step gives the step's gradient
    tx = gradtx.accumulate_gradients(gradtx.sam(gradtx.sgd(0.1)), every_k=2)
    g2 = grad_at(w, 0)
    state = tx.init(w)
    _, state = tx.update(g, state, w, grad_fn=grad_step)
    u, _ = tx.update(g2, state, w, grad_fn=grad_step)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g, g2)
    alone = gradtx.sam(gradtx.sgd(0.1))
    want, _ = alone.update(mean, alone.init(w), w, grad_fn=grad_step)
    chex.assert_trees_all_close(u, want, rtol=1e-6)


def test_describe_shows_the_optimizer_and_hyperparameters():
    text = gradtx.describe(gradtx.sam(gradtx.sgd(0.1, momentum=0.9), 0.1))
    assert text.startswith("sam(")
    assert "scale_by_momentum(decay=0.9" in text
    assert "scale_by_learning_rate(learning_rate=0.1)" in text
    for part in ("rho=0.1,", "adaptive=False,", "eta=0.0,", "sync_period=2,"):
        assert part in text
    assert "batch_axis_name=None" in text
