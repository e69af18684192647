import re

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict, freeze

import gradtx
from gradtx import masks
from gradtx._checks import path_str
from gradtx.wrappers import masked


def by_path_str(tree):
    """{path: leaf} over the leaves of a tree, paths as in gradtx messages."""
    return {
        path_str(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


NESTED = {
    "embed": np.zeros((10, 4), np.float32),
    "encoder": {
        "layers": [
            {"kernel": np.zeros((4, 4), np.float32), "bias": np.zeros(4, np.float32)},
            {"kernel": np.zeros((4, 4), np.float32), "bias": np.zeros(4, np.float32)},
        ],
    },
    "step": 3,  # a Python number: not an array
}


# ----------------------------------------------------------------------------
# by_path


@pytest.mark.parametrize(
    ("patterns", "selected"),
    [
        (("embed",), {"embed"}),
        (("*bias",), {"encoder/layers/0/bias", "encoder/layers/1/bias"}),
        (("encoder/layers/0/*",), {"encoder/layers/0/kernel", "encoder/layers/0/bias"}),
        (("encoder/layers/[1-9]/kernel",), {"encoder/layers/1/kernel"}),
        (("embed", "*/1/bias"), {"embed", "encoder/layers/1/bias"}),
        (
            (re.compile(r"encoder/layers/\d+/kernel"),),
            {"encoder/layers/0/kernel", "encoder/layers/1/kernel"},
        ),
        (
            (re.compile(r".*(bias|embed)"),),
            {"embed", "encoder/layers/0/bias", "encoder/layers/1/bias"},
        ),
        (
            ("*",),
            {
                "embed",
                "encoder/layers/0/kernel",
                "encoder/layers/0/bias",
                "encoder/layers/1/kernel",
                "encoder/layers/1/bias",
            },
        ),
    ],
)
def test_by_path_selects_the_leaves_whose_path_matches(patterns, selected):
    mask = masks.by_path(*patterns)(NESTED)
    assert jax.tree.structure(mask) == jax.tree.structure(NESTED)
    assert {p for p, flag in by_path_str(mask).items() if flag} == selected
    assert all(isinstance(flag, bool) for flag in jax.tree.leaves(mask))
    assert by_path_str(mask)["step"] is False  # not an array, never selected


@pytest.mark.parametrize(
    "pattern",
    [
        re.compile(r"bias"),  # a regex must match the whole path
        "Embed",  # globs are case-sensitive
    ],
)
def test_by_path_refuses_a_pattern_that_selects_nothing(pattern):
    with pytest.raises(ValueError, match="matches no array leaf"):
        masks.by_path("embed", pattern)(NESTED)


def test_by_path_accepts_nnx_paths_with_and_without_value():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    for pattern in ["bias", "bias/value", "b*", re.compile("bias(/value)?")]:
        mask = masks.by_path(pattern)(state)
        assert by_path_str(mask) == {"bias/value": True, "kernel/value": False}


def test_by_path_works_under_jit_and_in_a_transformation():
    params = {"embed": jnp.ones((3, 2)), "w": jnp.ones((2, 2))}
    tx = masked(gradtx.sgd(0.5), masks.by_path("w"))
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    np.testing.assert_array_equal(updates["embed"], 1.0)
    np.testing.assert_array_equal(updates["w"], -0.5)


def test_by_path_reprs_as_its_call_and_rejects_bad_patterns():
    assert (
        repr(masks.by_path("a/*", re.compile("b"))) == "by_path('a/*', re.compile('b'))"
    )
    with pytest.raises(TypeError, match=r"by_path: expected at least one pattern"):
        masks.by_path()
    with pytest.raises(
        TypeError, match=r"by_path: a pattern must be a glob string .* got int 3"
    ):
        masks.by_path("a", 3)


# ----------------------------------------------------------------------------
# no_decay_for_biases_and_norms on every kind of tree


def decayed(mask):
    return {p for p, flag in by_path_str(mask).items() if flag}


def test_no_decay_on_plain_dicts_and_lists():
    params = {
        "blocks": [
            {
                "attn": {
                    "in_proj_weight": jnp.ones((6, 2)),
                    "in_proj_bias": jnp.ones(6),
                },
                "ln_1": {"weight": jnp.ones((2, 2)), "bias": jnp.ones(2)},
                "mlp": {"w": jnp.ones((2, 8)), "b": jnp.ones(8)},
            }
        ],
        "conv": {"weight": jnp.ones((4, 1, 3, 3)), "bias": jnp.ones((4, 1, 1))},
        "group_norm": {"scale": jnp.ones((2, 4))},
        "pos": jnp.ones((2, 2), jnp.int32),
        "temperature": jnp.ones(()),
        "gamma": jnp.ones(2),
    }
    mask = masks.no_decay_for_biases_and_norms(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    assert decayed(mask) == {
        "blocks/0/attn/in_proj_weight",
        "blocks/0/mlp/w",
        "conv/weight",
    }


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens).mean(axis=-2)
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


NNX_DECAYED = {"embed/embedding/value", "hidden/kernel/value", "out/kernel/value"}


def test_no_decay_on_an_nnx_mlp_state():
    params = nnx.state(NnxMLP(nnx.Rngs(0)), nnx.Param)
    mask = masks.no_decay_for_biases_and_norms(params)
    assert type(mask) is type(params)
    assert by_path_str(mask).keys() == by_path_str(params).keys()
    assert decayed(mask) == NNX_DECAYED


def test_no_decay_on_an_nnx_module_itself():
    mask = masks.no_decay_for_biases_and_norms(NnxMLP(nnx.Rngs(0)))
    assert decayed(mask) == NNX_DECAYED


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8)(x)
        x = nn.LayerNorm()(x)
        x = nn.relu(x)
        return nn.Dense(3)(x)


@pytest.mark.parametrize("container", [dict, freeze])
def test_no_decay_on_a_linen_mlp(container):
    variables = LinenMLP().init(jax.random.key(0), jnp.ones((1, 4)))
    params = container(variables)
    mask = masks.no_decay_for_biases_and_norms(params)
    assert isinstance(mask, FrozenDict) == isinstance(params, FrozenDict)
    assert decayed(mask) == {"params/Dense_0/kernel", "params/Dense_1/kernel"}
    assert set(by_path_str(mask)) == {
        "params/Dense_0/kernel",
        "params/Dense_0/bias",
        "params/LayerNorm_0/scale",
        "params/LayerNorm_0/bias",
        "params/Dense_1/kernel",
        "params/Dense_1/bias",
    }


def eqx_mlp():
    keys = jax.random.split(jax.random.key(0), 2)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(4, 8, key=keys[0]),
            eqx.nn.LayerNorm((2, 4)),  # 2-D scale: only the module type says "norm"
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(8, 3, key=keys[1]),
        ]
    )


def test_no_decay_on_an_equinox_mlp_with_a_layer_norm():
    model = eqx_mlp()
    mask = masks.no_decay_for_biases_and_norms(model)
    assert by_path_str(mask) == {
        "layers/0/weight": True,
        "layers/0/bias": False,
        "layers/1/weight": False,
        "layers/1/bias": False,
        "layers/2/fn": False,  # the activation function: not an array
        "layers/3/weight": True,
        "layers/3/bias": False,
    }
    # the same on the arrays alone, as eqx.filter leaves them
    params = eqx.filter(model, eqx.is_array)
    assert decayed(masks.no_decay_for_biases_and_norms(params)) == {
        "layers/0/weight",
        "layers/3/weight",
    }


def test_no_decay_on_equinox_mlp_with_activation_leaves():
    model = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0))
    mask = by_path_str(masks.no_decay_for_biases_and_norms(model))
    assert mask["activation"] is False and mask["final_activation"] is False
    assert {p for p, f in mask.items() if f} == {
        "layers/0/weight",
        "layers/1/weight",
        "layers/2/weight",
    }


def test_adamw_decays_exactly_the_selected_leaves_of_an_equinox_model():
    model = eqx_mlp()
    params = eqx.filter(model, eqx.is_array)
    tx = gradtx.adamw(0.1, weight_decay=0.5, mask=masks.no_decay_for_biases_and_norms)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    want = decayed(masks.no_decay_for_biases_and_norms(params))
    for path, u in by_path_str(updates).items():
        p = by_path_str(params)[path]
        expected = -0.1 * 0.5 * p if path in want else jnp.zeros_like(p)
        np.testing.assert_allclose(u, expected, rtol=1e-6, err_msg=path)


def test_no_decay_mask_is_the_same_under_jit():
    params = nnx.state(NnxMLP(nnx.Rngs(0)), nnx.Param)
    seen = []

    @jax.jit
    def f(params):
        seen.append(masks.no_decay_for_biases_and_norms(params))
        return params

    f(params)
    assert by_path_str(seen[0]) == by_path_str(
        masks.no_decay_for_biases_and_norms(params)
    )


def test_names_that_only_begin_or_end_in_norm_are_decayed():
    params = {
        "normal_head": {"kernel": jnp.zeros((4, 4))},
        "normalizing_flow": {"kernel": jnp.zeros((4, 4))},
        "enorm_proj": {"kernel": jnp.zeros((4, 4))},
        "qk_norm": {"scale": jnp.zeros((4, 4))},
        "RMSNorm_0": {"scale": jnp.zeros((4, 4))},
    }
    mask = masks.no_decay_for_biases_and_norms(params)
    assert mask == {
        "normal_head": {"kernel": True},
        "normalizing_flow": {"kernel": True},
        "enorm_proj": {"kernel": True},
        "qk_norm": {"scale": False},
        "RMSNorm_0": {"scale": False},
    }


def test_a_pattern_that_matches_nothing_is_an_error():
    params = {"embed": jnp.zeros((3, 2)), "dense": {"kernel": jnp.zeros((2, 2))}}
    with pytest.raises(ValueError, match=r"'\*/bais' matches no array leaf"):
        masks.by_path("embed", "*/bais")(params)


@pytest.mark.parametrize(
    "mask, path",
    [
        ({"a": True, "b": False}, "'c'"),
        ({"a": True, "c": False}, "'b'"),
        ({"a": True, "b": False, "c": {"d": True}}, "'c/e'"),
    ],
)
def test_a_mask_missing_a_key_names_that_key(mask, path):
    params = {
        "a": jnp.ones((2, 2)),
        "b": jnp.ones(2),
        "c": {"d": jnp.ones(2), "e": jnp.ones(2)},
    }
    tx = gradtx.masked(gradtx.scale(2.0), mask)
    with pytest.raises(ValueError, match=f"mask has no entry for {path}"):
        tx.update(params, tx.init(params), params)
