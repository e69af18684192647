"""Sharded-state checks on 8 simulated CPU devices; prints one JSON report.

Run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8, so that the rest of the
suite keeps one device. Run it by hand the same way to read the numbers:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_checks.py

Nothing runs on import (pytest imports every module for its doctests).
"""

import collections
import functools
import hashlib
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx
from gradtx.checkpoint import restore_state, save_state
from gradtx.sharding import abstract_state, state_shardings

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s(?P<op>[a-z][a-z0-9\-]*)\("
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRUE_FALSE = re.compile(r"(?:true|false)_computation=%?([\w.\-]+)")


def count_collectives(hlo: str) -> dict:
    """Collectives in compiled HLO text, split by where they run.

    `main` counts those outside conditional branches (they run every step),
    `branches` those inside one (global_norm's overflow fallback runs only
    when the sum of squares leaves the float range). Each entry maps an
    opcode to a list of result shapes, one per instruction.
    """
    found = collections.defaultdict(list)  # computation -> [(op, shape)]
    branches = set()
    computation = None
    for line in hlo.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith("{"):
            header = _HEADER.match(line)
            computation = header.group(1) if header else None
            continue
        for group in _BRANCHES.findall(line):
            branches.update(name.strip().lstrip("%") for name in group.split(","))
        branches.update(_TRUE_FALSE.findall(line))
        match = _INSTRUCTION.match(line)
        if match and computation is not None:
            op = match.group("op").removesuffix("-start")
            if op in COLLECTIVES:
                shape = re.sub(r"\{[\d,]*\}", "", match.group("shape"))
                found[computation].append((op, shape))
    report = {"main": collections.defaultdict(list), "branches": {}}
    report["branches"] = collections.defaultdict(list)
    for name, ops in found.items():
        where = report["branches"] if name in branches else report["main"]
        for op, shape in ops:
            where[op].append(shape)
    return {k: dict(v) for k, v in report.items()}


# ----------------------------------------------------------------------------
# layouts


def meshes(axis_type):
    one = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    two = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
    return one, two


def layouts(axis_type):
    """name -> (mesh, specs): the same three params in each layout.

    The keys w, b, s are those of tests/test_contract.py, whose masks and
    labels name them.
    """
    one, two = meshes(axis_type)
    return {
        # data parallel: every device holds everything
        "replicated": (one, {"w": P(), "b": P(), "s": P()}),
        # FSDP: rows split over the 8 devices
        "fsdp": (one, {"w": P("data"), "b": P("data"), "s": P()}),
        # 2-D: the matrix split both ways, the vector over "model" only
        "2d": (two, {"w": P("data", "model"), "b": P("model"), "s": P()}),
    }


def host_params():
    rng = np.random.default_rng(0)
    return {
        "w": rng.normal(size=(16, 8)).astype(np.float32),
        "b": rng.normal(size=(16,)).astype(np.float32),
        "s": np.float32(0.5),
    }


def host_grads(step):
    rng = np.random.default_rng(100 + step)
    return {
        "w": rng.normal(size=(16, 8)).astype(np.float32),
        "b": rng.normal(size=(16,)).astype(np.float32),
        "s": np.float32(rng.normal()),
    }


def place(tree, mesh, specs):
    return {
        k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()
    }


def abstract(params):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )


# ----------------------------------------------------------------------------
# placement of the state


# Transformations whose state holds statistics reduced over one axis of a
# parameter (Adafactor's row and column second moments). Their init builds
# each statistic by summing zeros placed like the parameter, so that it keeps
# the placement of the axes it keeps; a sum over a sharded axis compiles to
# one all-reduce, in init only.
FACTORED = ("adafactor", "scale_by_factored_rms")


def transformations():
    """Every public transformation (the contract list) and the wrappers' cases."""
    from test_contract import CONTRACT, build

    txs = {name: build(name) for name in sorted(CONTRACT)}
    txs["inject_hyperparams(adamw)"] = gradtx.inject_hyperparams(gradtx.adamw)(
        learning_rate=gradtx.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10),
        weight_decay=1e-2,
    )
    txs["accumulate_gradients(inject(adam))"] = gradtx.accumulate_gradients(
        gradtx.inject_hyperparams(gradtx.adam)(learning_rate=1e-3), every_k=2
    )
    txs["clip+adamw"] = gradtx.chain(
        gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3)
    )
    return txs


def owner(path, params):
    """The parameter a state leaf belongs to: the last dict key on its path."""
    for key in reversed(path):
        if isinstance(key, jax.tree_util.DictKey) and key.key in params:
            return key.key
    return None


def dropped_axis(param, leaf):
    """The axis of `param` that `leaf` is reduced over, if it is one."""
    shape = tuple(param.shape)
    # a scalar per leaf (NovoGrad's second moment) is a scalar, replicated
    if leaf.size == 0 or not leaf.shape or len(leaf.shape) != len(shape) - 1:
        return None
    for k in range(len(shape)):
        if shape[:k] + shape[k + 1 :] == tuple(leaf.shape):
            return k
    return None


def placement_problems(state, params, *, scalars_on_mesh):
    """Each state leaf placed like its parameter; the others replicated.

    With `scalars_on_mesh`, leaves that belong to no parameter (counts,
    hyperparameters) must be replicated over all 8 devices, except in a
    state with no per-parameter leaf at all: its init reads no params, so a
    jitted init has no device to follow and builds it on the default device
    (harmless: the first step replicates it, see check_step).
    """
    problems = []
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    owners = [owner(path, params) for path, _ in flat]
    reads_params = any(name is not None for name in owners)
    for (path, leaf), name in zip(flat, owners, strict=True):
        where = jax.tree_util.keystr(path)
        sharding, ndim = leaf.sharding, len(leaf.shape)
        dropped = None if name is None else dropped_axis(params[name], leaf)
        if name is not None and leaf.shape == params[name].shape:
            want = params[name].sharding
            if not sharding.is_equivalent_to(want, ndim):
                problems.append(f"{where}: {sharding} instead of {want}")
        elif dropped is not None:
            # a statistic reduced over one axis (Adafactor's rows and
            # columns): placed like its parameter without that axis
            spec = list(params[name].sharding.spec)
            spec += [None] * (len(params[name].shape) - len(spec))
            del spec[dropped]
            want = NamedSharding(params[name].sharding.mesh, P(*spec))
            if not sharding.is_equivalent_to(want, ndim):
                problems.append(f"{where}: {sharding} instead of {want}")
        elif (
            name is not None
            and params[name].ndim
            and leaf.shape[1:] == params[name].shape
        ):
            # a history of the parameter (L-BFGS's last pairs), stacked on a
            # new leading axis: placed like the parameter, that axis whole
            want = NamedSharding(
                params[name].sharding.mesh, P(None, *params[name].sharding.spec)
            )
            if not sharding.is_equivalent_to(want, ndim):
                problems.append(f"{where}: {sharding} instead of {want}")
        elif scalars_on_mesh and (
            reads_params or isinstance(leaf, jax.ShapeDtypeStruct)
        ):
            devices = len(sharding.device_set)
            if not sharding.is_fully_replicated or devices != 8:
                problems.append(f"{where}: scalar on {devices} devices ({sharding})")
    return problems


def check_placement(axis_type, layout, mesh, specs, txs):
    """Eager, jitted and abstract init place the state like the params.

    All the transformations in `txs` are initialised in one jitted program
    and stepped in another (one compile each, not one per transformation);
    each state is then checked on its own. Returns one record per
    transformation and the collectives of the two programs.
    """
    params = place(host_params(), mesh, specs)
    grads = place(host_grads(0), mesh, specs)
    sds = abstract(params)

    def init_all(params):
        return {name: tx.init(params) for name, tx in txs.items()}

    def step_all(params, grads, states):
        return {
            name: tx.update(grads, states[name], params, loss=jnp.float32(1.0))[1]
            for name, tx in txs.items()
        }

    init = jax.jit(init_all).lower(params).compile()
    jitted = init(params)
    step = jax.jit(step_all).lower(params, grads, jitted).compile()
    stepped = step(params, grads, jitted)
    shardings = {name: state_shardings(tx, sds) for name, tx in txs.items()}
    direct = jax.jit(init_all, out_shardings=shardings)(params)
    records = []
    for name, tx in txs.items():
        record = {"axis_types": axis_type.name, "layout": layout, "tx": name}
        eager = tx.init(params)
        record["eager"] = placement_problems(eager, params, scalars_on_mesh=False)
        record["jit"] = placement_problems(jitted[name], params, scalars_on_mesh=True)
        record["step"] = placement_problems(stepped[name], params, scalars_on_mesh=True)
        # abstract init: shapes from eval_shape, shardings from abstract_state
        shapes = jax.eval_shape(tx.init, sds)
        predicted = abstract_state(tx, sds)
        problems = placement_problems(predicted, params, scalars_on_mesh=True)
        if jax.tree.structure(predicted) != jax.tree.structure(eager):
            problems.append("abstract_state has another tree than init")
        for p, s in zip(
            jax.tree.leaves(predicted), jax.tree.leaves(shapes), strict=True
        ):
            if (p.shape, p.dtype, p.weak_type) != (s.shape, s.dtype, s.weak_type):
                problems.append(f"{p} against eval_shape's {s}")
        record["abstract"] = problems
        # state built in its shards through out_shardings=state_shardings(...)
        problems = placement_problems(direct[name], params, scalars_on_mesh=True)
        for built in (jitted[name], direct[name]):
            for a, b in zip(
                jax.tree.leaves(built), jax.tree.leaves(eager), strict=True
            ):
                if not np.array_equal(np.asarray(a), np.asarray(b)):
                    problems.append("jitted and eager init give different values")
        record["out_shardings"] = problems
        records.append(record)
    collectives = {
        "axis_types": axis_type.name,
        "layout": layout,
        "init": count_collectives(init.as_text()),
        "step": count_collectives(step.as_text()),
    }
    return records, collectives


# ----------------------------------------------------------------------------
# compiled steps


def make_step(tx):
    def step(params, grads, state):
        updates, state = tx.update(grads, state, params, loss=jnp.float32(1.0))
        return gradtx.apply_updates(params, updates), state

    return jax.jit(step)


def run(tx, params, steps, mesh=None, specs=None):
    """`steps` jitted steps from a jitted init; also returns the compiled step."""
    state = jax.jit(tx.init)(params)
    grads = [host_grads(i) for i in range(steps)]
    if mesh is not None:
        grads = [place(g, mesh, specs) for g in grads]
    step = make_step(tx).lower(params, grads[0], state).compile()
    for g in grads:
        params, state = step(params, g, state)
    return params, state, step


@functools.cache
def single_device_run(name, tx):
    """The reference: the same 3 steps with every array on one device."""
    params, state, _ = run(tx, jax.tree.map(jnp.asarray, host_params()), 3)
    return params, state


def check_step(axis_type, layout, mesh, specs, name, tx):
    record = {"axis_types": axis_type.name, "layout": layout, "tx": name}
    params = place(host_params(), mesh, specs)
    got_params, got_state, step = run(tx, params, 3, mesh, specs)
    record["collectives"] = count_collectives(step.as_text())
    record["state_keeps_sharding"] = placement_problems(
        got_state, params, scalars_on_mesh=True
    )
    want_params, want_state = single_device_run(name, tx)
    got = jax.tree.leaves((got_params, got_state))
    want = jax.tree.leaves((want_params, want_state))
    record["bitwise_equal"] = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(got, want, strict=True)
    )
    record["max_relative_difference"] = max(
        float(
            np.max(
                np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                / np.maximum(np.abs(np.asarray(b, np.float64)), 1e-30),
                initial=0.0,
            )
        )
        for a, b in zip(got, want, strict=True)
    )
    return record


def check_huge_gradients(axis_type, mesh, specs):
    """Gradients of 1e30 on a mesh: the overflow fallback, sharded."""
    tx = gradtx.clip_by_global_norm(1.0)
    grads = place(
        jax.tree.map(lambda g: g * np.float32(1e30), host_grads(0)), mesh, specs
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(None))
    norm = float(gradtx.global_norm(updates))
    return {"axis_types": axis_type.name, "norm_after_clip": norm}


def check_checkpoint(axis_type, mesh, specs, tx):
    """Sharded state saved to .npz comes back into its shards, unchanged."""
    params = place(host_params(), mesh, specs)
    _, state, _ = run(tx, params, 2, mesh, specs)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "opt_state.npz")
        save_state(path, state)
        restored = restore_state(path, abstract_state(tx, abstract(params)))
    problems = placement_problems(restored, params, scalars_on_mesh=True)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            problems.append("restored values differ")
    return {"axis_types": axis_type.name, "problems": problems}


def unsharded_fingerprint():
    """Hashes of the norm and of clipped steps on arrays of one device.

    Many small leaves of several shapes and a few large ones, so that the
    norm stacks and sums pieces. The same arrays must give the same bits
    whatever the number of devices in the process: the pytest process (one
    device) computes this too and compares.
    """
    rng = np.random.default_rng(7)
    shapes = [(64,)] * 120 + [(3, 50)] * 20 + [(8,)] * 10 + [(200, 100)] * 2
    params = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-2))

    @jax.jit
    def run(params):
        state = tx.init(params)
        norms = []
        for k in range(2):
            grads = [p * (k + 1) - 0.5 for p in params]
            norms.append(gradtx.global_norm(grads))
            updates, state = tx.update(grads, state, params)
            params = gradtx.apply_updates(params, updates)
        return norms, params, state

    leaves = jax.tree.leaves(run(params))
    digest = hashlib.sha256()
    for leaf in leaves:
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def main():
    start = time.perf_counter()
    if jax.device_count() != 8:
        print(json.dumps({"error": f"expected 8 devices, got {jax.device_count()}"}))
        return 1
    report = {
        "devices": jax.device_count(),
        "unsharded_fingerprint": unsharded_fingerprint(),
        "placement": [],
        "placement_programs": [],
        "steps": [],
        "huge": [],
        "checkpoint": [],
    }
    everything = transformations()
    representative = {
        name: everything[name]
        for name in (
            "adamw",
            "inject_hyperparams(adamw)",
            "masked",
            "multi_transform",
            "apply_if_finite",
            "accumulate_gradients(inject(adam))",
            "clip+adamw",
            "scale_by_schedule",
        )
    }
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        for layout, (mesh, specs) in layouts(axis_type).items():
            # every transformation on FSDP rows, a representative few elsewhere;
            # the factored ones in a program of their own (see FACTORED)
            groups = [representative]
            if layout == "fsdp":
                groups = [
                    {k: v for k, v in everything.items() if k not in FACTORED},
                    {k: everything[k] for k in FACTORED},
                ]
            for txs in groups:
                records, collectives = check_placement(
                    axis_type, layout, mesh, specs, txs
                )
                collectives["factored"] = set(txs) <= set(FACTORED)
                report["placement"] += records
                report["placement_programs"].append(collectives)
            for name in ("adamw", "clip+adamw", "inject_hyperparams(adamw)"):
                report["steps"].append(
                    check_step(axis_type, layout, mesh, specs, name, everything[name])
                )
        mesh, specs = layouts(axis_type)["2d"]
        report["huge"].append(check_huge_gradients(axis_type, mesh, specs))
        report["checkpoint"].append(
            check_checkpoint(axis_type, mesh, specs, everything["clip+adamw"])
        )
    report["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
