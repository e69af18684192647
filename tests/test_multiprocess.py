"""gradtx on JAX's multi-controller runtime: two processes, four devices.

Each test starts two processes (tests/multiprocess_worker.py) on the
loopback address, each with two CPU devices, joined by
`jax.distributed.initialize` with a local coordinator and CPU collectives
through gloo: the setup of docs/scaling.md ("Many hosts") on one machine.
They build one 2x2 mesh (data across the processes, model within one) and
report through files; this process computes the same steps on one device and
compares. Every wait is bounded: a hung or crashed worker fails its test
within `TIMEOUT` seconds and both processes are killed.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import multiprocess_worker as worker
import numpy as np
import pytest

WORKER = pathlib.Path(worker.__file__).resolve()
TIMEOUT = 60  # seconds for a pair of processes (they take about 10)


def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


pytestmark = pytest.mark.skipif(
    not _gloo_available(),
    reason="this jaxlib has no gloo CPU collectives, which multi-process CPU "
    "computations need",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(mode: str, out: pathlib.Path) -> list[subprocess.Popen]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    env["JAX_PLATFORMS"] = "cpu"
    port = str(_free_port())
    processes = []
    for i in range(2):
        with open(out / f"{mode}-{i}.log", "w") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), mode, str(i), port, str(out)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group, killed as one
                )
            )
    return processes


def _kill(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in processes:
        p.wait(timeout=10)


def _logs(mode: str, out: pathlib.Path) -> str:
    return "\n".join(
        f"--- process {i} ---\n" + (out / f"{mode}-{i}.log").read_text()[-3000:]
        for i in range(2)
    )


def _wait(mode, out, processes, until=lambda: False) -> None:
    """Until both processes exit with 0, or until `until()`; fail otherwise.

    A process that fails (the other then waits for it at a barrier), or a
    pair still running after TIMEOUT seconds, fails the test at once.
    """
    deadline = time.monotonic() + TIMEOUT
    while not until():
        codes = [p.poll() for p in processes]
        if any(code not in (None, 0) for code in codes):
            _kill(processes)
            pytest.fail(
                f"{mode}: a worker failed, exit codes {codes}\n" + _logs(mode, out)
            )
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            _kill(processes)
            pytest.fail(f"{mode}: timed out after {TIMEOUT} s\n" + _logs(mode, out))
        time.sleep(0.05)


def _run(mode: str, out: pathlib.Path) -> None:
    processes = _start(mode, out)
    try:
        _wait(mode, out, processes)
    finally:
        _kill(processes)


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return dict(data)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).view(f"u{x.dtype.itemsize}")


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(_bits(a[key]), _bits(b[key]), err_msg=key)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiprocess")
    _run("train", out)
    reports = [json.loads((out / f"train-{i}.json").read_text()) for i in range(2)]
    arrays = [_load(out / f"train-{i}.npz") for i in range(2)]
    return reports, arrays


@pytest.fixture(scope="module")
def single_process():
    """The same steps in this process, on one device, unsharded."""
    params = {k: jnp.asarray(x) for k, x in worker.make_params().items()}
    grads = [{k: jnp.asarray(x) for k, x in g.items()} for g in worker.make_grads()]
    clip_params, clip_state = params, worker.clip_tx().init(params)
    step = jax.jit(worker.make_step(worker.clip_tx()))
    for t in range(worker.CLIP_STEPS):
        clip_params, clip_state = step(clip_params, clip_state, grads[t])
    itx = worker.inject_tx()
    iparams, istate = worker.run_inject(
        params, itx.init(params), grads, jax.jit(worker.make_step(itx))
    )
    arrays = {}
    for prefix, tree in [
        ("clip_params", clip_params),
        ("clip_state", clip_state),
        ("inject_params", iparams),
        ("inject_state", istate),
    ]:
        arrays.update({k: np.asarray(x) for k, x in worker.flat(tree, prefix).items()})
    return arrays


def test_two_processes_share_one_mesh_of_four_devices(trained):
    reports, _ = trained
    assert [r["process_index"] for r in reports] == [0, 1]
    for r in reports:
        assert r["process_count"] == 2
        assert r["device_count"] == 4
        assert r["local_device_count"] == 2
        # data across the processes, model within one
        assert r["mesh_processes"] == [[0, 0], [1, 1]]
        assert r["local_shards_of_mu_w"] == 2  # of 4: each process holds half
        specs = r["clip_state_specs"]
        assert specs["[1][0].mu['w']"] == "P('data', 'model')"
        assert specs["[1][0].nu['b']"] == "P('model',)"
        assert specs["[1][0].mu['rows']"] == "P(('data', 'model'), None)"
        assert specs["[1][0].count"] == "P()"
        specs = r["inject_state_specs"]
        assert specs[".inner_state[0].mu['w']"] == "P('data', 'model')"
        assert specs[".hyperparams['weight_decay']"] == "P()"
        # state_shardings as out_shardings of init, and kept by every step
        for key in ("init_placed", "clip_state_placed", "clip_params_placed"):
            assert r[key], key
        assert r["inject_state_placed"]


def test_both_processes_see_the_same_global_values(trained):
    _, (first, second) = trained
    _assert_bitwise_equal(first, second)


def test_sharded_clip_and_adamw_match_one_process(trained, single_process):
    _, (got, _) = trained
    keys = [k for k in single_process if k.startswith("clip_")]
    assert keys and set(keys) <= set(got)
    for key in keys:
        want = single_process[key]
        assert got[key].dtype == want.dtype, key
        if want.dtype.kind != "f":  # step counts
            np.testing.assert_array_equal(got[key], want, err_msg=key)
            continue
        # The only difference is the global norm: the four devices each add
        # up their own shards and a psum adds their totals, where one device
        # adds all ~2,600 squares in its own order. The two sums differ by a
        # few float32 roundings (about 1e-7 relative), and so do the clip
        # scales; the moments carry that error (nu twice, as the square of
        # the scale), and the params 1 ulp of rounding. Measured with this
        # seed: 1.2e-7 absolute in params (1 ulp at values in [1, 2); 3e-8
        # to 7e-8 of a leaf's largest element), 1.8e-7 at worst relative to
        # a leaf's largest element (nu); other seeds may differ by nothing.
        # A wrong step or a wrong norm is off by orders of magnitude.
        scale = float(np.max(np.abs(want)))
        error = float(np.max(np.abs(got[key].astype(np.float64) - want)))
        assert error <= 1e-6 * scale, (key, error, scale)


def test_sharded_inject_hyperparams_matches_one_process_bit_for_bit(
    trained, single_process
):
    # AdamW alone adds nothing up across elements: every device applies the
    # same float32 operations to its elements as one device would to all,
    # so the sharded run is exact (docs/scaling.md).
    _, (got, _) = trained
    want = {k: v for k, v in single_process.items() if k.startswith("inject_")}
    _assert_bitwise_equal({k: got[k] for k in want}, want)
    decay = got["inject_state/.hyperparams['weight_decay']"]
    assert decay == np.float32(worker.NEW_DECAY)  # set_hyperparams took effect
    assert got["inject_state/.count"] == worker.INJECT_STEPS


def test_orbax_restores_bit_for_bit_and_training_resumes_bit_for_bit(trained):
    reports, (got, _) = trained
    for r in reports:
        # restored into abstract_state's shardings (gradtx.check_state passed
        # on Orbax's metadata and on the restored trees, in both processes)
        assert r["restored_placed"]
        assert r["restored_bitwise"]  # every local shard, bit for bit
        assert r["resumed_bitwise"]  # one more step from each: same bits
    memory = {k[len("memory") :]: v for k, v in got.items() if k.startswith("memory")}
    restored = {
        k[len("restored") :]: v for k, v in got.items() if k.startswith("restored")
    }
    assert memory
    _assert_bitwise_equal(restored, memory)


def test_a_save_killed_before_its_commit_leaves_the_last_checkpoint(tmp_path):
    # Step 1 is saved completely; step 2 is killed once every shard of it is
    # written, just before Orbax's commit renames it into place (the worker
    # stops there and touches `committing`): SIGKILL, as a lost machine.
    processes = _start("interrupt", tmp_path)
    markers = [tmp_path / "committing", tmp_path / "started-0", tmp_path / "started-1"]
    try:
        _wait(
            "interrupt",
            tmp_path,
            processes,
            until=lambda: all(m.exists() for m in markers),
        )
    finally:
        _kill(processes)
    assert [p.returncode for p in processes] == [-signal.SIGKILL] * 2
    assert not list(tmp_path.glob("finished-*"))
    managed = tmp_path / "managed"
    left = sorted(p.name for p in managed.iterdir())
    assert left == ["1", "2.orbax-checkpoint-tmp"]  # step 2 never committed

    # A fresh pair of processes restores step 1 exactly as it was saved, and
    # can save step 2 again over what the killed save left.
    _run("resume", tmp_path)
    saved = _load(tmp_path / "saved-0.npz")
    for i in range(2):
        report = json.loads((tmp_path / f"resume-{i}.json").read_text())
        assert report["steps"] == [1] and report["latest"] == 1
        assert report["restored_placed"]
        assert report["steps_after_saving_again"] == [1, 2]
        _assert_bitwise_equal(_load(tmp_path / f"restored-{i}.npz"), saved)
    assert sorted(p.name for p in managed.iterdir()) == ["1", "2"]
