"""One of the two processes that tests/test_multiprocess.py starts.

    python multiprocess_worker.py MODE PROCESS_ID PORT OUT_DIR

Each process joins JAX's multi-controller runtime on 127.0.0.1:PORT (two
processes, two CPU devices each, CPU collectives through gloo), builds one
2x2 mesh over the four devices and writes what it saw under OUT_DIR (gathered
arrays in `.npz` files, a JSON report, marker files). The test compares those
with a single-process run it computes itself; the data, the optimizers and
the steps are defined here so that both sides share them. Modes:

- `train`: sharded clip + AdamW steps and `inject_hyperparams(adamw)` steps,
  then an Orbax save and restore of params and state, and one more step from
  the restored and from the in-memory state.
- `interrupt`: saves checkpoint step 1 completely, then starts step 2 and
  stops just before Orbax commits it (every shard written, the temporary
  directory not yet renamed), touching `committing` so that the test can
  SIGKILL both processes at that point.
- `resume`: a fresh pair of processes restores the latest checkpoint of the
  interrupted run and saves step 2 again.

Not named test_*: pytest imports it (for its doctests, and the test imports
its definitions) but must not run it; importing it has no side effects.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx

SEED = 1
CLIP_STEPS = 4  # clip + AdamW steps before the checkpoint
INJECT_STEPS = 4  # inject_hyperparams(adamw) steps before the checkpoint
SET_DECAY_AT = 2  # set_hyperparams(weight_decay=...) before this inject step
NEW_DECAY = 0.1
MESH_SHAPE = (2, 2)  # (processes, devices per process)
AXES = ("data", "model")
# How each parameter is laid out on the 2x2 mesh: split over both axes, over
# the local axis only, four ways along its rows, and replicated.
SPECS = {
    "w": P("data", "model"),
    "b": P("model"),
    "rows": P(("data", "model")),
    "bias": P(),
    "scale": P(),
}
SHAPES = {"w": (32, 16), "b": (16,), "rows": (64, 4), "bias": (5,), "scale": ()}
# About the global norm of each step's gradients: above the clipping bound of
# 1 on some steps, below it on others (the last is the step after a restore).
GRAD_NORMS = (3.0, 2.0, 0.5, 1.5, 2.5)


def make_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {k: rng.normal(size=shape).astype(np.float32) for k, shape in SHAPES.items()}


def make_grads() -> list[dict[str, np.ndarray]]:
    """One gradient tree per step, of about the global norm of GRAD_NORMS."""
    rng = np.random.default_rng(SEED + 1)
    size = sum(int(np.prod(shape)) for shape in SHAPES.values())
    return [
        {
            k: (rng.normal(size=shape) * norm / np.sqrt(size)).astype(np.float32)
            for k, shape in SHAPES.items()
        }
        for norm in GRAD_NORMS
    ]


def clip_tx() -> gradtx.GradientTransformation:
    return gradtx.chain(
        gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-2, weight_decay=1e-2)
    )


def inject_tx() -> gradtx.GradientTransformation:
    return gradtx.inject_hyperparams(gradtx.adamw)(
        learning_rate=gradtx.warmup_cosine_decay_schedule(0.0, 5e-2, 2, 20),
        weight_decay=1e-2,
    )


def make_step(tx: gradtx.GradientTransformation):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    return step


def run_inject(params, state, grads, step):
    """INJECT_STEPS injected AdamW steps, the weight decay replaced midway."""
    for t in range(INJECT_STEPS):
        if t == SET_DECAY_AT:
            state = gradtx.set_hyperparams(state, weight_decay=NEW_DECAY)
        params, state = step(params, state, grads[t])
    return params, state


def flat(tree, prefix: str) -> dict:
    """A tree's leaves by path, as `prefix/path` keys (for an .npz file)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {f"{prefix}/{jax.tree_util.keystr(p)}": x for p, x in leaves}


# ----------------------------------------------------------------------------
# Everything below runs only in the two worker processes.


def _connect(process_id: int, port: int) -> None:
    jax.config.update("jax_numpy_rank_promotion", "raise")  # as tests/conftest.py
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=30,
    )


def _mesh() -> jax.sharding.Mesh:
    # One mesh over every device of both processes: the data axis across
    # processes, the model axis within one (docs/scaling.md, "Many hosts").
    return jax.make_mesh(MESH_SHAPE, AXES)


def _shardings(mesh) -> dict[str, NamedSharding]:
    return {k: NamedSharding(mesh, spec) for k, spec in SPECS.items()}


def _global(tree: dict[str, np.ndarray], shardings) -> dict[str, jax.Array]:
    """Global arrays from the host copy every process has: each its own shards."""
    return {
        k: jax.make_array_from_callback(x.shape, shardings[k], lambda i, x=x: x[i])
        for k, x in tree.items()
    }


def _abstract(tree):
    """ShapeDtypeStructs with the arrays' shapes, dtypes and shardings."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=x.sharding, weak_type=jax.typeof(x).weak_type
        ),
        tree,
    )


def _gather(tree, prefix: str) -> dict[str, np.ndarray]:
    from jax.experimental import multihost_utils

    return {
        k: np.asarray(multihost_utils.process_allgather(x, tiled=True))
        for k, x in flat(tree, prefix).items()
    }


def _specs(tree) -> dict[str, str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in leaves}


def _same_bits(a, b) -> bool:
    """Same tree, types (with shardings) and bits, shard by shard."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.typeof(x) != jax.typeof(y) or x.sharding != y.sharding:
            return False
        for u, v in zip(x.addressable_shards, y.addressable_shards, strict=True):
            if u.index != v.index:
                return False
            bits = f"u{x.dtype.itemsize}"
            if not np.array_equal(np.asarray(u.data).view(bits), v.data.view(bits)):
                return False
    return True


def _placed_like(tree, like) -> bool:
    """Every array placed as `like` says (shardings, or ShapeDtypeStructs)."""
    shardings = [getattr(s, "sharding", s) for s in jax.tree.leaves(like)]
    return all(
        x.sharding.is_equivalent_to(s, x.ndim)
        for x, s in zip(jax.tree.leaves(tree), shardings, strict=True)
    )


def _sharded_setup():
    mesh = _mesh()
    shardings = _shardings(mesh)
    params = _global(make_params(), shardings)
    grads = [_global(g, shardings) for g in make_grads()]
    return mesh, shardings, params, grads


def _init(tx, params):
    """tx.init built directly in its shards (docs/scaling.md, "Many hosts")."""
    shardings = gradtx.state_shardings(tx, params)
    return jax.jit(tx.init, out_shardings=shardings)(params), shardings


def train(out: pathlib.Path) -> None:
    import orbax.checkpoint as ocp

    mesh, shardings, params0, grads = _sharded_setup()
    pid = jax.process_index()
    report = {
        "process_index": pid,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "mesh_processes": [[d.process_index for d in row] for row in mesh.devices],
        "axis_types": [str(t) for t in mesh.axis_types],
    }

    # clip + AdamW, the state created in its shards and stepped under jit
    tx = clip_tx()
    step = jax.jit(make_step(tx))
    state, state_shardings = _init(tx, params0)
    report["init_placed"] = _placed_like(state, state_shardings)
    params = params0
    for t in range(CLIP_STEPS):
        params, state = step(params, state, grads[t])
    report["clip_state_placed"] = _placed_like(state, state_shardings)
    report["clip_params_placed"] = _placed_like(params, shardings)
    report["clip_state_specs"] = _specs(state)
    report["local_shards_of_mu_w"] = len(state[1][0].mu["w"].addressable_shards)
    clip_params, clip_state = params, state

    # inject_hyperparams(adamw), a hyperparameter replaced by set_hyperparams
    itx = inject_tx()
    istep = jax.jit(make_step(itx))
    istate, istate_shardings = _init(itx, params0)
    iparams, istate = run_inject(params0, istate, grads, istep)
    report["inject_state_placed"] = _placed_like(istate, istate_shardings)
    report["inject_state_specs"] = _specs(istate)

    arrays = {}
    arrays.update(_gather(clip_params, "clip_params"))
    arrays.update(_gather(clip_state, "clip_state"))
    arrays.update(_gather(iparams, "inject_params"))
    arrays.update(_gather(istate, "inject_state"))

    # Orbax: both processes save their shards, restore straight into them
    saved = {
        "params": clip_params,
        "state": clip_state,
        "inject_params": iparams,
        "inject_state": istate,
    }
    abstract_params = _abstract(clip_params)
    target = {
        "params": abstract_params,
        "state": gradtx.abstract_state(tx, abstract_params),
        "inject_params": abstract_params,
        "inject_state": gradtx.abstract_state(itx, abstract_params),
    }
    path = out / "orbax" / "checkpoint"  # the same directory for both processes
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, saved)
        checkpointer.wait_until_finished()
        metadata = checkpointer.metadata(path).item_metadata.tree
        for key in ("state", "inject_state"):  # before reading any array
            gradtx.check_state(metadata[key], target[key])
        restored = checkpointer.restore(path, target)
    for key in ("state", "inject_state"):
        gradtx.check_state(restored[key], target[key])
    report["restored_bitwise"] = _same_bits(restored, saved)
    report["restored_placed"] = _placed_like(restored, target)

    # one more step of each, from the restored state and from memory
    g = grads[CLIP_STEPS]
    following = {}
    for name, tree in (("memory", saved), ("restored", restored)):
        p, s = step(tree["params"], tree["state"], g)
        ip, istate_next = istep(tree["inject_params"], tree["inject_state"], g)
        following[name] = (p, s, ip, istate_next)
        arrays.update(_gather(following[name], f"{name}_next"))
    report["resumed_bitwise"] = _same_bits(following["restored"], following["memory"])

    np.savez(out / f"train-{pid}.npz", **arrays)
    (out / f"train-{pid}.json").write_text(json.dumps(report))


def _manager(directory: pathlib.Path, hang: dict | None = None):
    import orbax.checkpoint as ocp

    def before_commit() -> None:
        # Runs on process 0 once every process has written its shards and the
        # handler has finalized, right before the temporary directory is
        # renamed to its step: the last moment a save can be interrupted.
        if hang is not None and hang["on"]:
            (hang["out"] / "committing").touch()
            time.sleep(120)  # the test SIGKILLs this process meanwhile

    options = ocp.CheckpointManagerOptions(
        cleanup_tmp_directories=True,  # what an interrupted save left behind
        async_options=ocp.AsyncOptions(
            timeout_secs=90, post_finalization_callback=before_commit
        ),
    )
    return ocp.CheckpointManager(directory, options=options)


def _checkpoint_setup():
    _, _, params, grads = _sharded_setup()
    tx = clip_tx()
    step = jax.jit(make_step(tx))
    state, _ = _init(tx, params)
    params, state = step(params, state, grads[0])
    abstract_params = _abstract(params)
    target = {
        "params": abstract_params,
        "state": gradtx.abstract_state(tx, abstract_params),
    }
    return step, grads, {"params": params, "state": state}, target


def interrupt(out: pathlib.Path) -> None:
    import orbax.checkpoint as ocp

    pid = jax.process_index()
    step, grads, tree, _ = _checkpoint_setup()
    hang = {"on": False, "out": out}
    manager = _manager(out / "managed", hang)
    manager.save(1, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    np.savez(out / f"saved-{pid}.npz", **_gather(tree, "tree"))

    params, state = step(tree["params"], tree["state"], grads[1])
    hang["on"] = True
    manager.save(2, args=ocp.args.StandardSave({"params": params, "state": state}))
    (out / f"started-{pid}").touch()  # save() returned: the writes are under way
    manager.wait_until_finished()  # process 0 stops before the commit
    (out / f"finished-{pid}").touch()  # never reached: the test kills us first


def resume(out: pathlib.Path) -> None:
    import orbax.checkpoint as ocp

    pid = jax.process_index()
    step, grads, _, target = _checkpoint_setup()
    manager = _manager(out / "managed")
    report = {"steps": list(manager.all_steps()), "latest": manager.latest_step()}
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.StandardRestore(target)
    )
    gradtx.check_state(restored["state"], target["state"])
    report["restored_placed"] = _placed_like(restored, target)
    np.savez(out / f"restored-{pid}.npz", **_gather(restored, "tree"))

    # the interrupted step can be taken and saved again
    params, state = step(restored["params"], restored["state"], grads[1])
    manager.save(2, args=ocp.args.StandardSave({"params": params, "state": state}))
    manager.wait_until_finished()
    manager.reload()
    report["steps_after_saving_again"] = list(manager.all_steps())
    manager.close()
    (out / f"resume-{pid}.json").write_text(json.dumps(report))


def main(argv: list[str]) -> None:
    mode, process_id, port, out = argv
    _connect(int(process_id), int(port))
    {"train": train, "interrupt": interrupt, "resume": resume}[mode](pathlib.Path(out))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
