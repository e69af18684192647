"""Check `gradtx.fused_step` on the default JAX device (a GPU, say).

On a CPU the fused step runs the C++ kernel; anywhere else it must lower to
the plain step: no `gradtx_fused` custom call in the compiled step. On every
platform its numbers must stay within the bound of docs/fused.md ("Same
numbers") from the plain step's, checked here leaf by leaf against each
leaf's largest value (8 float32 epsilons a step); whether they are the same
bits is printed, not required. Run from the repository root:

    python -m benchmarks.check_fused_platform

Prints one line per optimizer and exits non-zero if a check fails.
"""

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import gradtx

STEPS = 5
ULPS = 8  # the bound of one step, in float32 epsilons (docs/fused.md)


def _apart(a: jax.Array, b: jax.Array) -> float:
    """max |a - b| over the largest |b|, in epsilons of the leaf's dtype.

    0 if the two are equal (counts, say); a moment kept in bfloat16 counts
    in bfloat16 epsilons (it may be a bfloat16 place from the plain one).
    """
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.size == 0 or np.array_equal(a64, b64, equal_nan=True):
        return 0.0
    info = jnp.finfo(a.dtype)
    size = max(float(np.max(np.abs(b64))), float(info.tiny))
    return float(np.max(np.abs(a64 - b64))) / size / float(info.eps)


def main() -> int:
    """Step each optimizer fused and plain on the default device; compare."""
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}")
    rng = np.random.default_rng(0)
    shapes = [(768, 768), (768,), (3072, 768), (50257 // 7, 768), ()]
    params = {
        f"w{i}": rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(shapes)
    }
    grads = {
        k: 1e-3 * rng.standard_normal(np.shape(v), dtype=np.float32)
        for k, v in params.items()
    }
    cases = {
        "adamw": gradtx.adamw(1e-3, weight_decay=0.01),
        "clip_adamw": gradtx.chain(
            gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3, weight_decay=0.01)
        ),
        "adam_nesterov": gradtx.adam(1e-3, nesterov=True),
        "sgd_momentum": gradtx.sgd(1e-2, momentum=0.9),
        "adamw_bf16_mu": gradtx.adamw(1e-3, weight_decay=0.01, mu_dtype=jnp.bfloat16),
    }
    failed = False
    runs = [(name, tx, False) for name, tx in cases.items()]
    runs += [(f"{name} (flat moments)", tx, True) for name, tx in cases.items()]
    for name, tx, flat in runs:
        step = gradtx.fused_step(tx, flat_moments=flat)
        fused = jax.jit(step)
        plain = jax.jit(step.plain)
        state = step.init(params)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text = fused.lower(params, state, grads).compile().as_text()
        # off the CPU kernel a flat step says once what its moments cost
        warned = any("flat_moments=True" in str(w.message) for w in caught)
        kernel = "gradtx_fused" in text
        p1, s1, p2, s2 = params, state, params, state
        for _ in range(STEPS):
            p1, s1 = fused(p1, s1, grads)
            p2, s2 = plain(p2, s2, grads)
        pairs = list(
            zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True)
        )
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
        apart = max(_apart(a, b) for a, b in pairs)
        expect_kernel = device.platform == "cpu"
        ok = kernel == expect_kernel and apart <= ULPS * STEPS
        ok = ok and warned == (flat and not expect_kernel)
        failed |= not ok
        print(
            f"{name}: fused={step.fused} kernel_in_step={kernel} "
            f"apart={apart:.1f} eps (bit_identical={same}) flat_warning={warned} "
            f"-> {'ok' if ok else 'FAILED'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
