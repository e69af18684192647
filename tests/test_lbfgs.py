"""L-BFGS and the zoom line search: equations, optax parity, Wolfe, SciPy optimum."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
import scipy.optimize

import gradtx

RTOL = 1e-4  # float32 against float64 over 120 steps; observed ~1e-6
OPTAX_GAP = 2e-5  # observed 0.0: the same decisions and the same float32 ops
C1, C2 = 1e-4, 0.9  # the line search's slope_rtol and curv_rtol (defaults)


# ----------------------------------------------------------------------------
# problems


def rosenbrock(p):
    x = p["x"]
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


_rng = np.random.default_rng(7)
_Q = np.linalg.qr(_rng.normal(size=(6, 6)))[0]
QUAD_A = jnp.asarray(_Q @ np.diag(np.geomspace(0.5, 50.0, 6)) @ _Q.T, jnp.float32)
QUAD_B = jnp.asarray(_rng.normal(size=6), jnp.float32)


def quadratic(p):
    w = p["w"]
    return 0.5 * w @ QUAD_A @ w - QUAD_B @ w + 0.5 * jnp.sum(p["s"] ** 2)


def double_well(p):
    """Negative curvature near 0: the first steps give s'y < 0 pairs."""
    return jnp.sum(0.25 * p["x"] ** 4 - 0.5 * p["x"] ** 2)


WELL_START = np.array([0.3, -0.2, 0.1, 0.4, -0.35, 0.05], np.float32)


ROSEN_START = {"x": jnp.array([-1.2, 1.0, -0.5, 0.8, 1.3], jnp.float32)}
QUAD_START = {"w": jnp.ones(6, jnp.float32), "s": jnp.asarray(2.0, jnp.float32)}
STEPS = 20


def make_step(opt, f, apply):
    """A jitted L-BFGS iteration that also returns the line-search record."""

    @jax.jit
    def step(p, state):
        v, g = jax.value_and_grad(f)(p)
        u, state = opt.update(g, state, p, value=v, grad=g, value_fn=f)
        return apply(p, u), state, v, g, u

    return step


def trajectory(opt, f, start, apply, steps=STEPS, step=None):
    step = step or make_step(opt, f, apply)
    p, state, out = start, opt.init(start), []
    for _ in range(steps):
        p, state, v, g, u = step(p, state)
        out.append(dict(params=p, state=state, value=v, grad=g, update=u))
    return out


def gap(a, b):
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for k in y["params"]:
            want = np.asarray(y["params"][k], np.float64)
            got = np.asarray(x["params"][k], np.float64)
            worst = max(worst, float(np.max(np.abs(got - want) / np.max(np.abs(want)))))
    return worst


@functools.cache
def rosen_runs():
    ours = trajectory(gradtx.lbfgs(), rosenbrock, ROSEN_START, gradtx.apply_updates)
    theirs = trajectory(optax.lbfgs(), rosenbrock, ROSEN_START, optax.apply_updates)
    return ours, theirs


@functools.cache
def quad_step():
    return make_step(gradtx.lbfgs(), quadratic, gradtx.apply_updates)


# ----------------------------------------------------------------------------
# 1. the two-loop recursion against the dense BFGS recursion in float64


def dense_lbfgs_direction(pairs, g, gamma):
    """H g with H = V_i' H V_i + rho_i s_i s_i', oldest pair first, H_0 = gamma I."""
    n = g.size
    h = gamma * np.eye(n)
    for s, y in pairs:
        sy = s @ y
        if sy == 0:
            continue
        rho = 1.0 / sy
        v = np.eye(n) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h @ g


def flat(tree):
    return np.concatenate([np.ravel(tree[k]) for k in sorted(tree)])


def unflat(vec, like):
    out, i = {}, 0
    for k in sorted(like):
        n = int(np.size(like[k]))
        out[k] = vec[i : i + n].reshape(np.shape(like[k]))
        i += n
    return out


def test_scale_by_lbfgs_matches_dense_bfgs_reference():
    memory_size = 5
    rng = np.random.default_rng(3)
    n = sum(int(np.prod(s)) for s in R.SHAPES.values())
    q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    a = q @ np.diag(np.geomspace(1.0, 10.0, n)) @ q.T
    tx = gradtx.scale_by_lbfgs(memory_size=memory_size)
    update = jax.jit(tx.update)
    like = R.make_params(0)
    state = tx.init(R.to_f32(like))
    pairs, prev, got, want = [], None, [], []
    for _ in range(R.STEPS):
        # random params, the quadratic's gradient: s'y = s'As > 0 for every pair
        p64 = unflat(rng.normal(size=n).astype(np.float32).astype(np.float64), like)
        g64 = unflat((a @ flat(p64)).astype(np.float32).astype(np.float64), like)
        u32, state = update(R.to_f32(g64), state, R.to_f32(p64))
        gv = flat(g64)
        if prev is None:
            gamma = min(1.0, 1.0 / np.linalg.norm(gv))
        else:
            s, y = flat(p64) - prev[0], gv - prev[1]
            pairs = [*pairs, (s, y)][-memory_size:]
            gamma = (s @ y) / (y @ y)
        prev = (flat(p64), gv)
        u64 = unflat(dense_lbfgs_direction(pairs, gv, gamma), like)
        got.append((jax.tree.map(np.asarray, u32), R.to_f32(p64)))
        want.append((u64, p64))
    err = R.max_relative_error(got, want)
    print(f"scale_by_lbfgs vs float64 dense BFGS: max relative error {err:.2e}")
    assert err < RTOL
    # memory_size is respected: the stacks hold memory_size pairs
    assert state.diff_params["w"].shape == (memory_size, 4, 3)
    assert state.weights.shape == (memory_size,)
    assert int(state.count) == R.STEPS


def lbfgs_reference(memory_size, convention, lr):
    """Fixed-step L-BFGS in float64, written from the docstrings' equations."""
    pairs, prev, gamma = [], None, 1.0

    def update(grads, params):
        nonlocal pairs, prev, gamma
        g, p = flat(grads), flat(params)
        if prev is None:
            norm = np.abs(g).sum() if convention == "torch" else np.linalg.norm(g)
            gamma = min(1.0, 1.0 / norm)
        else:
            s, y = p - prev[0], g - prev[1]
            if convention == "optax":  # every pair, gamma from the newest
                pairs = [*pairs, (s, y)][-memory_size:]
                gamma = (s @ y) / (y @ y) if y @ y > 0 else 1.0
            elif s @ y > 1e-10:  # torch: only positive-curvature pairs
                pairs = [*pairs, (s, y)][-memory_size:]
                gamma = (s @ y) / (y @ y)
            elif not pairs:
                gamma = 1.0
        prev = (p, g)
        return unflat(-lr * dense_lbfgs_direction(pairs, g, gamma), grads)

    return update


@pytest.mark.parametrize("convention", ["optax", "torch"])
def test_lbfgs_fixed_step_matches_float64_reference(convention):
    """R.STEPS closed-loop steps on the double well, float32 against float64.

    The double well (negative curvature near 0, so torch skips the first
    pairs) contracts to its minima, so round-off does not grow. On an
    ill-conditioned quadratic the fixed step instead drives s and y down to
    round-off, where s'y in float32 and float64 part ways.
    """
    lr, m = 0.5, 4
    tx = gradtx.lbfgs(lr, memory_size=m, linesearch=None, convention=convention)

    @jax.jit
    def step(p, state):
        u, state = tx.update(jax.grad(double_well)(p), state, p)
        return gradtx.apply_updates(p, u), state, u

    ref = lbfgs_reference(m, convention, lr)
    p32 = {"x": jnp.asarray(WELL_START)}
    p64 = {"x": WELL_START.astype(np.float64)}
    state, got, want = tx.init(p32), [], []
    for _ in range(R.STEPS):
        p32, state, u32 = step(p32, state)
        u64 = ref({"x": p64["x"] ** 3 - p64["x"]}, p64)
        p64 = {"x": p64["x"] + u64["x"]}
        got.append((np.asarray(u32["x"], np.float64), np.asarray(p32["x"], np.float64)))
        want.append((u64["x"], p64["x"]))
    # relative to the largest update and parameter of the run: the updates
    # themselves shrink to round-off as the run converges
    u_scale = max(np.abs(w[0]).max() for w in want)
    p_scale = max(np.abs(w[1]).max() for w in want)
    err = max(
        max(np.abs(gu - wu).max() / u_scale, np.abs(gp - wp).max() / p_scale)
        for (gu, gp), (wu, wp) in zip(got, want, strict=True)
    )
    print(f"lbfgs(convention={convention!r}) vs float64 reference: {err:.2e}")
    assert err < RTOL
    # torch's rule keeps H positive definite: L-BFGS descends to the minima
    # +-1; optax's keeps the s'y < 0 pairs, and here lands on the local
    # maximum at 0, also a stationary point
    final = np.abs(want[-1][1])
    assert np.allclose(final, 1.0 if convention == "torch" else 0.0, atol=1e-6)


def test_scale_init_precond_false_starts_from_identity():
    tx = gradtx.scale_by_lbfgs(memory_size=2, scale_init_precond=False)
    g = jnp.array([3.0, 4.0])
    u, _ = tx.update(g, tx.init(jnp.zeros(2)), jnp.zeros(2))
    np.testing.assert_allclose(u, g)  # gamma = 1: no 1/|g| at the first step


def test_curvature_pairs_negative_kept_zero_dropped_as_optax():
    """s'y < 0 keeps the pair with a negative weight; s'y == 0 drops it."""
    ours, theirs = gradtx.scale_by_lbfgs(memory_size=3), optax.scale_by_lbfgs(3)
    rng = np.random.default_rng(0)
    a = jnp.asarray(np.diag([2.0, -1.0, 0.5, -3.0]), jnp.float32)  # indefinite
    p = jnp.ones(4)
    s1, s2 = ours.init(p), theirs.init(p)
    update1, update2 = jax.jit(ours.update), jax.jit(theirs.update)
    u_ours, u_theirs, weights = [], [], []
    for _ in range(8):
        p = jnp.asarray(rng.normal(size=4), jnp.float32)
        g = a @ p
        u1, s1 = update1(g, s1, p)
        u2, s2 = update2(g, s2, p)
        u_ours.append(u1)
        u_theirs.append(u2)
        weights.append(np.asarray(s1.weights))
    w = np.concatenate(weights)
    assert np.any(w < 0), "the sequence should have produced a negative pair"
    np.testing.assert_allclose(np.stack(u_ours), np.stack(u_theirs), rtol=2e-5)
    np.testing.assert_allclose(s1.weights, s2.weights_memory, rtol=1e-6)
    # the same params twice: s = 0, so s'y = 0 and the pair's weight is 0
    tx = gradtx.scale_by_lbfgs(memory_size=3)
    p, g = jnp.ones(4), jnp.array([0.3, -0.4, 0.1, 0.2])
    _, state = update1(g, tx.init(p), p)
    u, state = update1(g, state, p)
    assert float(state.weights[0]) == 0.0
    np.testing.assert_allclose(u, g)  # y = 0 too: gamma = 1, H = I


# ----------------------------------------------------------------------------
# 2. parity with optax.lbfgs, and the strong Wolfe conditions


def test_lbfgs_matches_optax_on_rosenbrock():
    ours, theirs = rosen_runs()
    worst = gap(ours, theirs)
    print(f"lbfgs vs optax.lbfgs, Rosenbrock {STEPS} steps: max relative gap {worst}")
    assert worst <= OPTAX_GAP
    assert float(ours[-1]["value"]) < 1e-2 * float(ours[0]["value"])


def test_lbfgs_matches_optax_on_quadratic():
    ours = trajectory(
        gradtx.lbfgs(), quadratic, QUAD_START, gradtx.apply_updates, step=quad_step()
    )
    theirs = trajectory(optax.lbfgs(), quadratic, QUAD_START, optax.apply_updates)
    # Step for step while the loss is well above float32 round-off (10 steps);
    # after that both sit in the optimum's flat valley (condition number 100),
    # where a one-ulp difference in a reduction moves params by ~1e-4, so
    # only the losses are compared there.
    worst = gap(ours[:9], theirs[:9])
    print(f"lbfgs vs optax.lbfgs, quadratic 9 steps: max relative gap {worst}")
    assert worst <= OPTAX_GAP
    for x, y in zip(ours, theirs, strict=True):
        assert abs(float(x["value"]) - float(y["value"])) <= 1e-6
    a64, b64 = np.asarray(QUAD_A, np.float64), np.asarray(QUAD_B, np.float64)
    f_star = -0.5 * b64 @ np.linalg.solve(a64, b64)
    assert float(ours[-1]["value"]) - f_star < 1e-3 * abs(f_star)


def test_every_accepted_step_satisfies_strong_wolfe():
    ours, _ = rosen_runs()
    for k, rec in enumerate(ours[:-1]):
        ls = rec["state"][2]
        assert float(ls.decrease_error) == 0.0 and float(ls.curvature_error) == 0.0
        eta = np.float64(ls.learning_rate)
        u = {key: np.asarray(v, np.float64) for key, v in rec["update"].items()}
        direction = {key: v / eta for key, v in u.items()}
        g0 = {key: np.asarray(v, np.float64) for key, v in rec["grad"].items()}
        g1 = {key: np.asarray(v, np.float64) for key, v in ours[k + 1]["grad"].items()}
        d0 = sum(float(g0[key] @ direction[key]) for key in g0)
        d1 = sum(float(g1[key] @ direction[key]) for key in g1)
        f0, f1 = float(rec["value"]), float(ours[k + 1]["value"])
        assert d0 < 0, "the L-BFGS direction descends"
        # sufficient decrease (Armijo, c1) and the strong curvature test (c2),
        # up to float32 round-off of the values
        assert f1 <= f0 + C1 * eta * d0 + 1e-6 * abs(f0), (k, f0, f1)
        assert abs(d1) <= C2 * abs(d0) * (1 + 1e-5), (k, d0, d1)
        # the state's value and grad are those of the accepted point
        np.testing.assert_allclose(float(ls.value), f1, rtol=1e-6)
        assert 1 <= int(ls.num_linesearch_steps) <= 20


def test_zoom_linesearch_after_sgd_matches_optax():
    ours = gradtx.chain(gradtx.sgd(1.0), gradtx.scale_by_zoom_linesearch(15))
    theirs = optax.chain(optax.sgd(1.0), optax.scale_by_zoom_linesearch(15))
    a = trajectory(ours, rosenbrock, ROSEN_START, gradtx.apply_updates, steps=8)
    b = trajectory(theirs, rosenbrock, ROSEN_START, optax.apply_updates, steps=8)
    worst = gap(a, b)
    print(f"sgd + zoom linesearch ('keep') vs optax: max relative gap {worst}")
    assert worst <= OPTAX_GAP


# ----------------------------------------------------------------------------
# 3. the optimum of a strictly convex problem against SciPy's L-BFGS-B


def test_optimum_matches_scipy_lbfgsb_in_float64():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8))
    y = (x @ rng.normal(size=8) + 0.5 * rng.normal(size=120) > 0).astype(np.float64)
    lam = 1e-2

    def loss_np(w):
        z = x @ w[:-1] + w[-1]
        return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * lam * w[:-1] @ w[:-1]

    def grad_np(w):
        z = x @ w[:-1] + w[-1]
        r = (1 / (1 + np.exp(-z)) - y) / len(y)
        return np.concatenate([x.T @ r + lam * w[:-1], [r.sum()]])

    ref = scipy.optimize.minimize(
        loss_np, np.zeros(9), jac=grad_np, method="L-BFGS-B",
        options=dict(ftol=1e-15, gtol=1e-12, maxiter=1000),
    )  # fmt: skip
    with jax.enable_x64(True):
        xj, yj = jnp.asarray(x), jnp.asarray(y)

        def loss(w):
            z = xj @ w[:-1] + w[-1]
            return jnp.mean(jnp.logaddexp(0, z) - yj * z) + 0.5 * lam * w[:-1] @ w[:-1]

        opt = gradtx.lbfgs()
        w = jnp.zeros(9)
        state = opt.init(w)
        step = make_step(opt, loss, gradtx.apply_updates)
        for _ in range(40):
            w, state, *_ = step(w, state)
        w = np.asarray(w)
        assert w.dtype == np.float64
    rel = np.linalg.norm(w - ref.x) / np.linalg.norm(ref.x)
    loss_gap = (loss_np(w) - ref.fun) / abs(ref.fun)
    print(f"vs SciPy L-BFGS-B (float64): params {rel:.1e}, loss {loss_gap:.1e}")
    assert rel < 1e-6
    assert abs(loss_gap) < 1e-12


# ----------------------------------------------------------------------------
# 4. validation


@pytest.mark.parametrize(
    "factory, kwargs, name",
    [
        (gradtx.scale_by_lbfgs, dict(memory_size=0), "memory_size"),
        (
            gradtx.scale_by_zoom_linesearch,
            dict(max_linesearch_steps=0),
            "max_linesearch_steps",
        ),
        (
            gradtx.scale_by_zoom_linesearch,
            dict(max_learning_rate=0.0),
            "max_learning_rate",
        ),
        (gradtx.scale_by_zoom_linesearch, dict(tol=-1.0), "tol"),
        (gradtx.scale_by_zoom_linesearch, dict(increase_factor=1.0), "increase_factor"),
        (gradtx.scale_by_zoom_linesearch, dict(slope_rtol=1.0), "slope_rtol"),
        (gradtx.scale_by_zoom_linesearch, dict(curv_rtol=0.0), "curv_rtol"),
        (
            gradtx.scale_by_zoom_linesearch,
            dict(approx_dec_rtol=-1e-6),
            "approx_dec_rtol",
        ),
        (
            gradtx.scale_by_zoom_linesearch,
            dict(stepsize_precision=-1.0),
            "stepsize_precision",
        ),
        (
            gradtx.scale_by_zoom_linesearch,
            dict(initial_guess_strategy="two"),
            "initial_guess",
        ),
        (gradtx.lbfgs, dict(learning_rate=-1.0), "learning_rate"),
        (gradtx.lbfgs, dict(memory_size=0), "memory_size"),
    ],
)
def test_construction_refuses_out_of_range(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


def test_type_errors_and_missing_extras():
    with pytest.raises(TypeError, match="memory_size"):
        gradtx.scale_by_lbfgs(memory_size=2.5)
    with pytest.raises(TypeError, match="scale_init_precond"):
        gradtx.scale_by_lbfgs(scale_init_precond=1)
    # curv_rtol=inf turns the curvature test off, as in optax
    gradtx.scale_by_zoom_linesearch(curv_rtol=float("inf"))
    tx = gradtx.lbfgs()
    p = {"w": jnp.ones(2)}
    state = tx.init(p)
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(p, state, p)
    with pytest.raises(ValueError, match="params"):
        tx.update(p, state, None, value_fn=lambda q: 0.0)


# ----------------------------------------------------------------------------
# 5. dtypes, jit, scan, extras, describe


def test_bfloat16_params_stay_bfloat16_and_value_fn_takes_extras():
    """bf16 params: the search evaluates the objective at bf16 points.

    Also: value_fn receives the extras it names (factor=), others (loss=)
    are ignored, and value/grad are computed by the search when omitted.
    """

    def scaled(q, factor):
        return factor * quadratic(q)

    opt = gradtx.lbfgs()

    @jax.jit
    def step(q, state):
        g = jax.grad(scaled)(q, 2.0)
        u, state = opt.update(g, state, q, value_fn=scaled, factor=2.0, loss=1.0)
        return gradtx.apply_updates(q, u), state, u

    p = jax.tree.map(lambda x: x.astype(jnp.bfloat16), QUAD_START)
    state = opt.init(p)
    first = float(quadratic(p))
    for _ in range(6):
        p, state, u = step(p, state)
        for leaf in jax.tree.leaves((p, u, state[0].diff_params, state[2].grad)):
            assert leaf.dtype == jnp.bfloat16
            assert bool(jnp.all(jnp.isfinite(leaf)))
    assert state[2].learning_rate.dtype == jnp.float32
    assert float(quadratic(p)) < 0.1 * first


def test_lax_scan_equals_python_loop():
    step = quad_step()
    opt = gradtx.lbfgs()
    p, state = QUAD_START, opt.init(QUAD_START)
    for _ in range(6):
        p, state, *_ = step(p, state)

    def body(carry, _):
        p, state = carry
        v, g = jax.value_and_grad(quadratic)(p)
        u, state = opt.update(g, state, p, value=v, grad=g, value_fn=quadratic)
        return (gradtx.apply_updates(p, u), state), v

    (p_scan, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=6))(
        (QUAD_START, opt.init(QUAD_START))
    )
    for k in p:
        np.testing.assert_allclose(p_scan[k], p[k], rtol=1e-6, atol=1e-7)


def test_fixed_learning_rate_without_linesearch_matches_optax():
    ours = gradtx.lbfgs(learning_rate=0.05, linesearch=None)
    theirs = optax.lbfgs(learning_rate=0.05, linesearch=None)
    p = QUAD_START

    @jax.jit
    def steps(q1, q2):
        s1, s2 = ours.init(p), theirs.init(p)
        for _ in range(5):
            u1, s1 = ours.update(jax.grad(quadratic)(q1), s1, q1)
            u2, s2 = theirs.update(jax.grad(quadratic)(q2), s2, q2)
            q1, q2 = gradtx.apply_updates(q1, u1), optax.apply_updates(q2, u2)
        return q1, q2

    q1, q2 = steps(p, p)
    for k in p:
        np.testing.assert_allclose(q1[k], q2[k], rtol=2e-5)


def test_describe():
    text = gradtx.describe(gradtx.lbfgs(memory_size=7))
    assert "scale_by_lbfgs(memory_size=7, scale_init_precond=True" in text
    assert "scale(factor=-1.0)" in text
    assert "scale_by_zoom_linesearch(max_linesearch_steps=20" in text
    assert "initial_guess_strategy='one'" in text
    text = gradtx.describe(gradtx.lbfgs(0.1, linesearch=None))
    assert "scale_by_learning_rate(learning_rate=0.1)" in text and "identity()" in text


def test_inject_hyperparams_traces_learning_rate_and_wolfe_constants():
    """Traced c1, c2 and learning rate give the numbers of the plain optimizer."""
    search = gradtx.inject_hyperparams(gradtx.scale_by_zoom_linesearch)(
        max_linesearch_steps=20,
        slope_rtol=C1,
        curv_rtol=C2,
        initial_guess_strategy="one",
    )
    tx = gradtx.chain(gradtx.scale_by_lbfgs(), gradtx.scale(-1.0), search)
    ours, _ = rosen_runs()
    got = trajectory(tx, rosenbrock, ROSEN_START, gradtx.apply_updates, steps=5)
    assert gap(got, ours[:5]) <= 1e-6
    state = got[-1]["state"][2]
    assert state.hyperparams["curv_rtol"].dtype == jnp.float32
    injected = gradtx.inject_hyperparams(gradtx.lbfgs)(learning_rate=0.5)
    assert injected.init(ROSEN_START).hyperparams == {
        "learning_rate": jnp.asarray(0.5, jnp.float32)
    }


# ----------------------------------------------------------------------------
# 6. torch's convention, step for step against torch.optim.LBFGS

TORCH_GAP = 1e-5


def torch_lbfgs_run(lr, history_size, steps):
    """torch.optim.LBFGS with max_iter=1: one iteration per step(closure)."""
    import torch

    w = torch.tensor(WELL_START, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=lr, max_iter=1, history_size=history_size)

    def closure():
        opt.zero_grad()
        loss = (0.25 * w**4 - 0.5 * w**2).sum()
        loss.backward()
        return loss

    path, stored = [], []
    for _ in range(steps):
        opt.step(closure)
        path.append(w.detach().numpy().copy())
        stored.append(len(opt.state[w].get("old_dirs", [])))
    return path, stored


def fixed_step_run(tx, f, start, steps):
    @jax.jit
    def step(p, state):
        u, state = tx.update(jax.grad(f)(p), state, p)
        return gradtx.apply_updates(p, u), state

    p, state, path = start, tx.init(start), []
    for _ in range(steps):
        p, state = step(p, state)
        path.append(np.asarray(p["x"]))
    return path, state


def relative_path_gap(got, want):
    return max(
        float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        for a, b in zip(got, want, strict=True)
    )


def test_torch_convention_matches_torch_lbfgs_step_for_step():
    lr, history, steps = 0.5, 4, 12
    want, stored = torch_lbfgs_run(lr, history, steps)
    # the run exercises the difference: torch skips the first pairs (s'y < 0)
    # and later drops the oldest pair once history_size are stored
    assert stored[:3] == [0, 0, 0] and stored[-1] == history
    start = {"x": jnp.asarray(WELL_START)}
    tx = gradtx.lbfgs(lr, memory_size=history, linesearch=None, convention="torch")
    got, state = fixed_step_run(tx, double_well, start, steps)
    worst = relative_path_gap(got, want)
    print(f"lbfgs(convention='torch') vs torch.optim.LBFGS: max relative gap {worst}")
    assert worst <= TORCH_GAP
    assert float(double_well({"x": got[-1]})) < -1.49  # near the minima +-1
    assert bool(jnp.all(state[0].weights > 0))  # only s'y > 1e-10 pairs stored
    # optax's convention keeps the negative pairs: a different path
    optax_form = gradtx.lbfgs(lr, memory_size=history, linesearch=None)
    other, _ = fixed_step_run(optax_form, double_well, start, steps)
    assert relative_path_gap(other, want) > 1e-3


def test_torch_convention_first_step_and_empty_memory():
    tx = gradtx.scale_by_lbfgs(memory_size=3, convention="torch")
    g = jnp.array([3.0, -4.0])
    u, state = tx.update(g, tx.init(jnp.zeros(2)), jnp.zeros(2))
    np.testing.assert_allclose(u, g / 7.0)  # min(1, 1 / |g|_1) g
    # a pair with s'y < 0 is not stored: the direction is g itself (gamma = 1)
    u, state = tx.update(jnp.array([2.0, -3.0]), state, jnp.array([0.5, -0.5]))
    np.testing.assert_allclose(u, [2.0, -3.0])
    assert int(state.slot) == 0 and float(jnp.sum(jnp.abs(state.weights))) == 0


# ----------------------------------------------------------------------------
# 7. hyperparameters as arrays: inject_hyperparams with bfloat16, vmap


def quad_fixed_run(tx, start, steps=5):
    """lbfgs without a line search on the quadratic: a jitted fixed-step loop."""

    @jax.jit
    def run(p):
        state = tx.init(p)
        for _ in range(steps):
            u, state = tx.update(jax.grad(quadratic)(p), state, p)
            p = gradtx.apply_updates(p, u)
        return p, state, u

    return run(start)


def test_inject_hyperparams_bfloat16_and_same_numbers():
    injected = gradtx.inject_hyperparams(gradtx.lbfgs)(0.1, 3, linesearch=None)
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), QUAD_START)
    p, state, u = quad_fixed_run(injected, p16)
    for leaf in jax.tree.leaves((p, u)):
        assert leaf.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(leaf)))
    assert state.hyperparams["learning_rate"].dtype == jnp.float32
    assert float(quadratic(p)) < float(quadratic(p16))
    got, _, _ = quad_fixed_run(injected, QUAD_START)
    want, _, _ = quad_fixed_run(gradtx.lbfgs(0.1, 3, linesearch=None), QUAD_START)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_vmap_over_learning_rate_and_curv_rtol_equals_separate_runs():
    lrs = jnp.array([0.05, 0.1, 0.2], jnp.float32)

    @jax.jit
    def with_lr(lr):
        tx = gradtx.inject_hyperparams(gradtx.lbfgs)(lr, 3, linesearch=None)
        return quad_fixed_run(tx, QUAD_START)[0]

    batched = jax.jit(jax.vmap(with_lr))(lrs)
    for i in range(3):
        alone = with_lr(lrs[i])
        for k in alone:
            np.testing.assert_allclose(batched[k][i], alone[k], rtol=2e-6, atol=1e-7)

    # a batch of line searches: a while_loop under vmap, one trip count each
    @jax.jit
    def searched(curv_rtol):
        search = gradtx.inject_hyperparams(gradtx.scale_by_zoom_linesearch)(
            20, curv_rtol=curv_rtol, initial_guess_strategy="one"
        )
        tx = gradtx.chain(gradtx.scale_by_lbfgs(), gradtx.scale(-1.0), search)
        p, state = ROSEN_START, tx.init(ROSEN_START)
        for _ in range(2):  # the second step's search sees c2
            v, g = jax.value_and_grad(rosenbrock)(p)
            u, state = tx.update(g, state, p, value=v, grad=g, value_fn=rosenbrock)
            p = gradtx.apply_updates(p, u)
        return p

    curvs = jnp.array([0.9, 0.1], jnp.float32)
    batched = jax.jit(jax.vmap(searched))(curvs)
    for i in range(2):
        alone = searched(curvs[i])
        # batched reductions may round differently: a few ulps of the largest
        np.testing.assert_allclose(batched["x"][i], alone["x"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched["x"][0], batched["x"][1])  # c2 matters


# ----------------------------------------------------------------------------
# 8. inside the wrappers


def test_masked_passes_the_unselected_leaf_through():
    mask = {"w": True, "s": False}
    tx = gradtx.chain(gradtx.masked(gradtx.scale_by_lbfgs(3), mask), gradtx.scale(-0.1))
    alone = gradtx.chain(gradtx.scale_by_lbfgs(3), gradtx.scale(-0.1))
    p, state, u = quad_fixed_run(tx, QUAD_START, steps=4)
    # s is plain gradient descent with step 0.1: s_k = 2 * 0.9^k
    np.testing.assert_allclose(p["s"], 2.0 * 0.9**4, rtol=1e-6)
    np.testing.assert_allclose(u["s"], -0.1 * p["s"] / 0.9 * 1.0, rtol=1e-5)
    # w follows the L-BFGS run on w alone (its gradient does not involve s)
    w_only = {"w": QUAD_START["w"]}

    @jax.jit
    def run_w(p):
        state = alone.init(p)
        for _ in range(4):
            g = {"w": jax.grad(quadratic)({"w": p["w"], "s": QUAD_START["s"]})["w"]}
            u, state = alone.update(g, state, p)
            p = gradtx.apply_updates(p, u)
        return p

    np.testing.assert_allclose(p["w"], run_w(w_only)["w"], rtol=1e-6, atol=1e-7)


def test_multi_transform_apply_if_finite_and_accumulate_gradients():
    # multi_transform: the w group runs L-BFGS, the s group SGD
    tx = gradtx.multi_transform(
        {"q": gradtx.lbfgs(0.1, 3, linesearch=None), "g": gradtx.sgd(0.1)},
        {"w": "q", "s": "g"},
    )
    p, _, _ = quad_fixed_run(tx, QUAD_START, steps=4)
    full, _, _ = quad_fixed_run(gradtx.lbfgs(0.1, 3, linesearch=None), QUAD_START, 4)
    np.testing.assert_allclose(p["s"], 2.0 * 0.9**4, rtol=1e-6)
    assert not np.allclose(p["w"], full["w"])  # s is not in its memory

    # apply_if_finite: a NaN gradient is skipped, the run goes on as without it
    safe = gradtx.apply_if_finite(gradtx.lbfgs(), max_consecutive_errors=2)
    plain = quad_step()

    @jax.jit
    def safe_step(p, state, poison):
        v, g = jax.value_and_grad(quadratic)(p)
        g = jax.tree.map(lambda x: jnp.where(poison, jnp.nan, x), g)
        u, state = safe.update(g, state, p, value=v, grad=g, value_fn=quadratic)
        return gradtx.apply_updates(p, u), state

    p, state = QUAD_START, safe.init(QUAD_START)
    q, q_state = QUAD_START, gradtx.lbfgs().init(QUAD_START)
    for poison in (False, True, False, False):
        p, state = safe_step(p, state, poison)
        if not poison:
            q, q_state, *_ = plain(q, q_state)
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])
    assert int(state.notfinite_total) == 1

    # accumulate_gradients: two micro-batches, one L-BFGS step on their mean
    def half(p, i):
        return quadratic(p) + (-1.0) ** i * jnp.sum(p["w"]) * 0.3

    acc = gradtx.accumulate_gradients(gradtx.lbfgs(), every_k=2)

    @jax.jit
    def micro(p, state, i):
        g = jax.grad(half)(p, i)
        u, state = acc.update(g, state, p, value_fn=quadratic)
        return gradtx.apply_updates(p, u), state

    p, state = QUAD_START, acc.init(QUAD_START)
    q, q_state = QUAD_START, gradtx.lbfgs().init(QUAD_START)
    for _ in range(3):
        p, state = micro(p, state, 0)
        p, state = micro(p, state, 1)
        q, q_state, *_ = plain(q, q_state)
        for k in p:
            np.testing.assert_allclose(p[k], q[k], rtol=1e-5, atol=1e-6)


def test_convention_is_validated():
    with pytest.raises(ValueError, match="convention"):
        gradtx.scale_by_lbfgs(convention="jax")
    with pytest.raises(ValueError, match="convention"):
        gradtx.lbfgs(convention="pytorch")
    with pytest.raises(TypeError):
        gradtx.lbfgs(None, 10, True, None, "torch")  # keyword-only
