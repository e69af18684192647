"""Trajectories of gradtx, optax and torch.optim on the same inputs.

Every runner starts from `references.make_params(0)`, feeds the gradient
sequence `references.make_grads(steps, 1)` and returns the parameters after
each step as dicts of NumPy arrays, so any two can be compared.
"""

import jax
import numpy as np
import optax
import references as R
import torch

import gradtx

STEPS = 100


def gradtx_trajectory(tx, steps=STEPS):
    params = R.to_f32(R.make_params(0))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    out = []
    for g in R.make_grads(steps, 1):
        params, state = step(params, state, R.to_f32(g))
        out.append(jax.tree.map(np.asarray, params))
    return out


def optax_trajectory(opt, steps=STEPS):
    params = R.to_f32(R.make_params(0))
    state = opt.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    out = []
    for g in R.make_grads(steps, 1):
        params, state = step(params, state, R.to_f32(g))
        out.append(jax.tree.map(np.asarray, params))
    return out


def torch_trajectory(make_opt, steps=STEPS):
    start = R.make_params(0)
    keys = sorted(start)
    tensors = [
        torch.tensor(start[k], dtype=torch.float32, requires_grad=True) for k in keys
    ]
    opt = make_opt(tensors)
    out = []
    for g in R.make_grads(steps, 1):
        for t, k in zip(tensors, keys, strict=True):
            t.grad = torch.tensor(g[k], dtype=torch.float32)
        opt.step()
        out.append(
            {k: t.detach().numpy().copy() for k, t in zip(keys, tensors, strict=True)}
        )
    return out


def max_relative_gap(a, b):
    """Worst per-leaf gap over the run, relative to the leaf's largest value.

    A non-finite value on either side is an infinite gap (Python's `max`
    would pass over a NaN).
    """
    for run in (a, b):
        for step in run:
            if not all(np.all(np.isfinite(x)) for x in step.values()):
                return float("inf")
    worst = 0.0
    for k in a[0]:
        scale = max(float(np.max(np.abs(step[k]))) for step in b)
        gap = max(float(np.max(np.abs(x[k] - y[k]))) for x, y in zip(a, b, strict=True))
        worst = max(worst, gap / scale)
    return worst
