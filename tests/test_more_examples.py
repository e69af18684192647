"""The flax, equinox, schedule, accumulation, meta-learning and regularisation
examples, each in a tiny configuration."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def falls(losses, k=5, factor=0.7):
    return np.mean(losses[-k:]) < factor * np.mean(losses[:k])


# ----------------------------------------------------------------------------
# flax nnx


def test_flax_training_steps_the_nnx_state_with_a_logged_schedule(capsys):
    from flax import nnx

    example = load("flax_training")
    steps, warmup, peak = 30, 5, 1e-2
    result = example.main(
        steps=steps,
        batch_size=32,
        channels=4,
        peak_lr=peak,
        warmup_steps=warmup,
        log_every=15,
    )
    assert falls(result.losses)
    # latest_learning_rate reads back exactly the rate each step used
    schedule = gradtx.warmup_cosine_decay_schedule(0.0, peak, warmup, steps)
    expected = [float(schedule(t)) for t in range(steps)]
    np.testing.assert_allclose(result.learning_rates, expected, rtol=1e-5, atol=1e-9)
    assert result.learning_rates[0] == 0.0
    assert max(result.learning_rates) == pytest.approx(peak)
    # the trained params and batch statistics were written back into the model
    fresh = example.CNN(4, nnx.Rngs(0))
    trained = nnx.state(result.model, nnx.Param)
    initial = nnx.state(fresh, nnx.Param)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(initial), strict=True):
        assert not np.array_equal(a, b)
    assert np.any(np.asarray(result.model.norm1.mean[...]) != 0)
    _, (x_test, y_test) = example.load_data(0)
    accuracy = np.mean(np.argmax(result.model(x_test), axis=1) == y_test)
    assert accuracy == pytest.approx(result.test_accuracy)
    assert result.test_accuracy > 0.5
    out = capsys.readouterr().out
    assert "clip_by_global_norm" in out and "lr " in out


# ----------------------------------------------------------------------------
# equinox


@pytest.fixture(scope="module")
def equinox_example():
    return load("equinox_training")


def test_equinox_training_loss_falls(equinox_example, capsys):
    result = equinox_example.main(
        steps=30, batch_size=32, width=32, learning_rate=1e-2, log_every=15
    )
    assert falls(result.losses)
    assert result.test_accuracy > 0.5
    before = jax.tree.leaves(result.initial)
    after = jax.tree.leaves(result.final)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert "hidden/weight  decayed" in capsys.readouterr().out


def test_equinox_training_decays_only_the_weight_matrices(equinox_example):
    import equinox as eqx

    model = equinox_example.MLP(16, jax.random.key(1))
    assert equinox_example.decayed_leaves(model) == {
        "hidden/weight": True,
        "hidden/bias": False,
        "norm/weight": False,
        "norm/bias": False,
        "out/weight": True,
        "out/bias": False,
    }
    # With zero gradients a fresh Adam step is zero, and only the decay acts:
    # u = -lr * wd * p on the weights, nothing on biases and the LayerNorm.
    tx = equinox_example.make_optimizer(steps=10)
    params = eqx.filter(model, eqx.is_array)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    for layer in ("hidden", "out"):
        np.testing.assert_allclose(
            getattr(updates, layer).weight,
            -3e-3 * 1e-2 * getattr(params, layer).weight,
            rtol=1e-6,
        )
        assert not np.any(getattr(updates, layer).bias)
    assert not np.any(updates.norm.weight) and not np.any(updates.norm.bias)


# ----------------------------------------------------------------------------
# learning-rate finder and schedule comparison


def test_schedule_comparison_writes_plots_and_a_table(tmp_path, capsys):
    example = load("schedule_comparison")
    steps = 40
    result = example.main(out_dir=tmp_path, steps=steps, finder_steps=40, batch_size=32)
    for path in result.figures:
        assert path.parent == tmp_path and path.read_bytes()[:8] == PNG
    finder = result.finder
    assert finder.suggested_lr == pytest.approx(finder.best_lr / 10)
    assert 1e-5 <= finder.best_lr <= finder.blowup_lr <= 10.0
    assert finder.smoothed.min() < 0.8 * finder.smoothed[0]  # the loss fell

    comparison = result.comparison
    names = ["constant", "cosine", "warmup-cosine", "one-cycle", "sgdr", "step decay"]
    assert comparison.names == names
    assert comparison.losses.shape == comparison.learning_rates.shape == (6, steps)
    peak = finder.suggested_lr
    table = dict(zip(names, comparison.learning_rates, strict=True))
    np.testing.assert_allclose(table["constant"], peak, rtol=1e-6)
    np.testing.assert_allclose(table["cosine"][0], peak, rtol=1e-6)
    assert table["warmup-cosine"][0] == 0.0 and table["cosine"][-1] < 0.01 * peak
    np.testing.assert_allclose(np.max(comparison.learning_rates, axis=1), peak, 1e-5)
    assert np.all(comparison.train_loss < 0.6 * comparison.losses[:, 0])
    assert np.all((comparison.test_accuracy > 0.5) & (comparison.test_accuracy <= 1))
    out = capsys.readouterr().out
    assert "test accuracy" in out and "step decay" in out

    # The constant-rate run of the vmapped program, whose learning rate is
    # written into the injected hyperparameters at every step, takes the same
    # steps as an ordinary SGD loop on the same batches.
    data = example.load_data(0)
    (x_train, y_train), _ = data
    tx = gradtx.sgd(peak, momentum=0.9)
    params = example.init_mlp(jax.random.key(0))
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(example.loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, loss

    losses = []
    for batch in np.asarray(example.batch_indices(x_train.shape[0], steps, 32, 0)):
        params, state, loss = step(params, state, x_train[batch], y_train[batch])
        losses.append(float(loss))
    np.testing.assert_allclose(comparison.losses[0], losses, rtol=1e-4)


def test_schedule_comparison_smoothing_is_bias_corrected():
    example = load("schedule_comparison")
    np.testing.assert_allclose(example.smooth([3.0] * 5), 3.0, rtol=1e-12)


# ----------------------------------------------------------------------------
# gradient accumulation


def test_accumulation_equals_the_big_batch_step(capsys):
    example = load("gradient_accumulation")
    result = example.main(
        steps=25,
        micro_batch=16,
        every_k=4,
        check_steps=2,
        check_every_k=4,
        log_every=5,
    )
    for name in ("adamw", "sgd+momentum"):
        # the params moved, by far more than the two routes differ
        assert result.max_change[name] > 1e-3
        assert max(result.max_diff[name]) < 1e-6
    assert result.bytes["accumulator"] == result.bytes["params"]
    assert result.bytes["adam moments"] >= 2 * result.bytes["params"]
    assert falls(result.losses, k=3)
    assert "max |big - accumulated|" in capsys.readouterr().out


def test_accumulation_with_unequal_batches_is_caught():
    example = load("gradient_accumulation")
    with pytest.raises(ValueError, match="multiple"):
        example.compare(gradtx.sgd(0.1), example.load_data(0), big_batch=10, every_k=4)


# ----------------------------------------------------------------------------
# meta-learned learning rate


@pytest.fixture(scope="module")
def meta():
    example = load("meta_learning_rate")
    result = example.main(
        meta_steps=6, unroll=5, tasks=2, hidden=16, batch_size=32, grid=3
    )
    return example, result


def test_meta_learning_moves_the_learning_rate_downhill(meta):
    _, result = meta
    # from a rate far too small, every meta-gradient says "larger", and the
    # rate climbs at every meta-step
    assert all(g < 0 for g in result.meta_grads)
    assert np.all(np.diff(result.learning_rates) > 0)
    assert result.learning_rates[-1] > 2 * result.learning_rates[0]
    # and on tasks it never saw, the learned rate gives a lower validation loss
    assert result.final_eval < result.initial_eval
    assert len(result.grid_val_losses) == 3
    assert np.all(np.isfinite(result.grid_val_losses))


def test_meta_gradient_matches_finite_differences(meta):
    example, result = meta
    data = example.load_data(0)
    # the tasks have the shapes main() used, so nothing is compiled again
    tasks = example.sample_tasks(
        np.random.default_rng(3), tasks=2, unroll=5, batch_size=32, hidden=16
    )
    log_lr, h = jnp.log(jnp.float32(3e-3)), 0.05
    _, grad = result.meta_value_and_grad(log_lr, tasks, data)
    up, _ = result.meta_value_and_grad(log_lr + h, tasks, data)
    down, _ = result.meta_value_and_grad(log_lr - h, tasks, data)
    assert np.isfinite(grad) and grad < 0
    np.testing.assert_allclose(grad, (up - down) / (2 * h), rtol=2e-2)


# ----------------------------------------------------------------------------
# dropout, label smoothing, early stopping


def test_regularisers_are_what_they_say():
    example = load("regularisation")
    x = jnp.ones((200, 50))
    dropped = example.dropout(x, 0.5, jax.random.key(0))
    kept = np.asarray(dropped) != 0
    assert 0.4 < kept.mean() < 0.6
    np.testing.assert_allclose(np.asarray(dropped)[kept], 2.0)  # 1 / (1 - rate)
    np.testing.assert_array_equal(example.dropout(x, 0.0, jax.random.key(0)), x)
    # with smoothing alpha, the best prediction is the smoothed target itself
    labels = jnp.array([3])
    target = jnp.full((1, 10), 0.01).at[0, 3].add(0.9)
    at_target = example.cross_entropy(jnp.log(target), labels, smoothing=0.1)
    confident = example.cross_entropy(jnp.log(target**4), labels, smoothing=0.1)
    assert at_target < confident
    plain = example.cross_entropy(jnp.log(target), labels)
    np.testing.assert_allclose(plain, -np.log(0.91), rtol=1e-5)


def test_early_stopping_stops_and_restores_the_best_params(capsys):
    example = load("regularisation")
    eval_every, patience, max_steps = 20, 3, 400
    runs = example.main(
        max_steps=max_steps,
        eval_every=eval_every,
        patience=patience,
        seeds=1,
        n_train=100,
        hidden=64,
        learning_rate=1e-2,
        only=("none", "early stopping"),
    )
    assert set(runs) == {"none", "early stopping"}
    full, stopped = runs["none"][0], runs["early stopping"][0]
    assert full.steps == max_steps and len(full.val_losses) == max_steps // eval_every
    assert stopped.steps < max_steps
    # it stopped `patience` evaluations after the best one ...
    best = int(np.argmin(stopped.val_losses))
    assert stopped.best_step == eval_every * (best + 1)
    assert stopped.steps == stopped.best_step + patience * eval_every
    assert stopped.best_val == min(stopped.val_losses)
    # ... and returned the params of the best evaluation, not the last
    _, (x_val, y_val), _ = example.load_data(100)
    val = example.cross_entropy(example.predict(stopped.params, x_val), y_val)
    assert float(val) == pytest.approx(stopped.best_val, rel=1e-6)
    last = example.cross_entropy(example.predict(stopped.last_params, x_val), y_val)
    assert float(last) > stopped.best_val
    assert 0.5 < stopped.test_accuracy <= 1
    assert "early stopping" in capsys.readouterr().out
