"""Check gradients against central differences, and see what a wrong one looks like.

Run it with `.venv/bin/python examples/gradient_check.py` (under half a minute;
`--quick` is the same check on fewer samples and step sizes, for the tests).
The model is a small tanh MLP (64 -> 8 -> 10) with softmax cross-entropy and an L2
penalty on the weights, on 64 of scikit-learn's bundled digits. For every
parameter it perturbs the loss both ways,

    g_fd[i] = (f(p + h e_i) - f(p - h e_i)) / (2 h),

and compares each parameter group (w1, b1, w2, b2) with the gradient under
test by the relative error |g - g_fd| / (|g| + |g_fd|) (Euclidean norms over
the group). It prints:

1. `jax.grad` against central differences in float64 and float32, per group;
2. the step-size trade-off: the error is about h^2 (truncation) plus
   eps / h (round-off in f), smallest near h ~ eps^(1/3): about 1e-5 in
   float64 and 1e-2 in float32, and float32 never gets below ~1e-4;
3. hand-written backpropagation gradients, one right and two with a
   classic bug each (the L2 term forgotten, the tanh derivative forgotten):
   the check passes the right one and flags the groups each bug touches.

The verdict uses a tolerance per dtype (1e-6 in float64, 1e-2 in float32)
at h = eps^(1/3) times the largest parameter scale.
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

L2 = 1e-2
TOLERANCE = {"float64": 1e-6, "float32": 1e-2}
GROUPS = ("w1", "b1", "w2", "b2")


def make_problem(samples, dtype):
    digits = load_digits()
    x = jnp.asarray(digits.data[:samples] / 16.0, dtype)
    y = jnp.asarray(digits.target[:samples])
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "w1": 0.3 * jax.random.normal(keys[0], (64, 8), dtype),
        "b1": 0.1 * jax.random.normal(keys[1], (8,), dtype),
        "w2": 0.3 * jax.random.normal(keys[2], (8, 10), dtype),
        "b2": 0.1 * jax.random.normal(keys[3], (10,), dtype),
    }

    def loss(p):
        hidden = jnp.tanh(x @ p["w1"] + p["b1"])
        logits = hidden @ p["w2"] + p["b2"]
        nll = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(len(y)), y])
        return nll + 0.5 * L2 * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))

    def manual_grad(p, bug=None):
        """Backpropagation written by hand; `bug` plants a classic mistake."""
        pre = x @ p["w1"] + p["b1"]
        hidden = jnp.tanh(pre)
        logits = hidden @ p["w2"] + p["b2"]
        d_logits = (jax.nn.softmax(logits) - jax.nn.one_hot(y, 10, dtype=dtype)) / len(
            y
        )
        d_hidden = d_logits @ p["w2"].T
        d_pre = d_hidden if bug == "tanh" else d_hidden * (1 - hidden**2)
        l2 = 0.0 if bug == "l2" else L2
        return {
            "w1": x.T @ d_pre + l2 * p["w1"],
            "b1": d_pre.sum(0),
            "w2": hidden.T @ d_logits + l2 * p["w2"],
            "b2": d_logits.sum(0),
        }

    return params, loss, manual_grad


def central_differences(loss, params):
    """A function of h: all partial derivatives by central differences.

    One pair of loss evaluations per parameter; compiled once, h is traced.
    """
    flat, unravel = ravel_pytree(params)
    basis = jnp.eye(flat.size, dtype=flat.dtype)

    @jax.jit
    def run(h):
        h = h.astype(flat.dtype)

        def partial(e):
            return (loss(unravel(flat + h * e)) - loss(unravel(flat - h * e))) / (2 * h)

        return unravel(jax.lax.map(partial, basis, batch_size=128))

    return lambda h: run(jnp.asarray(h))


def relative_errors(grad, reference):
    out = {}
    for k in GROUPS:
        a = np.asarray(grad[k], np.float64)
        b = np.asarray(reference[k], np.float64)
        denom = np.linalg.norm(a) + np.linalg.norm(b)
        out[k] = float(np.linalg.norm(a - b) / denom) if denom > 0 else 0.0
    return out


def default_step(dtype):
    return float(np.finfo(dtype).eps ** (1 / 3))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args(argv)
    samples = 32 if args.quick else 64

    problems = {name: make_problem(samples, name) for name in ("float64", "float32")}
    fd_at = {
        name: central_differences(loss, params)
        for name, (params, loss, _) in problems.items()
    }
    fd = {name: fd_at[name](default_step(name)) for name in problems}

    print(f"tanh MLP 64 -> 8 -> 10 on {samples} digits, L2 = {L2}")
    print("1. jax.grad against central differences (relative error per group)")
    print(f"   {'group':<6} {'shape':<8} {'float64':>9} {'float32':>9}")
    autodiff = {
        name: jax.grad(loss)(params) for name, (params, loss, _) in problems.items()
    }
    errors = {name: relative_errors(autodiff[name], fd[name]) for name in problems}
    params64 = problems["float64"][0]
    for k in GROUPS:
        shape = "x".join(map(str, params64[k].shape))
        print(
            f"   {k:<6} {shape:<8} {errors['float64'][k]:>9.1e} "
            f"{errors['float32'][k]:>9.1e}"
        )
    for name in problems:
        worst = max(errors[name].values())
        verdict = "PASS" if worst < TOLERANCE[name] else "FAIL"
        print(
            f"   check jax.grad {name}: {verdict} "
            f"(max {worst:.1e}, tolerance {TOLERANCE[name]:.0e}, "
            f"h = {default_step(name):.1e})"
        )

    print("2. step size h against the worst group error of jax.grad")
    print(f"   {'h':>7} {'float64':>9} {'float32':>9}")
    steps = (1e-2, 1e-4, 1e-6) if args.quick else (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    steps += () if args.quick else (1e-6, 1e-7, 1e-8)
    for h in steps:
        row = []
        for name in problems:
            err = relative_errors(autodiff[name], fd_at[name](h))
            row.append(max(err.values()))
        print(f"   {h:>7.0e} {row[0]:>9.1e} {row[1]:>9.1e}")

    print("3. hand-written gradients against central differences")
    print(f"   {'gradient':<22} {'dtype':<8} " + " ".join(f"{k:>8}" for k in GROUPS))
    variants = {"correct": None, "forgot L2 term": "l2", "forgot tanh'": "tanh"}
    for label, bug in variants.items():
        for name, (params, _, manual_grad) in problems.items():
            err = relative_errors(manual_grad(params, bug), fd[name])
            flagged = [k for k in GROUPS if err[k] >= TOLERANCE[name]]
            cells = " ".join(f"{err[k]:>8.1e}" for k in GROUPS)
            verdict = "FAIL " + ",".join(flagged) if flagged else "PASS"
            print(f"   {label:<22} {name:<8} {cells}  {verdict}")
    return errors


if __name__ == "__main__":
    main()
