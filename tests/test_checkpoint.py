"""State saves and restores exactly, and only into the optimizer it fits."""

import json
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx.checkpoint import check_state, restore_state, save_state
from gradtx.sharding import abstract_state

STEPS, SAVE_AT = 12, 5


def make_params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=3), jnp.bfloat16),
        "layers": [{"kernel": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}],
        "s": jnp.float32(0.5),
    }


def make_tx():
    """Counts, schedules, injected values, masks, skips, micro-steps, plateaus."""
    inner = gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        # mu_dtype reaches adam through adamw's **kwargs: name it static
        gradtx.inject_hyperparams(gradtx.adamw, static_args="mu_dtype")(
            learning_rate=gradtx.warmup_cosine_decay_schedule(0.0, 0.05, 3, 30),
            weight_decay=1e-3,
            mu_dtype=jnp.bfloat16,
        ),
        gradtx.masked(
            gradtx.scale_by_momentum(0.5),
            {"w": True, "b": False, "layers": True, "s": False},
        ),
        gradtx.reduce_on_plateau(factor=0.5, patience=1),
    )
    return gradtx.apply_if_finite(
        gradtx.accumulate_gradients(inner, every_k=2), max_consecutive_errors=2
    )


def loss(params):
    return sum(
        jnp.sum(jnp.square(x.astype(jnp.float32) - 0.25))
        for x in jax.tree.leaves(params)
    )


@jax.jit
def step_fn(params, state, t):
    value, grads = jax.value_and_grad(loss)(params)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    # step 3 brings a NaN: apply_if_finite skips it and counts it
    grads["w"] = jnp.where(t == 3, jnp.nan, grads["w"])
    updates, state = make_tx().update(grads, state, params, loss=value)
    return gradtx.apply_updates(params, updates), state


def injected(state):
    """The InjectHyperparamsState inside apply_if_finite(accumulate(chain))."""
    return state.inner_state.inner_state[1]


def with_weight_decay(state, value):
    """Replace an injected hyperparameter mid-run, as a user would."""
    inject = injected(state)
    hyperparams = dict(inject.hyperparams, weight_decay=jnp.asarray(value, jnp.float32))
    chain_state = list(state.inner_state.inner_state)
    chain_state[1] = inject._replace(hyperparams=hyperparams)
    accumulate = state.inner_state._replace(inner_state=tuple(chain_state))
    return state._replace(inner_state=accumulate)


def train(params, state, start, stop):
    for t in range(start, stop):
        if t == SAVE_AT:
            state = with_weight_decay(state, 3e-2)
        params, state = step_fn(params, state, t)
    return params, state


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert jax.typeof(x) == jax.typeof(y)  # dtype, shape, weak type
        np.testing.assert_array_equal(
            np.asarray(x).view(f"u{x.dtype.itemsize}"),
            np.asarray(y).view(f"u{y.dtype.itemsize}"),
        )


@pytest.fixture(scope="module")
def uninterrupted():
    params = make_params()
    return train(params, make_tx().init(params), 0, STEPS)


def test_training_continues_bit_for_bit_after_an_npz_restore(tmp_path, uninterrupted):
    params = make_params()
    params, state = train(params, make_tx().init(params), 0, SAVE_AT + 1)
    assert float(injected(state).hyperparams["weight_decay"]) == pytest.approx(3e-2)
    assert int(state.notfinite_total) == 1  # the skipped step is counted
    path = tmp_path / "opt_state.npz"
    save_state(path, state)
    # a new process: rebuild the optimizer, restore into its abstract state
    like = jax.eval_shape(make_tx().init, params)
    restored = restore_state(path, like)
    assert_bitwise_equal(restored, state)
    assert_bitwise_equal(train(params, restored, SAVE_AT + 1, STEPS), uninterrupted)


def test_training_continues_bit_for_bit_after_an_orbax_restore(tmp_path, uninterrupted):
    ocp = pytest.importorskip("orbax.checkpoint")
    params = make_params()
    params, state = train(params, make_tx().init(params), 0, SAVE_AT + 1)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        metadata = checkpointer.metadata(tmp_path / "state").item_metadata.tree
        target = abstract_state(make_tx(), params)
        check_state(metadata, target)  # before reading any array
        restored = checkpointer.restore(tmp_path / "state", target)
        raw = checkpointer.restore(tmp_path / "state")  # dicts and lists
    check_state(raw, target)
    check_state(restored, target)
    assert_bitwise_equal(restored, state)
    assert_bitwise_equal(train(params, restored, SAVE_AT + 1, STEPS), uninterrupted)


def test_check_state_reads_orbax_metadata_of_another_optimizer(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params = make_params()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", gradtx.adam(1e-3).init(params))
        checkpointer.wait_until_finished()
        metadata = checkpointer.metadata(tmp_path / "state").item_metadata.tree
    like = jax.eval_shape(gradtx.sgd(1e-3, momentum=0.9).init, params)
    with pytest.raises(ValueError, match=r"check_state: .*'0/velocity/b'.*'0/count'"):
        check_state(metadata, like)


def saved(tmp_path, tx, params):
    path = tmp_path / "opt_state.npz"
    save_state(path, tx.init(params))
    return path


@pytest.mark.parametrize(
    ("other", "message"),
    [
        # a different chain: an extra link shifts every path
        (
            lambda: gradtx.chain(gradtx.clip(1.0), gradtx.adam(1e-3)),
            r"needs '1/0/count', which the checkpoint lacks; it has '0/count'",
        ),
        # a different optimizer
        (
            lambda: gradtx.sgd(1e-3, momentum=0.9),
            r"needs '0/velocity/b', which the checkpoint lacks; it has '0/count'",
        ),
        # a schedule where the saved optimizer had a constant keeps a count
        (
            lambda: gradtx.adam(gradtx.linear_schedule(1e-3, 0.0, 10)),
            r"needs '1/count', which the checkpoint lacks",
        ),
    ],
)
def test_restoring_into_another_optimizer_names_the_path(tmp_path, other, message):
    params = make_params()
    path = saved(tmp_path, gradtx.adam(1e-3), params)
    with pytest.raises(ValueError, match=r"restore_state: .*" + message):
        restore_state(path, jax.eval_shape(other().init, params))


def test_a_renamed_leaf_is_named(tmp_path):
    params = make_params()
    path = saved(tmp_path, gradtx.adam(1e-3), params)
    renamed = dict(params)
    renamed["bias"] = renamed.pop("b")
    like = jax.eval_shape(gradtx.adam(1e-3).init, renamed)
    with pytest.raises(
        ValueError,
        match=r"needs '0/mu/bias', which the checkpoint lacks; it has '0/mu/b'",
    ):
        restore_state(path, like)


def test_a_different_shape_or_dtype_is_named(tmp_path):
    params = make_params()
    path = saved(tmp_path, gradtx.adam(1e-3), params)
    wider = dict(params, w=jnp.zeros((4, 5)))
    with pytest.raises(
        ValueError, match=r"differ at '0/mu/w': the checkpoint holds float32\[4, 3\], "
    ):
        restore_state(path, jax.eval_shape(gradtx.adam(1e-3).init, wider))
    half = dict(params, w=jnp.zeros((4, 3), jnp.float16))
    with pytest.raises(ValueError, match=r"at '0/mu/w'.*state needs float16\[4, 3\]"):
        restore_state(path, gradtx.adam(1e-3).init(half))


def test_a_foreign_npz_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    with open(path, "wb") as file:
        np.savez(file, w=np.zeros(3))
    with pytest.raises(ValueError, match=r"was not written by save_state"):
        restore_state(path, gradtx.adam(1e-3).init({"w": jnp.zeros(3)}))


def test_awkward_leaves_and_special_values_round_trip_exactly(tmp_path):
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3.0]
    with jax.enable_x64(True):
        state = {
            "bf16": jnp.asarray(specials, jnp.bfloat16),
            "f16": jnp.asarray(specials, jnp.float16),
            "f32": jnp.asarray(specials, jnp.float32),
            "f64": jnp.asarray(specials, jnp.float64),
            "empty": jnp.zeros((0, 3), jnp.bfloat16),
            "scalar": jnp.int32(7),
            "flag": jnp.array(True),
            "none": None,
            "nested": ([jnp.uint8(255)], (jnp.zeros((2, 0)),)),
        }
        save_state(tmp_path / "s.npz", state)
        restored = restore_state(tmp_path / "s.npz", like=state)
        assert_bitwise_equal(restored, state)
        assert restored["none"] is None


def test_saving_over_a_checkpoint_leaves_no_partial_file(tmp_path):
    tx, params = gradtx.adam(1e-3), make_params()
    path = tmp_path / "opt_state.npz"
    save_state(path, tx.init(params))
    save_state(path, tx.update(params, tx.init(params), params)[1])
    assert os.listdir(tmp_path) == ["opt_state.npz"]  # no suffix added either
    assert int(restore_state(path, tx.init(params))[0].count) == 1


def test_keys_that_differ_by_npy_restore_from_their_own_entries(tmp_path):
    # numpy finds entry "emb" under "emb.npy" too: the names must not alias
    state = {"emb": jnp.zeros(3), "emb.npy": jnp.ones(3)}
    save_state(tmp_path / "s.npz", state)
    restored = restore_state(tmp_path / "s.npz", like=state)
    assert_bitwise_equal(restored, state)


def test_keys_named_like_savez_arguments_are_saved(tmp_path):
    state = {"file": jnp.zeros(3), "allow_pickle": jnp.ones(2)}
    save_state(tmp_path / "s.npz", state)
    restored = restore_state(tmp_path / "s.npz", like=state)
    assert_bitwise_equal(restored, state)


def rewrite_only_entry(path, value):
    """Replace the one leaf entry of a checkpoint, keeping its manifest."""
    with np.load(path) as data:
        entries = {name: data[name] for name in data.files}
    (leaf,) = [name for name in entries if name != "__gradtx_state__"]
    entries[leaf] = value
    with open(path, "wb") as file:
        np.savez(file, **entries)


@pytest.mark.parametrize(
    ("leaf", "stored"),
    [
        # same size, another dtype: a view would reinterpret the bits
        (jnp.zeros((4, 3)), np.arange(12, dtype=np.int32).reshape(4, 3)),
        # same size, another shape: a reshape would hide it
        (jnp.zeros((4, 3)), np.zeros(12, np.float32)),
        (jnp.zeros((4, 3)), np.zeros((4, 3), np.float64)),
        # bfloat16 is stored as uint16 bits, not as another 2-byte float
        (jnp.zeros(3, jnp.bfloat16), np.ones(3, np.float16)),
    ],
)
def test_an_entry_that_disagrees_with_the_manifest_is_refused(tmp_path, leaf, stored):
    path = tmp_path / "s.npz"
    save_state(path, {"w": leaf})
    rewrite_only_entry(path, stored)
    with pytest.raises(ValueError, match=r"restore_state: .*'w'.*manifest"):
        restore_state(path, like={"w": leaf})


def test_a_version_1_checkpoint_still_restores(tmp_path):
    # written by hand as version 1 did: entries named by their paths, and
    # bfloat16 left to numpy, which stores it as opaque 2-byte values
    state = {"emb": jnp.arange(3.0), "emb.npy": jnp.ones(3), "b": jnp.ones(2)}
    leaves = [
        {"path": "b", "dtype": "bfloat16", "shape": [2]},
        {"path": "emb", "dtype": "float32", "shape": [3]},
        {"path": "emb.npy", "dtype": "float32", "shape": [3]},
    ]
    header = json.dumps({"format": "gradtx.state", "version": 1, "leaves": leaves})
    path = tmp_path / "v1.npz"
    with open(path, "wb") as file:
        np.savez(
            file,
            __gradtx_state__=np.frombuffer(header.encode(), np.uint8),
            b=np.asarray(jnp.ones(2, jnp.bfloat16)),
            emb=np.arange(3.0, dtype=np.float32),
            **{"emb.npy": np.ones(3, np.float32)},
        )
    like = dict(state, b=jnp.zeros(2, jnp.bfloat16))
    restored = restore_state(path, like)
    assert_bitwise_equal(restored, dict(state, b=jnp.ones(2, jnp.bfloat16)))


def test_an_unknown_format_version_is_named(tmp_path):
    header = json.dumps({"format": "gradtx.state", "version": 99, "leaves": []})
    path = tmp_path / "future.npz"
    with open(path, "wb") as file:
        np.savez(file, __gradtx_state__=np.frombuffer(header.encode(), np.uint8))
    with pytest.raises(ValueError, match=r"restore_state: .*version 99"):
        restore_state(path, like={})


@pytest.mark.parametrize(
    ("saved_by", "restored_by"),
    [
        (lambda: gradtx.adam(1e-3), lambda: gradtx.adamw(1e-3)),
        (lambda: gradtx.adam(1e-3), lambda: gradtx.adam(1e-3, nesterov=True)),
        (lambda: gradtx.adam(1e-3), lambda: gradtx.adam(3e-4)),
        (
            lambda: gradtx.sgd(0.1, momentum=0.9),
            lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True),
        ),
        (
            lambda: gradtx.chain(gradtx.identity(), gradtx.adam(1e-3)),
            lambda: gradtx.chain(gradtx.clip(1.0), gradtx.adam(1e-3)),
        ),
    ],
)
def test_a_checkpoint_of_another_optimizer_with_the_same_layout_is_refused(
    tmp_path, saved_by, restored_by
):
    params = make_params()
    path = tmp_path / "opt_state.npz"
    state = saved_by().init(params)
    save_state(path, state, tx=saved_by())
    tx = restored_by()
    like = jax.eval_shape(tx.init, params)
    check_state(jax.eval_shape(saved_by().init, params), like)  # same layout
    with pytest.raises(ValueError, match=r"restore_state: .*another optimizer") as e:
        restore_state(path, like, tx=tx)
    assert gradtx.describe(saved_by()) in str(e.value)
    assert gradtx.describe(tx) in str(e.value)
    assert "allow_other_optimizer=True" in str(e.value)
    restored = restore_state(path, like, tx=tx, allow_other_optimizer=True)
    assert jax.tree.structure(restored) == jax.tree.structure(like)
    assert_bitwise_equal(jax.tree.leaves(restored), jax.tree.leaves(state))


def test_a_checkpoint_of_the_same_optimizer_is_accepted(tmp_path):
    def make():
        return gradtx.adamw(gradtx.linear_schedule(1e-3, 0.0, 10), weight_decay=0.1)

    params = make_params()
    state = make().update(params, make().init(params), params)[1]
    path = tmp_path / "opt_state.npz"
    save_state(path, state, tx=make())
    assert_bitwise_equal(restore_state(path, state, tx=make()), state)
    save_state(path, state)  # nothing recorded: only the layout is checked
    assert_bitwise_equal(restore_state(path, state, tx=gradtx.adam(1e-3)), state)


def test_save_state_names_a_tx_that_is_not_a_transformation(tmp_path):
    with pytest.raises(TypeError, match=r"save_state: tx .*got str"):
        save_state(tmp_path / "s.npz", {}, tx="adam")


def test_a_checkpoint_has_the_mode_of_a_plainly_opened_file(tmp_path):
    old = os.umask(0o022)
    try:
        save_state(tmp_path / "opt_state.npz", {"w": jnp.zeros(2)})
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "opt_state.npz").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode) == 0o644


def test_the_file_is_synced_before_the_rename_and_the_folder_after(
    tmp_path, monkeypatch
):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync {kind}")
        fsync(fd)

    def recording_replace(src, dst):
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    save_state(tmp_path / "opt_state.npz", {"w": jnp.zeros(2)})
    assert events == ["fsync file", "replace", "fsync folder"]
