"""Float64 NumPy references, written from the equations in the docstrings.

Each reference is a pair `(init, update)` acting on dicts of float64 NumPy
arrays, with the same calling convention as a gradtx transformation, so the
two can be stepped side by side. They are deliberately naive: one line per
equation, no shared code with gradtx.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {"w": (4, 3), "b": (5,), "s": ()}  # a matrix, a vector and a scalar
STEPS = 120


class Ref:
    """A reference transformation over dicts of float64 arrays."""

    def __init__(self, init: Callable, update: Callable):
        self.init = init
        self.update = update


def per_leaf(init_leaf: Callable, update_leaf: Callable) -> Ref:
    """Lift a leaf-wise equation to a dict; `update_leaf(g, s, p, t)`."""

    def init(params):
        return {"t": 0, "leaves": {k: init_leaf(p) for k, p in params.items()}}

    def update(grads, state, params):
        t = state["t"] + 1
        out, leaves = {}, {}
        for k, g in grads.items():
            out[k], leaves[k] = update_leaf(g, state["leaves"][k], params[k], t)
        return out, {"t": t, "leaves": leaves}

    return Ref(init, update)


def chain(*refs: Ref) -> Ref:
    def init(params):
        return [r.init(params) for r in refs]

    def update(grads, state, params):
        new = []
        for r, s in zip(refs, state, strict=True):
            grads, s = r.update(grads, s, params)
            new.append(s)
        return grads, new

    return Ref(init, update)


def _value(v, t):
    """A hyperparameter at step t (t counts updates already applied)."""
    return float(v(t)) if callable(v) else v


def scale(factor):
    return per_leaf(lambda p: None, lambda g, s, p, t: (factor * g, None))


def scale_by_schedule(schedule, sign=1.0):
    return per_leaf(
        lambda p: None, lambda g, s, p, t: (sign * _value(schedule, t - 1) * g, None)
    )


def scale_by_learning_rate(lr):
    return scale_by_schedule(lr, sign=-1.0)


def momentum(decay=0.9, nesterov=False, dampening=0.0):
    def step(g, v, p, t):
        v = decay * v + (1 - dampening) * g
        return (g + decay * v if nesterov else v), v

    return per_leaf(np.zeros_like, step)


def rms(decay=0.9, eps=1e-8, eps_in_sqrt=False, centered=False, initial_scale=0.0):
    def step(g, s, p, t):
        nu, mean = s
        nu = decay * nu + (1 - decay) * g**2
        mean = decay * mean + (1 - decay) * g
        var = nu - mean**2 if centered else nu
        den = np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps
        return g / den, (nu, mean)

    return per_leaf(lambda p: (np.full_like(p, initial_scale), np.zeros_like(p)), step)


def adagrad(initial_accumulator_value=0.0, eps=1e-10):
    def step(g, r, p, t):
        r = r + g**2
        return g / (np.sqrt(r) + eps), r

    return per_leaf(lambda p: np.full_like(p, initial_accumulator_value), step)


def adadelta(rho=0.9, eps=1e-6):
    def step(g, s, p, t):
        eg, ex = s
        eg = rho * eg + (1 - rho) * g**2
        d = np.sqrt(ex + eps) / np.sqrt(eg + eps) * g
        ex = rho * ex + (1 - rho) * d**2
        return d, (eg, ex)

    return per_leaf(lambda p: (np.zeros_like(p), np.zeros_like(p)), step)


def adam(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, nesterov=False):
    def step(g, s, p, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return m_hat / (np.sqrt(v_hat + eps_root) + eps), (m, v)

    return per_leaf(lambda p: (np.zeros_like(p), np.zeros_like(p)), step)


def add_decayed_weights(weight_decay=0.0, mask=None):
    def step(g, s, p, t):
        return g + _value(weight_decay, t - 1) * p, None

    return _masked(per_leaf(lambda p: None, step), mask)


def add_l1_penalty(strength=0.0, mask=None):
    def step(g, s, p, t):
        return g + _value(strength, t - 1) * np.sign(p), None

    return _masked(per_leaf(lambda p: None, step), mask)


def _masked(ref: Ref, mask: dict[str, bool] | None) -> Ref:
    if mask is None:
        return ref

    def update(grads, state, params):
        out, state = ref.update(grads, state, params)
        return {k: out[k] if mask[k] else grads[k] for k in grads}, state

    return Ref(ref.init, update)


def clip(max_delta):
    return per_leaf(
        lambda p: None, lambda g, s, p, t: (np.clip(g, -max_delta, max_delta), None)
    )


def clip_by_global_norm(max_norm):
    def update(grads, state, params):
        norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
        factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
        return {k: g * factor for k, g in grads.items()}, state

    return Ref(lambda params: None, update)


# ----------------------------------------------------------------------------
# inputs and the side-by-side runner


def make_params(seed: int = 0) -> dict[str, np.ndarray]:
    """Float32-representable starting parameters, as float64 arrays."""
    rng = np.random.default_rng(seed)
    return {
        k: rng.normal(size=shape).astype(np.float32).astype(np.float64)
        for k, shape in SHAPES.items()
    }


def make_grads(steps: int = STEPS, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """A gradient sequence with a drift and noise, float32-representable.

    Each leaf has its own scale, its own sign of drift and a noise term, so
    moments neither vanish nor grow without bound.
    """
    rng = np.random.default_rng(seed)
    drift = {"w": 0.5, "b": -0.3, "s": 0.8}
    scale = {"w": 1.0, "b": 2.0, "s": 0.5}
    seq = []
    for _ in range(steps):
        seq.append(
            {
                k: (scale[k] * (drift[k] + rng.normal(size=shape)))
                .astype(np.float32)
                .astype(np.float64)
                for k, shape in SHAPES.items()
            }
        )
    return seq


def to_f32(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def run_side_by_side(
    tx, ref: Ref, steps: int = STEPS, seed: int = 0, move_params: bool = True
) -> tuple[list[Any], list[Any]]:
    """Step gradtx (float32, jitted) and the reference (float64) together.

    Both see the same gradients. The parameters move by the updates each
    produced (`p += u`), so transformations that read the params see their
    own trajectory. Returns the per-step (updates, params) of each side.
    """
    params64 = make_params(seed)
    grads = make_grads(steps, seed + 1)
    params32 = to_f32(params64)
    state32 = tx.init(params32)
    state64 = ref.init(params64)
    update = jax.jit(tx.update)
    got, want = [], []
    for g in grads:
        u32, state32 = update(to_f32(g), state32, params32)
        u64, state64 = ref.update(g, state64, params64)
        if move_params:
            params32 = jax.tree.map(lambda p, u: p + u, params32, u32)
            params64 = {k: params64[k] + u64[k] for k in params64}
        got.append((jax.tree.map(np.asarray, u32), jax.tree.map(np.asarray, params32)))
        want.append((u64, dict(params64)))
    return got, want


def max_relative_error(got: list[Any], want: list[Any]) -> float:
    """Worst relative error over steps and leaves, of updates and params.

    Updates: per step and leaf, max|got - want| / max|want|, the relative
    error in the leaf's max-norm; robust to single elements that pass near
    zero while still catching any wrong factor or term. Params: the same,
    against the largest value the leaf takes over the run, since a parameter
    crossing zero has no meaningful relative error of its own.
    """
    scale = {k: max(float(np.max(np.abs(w[1][k]))) for w in want) for k in want[0][1]}
    worst = 0.0
    for (gu, gp), (wu, wp) in zip(got, want, strict=True):
        for k in wu:
            for g, w, denom in (
                (gu[k], wu[k], float(np.max(np.abs(wu[k])))),
                (gp[k], wp[k], scale[k]),
            ):
                g = np.asarray(g, np.float64)
                assert g.shape == np.shape(w), (k, g.shape, np.shape(w))
                err = float(np.max(np.abs(g - w)))
                worst = max(worst, err / denom if denom > 0 else err)
    return worst
