"""Every example runs here in a tiny configuration."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_loss_falls(capsys):
    losses, test_accuracy = load("quickstart").main(steps=60, log_every=30)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert test_accuracy > 0.8
    assert "scale_by_adam" in capsys.readouterr().out


def test_decay_study_writes_its_summary_and_figures(tmp_path, capsys):
    study = load("decay_study")
    summary = study.main(out_dir=tmp_path, seeds=2, steps=20, grid=3)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["seeds"] == 2 and saved["steps"] == 20 and "digits" in saved["dataset"]
    assert set(saved["variants"]) == {
        "adam_l2",
        "adamw",
        "adamw_multiplier",
        "adamw_independent",
        "sgd_l2",
        "sgdw",
    }
    for entry in saved["variants"].values():
        mean = np.array(entry["test_error_mean"])
        assert mean.shape == (3, 3) == np.array(entry["test_error_std"]).shape
        assert len(entry["learning_rates"]) == len(entry["weight_decays"]) == 3
        assert entry["best"]["test_error_mean"] == mean.min()
        assert "tilt" in entry and np.all((mean >= 0) & (mean <= 1))
    for name in ("heatmaps.png", "shrinkage.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["variants"].keys() == saved["variants"].keys()
    assert "adamw_multiplier" in capsys.readouterr().out


def test_decay_study_tilt_reads_a_diagonal_and_a_separable_basin():
    study = load("decay_study")
    lrs = np.logspace(-3, -1, 5)
    wds = np.logspace(-4, 0, 9)
    x, y = np.meshgrid(np.log10(lrs), np.log10(wds), indexing="ij")
    # log-quadratic basins: the valley of the best decay is wd* = 1e-2 in the
    # first and wd* = lr in the second
    separable = 0.03 * np.exp(0.2 * (x + 2) ** 2 + 0.3 * (y + 2) ** 2)
    diagonal = 0.03 * np.exp(0.2 * (x + 2) ** 2 + 0.3 * (y - x) ** 2)
    np.testing.assert_allclose(study.tilt(lrs, wds, separable), 0.0, atol=1e-9)
    np.testing.assert_allclose(study.tilt(lrs, wds, diagonal), 1.0, rtol=1e-9)
    assert study.breakdown_slope(lrs, wds, separable) == pytest.approx(0.0, abs=1e-9)
