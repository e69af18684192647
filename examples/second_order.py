"""Second-order methods on a convex problem: L-BFGS and Newton against first-order ones.

Run it with `.venv/bin/python examples/second_order.py` (about half a
minute on a laptop; `--quick` runs fewer iterations for the tests). The
problem is 10-class softmax regression with an L2 penalty on scikit-learn's
bundled 8x8 digits, strictly convex, so it has one optimum. SciPy's L-BFGS-B
(float64, tight tolerances) finds it first; then gradient descent, Adam,
gradtx's L-BFGS (a quasi-Newton direction and a strong-Wolfe zoom line
search) and Newton's method (the exact Hessian from `jax.hessian`) start
from zero, and the first table prints how far each got: the relative loss
gap to SciPy's optimum, the relative distance to its parameters, and the
number of iterations and objective evaluations spent. The second table
follows Newton's method step by step: the loss gap and the gradient norm
roughly square at every step once it is close (quadratic convergence),
while L-BFGS converges superlinearly and the first-order methods linearly.

Everything runs in float64 (`jax_enable_x64`), so that the gaps printed are
the methods' own and not float32 round-off.
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import gradtx  # noqa: E402

L2 = 1e-3  # the penalty 0.5 * L2 * |params|^2, on weights and biases alike


def load_data():
    """The 1797 digits, pixels scaled to [0, 1], as float64."""
    digits = load_digits()
    return jnp.asarray(digits.data / 16.0), jnp.asarray(digits.target)


def make_loss(x, y):
    def loss(params):
        logits = x @ params["w"] + params["b"]
        nll = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(len(y)), y])
        penalty = jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2)
        return nll + 0.5 * L2 * penalty

    return loss


def scipy_optimum(loss, params0):
    """SciPy's L-BFGS-B on the flattened problem, to a tight tolerance."""
    flat0, unravel = ravel_pytree(params0)
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: loss(unravel(v))))

    def fun(v):
        f, g = value_and_grad(jnp.asarray(v))
        return float(f), np.asarray(g)

    result = scipy.optimize.minimize(
        fun,
        np.asarray(flat0),
        jac=True,
        method="L-BFGS-B",
        options=dict(maxiter=10_000, maxfun=20_000, ftol=0.0, gtol=1e-13, maxcor=20),
    )
    return unravel(jnp.asarray(result.x)), float(result.fun), result.nit, result.nfev


def first_order(loss, params, tx, iters):
    """A plain training loop: one value-and-gradient evaluation per iteration."""

    @jax.jit
    def run(params):
        def body(carry, _):
            params, state = carry
            g = jax.grad(loss)(params)
            u, state = tx.update(g, state, params)
            return (gradtx.apply_updates(params, u), state), None

        (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, iters)
        return params

    return run(params), iters, iters


def run_lbfgs(loss, params, iters, tol=1e-10):
    """gradtx's L-BFGS; the value and gradient at the accepted point are reused."""
    tx = gradtx.lbfgs()

    @jax.jit
    def step(params, state, value, grad):
        u, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        search = state[2]
        return gradtx.apply_updates(params, u), state, search.value, search.grad

    state = tx.init(params)
    value, grad = jax.value_and_grad(loss)(params)
    evals, done = 1, 0
    for _ in range(iters):
        params, state, value, grad = step(params, state, value, grad)
        evals += int(state[2].num_linesearch_steps)
        done += 1
        grad_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad))))
        if grad_norm < tol:
            break
    return params, done, evals


def newton(loss, params, iters, f_star, p_star):
    """Newton's method with the exact Hessian (650 x 650), full steps."""
    flat, unravel = ravel_pytree(params)

    def flat_loss(v):
        return loss(unravel(v))

    @jax.jit
    def step(v):
        g = jax.grad(flat_loss)(v)
        h = jax.hessian(flat_loss)(v)
        return v - jnp.linalg.solve(h, g), jnp.linalg.norm(g)

    star, _ = ravel_pytree(p_star)
    rows = []
    for k in range(iters + 1):
        gap = (float(flat_loss(flat)) - f_star) / abs(f_star)
        dist = float(jnp.linalg.norm(flat - star) / jnp.linalg.norm(star))
        new, grad_norm = step(flat)
        rows.append((k, gap, float(grad_norm), dist))
        if k == iters:
            break
        flat = new
    return unravel(flat), iters, iters, rows


def distance(params, p_star):
    a, _ = ravel_pytree(params)
    b, _ = ravel_pytree(p_star)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args(argv)
    gd_iters, adam_iters, lbfgs_iters, newton_iters = (
        (300, 300, 100, 8) if args.quick else (3000, 3000, 300, 10)
    )

    x, y = load_data()
    loss = make_loss(x, y)
    params0 = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
    start = time.perf_counter()
    p_star, f_star, nit, nfev = scipy_optimum(loss, params0)
    print(
        f"softmax regression on digits: {x.shape[0]} images, 650 parameters, "
        f"L2 = {L2}; SciPy L-BFGS-B optimum f* = {f_star:.12f} "
        f"({nit} iterations, {nfev} evaluations, {time.perf_counter() - start:.1f} s)"
    )

    runs = {}
    start = time.perf_counter()
    runs["gd"] = first_order(loss, params0, gradtx.sgd(2.0), gd_iters)
    runs["adam"] = first_order(loss, params0, gradtx.adam(0.05), adam_iters)
    runs["lbfgs"] = run_lbfgs(loss, params0, lbfgs_iters)
    p_newton, it, ev, newton_rows = newton(loss, params0, newton_iters, f_star, p_star)
    runs["newton"] = (p_newton, it, ev)
    elapsed = time.perf_counter() - start

    print()
    print(
        f"{'method':<8} {'iters':>6} {'evals':>6} {'loss gap':>10} {'param dist':>11}"
    )
    for name, (params, iters, evals) in runs.items():
        gap = (float(loss(params)) - f_star) / abs(f_star)
        print(
            f"{name:<8} {iters:>6d} {evals:>6d} {gap:>10.2e} "
            f"{distance(params, p_star):>11.2e}"
        )
    print(f"{'scipy':<8} {nit:>6d} {nfev:>6d} {0.0:>10.2e} {0.0:>11.2e}")
    print("(loss gap: (f - f*) / |f*|; param dist: |p - p*| / |p*|; evals: objective")
    print(" and gradient evaluations; newton also one Hessian per iteration)")

    print()
    print("Newton's method, step by step (full steps from zero):")
    print(f"{'step':>4} {'loss gap':>10} {'|grad|':>10} {'param dist':>11}")
    for k, gap, grad_norm, dist in newton_rows:
        print(f"{k:>4d} {gap:>10.2e} {grad_norm:>10.2e} {dist:>11.2e}")
    star_newton = distance(p_newton, p_star)
    print(
        f"(all methods: {elapsed:.1f} s; SciPy's own optimum is {star_newton:.1e} "
        "from Newton's, the floor of the param dist column)"
    )
    return runs


if __name__ == "__main__":
    main()
