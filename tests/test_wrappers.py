import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R

import gradtx
from gradtx import masks
from gradtx._checks import path_str
from gradtx.wrappers import (
    AccumulateGradientsState,
    ApplyIfFiniteState,
    MaskedState,
    MultiTransformState,
    accumulate_gradients,
    apply_if_finite,
    freeze,
    masked,
    multi_transform,
)

RTOL = 1e-4
MASK = {"w": True, "b": False, "s": True}


def bits(tree):
    """The leaves as raw bytes: equal only if bit for bit identical."""
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def close(got, want, rtol=1e-6):
    chex.assert_trees_all_close(got, want, rtol=rtol, atol=0)


def n_arrays(tree):
    return len(jax.tree.leaves(tree))


def grads_sequence(steps, seed=1):
    return [R.to_f32(g) for g in R.make_grads(steps, seed)]


def run(tx, grads, params=None, update=None):
    """Step `tx` over `grads` with the params following the updates."""
    params = R.to_f32(R.make_params()) if params is None else params
    state = tx.init(params)
    update = jax.jit(tx.update) if update is None else update
    for g in grads:
        updates, state = update(g, state, params)
        params = gradtx.apply_updates(params, updates)
    return params, state


# ----------------------------------------------------------------------------
# float64 references for the wrappers, on R's dicts of float64 arrays


def ref_masked(ref, mask):
    """`ref` on the selected keys only; the others pass through."""

    def pick(tree):
        return {k: v for k, v in tree.items() if mask[k]}

    def init(params):
        return ref.init(pick(params))

    def update(grads, state, params):
        out, state = ref.update(pick(grads), state, pick(params))
        return {k: out[k] if mask[k] else grads[k] for k in grads}, state

    return R.Ref(init, update)


def ref_accumulate(ref, every_k):
    """`ref` applied once per `every_k` steps on the mean of their gradients."""

    def init(params):
        return {"seen": [], "inner": ref.init(params)}

    def update(grads, state, params):
        seen = state["seen"] + [grads]
        if len(seen) < every_k:
            zeros = {k: np.zeros_like(g) for k, g in grads.items()}
            return zeros, {"seen": seen, "inner": state["inner"]}
        mean = {k: sum(s[k] for s in seen) / every_k for k in grads}
        out, inner = ref.update(mean, state["inner"], params)
        return out, {"seen": [], "inner": inner}

    return R.Ref(init, update)


def test_masked_matches_float64_equation():
    tx = gradtx.chain(masked(gradtx.scale_by_adam(), MASK), gradtx.scale(-0.05))
    ref = R.chain(ref_masked(R.adam(), MASK), R.scale(-0.05))
    got, want = R.run_side_by_side(tx, ref)
    assert R.max_relative_error(got, want) < RTOL


@pytest.mark.parametrize("every_k", [1, 3])
def test_accumulate_gradients_matches_float64_equation(every_k):
    tx = accumulate_gradients(gradtx.adam(0.05), every_k)
    ref = ref_accumulate(R.chain(R.adam(), R.scale_by_learning_rate(0.05)), every_k)
    got, want = R.run_side_by_side(tx, ref)
    assert R.max_relative_error(got, want) < RTOL


# ----------------------------------------------------------------------------
# masked


def test_masked_passes_unselected_leaves_through_unchanged():
    tx = masked(gradtx.sgd(0.1, momentum=0.9), MASK)
    params = R.to_f32(R.make_params())
    grads = grads_sequence(1)[0]
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert bits(updates["b"]) == bits(grads["b"])
    np.testing.assert_allclose(updates["w"], -0.1 * grads["w"], rtol=1e-6)


def test_masked_keeps_no_state_for_unselected_leaves():
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(5), "s": jnp.ones(())}
    tx = masked(gradtx.scale_by_adam(), MASK)
    state = tx.init(params)
    assert isinstance(state, MaskedState)
    assert state.inner_state.mu["b"] is None and state.inner_state.nu["b"] is None
    assert sorted(x.shape for x in jax.tree.leaves(state)) == [
        (),  # the step count
        (),  # mu["s"]
        (),  # nu["s"]
        (4, 3),
        (4, 3),
    ]
    updates, new_state = jax.jit(tx.update)(params, state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_masked_inner_sees_only_the_selected_leaves():
    # the global norm is the norm of the selected leaves alone
    tx = masked(gradtx.clip_by_global_norm(1.0), {"a": True, "b": False})
    grads = {"a": jnp.array([0.6, 0.8]), "b": jnp.array([100.0])}
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_array_equal(updates["a"], grads["a"])  # norm 1: unclipped
    np.testing.assert_array_equal(updates["b"], grads["b"])


def test_masked_tree_prefix_and_callable_masks_agree():
    params = {
        "encoder": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
        "head": {"kernel": jnp.ones((2, 4)), "bias": jnp.ones(4)},
    }
    by_tree = {
        "encoder": {"kernel": True, "bias": True},
        "head": {"kernel": False, "bias": False},
    }
    by_prefix = {"encoder": True, "head": False}
    by_glob = masks.by_path("encoder/*")
    by_lambda = lambda p: {"encoder": True, "head": False}  # noqa: E731
    grads = jax.tree.map(lambda p: 0.5 * p + 0.25, params)
    results = []
    for mask in [by_tree, by_prefix, by_glob, by_lambda]:
        tx = masked(gradtx.adamw(0.1, weight_decay=0.1), mask)
        params_after, state = run(tx, [grads] * 3, params=params)
        results.append(bits((params_after, state)))
    assert all(r == results[0] for r in results[1:])
    # adamw moved the encoder; the head received its raw gradients
    assert not np.allclose(
        params_after["encoder"]["kernel"], params["encoder"]["kernel"]
    )
    head = params["head"]
    for _ in range(3):
        head = jax.tree.map(jnp.add, head, grads["head"])
    assert bits(params_after["head"]) == bits(head)


def test_masked_callable_mask_is_called_on_updates_without_params():
    tx = masked(
        gradtx.scale(2.0), lambda tree: jax.tree.map(lambda x: x.ndim > 1, tree)
    )
    grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_array_equal(updates["w"], 2.0)
    np.testing.assert_array_equal(updates["b"], 1.0)


def test_masked_works_with_an_optax_inner_and_keeps_no_state_for_the_rest():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(3)}
    tx = masked(optax.adam(0.1), {"w": True, "b": False})
    state = tx.init(params)
    assert {x.shape for x in jax.tree.leaves(state)} == {(), (2, 2)}
    updates, _ = jax.jit(tx.update)(params, state, params, loss=1.0)
    np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-5)
    np.testing.assert_array_equal(updates["b"], 1.0)


def test_masked_rejects_a_mask_that_does_not_fit_the_params():
    tx = masked(gradtx.sgd(0.1), {"dense": {"kernel": True, "scale": False}})
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    with pytest.raises(
        ValueError,
        match=r"masked: mask has no entry for 'dense/bias' of the params; it has "
        r"'dense/scale' instead, which the params lack",
    ):
        tx.init(params)
    with pytest.raises(ValueError, match=r"masked: .*'dense/scale'"):
        tx.update(params, gradtx.EmptyState(), params)


def test_masked_rejects_non_bool_mask_leaves_and_missing_masks():
    with pytest.raises(
        TypeError, match=r"masked: mask leaves must be Python bools, got"
    ):
        masked(gradtx.sgd(0.1), {"w": jnp.array(True)}).init({"w": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"masked: mask must be a tree .* got None"):
        masked(gradtx.sgd(0.1), None)
    with pytest.raises(TypeError, match=r"masked: inner must be an \(init, update\)"):
        masked(lambda g: g, {"w": True})


# ----------------------------------------------------------------------------
# multi_transform


GROUP_PARAMS = {
    "encoder": {"kernel": (3, 4), "bias": (4,)},
    "norm": {"scale": (4,)},
    "head": {"kernel": (4, 2), "bias": (2,)},
}
GROUP_LABELS = {  # "norm" labels its whole subtree
    "encoder": {"kernel": "adamw", "bias": "sgd"},
    "norm": "sgd",
    "head": {"kernel": "adamw", "bias": "sgd"},
}
LEAF_LABELS = dict(GROUP_LABELS, norm={"scale": "sgd"})


def group_params():
    keys = iter(jax.random.split(jax.random.key(0), 10))
    return jax.tree.map(
        lambda shape: jax.random.normal(next(keys), shape),
        GROUP_PARAMS,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def group_grads(params, steps=40):
    keys = jax.random.split(jax.random.key(1), steps)
    return [
        jax.tree.map(lambda p, k=k: p + jax.random.normal(k, p.shape), params)
        for k in keys
    ]


def subtree(tree, label):
    """The leaves of `tree` labelled `label`, in a flat dict keyed by path."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    labels = jax.tree.leaves(LEAF_LABELS)
    return {
        path_str(path): x
        for (path, x), lab in zip(flat, labels, strict=True)
        if lab == label
    }


def test_multi_transform_equals_each_optimizer_alone_on_its_group():
    adamw = gradtx.adamw(0.05, weight_decay=0.1)
    sgd = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.sgd(0.1, momentum=0.9))
    tx = multi_transform({"adamw": adamw, "sgd": sgd}, GROUP_LABELS)
    params = group_params()
    grads = group_grads(params)
    together, state = run(tx, grads, params=params)
    assert isinstance(state, MultiTransformState)
    for label, alone_tx in [("adamw", adamw), ("sgd", sgd)]:
        alone_grads = [subtree(g, label) for g in grads]
        alone, alone_state = run(alone_tx, alone_grads, params=subtree(params, label))
        assert bits(subtree(together, label)) == bits(alone)
        # the group's state holds exactly the arrays of the optimizer run alone
        assert sorted(bits(state.inner_states[label])) == sorted(bits(alone_state))


def test_multi_transform_labels_as_tree_and_as_callable_agree():
    def labels_fn(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, p: "adam" if p.ndim > 1 else "frozen", params
        )

    transforms = {"adam": gradtx.adam(0.1), "frozen": gradtx.set_to_zero()}
    params = group_params()
    grads = group_grads(params, steps=3)
    tree_labels = jax.tree.map(lambda p: "adam" if p.ndim > 1 else "frozen", params)
    a = run(multi_transform(transforms, tree_labels), grads, params=params)
    b = run(multi_transform(transforms, labels_fn), grads, params=params)
    assert bits(a) == bits(b)
    moved = jax.tree.map(lambda x, y: bool(jnp.any(x != y)), a[0], params)
    assert moved == jax.tree.map(lambda p: p.ndim > 1, params)


def test_multi_transform_group_state_holds_only_its_leaves():
    tx = multi_transform(
        {"adam": gradtx.scale_by_adam(), "zero": gradtx.set_to_zero()},
        {"w": "adam", "b": "zero"},
    )
    state = tx.init({"w": jnp.ones((2, 3)), "b": jnp.ones(7)})
    assert [x.shape for x in jax.tree.leaves(state.inner_states["adam"])] == [
        (),
        (2, 3),
        (2, 3),
    ]
    assert n_arrays(state.inner_states["zero"]) == 0


def test_multi_transform_with_an_unused_label_keeps_scalars_only_and_changes_nothing():
    tx = multi_transform(
        {"main": gradtx.adam(0.1), "norms": gradtx.adam(0.01)},
        lambda params: jax.tree.map(lambda _: "main", params),
    )
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    assert [x.shape for x in jax.tree.leaves(state.inner_states["norms"])] == [()]
    updates, new_state = jax.jit(tx.update)(params, state, params)
    np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-6)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_multi_transform_names_a_label_without_transformation():
    tx = multi_transform(
        {"decay": gradtx.adamw(0.1), "no_decay": gradtx.adam(0.1)},
        {"dense": {"kernel": "decay", "bias": "no_decay"}, "norm": "norms"},
    )
    params = {
        "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "norm": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
    }
    message = (
        r"multi_transform: label 'norms' at 'norm' has no transformation; "
        r"transforms has labels 'decay', 'no_decay'"
    )
    with pytest.raises(ValueError, match=message):
        tx.init(params)
    with pytest.raises(ValueError, match=message):
        tx.update(params, None, params)


def test_multi_transform_names_the_first_leaf_path_that_carries_a_bad_label():
    tx = multi_transform(
        {"a": gradtx.sgd(0.1)},
        lambda params: jax.tree.map(lambda p: "a" if p.ndim > 1 else "b", params),
    )
    params = {"layers": [{"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}]}
    with pytest.raises(ValueError, match=r"label 'b' at 'layers/0/bias' has no"):
        tx.init(params)


def test_multi_transform_rejects_bad_labels_and_transforms():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(
        ValueError,
        match=r"multi_transform: labels has no entry for 'b' of the params; it "
        r"has 'x' instead, which the params lack",
    ):
        multi_transform({"a": gradtx.sgd(0.1)}, {"w": "a", "x": "a"}).init(params)
    with pytest.raises(TypeError, match=r"labels must be strings, got int 3 at 'b'"):
        multi_transform({"a": gradtx.sgd(0.1)}, {"w": "a", "b": 3}).init(params)
    with pytest.raises(TypeError, match=r"transforms must be a dict from label"):
        multi_transform([gradtx.sgd(0.1)], {"w": "a", "b": "a"})
    with pytest.raises(TypeError, match=r"transforms\['a'\] must be an \(init"):
        multi_transform({"a": 0.1}, {"w": "a", "b": "a"})


# ----------------------------------------------------------------------------
# freeze


def test_freeze_zeroes_the_selected_leaves_and_keeps_no_state():
    params = {"embed": jnp.ones((5, 2)), "w": jnp.ones((2, 2))}
    tx = gradtx.chain(
        gradtx.adamw(0.1, weight_decay=0.5), freeze(masks.by_path("embed"))
    )
    state = tx.init(params)
    assert state[1] == gradtx.EmptyState()
    new_params, _ = run(tx, [params] * 5, params=params)
    assert bits(new_params["embed"]) == bits(params["embed"])
    assert bool(jnp.all(new_params["w"] < 1.0))


def test_freeze_rejects_a_mask_that_does_not_fit():
    tx = freeze({"w": True})
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(
        ValueError, match=r"freeze: mask has no entry for 'b' of the params"
    ):
        tx.update(params, tx.init(params), params)


# ----------------------------------------------------------------------------
# apply_if_finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_skipped_step_leaves_no_trace(bad):
    tx = apply_if_finite(gradtx.adamw(0.05, weight_decay=0.1), max_consecutive_errors=3)
    update = jax.jit(tx.update)
    grads = grads_sequence(6)
    poisoned = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(bad), grads[3])
    clean_params, clean_state = run(tx, grads, update=update)
    params, state = run(tx, grads[:3] + [poisoned] + grads[3:], update=update)
    assert bits(params) == bits(clean_params)
    assert bits(state.inner_state) == bits(clean_state.inner_state)
    assert int(state.notfinite_total) == 1 and int(clean_state.notfinite_total) == 0
    assert int(state.notfinite_in_a_row) == 0 and bool(state.last_finite)


def test_a_skipped_step_gives_zero_updates_and_counts():
    tx = apply_if_finite(gradtx.adam(0.1), max_consecutive_errors=5)
    params = R.to_f32(R.make_params())
    state = tx.init(params)
    grads = grads_sequence(1)[0]
    bad = dict(grads, b=grads["b"].at[2].set(jnp.nan))
    update = jax.jit(tx.update)
    for expected in [1, 2]:
        updates, new_state = update(bad, state, params)
        assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
        assert bits(new_state.inner_state) == bits(state.inner_state)
        assert int(new_state.notfinite_in_a_row) == expected
        assert int(new_state.notfinite_total) == expected
        assert not bool(new_state.last_finite)
        state = new_state
    updates, state = update(grads, state, params)
    assert int(state.notfinite_in_a_row) == 0 and int(state.notfinite_total) == 2
    assert bool(state.last_finite)
    np.testing.assert_allclose(updates["w"], -0.1 * np.sign(grads["w"]), rtol=1e-5)


@pytest.mark.parametrize("limit", [0, 2])
def test_after_max_consecutive_errors_the_step_is_applied(limit):
    tx = apply_if_finite(gradtx.sgd(0.1), max_consecutive_errors=limit)
    state = tx.init(jnp.zeros(2))
    update = jax.jit(tx.update)
    bad = jnp.array([1.0, jnp.nan])
    for _ in range(limit):
        updates, state = update(bad, state)
        np.testing.assert_array_equal(updates, 0.0)
    for in_a_row in [limit + 1, limit + 2]:  # applied until a finite step
        updates, state = update(bad, state)
        np.testing.assert_array_equal(updates, np.float32([-0.1, np.nan]))
        assert int(state.notfinite_in_a_row) == in_a_row
    updates, state = update(jnp.ones(2), state)
    np.testing.assert_allclose(updates, -0.1)
    assert int(state.notfinite_in_a_row) == 0
    assert int(state.notfinite_total) == limit + 2


def test_apply_if_finite_on_finite_steps_is_the_inner_transformation():
    inner = gradtx.rmsprop(0.05, momentum=0.9)
    grads = grads_sequence(20)
    wrapped, state = run(apply_if_finite(inner, 1), grads)
    alone, alone_state = run(inner, grads)
    assert bits(wrapped) == bits(alone)
    assert bits(state.inner_state) == bits(alone_state)
    assert isinstance(state, ApplyIfFiniteState)


def test_the_finiteness_check_is_one_reduction_per_leaf():
    tx = apply_if_finite(gradtx.adam(0.1), 3)
    params = R.to_f32(R.make_params())
    jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr
    primitives = [eqn.primitive.name for eqn in jaxpr.eqns]
    assert primitives.count("reduce_and") == len(params)
    assert primitives.count("cond") == 1


def test_apply_if_finite_rejects_bad_limits():
    with pytest.raises(
        ValueError,
        match=r"apply_if_finite: max_consecutive_errors must be in \[0, inf\), got -1",
    ):
        apply_if_finite(gradtx.sgd(0.1), -1)
    with pytest.raises(TypeError, match=r"max_consecutive_errors must be a whole"):
        apply_if_finite(gradtx.sgd(0.1), 2.5)


# ----------------------------------------------------------------------------
# accumulate_gradients


def test_k_micro_steps_equal_one_step_on_their_mean():
    every_k = 3
    inner = gradtx.adamw(0.05, weight_decay=0.1)
    tx = accumulate_gradients(inner, every_k)
    params = R.to_f32(R.make_params())
    micro = grads_sequence(2 * every_k)
    state = tx.init(params)
    update = jax.jit(tx.update)
    inner_params, inner_state = params, inner.init(params)
    for step in range(2):
        group = micro[step * every_k : (step + 1) * every_k]
        for i, g in enumerate(group):
            before = state.inner_state
            updates, state = update(g, state, params)
            if i < every_k - 1:  # in between: nothing moves
                assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
                assert bits(state.inner_state) == bits(before)
                assert int(state.micro_step) == i + 1
            params = gradtx.apply_updates(params, updates)
        # one step of the inner transformation on the mean, summed in order
        mean = jax.tree.map(lambda *gs: sum(gs[1:], gs[0]) / every_k, *group)
        inner_updates, inner_state = jax.jit(inner.update)(
            mean, inner_state, inner_params
        )
        inner_params = gradtx.apply_updates(inner_params, inner_updates)
        # equal up to float32 round-off: XLA folds the 1/k of the mean into the
        # inner step's constants differently in the two compiled programs
        close(params, inner_params)
        close(state.inner_state, inner_state)
        assert int(state.micro_step) == 0
        assert all(bool(jnp.all(a == 0)) for a in jax.tree.leaves(state.acc))
        np.testing.assert_allclose(
            mean["w"], np.mean([np.asarray(g["w"]) for g in group], 0), rtol=1e-6
        )


def test_every_k_of_one_is_the_inner_transformation_exactly():
    inner = gradtx.adam(0.05)
    grads = grads_sequence(10)
    grads[0]["b"] = grads[0]["b"].at[0].set(-0.0)
    wrapped, state = run(accumulate_gradients(inner, 1), grads)
    alone, alone_state = run(inner, grads)
    assert bits(wrapped) == bits(alone)
    assert bits(state.inner_state) == bits(alone_state)
    assert isinstance(state, AccumulateGradientsState) and state.acc is None


def test_accumulate_gradients_keeps_one_buffer_in_the_chosen_dtype():
    params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    tx = accumulate_gradients(gradtx.sgd(0.1), 4, accumulator_dtype=jnp.float32)
    state = tx.init(params)
    assert state.acc["w"].dtype == jnp.float32
    assert n_arrays(state) == 2  # the counter and the one buffer
    updates, state = jax.jit(tx.update)(params, state, params)
    assert updates["w"].dtype == jnp.bfloat16 and state.acc["w"].dtype == jnp.float32


def test_accumulate_gradients_rejects_bad_every_k():
    with pytest.raises(
        ValueError, match=r"accumulate_gradients: every_k must be in \[1, inf\), got 0"
    ):
        accumulate_gradients(gradtx.sgd(0.1), 0)
    with pytest.raises(ValueError, match=r"every_k must be in \[1, inf\), got -2"):
        accumulate_gradients(gradtx.sgd(0.1), -2)
    with pytest.raises(
        TypeError, match=r"every_k must be a whole number of steps, got float"
    ):
        accumulate_gradients(gradtx.sgd(0.1), 2.5)
    assert accumulate_gradients(gradtx.sgd(0.1), 2.0).hyperparams["every_k"] == 2.0


# ----------------------------------------------------------------------------
# every wrapper: jit, state structure, one compile, extras, describe


WRAPPED = {
    "masked": lambda: masked(gradtx.adam(0.05), {"w": True, "b": False, "s": True}),
    "masked/by_path": lambda: masked(gradtx.adam(0.05), masks.by_path("w", "s")),
    "multi_transform": lambda: multi_transform(
        {"adam": gradtx.adam(0.05), "sgd": gradtx.sgd(0.05, momentum=0.9)},
        {"w": "adam", "b": "sgd", "s": "sgd"},
    ),
    "freeze": lambda: gradtx.chain(
        gradtx.adam(0.05), freeze({"w": False, "b": True, "s": False})
    ),
    "apply_if_finite": lambda: apply_if_finite(gradtx.adam(0.05), 2),
    "accumulate_gradients": lambda: accumulate_gradients(gradtx.adam(0.05), 2),
}


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_wrapper_under_jit_keeps_its_state_and_compiles_once(name):
    tx = WRAPPED[name]()
    params = R.to_f32(R.make_params())
    state = tx.init(params)
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, loss=jnp.array(1.0))
        return gradtx.apply_updates(params, updates), state

    for g in grads_sequence(4):
        params, state = step(params, state, g)
        assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec
    assert step._cache_size() == 1
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_wrapper_passes_extras_to_the_inner_transformation(name):
    seen = []

    def init(params):
        return gradtx.EmptyState()

    def update(updates, state, params=None, **extra):
        seen.append(sorted(extra))
        return updates, state

    spy = gradtx.GradientTransformation(init, update)
    wrappers = {
        "masked": lambda: masked(spy, {"w": True, "b": False, "s": True}),
        "masked/by_path": lambda: masked(spy, masks.by_path("*")),
        "multi_transform": lambda: multi_transform({"a": spy}, "a"),
        "freeze": lambda: gradtx.chain(spy, freeze(False)),
        "apply_if_finite": lambda: apply_if_finite(spy, 2),
        "accumulate_gradients": lambda: accumulate_gradients(spy, 1),
    }
    tx = wrappers[name]()
    params = R.to_f32(R.make_params())
    tx.update(params, tx.init(params), params, loss=1.0, note="x")
    assert seen == [["loss", "note"]]


def test_describe_shows_wrappers_masks_and_groups():
    assert gradtx.describe(masked(gradtx.scale(2.0), {"w": True})) == (
        "masked(inner=scale(factor=2.0), mask={'w': True})"
    )
    assert gradtx.describe(freeze(masks.by_path("embed/*"))) == (
        "freeze(mask=by_path('embed/*'))"
    )
    text = gradtx.describe(
        multi_transform(
            {"decay": gradtx.adamw(1e-3), "frozen": gradtx.set_to_zero()},
            masks.by_path("*"),
        )
    )
    lines = text.splitlines()
    assert lines[:3] == [
        "multi_transform(",
        "    transforms={",
        "        'decay': chain(",
    ]
    assert lines[3].startswith("            scale_by_adam(b1=0.9")
    assert lines[-5:] == [
        "        ),",
        "        'frozen': set_to_zero(),",
        "    },",
        "    labels=by_path('*'),",
        ")",
    ]
    short = multi_transform({"a": gradtx.scale(0.5), "b": gradtx.identity()}, "a")
    assert gradtx.describe(short) == (
        "multi_transform(transforms={'a': scale(factor=0.5), 'b': identity()}, "
        "labels='a')"
    )
    nested = gradtx.describe(
        accumulate_gradients(apply_if_finite(gradtx.adamw(0.1), 3), 4)
    )
    assert nested.splitlines()[:3] == [
        "accumulate_gradients(",
        "    inner=apply_if_finite(",
        "        inner=chain(",
    ]
    assert nested.splitlines()[-3:] == [
        "    every_k=4,",
        "    accumulator_dtype=None,",
        ")",
    ]
