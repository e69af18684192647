"""State saves and restores exactly, and only into the optimizer it fits."""

import os

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
