"""The decay-study figures and page, and the benchmark page's summary, on fakes.

Nothing here trains or times anything: the figures are drawn from a tiny
made-up summary, the way `examples/decay_study.py --replot` draws them from
a finished run's summary.json, and the benchmark summary is built from a few
made-up rows.
"""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402

LRS = [1e-3, 0.0026826957952797246, 0.0072]
WDS = [1e-5, 0.00019306977288832496, 0.0037]
DIGITS_VARIANTS = (
    "adam_l2",
    "adamw",
    "adamw_multiplier",
    "adamw_independent",
    "sgd_l2",
    "sgdw",
)


@pytest.fixture(scope="module")
def study():
    path = ROOT / "examples" / "decay_study.py"
    spec = importlib.util.spec_from_file_location("decay_study_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def drawn(study, monkeypatch):
    """The figures the plot functions draw, kept open for inspection."""
    figures = []
    close = study.plt.close
    monkeypatch.setattr(study.plt, "close", figures.append)
    yield figures
    for fig in figures:
        close(fig)


def entry(k, label="Adam + L2 (coupled)", meaning="L2 coefficient"):
    error = 0.05 + 0.01 * np.arange(9).reshape(3, 3) / (k + 1)
    return {
        "label": label,
        "decay_meaning": meaning,
        "learning_rates": LRS,
        "weight_decays": WDS,
        "test_error_mean": error.tolist(),
        "test_error_std": np.full((3, 3), 0.002).tolist(),
        "gap_mean": (error / 2).tolist(),
        "best": {
            "learning_rate": LRS[0],
            "weight_decay": WDS[0],
            "lr_index": 0,
            "wd_index": 0,
            "test_error_mean": float(error[0, 0]),
            "test_error_std": 0.002,
            "test_error_ci95": [0.04, 0.06],
            "gap_mean": float(error[0, 0] / 2),
            "at_grid_edge": True,
        },
        "tilt": -0.2 + 0.1 * k,
        "tilt_ci95": [-0.5, 0.3],
        "breakdown_slope": None if k == 1 else 0.1 * k,
        "breakdown_ci95": [None, None],
    }


def digits_summary():
    return {
        "problem": "digits",
        "title": "digits",
        "dataset": "tiny digits",
        "model": "MLP",
        "seeds": 2,
        "steps": 10,
        "seconds": 1.5,
        "variants": {
            name: entry(k, label=f"variant {name} (a long label, like the real)")
            for k, name in enumerate(DIGITS_VARIANTS)
        },
        "shrinkage": {
            "learning_rate": LRS[1],
            "weight_decay": WDS[1],
            "coupled_quantiles": [1.1e-3, 6.7e-3, 2.9],
            "decoupled": 5.2e-6,
        },
    }


def mnist1d_summary():
    curves = np.linspace(1.0, 0.1, 4)[:, None, None, None] * np.ones((4, 3, 1, 2))
    block = {
        "variants": {"sgd_l2": entry(0), "sgdw": entry(1, "SGDW", "per step")},
        "baseline": {
            "learning_rates": LRS,
            "curve_steps": [5, 10, 15, 20],
            "curves": {
                key: curves.tolist()
                for key in ("train_loss", "test_error", "test_loss", "train_error")
            },
        },
        "overfitting": {"learning_rate": LRS[1], "lr_index": 1},
    }
    return {
        "problem": "mnist1d",
        "title": "MNIST-1D",
        "seeds": 2,
        "steps": 20,
        "schedules": {"cosine": block, "constant": block},
    }


def size(path):
    """An image file's width and height in pixels."""
    with Image.open(path) as image:
        return image.size


def texts(fig):
    """Every string the figure shows: titles, labels, ticks, captions."""
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


# ----------------------------------------------------------------------------
# decay-study figures


def test_ticks_carry_the_tables_two_significant_digits(study):
    assert study._sci(0.026826957952797246) == "2.7e-02"
    assert study._sci(0.00019306977288832496) == "1.9e-04"
    assert study._sci(1.0) == "1.0e+00"


def test_heatmap_ticks_match_the_tables_and_the_slope_is_defined_on_it(
    study, drawn, tmp_path
):
    entries = digits_summary()["variants"]
    path = tmp_path / "heatmaps.png"
    study.plot_heatmaps(entries, path, "Test error on a fake grid")
    (fig,) = drawn
    first = fig.axes[0]
    ticks = [t.get_text() for t in first.get_xticklabels()]
    # the tables write the best lr and wd with the same format
    assert ticks == [f"{w:.1e}" for w in WDS] == ["1.0e-05", "1.9e-04", "3.7e-03"]
    ticks = [t.get_text() for t in first.get_yticklabels()]
    assert ticks == [f"{v:.1e}" for v in LRS] == ["1.0e-03", "2.7e-03", "7.2e-03"]
    assert first.get_title().startswith("adam_l2: valley slope -0.20\n")
    shown = "\n".join(texts(fig)).replace("\n", " ")
    assert "Valley slope: d log(best decay) / d log(learning rate)" in shown
    assert "Red star" in shown and "White circles" in shown
    # the colour bar says where the best cell of all the grids lies
    assert "5.00%" in shown
    # drawn one text column wide (7 in, saved at 150 dpi for the full-size
    # view); no label sticks out far beyond that width
    width, height = size(path)
    drawn_width = study.FIG_WIDTH * study.FIG_DPI
    assert drawn_width <= width <= 1.1 * drawn_width
    assert height > width


def test_gap_heatmaps_use_a_linear_scale_from_zero(study, drawn, tmp_path):
    entries = {"sgd_l2": entry(0), "sgdw": entry(1)}
    study.plot_heatmaps(
        entries, tmp_path / "gap.png", "gap", key="gap_mean", kind="gap"
    )
    (fig,) = drawn
    shown = texts(fig)
    assert "0.0%" in shown
    assert "test error - training error, mean over seeds" in shown


def test_long_labels_break_before_their_bracket(study):
    assert study._wrap("AdamW, decay x learning rate (torch, optax)", 40) == (
        "AdamW, decay x learning rate\n(torch, optax)"
    )
    assert study._wrap("short (kept)", 40) == "short (kept)"


def test_replot_redraws_a_finished_digits_run_without_training(study, tmp_path):
    summary = digits_summary()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rng = np.random.default_rng(0)
    shrink = {
        "coupled": 10 ** rng.uniform(-4, 1, 200),
        "decoupled": 5.2e-6,
        "learning_rate": LRS[1],
        "weight_decay": WDS[1],
    }
    study.plot_shrinkage(shrink, tmp_path / "shrinkage.png")
    assert (tmp_path / "shrinkage.npz").exists()
    (tmp_path / "shrinkage.png").unlink()

    study.replot(tmp_path)
    for name in ("heatmaps.png", "shrinkage.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with np.load(tmp_path / "shrinkage.npz") as data:
        np.testing.assert_array_equal(data["coupled"], shrink["coupled"])


def test_replot_redraws_every_mnist1d_figure(study, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(mnist1d_summary()))
    study.replot(tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "curves.png",
        "gap_constant.png",
        "gap_cosine.png",
        "heatmaps_constant.png",
        "heatmaps_cosine.png",
        "slopes.png",
    ]
    for name in names:
        width, _ = size(tmp_path / name)
        assert width <= 1.1 * study.FIG_WIDTH * study.FIG_DPI


def test_slopes_figure_defines_both_slopes(study, drawn, tmp_path):
    study.plot_slopes(mnist1d_summary(), tmp_path / "slopes.png")
    (fig,) = drawn
    shown = " ".join(texts(fig)).replace("\n", " ")
    assert "Valley slope: d log(best decay) / d log(learning rate)" in shown
    assert "Breakdown slope:" in shown
    assert f"+-{study.SEPARABLE}" in shown


def test_digits_page_links_each_figure_to_itself_and_fills_every_field(study, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("heatmaps.png", "shrinkage.png"):
        (out / name).write_bytes(b"\x89PNG fake")
    docs = tmp_path / "docs"
    docs.mkdir()
    study.write_docs(digits_summary(), out, docs_dir=docs)
    page = (docs / "decay_study.md").read_text()
    head = page.split(study.section_mark("mnist1d"))[0]
    assert "{" not in head
    for image in ("img/decay_study/heatmaps.png", "img/decay_study/shrinkage.png"):
        assert f"]({image})]({image})" in page
        assert (docs / image).read_bytes() == b"\x89PNG fake"
    # the table's best lr and wd in the ticks' format
    assert "| 1.0e-03 | 1.0e-05 |" in page
    assert "a factor of about 2,600 between the two" in page
    assert "has not been run for this page yet" in page


def test_spread_is_rounded_to_two_digits(study):
    assert study._spread([1.1e-3, 0.0, 2.9]) == "2,600"
    assert study._spread([1.0, 0.0, 3.14]) == "3.1"


# ----------------------------------------------------------------------------
# the benchmark page's summary


def row(tree, optimizer, library, vs_optax, vs_torch):
    return {
        "tree": tree,
        "optimizer": optimizer,
        "library": library,
        "ms": 1.0,
        "vs_optax": vs_optax,
        "vs_torch": vs_torch,
        "compile_s": 0.1,
    }


def fake_summaries():
    cpu = {"device": "CPU fake", "torch_device": "cpu", "versions": {"jax": "0"}}
    cpu["rows"] = [
        row("resnet50", "adamw", "gradtx", 0.9, 1.5),
        row("gpt2", "adamw", "gradtx", 1.1, 1.7),
        row("one-big", "adamw", "gradtx", 1.0, 1.6),
        row("resnet50", "adamw", "gradtx-fused", 0.5, 0.8),
        row("resnet50", "adamw", "optax", None, 1.6),
        row("resnet50", "adamw", "copy", 0.1, 0.1),
        row("resnet50", "lion", "gradtx", 0.8, None),
        row("gpt2", "amsgrad", "gradtx", 1.2, 0.4),
    ]
    gpu = {"device": "GPU fake", "torch_device": "cuda", "versions": {"jax": "0"}}
    gpu["rows"] = [
        row("resnet50", "sgd", "gradtx", 1.0, 2.0),
        row("resnet50", "muon", "gradtx", 0.6, 3.0),
    ]
    return {"cpu-fake": cpu, "gpu-fake": gpu}


def test_span_is_the_median_then_the_range():
    assert report._span([1.1, 0.9, 1.0, None]) == "1.00x (0.90\u2060–\u20601.10)"
    assert report._span([0.5]) == "0.50x"
    assert report._span([None]) == ""


def test_summary_table_has_one_short_table_per_device():
    lines = report.summary_table(fake_summaries())
    text = "\n".join(lines)
    assert lines[0] == "**CPU fake**"
    head = "optimizer | gradtx ÷ optax | gradtx ÷ torch"
    assert f"{head} | gradtx-fused ÷ optax | gradtx-fused ÷ torch" in lines
    # the median over the three trees, then the lowest and highest
    assert "adamw (3 trees) | 1.00x (0.90\u2060–\u20601.10) | 1.60x" in text
    assert "| 0.50x | 0.80x" in text
    # the families beyond Adam share one row: two families, two trees
    assert "2 families beyond Adam (2 trees) | 1.00x (0.80\u2060–\u20601.20)" in text
    assert "**GPU fake**" in lines
    assert f"{head}\n---" in text  # no fused columns on a device without them
    assert "sgd (1 tree) | 1.00x | 2.00x" in text
    # a device with one family names it
    assert "muon (1 tree) | 0.60x | 3.00x" in text
    # no line starts like the device sections' full tables
    assert not any(line.startswith("| ") for line in lines)


def test_the_page_leads_with_the_summary(tmp_path):
    for stem, summary in fake_summaries().items():
        (tmp_path / f"{stem}.json").write_text(report.dumps(summary))
    page = report.page(report.load(tmp_path))
    order = [
        page.index("## Summary"),
        page.index("**CPU fake**"),
        page.index("## How it is measured"),
        page.index("## CPU fake"),
        page.index("## GPU fake"),
    ]
    assert order == sorted(order)
    assert "Bandwidth limit" not in page and "(run " not in page
    assert len(page.splitlines()) < 125


def test_the_committed_benchmark_page_is_the_one_its_results_build():
    results = ROOT / "benchmarks" / "results"
    page = report.page(report.load(results))
    assert (ROOT / "docs" / "benchmarks.md").read_text() == page
