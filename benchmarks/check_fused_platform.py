"""Check `gradtx.fused_step` on the default JAX device (a GPU, say).

On a CPU the fused step runs the C++ kernel; anywhere else it must lower to
the plain step: no `gradtx_fused` custom call in the compiled step and the
same numbers, bit for bit. Run from the repository root:

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
        for _ in range(5):
            p1, s1 = fused(p1, s1, grads)
            p2, s2 = plain(p2, s2, grads)
        same = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(
                jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True
            )
        )
        expect_kernel = device.platform == "cpu"
        ok = (kernel == expect_kernel) and (same or expect_kernel)
        ok = ok and warned == (flat and not expect_kernel)
        failed |= not ok
        print(
            f"{name}: fused={step.fused} kernel_in_step={kernel} "
            f"bit_identical_to_plain={same} flat_warning={warned} "
            f"-> {'ok' if ok else 'FAILED'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
