"""The two problems the weight-decay study runs on: data, model and sizes.

`decay_study.py` trains grids of optimizers; what it trains on is a `Problem`
from this module:

- `digits`: scikit-learn's bundled 8x8 digits, 400 training images, an MLP
  64-128-10. The `make demo` problem: quick, and too easy for the decay to
  decide the test error.
- `mnist1d`: MNIST-1D (Greydanus and Kobak, 2020), generated on this machine
  by the `mnist1d` package from its default templates and arguments (no
  download), a small training subset and a 1-D convolutional network like
  the one in the MNIST-1D paper. The `make study` problem: the network fits
  the training set exactly, so how it is regularised matters.

Every size of the MNIST-1D study (training-set size, network width, steps,
batch, evaluation cadence, seeds, grid) is in `MNIST1D_SIZES`, the one place
to change them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------
# sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big one study is.

    Attributes:
        n_train: Training examples.
        steps: Optimizer steps per run.
        batch_size: Examples per step, drawn at random with replacement.
        seeds: Seeds per grid cell; seed s fixes the initialisation and the
            batches, the same for every optimizer.
        grid: Learning rates and decays per grid axis (grid x grid cells).
        eval_every: Steps between evaluations of the no-decay curves; also
            how many steps one jitted call runs.
        width: Channels of each convolution (MNIST-1D) or hidden units
            (digits).
        label_noise: Fraction of the training examples whose label is
            replaced by one drawn uniformly from all classes (noisy digits);
            the test labels stay clean.
    """

    n_train: int
    steps: int
    batch_size: int
    seeds: int
    grid: int
    eval_every: int
    width: int
    label_noise: float = 0.0


# The MNIST-1D study: 8 x 8 grids x 5 seeds x 2 schedules x 9 variants and
# Adam without decay, about 5,800 training runs, sized to finish within 30
# minutes on 2 CPU cores. A run costs steps x batch_size network passes, and
# a pass grows as width**2 (width 16: about 110 us per step and run on 2
# quiet cores, width 24: about 180 us), so the width is what was shrunk to
# fit, not the seeds or the grid. At width 16 the network has 2,474
# weights for 1,000 training signals, and fits them without decay.
MNIST1D_SIZES = Sizes(
    n_train=1000,
    steps=1500,
    batch_size=32,
    seeds=5,
    grid=8,
    eval_every=150,
    width=16,
)
# `--quick`: the same network on 4 x 4 grids, 2 seeds, 600 steps (a few
# minutes); for trying the pipeline, not for conclusions.
MNIST1D_QUICK = dataclasses.replace(
    MNIST1D_SIZES, steps=600, seeds=2, grid=4, eval_every=100
)

# The digits demo, as `make demo` has always run it.
DIGITS_SIZES = Sizes(
    n_train=400, steps=1000, batch_size=64, seeds=3, grid=8, eval_every=100, width=128
)
DIGITS_QUICK = dataclasses.replace(DIGITS_SIZES, steps=400, grid=6)


# ----------------------------------------------------------------------------
# problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """A data set, a network, and where the study of them writes.

    Attributes:
        name: Short name, used on the command line and in file names.
        title: The data set's name in figures.
        sizes: The full run's sizes; `quick` those of `--quick`.
        load_data: `sizes -> ((x_train, y_train), (x_test, y_test))`.
        init_params: `(key, sizes) -> params`.
        logits: `(params, x) -> logits`, x a batch of inputs.
        dataset: One line on the data, `sizes -> str`.
        model: One line on the network, `sizes -> str`.
        ranges: Variant name -> (log10 learning rates, log10 decays), the
            ends of its grid.
        families: The families run when `--families` is not given.
        schedules: The learning-rate schedules run, a subset of ("cosine",
            "constant").
        curves: Also train Adam without decay and record its curves.
    """

    name: str
    title: str
    sizes: Sizes
    quick: Sizes
    load_data: Callable[[Sizes], Any]
    init_params: Callable[[Any, Sizes], Any]
    logits: Callable[[Any, Any], Any]
    dataset: Callable[[Sizes], str]
    model: Callable[[Sizes], str]
    ranges: dict[str, tuple[tuple[float, float], tuple[float, float]]]
    families: tuple[str, ...]
    schedules: tuple[str, ...]
    curves: bool


def loss_fn(logits, params, x, y):
    """Mean softmax cross-entropy of `logits(params, x)` against labels y."""
    log_p = jax.nn.log_softmax(logits(params, x))
    return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))


def error_rate(logits, params, x, y):
    """Fraction of the examples in x whose arg-max logit is not y."""
    return jnp.mean(jnp.argmax(logits(params, x), axis=1) != y)


# ----------------------------------------------------------------------------
# digits: the demo


def load_digits_data(sizes: Sizes, seed: int = 0):
    """Digits scaled to [0, 1]; a fixed split with a small training set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[: sizes.n_train], order[sizes.n_train :]
    return (jnp.asarray(x[train]), jnp.asarray(y[train])), (
        jnp.asarray(x[test]),
        jnp.asarray(y[test]),
    )


def init_mlp(key, sizes=(64, 128, 10)):
    """He-initialised dense layers, biases zero."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        w = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in)
        params.append({"w": w, "b": jnp.zeros(n_out)})
    return params


def mlp_logits(params, x):
    """ReLU MLP."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
    return x @ params[-1]["w"] + params[-1]["b"][None, :]


DIGITS = Problem(
    name="digits",
    title="digits",
    sizes=DIGITS_SIZES,
    quick=DIGITS_QUICK,
    load_data=load_digits_data,
    init_params=lambda key, sizes: init_mlp(key, (64, sizes.width, 10)),
    logits=mlp_logits,
    dataset=lambda s: (
        f"scikit-learn digits (8x8), {s.n_train} training / "
        f"{1797 - s.n_train} test images"
    ),
    model=lambda s: f"MLP 64-{s.width}-10, ReLU, softmax cross-entropy",
    # Log10 ranges, chosen so that every grid runs from "no visible effect"
    # to "decay too strong" at every learning rate, and the learning rates
    # from too slow to the edge of divergence.
    ranges={
        "adam_l2": ((-3.0, -1.0), (-5.0, -0.5)),
        "adamw": ((-3.0, -1.0), (-2.0, 1.5)),
        "adamw_multiplier": ((-3.0, -1.0), (-5.0, -0.5)),
        "adamw_independent": ((-3.0, -1.0), (-5.5, -1.0)),
        "sgd_l2": ((-2.0, -0.25), (-5.0, -0.5)),
        "sgdw": ((-2.0, -0.25), (-4.0, 0.5)),
    },
    families=("adamw", "sgdw"),
    schedules=("cosine",),
    curves=False,
)


# ----------------------------------------------------------------------------
# MNIST-1D: the study


def load_mnist1d_data(sizes: Sizes, num_samples: int = 5000):
    """MNIST-1D from the package's generator: a training subset, the test set.

    `mnist1d.data.make_dataset` with its default templates and arguments
    (seed 42) generates 5,000 signals of length 40, shuffled, and splits them
    4,000 / 1,000; the first `sizes.n_train` training signals are kept, and
    all test signals. `num_samples` is the generator's own argument, changed
    only by the tests to generate a tiny set.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    data = make_dataset(args)
    if sizes.n_train > len(data["y"]):
        raise ValueError(
            f"n_train={sizes.n_train}, but the generator made only "
            f"{len(data['y'])} training signals"
        )
    x = np.asarray(data["x"][: sizes.n_train], np.float32)
    y = np.asarray(data["y"][: sizes.n_train], np.int32)
    x_test = np.asarray(data["x_test"], np.float32)
    y_test = np.asarray(data["y_test"], np.int32)
    return (jnp.asarray(x), jnp.asarray(y)), (jnp.asarray(x_test), jnp.asarray(y_test))


# (kernel size, stride, padding) of the three convolutions; with inputs of
# length 40 their outputs have lengths 19, 10 and 5.
CONVOLUTIONS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))
SIGNAL_LENGTH = 40


def conv_output_length(length: int) -> int:
    """Length of the signal after the three convolutions."""
    for kernel, stride, pad in CONVOLUTIONS:
        length = (length + 2 * pad - kernel) // stride + 1
    return length


def init_cnn(key, sizes: Sizes):
    """Three convolutions of `sizes.width` channels and a linear read-out.

    Each convolution's kernel is stored as a (kernel * in_channels,
    out_channels) matrix. Weights are He-initialised from one draw of
    normals (one random-number kernel to compile, not four); biases are zero.
    """
    width = sizes.width
    in_channels = (1, width, width)
    fan_ins = [k * c for (k, _, _), c in zip(CONVOLUTIONS, in_channels, strict=True)]
    shapes = [(fan_in, width) for fan_in in fan_ins]
    shapes.append((conv_output_length(SIGNAL_LENGTH) * width, 10))
    normals = jax.random.normal(key, (sum(math.prod(s) for s in shapes),))
    params, start = [], 0
    for shape in shapes:
        w = normals[start : start + math.prod(shape)].reshape(shape)
        start += math.prod(shape)
        params.append({"w": w * jnp.sqrt(2.0 / shape[0]), "b": jnp.zeros(shape[1])})
    return params


def conv1d(x, w, b, kernel, stride, pad):
    """A strided 1-D convolution as one matrix product.

    x is (batch, length, channels); the windows are gathered into
    (batch, out_length, kernel * channels) and multiplied by w. Written this
    way, `jax.vmap` over a grid of networks turns it into batched matrix
    products, which XLA runs far faster on a CPU than the grouped
    convolution that vmapping `lax.conv_general_dilated` gives.
    """
    length = x.shape[1]
    x = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    out_length = (length + 2 * pad - kernel) // stride + 1
    end = stride * (out_length - 1) + 1
    windows = jnp.concatenate(
        [x[:, i : i + end : stride, :] for i in range(kernel)], axis=-1
    )
    return windows @ w + b[None, None, :]


def cnn_logits(params, x):
    """x: (batch, 40) signals -> (batch, 10) logits."""
    h = x[:, :, None]
    for layer, (kernel, stride, pad) in zip(params[:-1], CONVOLUTIONS, strict=True):
        h = jax.nn.relu(conv1d(h, layer["w"], layer["b"], kernel, stride, pad))
    h = h.reshape(h.shape[0], -1)
    return h @ params[-1]["w"] + params[-1]["b"][None, :]


def count_weights(params) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def _mnist1d_model(sizes: Sizes) -> str:
    n = count_weights(jax.eval_shape(lambda: init_cnn(jax.random.key(0), sizes)))
    return (
        f"a 1-D CNN: three ReLU convolutions of {sizes.width} channels (kernels "
        "5, 3, 3, stride 2) and a linear layer, "
        f"{n:,} weights; softmax cross-entropy"
    )


MNIST1D = Problem(
    name="mnist1d",
    title="MNIST-1D",
    sizes=MNIST1D_SIZES,
    quick=MNIST1D_QUICK,
    load_data=load_mnist1d_data,
    init_params=init_cnn,
    logits=cnn_logits,
    dataset=lambda s: (
        f"MNIST-1D (generated by the mnist1d package, default "
        f"templates and arguments), {s.n_train} training / 1000 test signals"
    ),
    model=_mnist1d_model,
    # Log10 ranges, set from trial grids: the decays run from too weak to
    # matter to too strong to fit, the learning rates from too slow to the
    # edge of divergence. Lion's learning rates sit about 3x below Adam's and
    # its decoupled decays about 10x above AdamW's.
    ranges={
        "adam_l2": ((-2.5, -1.0), (-5.0, -1.5)),
        "adamw": ((-2.5, -1.0), (-3.5, 0.0)),
        "adamw_multiplier": ((-2.5, -1.0), (-5.5, -1.5)),
        "adamw_independent": ((-2.5, -1.0), (-5.5, -1.5)),
        "adamw_normalized": ((-2.5, -1.0), (-4.0, 0.0)),
        "sgd_l2": ((-2.0, -0.5), (-5.0, -1.5)),
        "sgdw": ((-2.0, -0.5), (-4.5, -1.0)),
        "lion_l2": ((-3.0, -1.25), (-5.0, -1.5)),
        "lion": ((-3.0, -1.25), (-2.0, 1.0)),
    },
    families=("adamw", "adamw_normalized", "sgdw", "lion"),
    schedules=("cosine", "constant"),
    curves=True,
)

# ----------------------------------------------------------------------------
# noisy digits: the study where the network memorises


def load_noisy_digits_data(sizes: Sizes, seed: int = 0):
    """The demo's digits split, with noise put into the training labels.

    The same fixed permutation as `load_digits_data` picks the training
    images; then a fraction `sizes.label_noise` of them, drawn with a
    generator seeded by `seed + 1`, get a label drawn uniformly from the ten
    classes (so about 9 in 10 of those end up wrong). The test labels are
    the data set's own.
    """
    (x, y), test = load_digits_data(sizes, seed)
    rng = np.random.default_rng(seed + 1)
    noisy = rng.random(len(y)) < sizes.label_noise
    y = np.asarray(y).copy()
    y[noisy] = rng.integers(0, 10, int(noisy.sum()))
    return (x, jnp.asarray(y, jnp.int32)), test


# 500 training images of which 30% carry a random label, a 64-128-128-10
# MLP (26,122 weights) that can learn every one of them, 1,297 clean test
# images. Without decay the network can learn the digits first and then
# memorise the wrong labels; how strongly it is decayed decides how much of
# the noise it learns. The same grids, seeds and schedules as MNIST-1D's,
# sized like them to finish within 30 minutes on 2 CPU cores.
NOISY_DIGITS_SIZES = Sizes(
    n_train=500,
    steps=1500,
    batch_size=32,
    seeds=5,
    grid=8,
    eval_every=150,
    width=128,
    label_noise=0.3,
)
NOISY_DIGITS_QUICK = dataclasses.replace(
    NOISY_DIGITS_SIZES, steps=600, seeds=2, grid=4, eval_every=100
)


NOISY_DIGITS = Problem(
    name="noisy_digits",
    title="digits, 30% noisy labels",
    sizes=NOISY_DIGITS_SIZES,
    quick=NOISY_DIGITS_QUICK,
    load_data=load_noisy_digits_data,
    init_params=lambda key, sizes: init_mlp(key, (64, sizes.width, sizes.width, 10)),
    logits=mlp_logits,
    dataset=lambda s: (
        f"scikit-learn digits (8x8), {s.n_train} training images of which "
        f"{100 * s.label_noise:.0f}% carry a label drawn at random, "
        f"{1797 - s.n_train} test images with their own labels"
    ),
    model=lambda s: (
        f"MLP 64-{s.width}-{s.width}-10, ReLU, "
        f"{64 * s.width + s.width * s.width + 10 * s.width + 2 * s.width + 10:,} "
        "weights; softmax cross-entropy"
    ),
    # Log10 ranges, set from a trial of 6 x 6 grids and 2 seeds so that the
    # best cells lie inside: the decays from too weak to matter to too strong
    # to fit, the learning rates from too slow to the edge of divergence.
    ranges={
        "adam_l2": ((-4.0, -1.5), (-4.5, 0.0)),
        "adamw": ((-4.0, -1.5), (-2.0, 2.0)),
        "adamw_multiplier": ((-4.0, -1.5), (-5.0, -1.0)),
        "adamw_independent": ((-4.0, -1.5), (-5.0, -1.0)),
        "adamw_normalized": ((-4.0, -1.5), (-3.5, 0.5)),
        "sgd_l2": ((-2.5, -0.25), (-4.5, 0.0)),
        "sgdw": ((-2.5, -0.25), (-4.0, 0.5)),
        "lion_l2": ((-5.0, -2.5), (-5.0, -0.5)),
        "lion": ((-5.0, -2.5), (-2.0, 1.5)),
    },
    families=("adamw", "adamw_normalized", "sgdw", "lion"),
    schedules=("cosine", "constant"),
    curves=True,
)

PROBLEMS = {p.name: p for p in (DIGITS, MNIST1D, NOISY_DIGITS)}
