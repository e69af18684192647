import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx


def _same(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))


def test_a_transformation_is_a_plain_pair():
    tx = gradtx.adam(1e-3)
    init, update = tx
    assert init is tx.init and update is tx.update
    assert isinstance(tx, tuple) and len(tx) == 2


def test_hand_built_transformation_works_in_a_chain():
    def init(params):
        return gradtx.EmptyState()

    def update(updates, state, params=None, **extra):
        return jax.tree.map(lambda g: 2 * g, updates), state

    double = gradtx.GradientTransformation(init, update)
    assert double.name is None
    tx = gradtx.chain(double, gradtx.scale(3.0))
    u, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    np.testing.assert_array_equal(u, 6.0)


def test_chain_applies_links_in_order_and_keeps_one_state_each():
    tx = gradtx.chain(
        gradtx.clip(1.0), gradtx.scale(10.0), gradtx.scale_by_momentum(0.5)
    )
    state = tx.init(jnp.zeros(2))
    assert isinstance(state, tuple) and len(state) == 3
    u, state = tx.update(jnp.array([5.0, -0.5]), state)
    np.testing.assert_array_equal(u, [10.0, -5.0])  # clip first, then scale
    np.testing.assert_array_equal(state[2].velocity, [10.0, -5.0])


def test_empty_chain_is_the_identity():
    tx = gradtx.chain()
    u, state = tx.update(jnp.ones(3), tx.init(jnp.ones(3)))
    assert state == ()
    np.testing.assert_array_equal(u, 1.0)


def test_identity_and_set_to_zero():
    g = {"a": jnp.array([1.0, -2.0], jnp.bfloat16), "b": jnp.ones((2, 2))}
    u, state = gradtx.identity().update(g, gradtx.identity().init(g))
    assert u is g and state == gradtx.EmptyState()
    z, _ = gradtx.set_to_zero().update(g, gradtx.set_to_zero().init(g))
    assert z["a"].dtype == jnp.bfloat16
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(z))


def test_extras_reach_every_link_and_are_ignored_by_those_that_do_not_use_them():
    seen = []

    def init(params):
        return gradtx.EmptyState()

    def update(updates, state, params=None, **extra):
        seen.append(extra)
        return updates, state

    spy = gradtx.GradientTransformation(init, update)
    tx = gradtx.chain(gradtx.adamw(1e-3), spy)
    params = jnp.ones(2)
    tx.update(jnp.ones(2), tx.init(params), params, loss=jnp.array(0.5), step_note="x")
    assert set(seen[0]) == {"loss", "step_note"}


def test_every_update_accepts_keyword_extras():
    params = {"w": jnp.ones((2, 2))}
    for tx in [
        gradtx.identity(),
        gradtx.set_to_zero(),
        gradtx.scale(1.0),
        gradtx.scale_by_schedule(lambda t: 1.0),
        gradtx.clip(1.0),
        gradtx.clip_by_global_norm(1.0),
        gradtx.add_l1_penalty(0.1),
        gradtx.adadelta(),
        gradtx.rmsprop(0.1, centered=True),
        gradtx.sgd(0.1, momentum=0.9),
        gradtx.adagrad(0.1),
    ]:
        tx.update(params, tx.init(params), params, loss=1.0)


def test_chain_rejects_a_state_from_another_chain():
    tx = gradtx.adamw(1e-3)
    with pytest.raises(
        ValueError,
        match=r"chain: expected a state with one entry per link \(3\), got 2",
    ):
        tx.update(jnp.ones(2), gradtx.adam(1e-3).init(jnp.ones(2)), jnp.ones(2))


def test_chain_rejects_a_link_that_is_not_a_transformation():
    with pytest.raises(TypeError, match="chain: link 1 must be an"):
        gradtx.chain(gradtx.scale(1.0), lambda g: g)


# ----------------------------------------------------------------------------
# apply_updates


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_apply_updates_keeps_each_params_dtype(dtype):
    params = {"w": jnp.ones(3, dtype), "n": jnp.ones(2, jnp.float32)}
    updates = {"w": jnp.full(3, 0.5, jnp.float32), "n": jnp.full(2, 0.25, dtype)}
    new = gradtx.apply_updates(params, updates)
    assert new["w"].dtype == dtype and new["n"].dtype == jnp.float32
    np.testing.assert_array_equal(new["w"].astype(jnp.float32), 1.5)


def test_apply_updates_names_a_mismatched_path():
    with pytest.raises(ValueError, match=r"apply_updates: .*'dense/b'"):
        gradtx.apply_updates(
            {"dense": {"w": jnp.ones(2), "b": jnp.ones(2)}},
            {"dense": {"w": jnp.ones(2)}},
        )
    with pytest.raises(ValueError, match=r"apply_updates: .*shape at 'w'"):
        gradtx.apply_updates({"w": jnp.ones(2)}, {"w": jnp.ones((2, 1))})


def test_none_leaves_pass_through():
    params = {"w": jnp.ones(2), "frozen": None}
    tx = gradtx.adam(0.1)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.ones(2), "frozen": None}, state)
    new = gradtx.apply_updates(params, updates)
    assert new["frozen"] is None and new["w"].shape == (2,)


# ----------------------------------------------------------------------------
# describe


def test_print_reads_as_the_chain_it_is():
    text = repr(gradtx.adamw(1e-3))
    assert text == gradtx.describe(gradtx.adamw(1e-3))
    flat = " ".join(line.strip() for line in text.splitlines())
    assert flat.replace("( ", "(").replace(", )", ")") == (
        "chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, "
        "mu_dtype=None, nesterov=False, nu_dtype=None), "
        "add_decayed_weights(weight_decay=0.0001, "
        "mask=None), scale_by_learning_rate(learning_rate=0.001))"
    )


def test_describe_is_one_line_when_short_and_one_link_per_line_when_long():
    assert (
        gradtx.describe(gradtx.sgd(0.1))
        == "chain(scale_by_learning_rate(learning_rate=0.1))"
    )
    lines = gradtx.describe(gradtx.rmsprop(0.1, momentum=0.9)).splitlines()
    assert lines[0] == "chain("
    assert lines[1].startswith("    scale_by_rms(decay=0.9, eps=1e-08")
    assert lines[2].startswith("    scale_by_momentum(decay=0.9")
    assert lines[3] == "    scale_by_learning_rate(learning_rate=0.1),"
    assert lines[4] == ")"


def test_describe_nests_chains():
    inner = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.scale_by_adam())
    text = gradtx.describe(gradtx.chain(inner, gradtx.scale_by_learning_rate(0.1)))
    assert text.splitlines()[:3] == [
        "chain(",
        "    chain(",
        "        clip_by_global_norm(max_norm=1.0),",
    ]


def test_describe_shows_schedules_dtypes_and_masks_readably():
    def warmup(t):
        return t * 1e-3

    text = gradtx.describe(gradtx.scale_by_learning_rate(warmup))
    assert text.startswith("scale_by_learning_rate(learning_rate=<function ")
    assert text.endswith(".<locals>.warmup>)")
    assert "mu_dtype=bfloat16" in gradtx.describe(
        gradtx.scale_by_adam(mu_dtype=jnp.bfloat16)
    )
    assert "mask={'w': True, 'b': False}" in gradtx.describe(
        gradtx.add_decayed_weights(0.1, mask={"w": True, "b": False})
    )
    assert "learning_rate=0.5" in gradtx.describe(
        gradtx.scale_by_learning_rate(jnp.array(0.5))
    )


def test_transformation_knows_its_name_and_hyperparameters():
    tx = gradtx.scale_by_rms(decay=0.5)
    assert tx.name == "scale_by_rms"
    assert tx.hyperparams == {
        "decay": 0.5,
        "eps": 1e-8,
        "eps_in_sqrt": False,
        "centered": False,
        "initial_scale": 0.0,
    }
    assert [c.name for c in gradtx.adam_l2(0.1).children] == [
        "add_decayed_weights",
        "scale_by_adam",
        "scale_by_learning_rate",
    ]


def test_describe_rejects_other_objects():
    with pytest.raises(TypeError, match="describe: expected a GradientTransformation"):
        gradtx.describe(3)


# ----------------------------------------------------------------------------
# interoperability with optax (a test-only dependency)


def _run(tx, steps=20):
    params = {
        "w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3),
        "b": jnp.array([0.5, -0.5]),
    }
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: p * (1.0 + 0.1 * i) + 0.01 * i, params)
        updates, state = tx.update(grads, state, params)
        params = gradtx.apply_updates(params, updates)
    return params


def test_optax_link_in_a_gradtx_chain():
    mixed = gradtx.chain(optax.scale_by_adam(), gradtx.scale_by_learning_rate(0.01))
    assert "<optax scale_by_adam>" in gradtx.describe(mixed)
    pure = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(0.01))
    got, want = _run(mixed), _run(pure)
    assert jax.tree.all(
        jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-6, atol=0), got, want)
    )


def test_optax_link_without_extras_support_is_called_without_extras():
    plain = optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda u, s, p=None: (u, s)
    )
    tx = gradtx.chain(plain, gradtx.scale(2.0))
    u, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)), None, loss=1.0)
    np.testing.assert_array_equal(u, 2.0)


def test_gradtx_link_in_an_optax_chain():
    mixed = optax.chain(
        gradtx.scale_by_adam(), optax.add_decayed_weights(1e-2), optax.scale(-0.01)
    )
    pure = gradtx.chain(
        gradtx.scale_by_adam(), gradtx.add_decayed_weights(1e-2), gradtx.scale(-0.01)
    )
    got, want = _run(mixed), _run(pure)
    assert jax.tree.all(
        jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-6, atol=0), got, want)
    )
    # optax passes its extra arguments on to gradtx links, which ignore them.
    params = jnp.ones(2)
    opt = optax.chain(gradtx.adamw(1e-3))
    opt.update(jnp.ones(2), opt.init(params), params, loss=jnp.array(1.0))


def test_gradtx_optimizer_is_accepted_by_optax_wrappers():
    tx = optax.MultiSteps(gradtx.adam(0.1), every_k_schedule=2)
    params = jnp.ones(2)
    state = tx.init(params)
    u, state = tx.update(jnp.ones(2), state, params)
    np.testing.assert_array_equal(u, 0.0)
    u, state = tx.update(jnp.ones(2), state, params)
    np.testing.assert_allclose(u, -0.1, rtol=1e-5)


def test_identity_and_set_to_zero_match_their_equations():
    import references as R

    ident = R.Ref(lambda p: None, lambda g, s, p: (g, s))
    got, want = R.run_side_by_side(gradtx.identity(), ident, move_params=True)
    assert R.max_relative_error(got, want) < 1e-6  # float32 sums of the params
    zero = R.Ref(lambda p: None, lambda g, s, p: ({k: 0 * v for k, v in g.items()}, s))
    got, want = R.run_side_by_side(gradtx.set_to_zero(), zero, move_params=True)
    assert R.max_relative_error(got, want) < 1e-6  # float32 sums of the params


@pytest.mark.parametrize(
    "build, error, match",
    [
        (
            lambda: gradtx.sgd(np.inf),
            ValueError,
            r"learning_rate must be in \[0, inf\)",
        ),
        (lambda: gradtx.adam(1e-3, eps=np.inf), ValueError, "eps must be in"),
        (lambda: gradtx.sgd(True), TypeError, "learning_rate must be a real number"),
        (lambda: gradtx.sgd(1e-3 + 0j), TypeError, "learning_rate must be a real"),
        (lambda: gradtx.sgd("0.1"), TypeError, "learning_rate must be a real"),
        (lambda: gradtx.sgd(np.array(-1.0)), ValueError, "got -1.0"),
        (lambda: gradtx.sgd(jnp.array(-1.0)), ValueError, "got -1.0"),
        (lambda: gradtx.adam(1e-3, b1=np.array([0.9, 1.0])), ValueError, "got 1.0"),
        (lambda: gradtx.sgd(np.nan), ValueError, "got nan"),
    ],
)
def test_hyperparameters_are_checked_whatever_their_type(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_python_numbers_are_accepted_as_params_and_gradients():
    # jax.grad accepts a tree of Python floats, and so does every link.
    params = {"w": 1.0, "b": -2.0}
    for tx in [
        gradtx.adamw(0.1, weight_decay=0.1),
        gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.sgd(0.1, 0.9)),
        gradtx.rmsprop(0.1, centered=True),
    ]:
        grads = jax.grad(lambda p: p["w"] ** 2 + p["b"] ** 2)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        new = gradtx.apply_updates(params, updates)
        assert float(new["w"]) < 1.0 and float(new["b"]) > -2.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: gradtx.linear_schedule(1.0, 0.0, 2.5),
        lambda: gradtx.cosine_decay_schedule(1.0, "10"),
        lambda: gradtx.accumulate_gradients(gradtx.sgd(0.1), every_k=2.5),
        lambda: gradtx.apply_if_finite(gradtx.sgd(0.1), max_consecutive_errors=True),
    ],
)
def test_a_count_that_is_not_a_whole_number_is_a_type_error(build):
    with pytest.raises(TypeError, match="must be a whole number"):
        build()
