"""Every example runs here in a tiny configuration."""

import importlib.util
import pathlib

import numpy as np

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
