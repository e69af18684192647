"""The MNIST-1D weight-decay study: its data, model and statistics, tiny."""

import dataclasses
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study():
    return load("decay_study")


@pytest.fixture(scope="module")
def problems(study):
    return study.study_problems


TINY = dict(n_train=40, steps=20, batch_size=8, seeds=2, grid=3, eval_every=10)


@pytest.fixture(scope="module")
def tiny_data(problems):
    # The package's own generator, 100 signals (80 / 20), of which 40 train.
    sizes = dataclasses.replace(problems.MNIST1D_SIZES, **TINY)
    return problems.load_mnist1d_data(sizes, num_samples=100)


# ----------------------------------------------------------------------------
# data


def test_mnist1d_data_is_generated_split_and_typed(problems, tiny_data):
    (x, y), (x_test, y_test) = tiny_data
    assert x.shape == (40, 40) and x_test.shape == (20, 40)
    assert x.dtype == jnp.float32 and y.dtype == jnp.int32
    assert set(np.asarray(y).tolist()) <= set(range(10))
    assert len(set(np.asarray(y).tolist())) >= 5  # shuffled, not one class
    # The generator seeds itself: the same call gives the same signals.
    sizes = dataclasses.replace(problems.MNIST1D_SIZES, **TINY)
    (x_again, _), _ = problems.load_mnist1d_data(sizes, num_samples=100)
    np.testing.assert_array_equal(x, x_again)
    # Standardised over the whole generated set.
    both = np.concatenate([np.asarray(x), np.asarray(x_test)])
    assert abs(both.mean()) < 0.2 and 0.7 < both.std() < 1.3


def test_mnist1d_data_refuses_more_training_signals_than_generated(problems):
    sizes = dataclasses.replace(problems.MNIST1D_SIZES, n_train=81)
    with pytest.raises(ValueError, match="n_train=81"):
        problems.load_mnist1d_data(sizes, num_samples=100)


# ----------------------------------------------------------------------------
# model


def test_conv1d_matches_lax_convolution(problems):
    kx, kw, kb = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 19, 4))
    w = jax.random.normal(kw, (3 * 4, 5))  # (kernel * in, out), position-major
    b = jax.random.normal(kb, (5,))
    got = jax.jit(lambda x, w, b: problems.conv1d(x, w, b, 3, 2, 1))(x, w, b)
    want = (
        jax.lax.conv_general_dilated(
            x,
            w.reshape(3, 4, 5),
            window_strides=(2,),
            padding=[(1, 1)],
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        + b[None, None, :]
    )
    assert got.shape == (3, 10, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cnn_shapes_and_a_grid_of_networks_under_vmap(problems, tiny_data):
    sizes = dataclasses.replace(problems.MNIST1D_SIZES, width=6)
    params = jax.jit(lambda k: problems.init_cnn(k, sizes))(jax.random.key(0))
    assert [p["w"].shape for p in params] == [(5, 6), (18, 6), (18, 6), (30, 10)]
    assert problems.count_weights(params) == 5 * 6 + 6 + 2 * (18 * 6 + 6) + 310
    (x, y), _ = tiny_data
    assert jax.jit(problems.cnn_logits)(params, x).shape == (40, 10)
    keys = jax.random.split(jax.random.key(1), 4)
    grid = jax.jit(jax.vmap(lambda k: problems.init_cnn(k, sizes)))(keys)
    error = jax.jit(lambda p: problems.error_rate(problems.cnn_logits, p, x, y))
    errors = jax.jit(jax.vmap(error))(grid)
    single = error(jax.tree.map(lambda a: a[2], grid))
    assert errors.shape == (4,) and float(errors[2]) == float(single)
    loss = jax.jit(lambda p: problems.loss_fn(problems.cnn_logits, p, x, y))(params)
    assert np.isfinite(float(loss)) and float(loss) > 0


# ----------------------------------------------------------------------------
# statistics


def test_mean_interval_is_the_student_t_interval(study):
    values = np.array([0.2, 0.25, 0.22, 0.3, 0.27])
    mean, low, high = study.mean_interval(values)
    half = stats.t.ppf(0.975, 4) * values.std(ddof=1) / np.sqrt(5)
    assert mean == pytest.approx(values.mean())
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))
    assert study.mean_interval([0.1])[1:] == (None, None)


def basin(lrs, wds, slope, seeds=5, noise=0.02, seed=0):
    """Log-quadratic basin whose best decay moves as lr**slope, plus noise."""
    x, y = np.meshgrid(np.log10(lrs), np.log10(wds), indexing="ij")
    clean = 0.1 * np.exp(0.3 * (x + 2) ** 2 + 0.4 * (y + 2 - slope * (x + 2)) ** 2)
    rng = np.random.default_rng(seed)
    return clean[:, :, None] * (1 + noise * rng.standard_normal((*clean.shape, seeds)))


def entry_for(study, lrs, wds, errors, indices):
    spec = {"label": "x", "decay": "per step"}
    result = {
        "test_error": errors,
        "train_error": errors / 2,
        "train_loss": errors,
        "test_loss": errors,
    }
    return study.summarise_grid(spec, lrs, wds, result, indices)


def test_slope_intervals_and_the_separability_verdict(study):
    lrs, wds = np.logspace(-3, -1, 8), np.logspace(-4, 0, 8)
    indices = study.bootstrap_indices(5, n_resamples=200)
    separable = entry_for(study, lrs, wds, basin(lrs, wds, 0.0), indices)
    diagonal = entry_for(study, lrs, wds, basin(lrs, wds, 1.0, seed=1), indices)
    low, high = separable["tilt_ci95"]
    assert low < 0.0 < high and high - low < 0.3
    assert diagonal["tilt"] == pytest.approx(1.0, abs=0.1)
    assert diagonal["tilt_ci95"][0] > 0.5
    ranges = [(lrs, wds), (lrs, wds)]
    gap = study.paired_slope_gap(diagonal, separable, ranges, indices)
    assert gap["ci95"][0] > 0.5
    assert study.separability_verdict(diagonal, separable, gap) == "holds"
    reverse = study.paired_slope_gap(separable, diagonal, ranges, indices)
    assert study.separability_verdict(separable, diagonal, reverse) == "fails"
    # Both separable: decoupling has nothing to fix.
    other = entry_for(study, lrs, wds, basin(lrs, wds, 0.0, seed=2), indices)
    both = study.paired_slope_gap(separable, other, ranges, indices)
    assert study.separability_verdict(separable, other, both) == "fails"


def test_best_cells_are_compared_seed_by_seed(study):
    lrs, wds = np.logspace(-3, -1, 3), np.logspace(-4, 0, 3)
    indices = study.bootstrap_indices(4, n_resamples=50)
    a = np.full((3, 3, 4), 0.5)
    a[1, 2] = [0.20, 0.22, 0.21, 0.25]  # a's best cell
    b = np.full((3, 3, 4), 0.5)
    b[0, 1] = [0.10, 0.13, 0.12, 0.14]  # b's best cell
    entry_a = entry_for(study, lrs, wds, a, indices)
    entry_b = entry_for(study, lrs, wds, b, indices)
    assert (entry_a["best"]["lr_index"], entry_a["best"]["wd_index"]) == (1, 2)
    paired = study.paired_best(entry_a, entry_b)
    np.testing.assert_allclose(paired["per_seed"], [0.10, 0.09, 0.09, 0.11])
    assert paired["ci95"][0] > 0
    assert study.generalisation_verdict(paired) == "holds"
    assert study.generalisation_verdict(study.paired_best(entry_b, entry_a)) == (
        "fails"
    )
    same = study.paired_best(entry_a, entry_a)
    assert study.generalisation_verdict(same) == "unsettled"
    low, high = entry_a["best"]["test_error_ci95"]
    assert low < 0.22 < high


def test_overfitting_reads_the_no_decay_curves(study):
    steps = [10, 20, 30, 40]
    # (evaluations, learning rates, one decay, seeds): lr index 1 is best at
    # the end; its test error falls to 0.30 and climbs back to 0.35.
    shape = (4, 2, 1, 3)
    test_error = np.full(shape, 0.6)
    test_error[:, 1, 0, :] = np.array([0.5, 0.30, 0.33, 0.35])[:, None] + np.array(
        [0.0, 0.01, -0.01]
    )
    train_loss = np.full(shape, 1.0)
    train_loss[:, 1, 0, :] = np.array([1.0, 0.1, 0.01, 0.001])[:, None]
    baseline = {
        "learning_rates": [1e-3, 1e-2],
        "curve_steps": steps,
        "curves": {
            "test_error": test_error,
            "test_loss": test_error * 4,
            "train_loss": train_loss,
            "train_error": train_loss / 2,
        },
    }
    o = study.overfitting(baseline)
    assert o["learning_rate"] == 1e-2
    assert o["train_loss_near_zero"] and o["test_error_rises"]
    assert o["test_error"]["lowest_step"] == 20
    assert o["test_error"]["rise"] == pytest.approx(0.05)
    sentence = study.overfitting_sentence(
        {"schedules": {"constant": {"overfitting": o}}}
    )
    assert "goes to about zero" in sentence and "test error rises" in sentence

    # The check is read where the network fits its training set: here lr
    # 1e-3 ends with the lower test error, but only lr 1e-2 fits.
    test_error[:, 0, 0, :] = 0.2
    o = study.overfitting(baseline)
    assert o["learning_rate"] == 1e-2 and o["test_error_rises"]
    assert o["best_final"]["learning_rate"] == 1e-3
    assert o["best_final"]["test_error_end"] == pytest.approx(0.2)
    sentence = study.overfitting_sentence(
        {"schedules": {"constant": {"overfitting": o}}}
    )
    assert "lowest test error, 1.0e-03, ends with a training loss of 1.0e+00" in (
        sentence
    )
    # Where no learning rate fits, the one that comes closest is read.
    train_loss[:, 1, 0, :] = 0.5
    train_loss[:, 0, 0, :] = 0.6
    o = study.overfitting(baseline)
    assert o["learning_rate"] == 1e-2 and not o["train_loss_near_zero"]


def test_noisy_digits_replace_a_fraction_of_the_training_labels_only(problems):
    sizes = problems.NOISY_DIGITS_SIZES
    clean_sizes = dataclasses.replace(sizes, label_noise=0.0)
    (x, y), (x_test, y_test) = problems.load_noisy_digits_data(sizes)
    (x0, y0), (x0_test, y0_test) = problems.load_digits_data(clean_sizes)
    assert x.shape == (500, 64) and x_test.shape == (1297, 64)
    assert y.dtype == jnp.int32 and y_test.dtype == jnp.int32
    np.testing.assert_array_equal(x, x0)  # the demo's permutation
    np.testing.assert_array_equal(y_test, y0_test)  # test labels clean
    np.testing.assert_array_equal(x_test, x0_test)
    changed = np.mean(np.asarray(y) != np.asarray(y0))
    # 30% redrawn, of which 9 in 10 land on another class: about 27%
    assert 0.22 < changed < 0.32
    (_, y_again), _ = problems.load_noisy_digits_data(sizes)
    np.testing.assert_array_equal(y, y_again)  # deterministic
    clean = problems.load_noisy_digits_data(clean_sizes)
    np.testing.assert_array_equal(clean[0][1], y0)


def test_the_noisy_digits_mlp_counts_the_weights_its_description_states(problems):
    sizes = problems.NOISY_DIGITS_SIZES
    params = problems.NOISY_DIGITS.init_params(jax.random.key(0), sizes)
    n = problems.count_weights(params)
    assert f"{n:,} weights" in problems.NOISY_DIGITS.model(sizes)
    x = jnp.zeros((3, 64))
    assert problems.NOISY_DIGITS.logits(params, x).shape == (3, 10)


# ----------------------------------------------------------------------------
# the whole pipeline, tiny


def test_a_tiny_mnist1d_study_writes_summary_figures_and_its_page_section(
    study, problems, tiny_data, tmp_path, monkeypatch
):
    tiny = dataclasses.replace(
        problems.MNIST1D,
        sizes=dataclasses.replace(problems.MNIST1D_SIZES, **TINY, width=4),
        load_data=lambda sizes: tiny_data,
    )
    monkeypatch.setitem(problems.PROBLEMS, "mnist1d", tiny)
    monkeypatch.setattr(study, "BOOTSTRAP", 40)
    out = tmp_path / "run"
    summary = study.main(
        problem="mnist1d",
        out_dir=out,
        families=["sgdw"],
        schedules=["constant"],
    )
    saved = json.loads((out / "summary.json").read_text())
    block = saved["schedules"]["constant"]
    assert set(block["variants"]) == {"sgd_l2", "sgdw"}
    for entry in block["variants"].values():
        assert np.array(entry["test_error_per_seed"]).shape == (3, 3, 2)
        assert np.array(entry["gap_mean"]).shape == (3, 3)
    assert len(block["baseline"]["curve_steps"]) == 2
    assert set(saved["claims"]["constant"]) == {"sgdw"}
    verdicts = saved["claims"]["constant"]["sgdw"]
    assert verdicts["separability"]["verdict"] in study.VERDICT_WORDS
    assert verdicts["generalisation"]["verdict"] in study.VERDICT_WORDS
    assert set(saved["timing"]) >= {"compile", "train", "evaluate", "data"}
    for name in ("heatmaps_constant", "gap_constant", "slopes", "curves"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["steps"] == 20

    # The page: the digits part is kept, the MNIST-1D part is replaced.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "decay_study.md").write_text("# The weight-decay study\n\ndigits part\n")
    study.write_docs(saved, out, docs_dir=docs)
    page = (docs / "decay_study.md").read_text()
    assert page.startswith("# The weight-decay study\n\ndigits part\n")
    mnist1d, noisy = (study.section_mark(n) for n in ("mnist1d", "noisy_digits"))
    assert page.count(mnist1d) == 1 and page.count(noisy) == 1
    section = page.split(mnist1d)[1].split(noisy)[0]
    assert "{" not in section
    assert "## A second problem: MNIST-1D" in section
    assert "Claim 1" in section and "20" in section
    assert "python examples/decay_study.py --problem mnist1d --docs" in section
    assert "`make study`" not in section  # make study runs the noisy digits
    assert "has not been run for this page yet" in page.split(noisy)[1]
    assert (docs / "img" / "decay_study_mnist1d" / "slopes.png").exists()
    study.write_docs(saved, out, docs_dir=docs)  # idempotent
    assert (docs / "decay_study.md").read_text() == page

    # Another problem's run fills its own section and keeps this one.
    saved["problem"] = "noisy_digits"
    study.write_docs(saved, out, docs_dir=docs)
    both = (docs / "decay_study.md").read_text()
    assert both.split(noisy)[0] == page.split(noisy)[0]
    other = both.split(noisy)[1]
    assert "## A third problem: digits with noisy labels" in other
    assert "`make study` (or `python examples/decay_study.py --problem " in other
    assert "{" not in other and "NOISY_DIGITS_SIZES" in other
    assert "](img/decay_study_noisy_digits/slopes.png)" in other


def test_families_name_the_variants_and_unknown_ones_are_refused(study, problems):
    specs = study.variants(
        100, "constant", ("adamw_normalized", "sgdw"), problems.MNIST1D.ranges
    )
    assert list(specs) == ["adamw_normalized", "sgd_l2", "sgdw"]
    with pytest.raises(ValueError, match="unknown family"):
        study.variants(100, "cosine", ("adam",), problems.MNIST1D.ranges)
    assert set(problems.MNIST1D.ranges) == {
        name for names in study.FAMILIES.values() for name in names
    }
