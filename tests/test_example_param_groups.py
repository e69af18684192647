"""examples/param_groups.py in a tiny configuration."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradtx._checks import path_str

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples/param_groups.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("param_groups", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(example):
    return example.main(steps=40, batch_size=64, hidden=32, log_every=20)


def leaves_by_path(tree):
    return {
        path_str(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_the_loss_falls(result):
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert result.test_accuracy > 0.6


def test_the_embedding_is_frozen_and_the_rest_moves(result):
    before, after = leaves_by_path(result.initial), leaves_by_path(result.final)
    assert before.keys() == after.keys()
    for path in before:
        if path.startswith("embed/"):
            assert before[path].tobytes() == after[path].tobytes(), path
        else:
            assert not np.array_equal(before[path], after[path]), path


def test_the_frozen_group_keeps_no_optimizer_state(result):
    state = result.tx.init(result.final)
    assert jax.tree.leaves(state.inner_states["frozen"]) == []
    shapes = [x.shape for x in jax.tree.leaves(state.inner_states["train"])]
    embed = leaves_by_path(result.final)["embed/embedding/value"]
    assert embed.shape not in shapes


def test_only_kernels_are_decayed(result):
    # With zero gradients, a fresh Adam step is zero and only the decay acts:
    # u = -lr * wd * p on the kernels, and nothing on biases, norms or the
    # frozen embedding.
    params = result.final
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(result.tx.update)(zeros, result.tx.init(params), params)
    updates, params = leaves_by_path(updates), leaves_by_path(params)
    decayed = {"hidden/kernel/value", "out/kernel/value"}
    assert set(updates) == decayed | {
        "embed/embedding/value",
        "hidden/bias/value",
        "norm/bias/value",
        "norm/scale/value",
        "out/bias/value",
    }
    for path, u in updates.items():
        if path in decayed:
            np.testing.assert_allclose(u, -3e-3 * 1e-2 * params[path], rtol=1e-6)
        else:
            assert not np.any(u), path
