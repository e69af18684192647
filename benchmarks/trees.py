"""The parameter trees the harness times: leaf names and shapes, and their data.

A tree is described by its leaf shapes only; the values are random float32
(parameters ~ N(0, 0.02^2), gradients ~ N(0, 0.001^2)), because an optimizer
step costs the same whatever the numbers are. Shapes follow the published
models exactly, so the leaf count and the size distribution are the real ones:

- `resnet50`: torchvision's `resnet50()` parameters, in `named_parameters()`
  order (conv kernels in OIHW layout, batch-norm scale and bias, fc): 161
  leaves, 25,557,032 parameters.
- `gpt2-small`: Hugging Face's `GPT2Model` (wte, wpe, 12 blocks, ln_f; the LM
  head is tied to wte): 148 leaves, 124,439,808 parameters.
- `many-small`: 2000 x (64,) + 200 x (256, 256), 2200 leaves, 13.2M parameters.
- `one-big`: one vector of 2^24 parameters.
- `sweep-N`: N x (1024,), for the leaf-count sweep.
- `one-1b`: one vector of 2^30 parameters (for large GPUs; not in the default
  set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Shape = tuple[int, ...]

DEFAULT_TREES = ("resnet50", "gpt2-small", "many-small", "one-big")
FULL_SWEEP = (10, 30, 100, 300, 1000, 3000, 5000)
QUICK_SWEEP = (10, 30, 100, 300)


@dataclass(frozen=True)
class TreeSpec:
    """A named list of leaves: `(leaf name, shape)` in a fixed order."""

    name: str
    leaves: tuple[tuple[str, Shape], ...]
    description: str

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return len(self.leaves)

    @property
    def n_params(self) -> int:
        """Number of scalar parameters over all leaves."""
        return sum(int(np.prod(shape)) for _, shape in self.leaves)

    @property
    def largest_leaf(self) -> int:
        """Number of scalars in the largest leaf."""
        return max(int(np.prod(shape)) for _, shape in self.leaves)

    def keys(self) -> list[str]:
        """Dictionary keys, zero-padded so that sorted order is leaf order.

        JAX flattens a dict in sorted key order; with these keys that order is
        the order of `leaves`, which is also the order the torch side uses.
        """
        width = len(str(len(self.leaves)))
        return [f"{i:0{width}d}.{name}" for i, (name, _) in enumerate(self.leaves)]


# ----------------------------------------------------------------------------
# ResNet-50 (torchvision)

# (stage name, bottleneck width, number of blocks); the output width is 4x.
_RESNET50_STAGES = (("layer1", 64, 3), ("layer2", 128, 4), ("layer3", 256, 6))
_RESNET50_STAGES += (("layer4", 512, 3),)


def _batch_norm(prefix: str, width: int) -> list[tuple[str, Shape]]:
    return [(f"{prefix}.weight", (width,)), (f"{prefix}.bias", (width,))]


def resnet50_leaves() -> list[tuple[str, Shape]]:
    """torchvision `resnet50()` parameter names and shapes, in its order.

    Each bottleneck block holds conv1 (1x1), bn1, conv2 (3x3), bn2, conv3
    (1x1, 4x wider), bn3; the first block of each stage also holds a
    downsample 1x1 conv and its batch norm. Conv kernels are (out, in, kh, kw).
    """
    leaves: list[tuple[str, Shape]] = [("conv1.weight", (64, 3, 7, 7))]
    leaves += _batch_norm("bn1", 64)
    inplanes = 64
    for stage, width, blocks in _RESNET50_STAGES:
        for b in range(blocks):
            p = f"{stage}.{b}"
            leaves.append((f"{p}.conv1.weight", (width, inplanes, 1, 1)))
            leaves += _batch_norm(f"{p}.bn1", width)
            leaves.append((f"{p}.conv2.weight", (width, width, 3, 3)))
            leaves += _batch_norm(f"{p}.bn2", width)
            leaves.append((f"{p}.conv3.weight", (4 * width, width, 1, 1)))
            leaves += _batch_norm(f"{p}.bn3", 4 * width)
            if b == 0:
                leaves.append((f"{p}.downsample.0.weight", (4 * width, inplanes, 1, 1)))
                leaves += _batch_norm(f"{p}.downsample.1", 4 * width)
            inplanes = 4 * width
    leaves += [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]
    return leaves


# ----------------------------------------------------------------------------
# GPT-2 small (Hugging Face GPT2Model; Conv1D weights are (in, out))

_GPT2_VOCAB, _GPT2_CONTEXT, _GPT2_WIDTH, _GPT2_LAYERS = 50257, 1024, 768, 12


def gpt2_small_leaves() -> list[tuple[str, Shape]]:
    """GPT-2 small parameter names and shapes, in `named_parameters()` order."""
    d = _GPT2_WIDTH
    leaves: list[tuple[str, Shape]] = [
        ("wte.weight", (_GPT2_VOCAB, d)),
        ("wpe.weight", (_GPT2_CONTEXT, d)),
    ]
    for i in range(_GPT2_LAYERS):
        p = f"h.{i}"
        leaves += [
            (f"{p}.ln_1.weight", (d,)),
            (f"{p}.ln_1.bias", (d,)),
            (f"{p}.attn.c_attn.weight", (d, 3 * d)),
            (f"{p}.attn.c_attn.bias", (3 * d,)),
            (f"{p}.attn.c_proj.weight", (d, d)),
            (f"{p}.attn.c_proj.bias", (d,)),
            (f"{p}.ln_2.weight", (d,)),
            (f"{p}.ln_2.bias", (d,)),
            (f"{p}.mlp.c_fc.weight", (d, 4 * d)),
            (f"{p}.mlp.c_fc.bias", (4 * d,)),
            (f"{p}.mlp.c_proj.weight", (4 * d, d)),
            (f"{p}.mlp.c_proj.bias", (d,)),
        ]
    leaves += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return leaves


# ----------------------------------------------------------------------------
# the registry


def many_small_leaves() -> list[tuple[str, Shape]]:
    """2000 vectors of 64 and 200 matrices of 256 x 256."""
    small = [(f"small.{i}", (64,)) for i in range(2000)]
    return small + [(f"square.{i}", (256, 256)) for i in range(200)]


def sweep_leaves(n: int) -> list[tuple[str, Shape]]:
    """`n` vectors of 1024."""
    return [(f"leaf.{i}", (1024,)) for i in range(n)]


def get_tree(name: str) -> TreeSpec:
    """The tree called `name`: one of `DEFAULT_TREES`, `one-1b` or `sweep-N`.

    Raises:
        ValueError: If the name is unknown.
    """
    if name == "resnet50":
        leaves = resnet50_leaves()
        text = "torchvision ResNet-50 parameter shapes"
    elif name == "gpt2-small":
        leaves = gpt2_small_leaves()
        text = "GPT-2 small (124M) parameter shapes"
    elif name == "many-small":
        leaves = many_small_leaves()
        text = "2000 x (64,) + 200 x (256, 256)"
    elif name == "one-big":
        leaves = [("x", (2**24,))]
        text = "one vector of 2^24"
    elif name == "one-1b":
        leaves = [("x", (2**30,))]
        text = "one vector of 2^30"
    elif name.startswith("sweep-") and name[len("sweep-") :].isdigit():
        n = int(name[len("sweep-") :])
        leaves = sweep_leaves(n)
        text = f"{n} x (1024,)"
    else:
        known = ", ".join((*DEFAULT_TREES, "one-1b", "sweep-N"))
        raise ValueError(f"get_tree: unknown tree {name!r}; expected one of {known}")
    return TreeSpec(name, tuple(leaves), text)


def custom_tree(name: str, shapes: list[Shape]) -> TreeSpec:
    """A tree of the given shapes (used by the tests and for experiments)."""
    leaves = tuple((f"leaf.{i}", tuple(s)) for i, s in enumerate(shapes))
    return TreeSpec(name, leaves, " + ".join(str(tuple(s)) for s in shapes))


def make_data(
    spec: TreeSpec, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random float32 parameters and gradients for `spec`, as dicts of arrays.

    Args:
        spec: The tree.
        seed: Seed of the NumPy generator.

    Returns:
        `(params, grads)`, two dicts keyed by `spec.keys()`.
    """
    rng = np.random.default_rng(seed)
    params, grads = {}, {}
    for key, (_, shape) in zip(spec.keys(), spec.leaves, strict=True):
        params[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        grads[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(1e-3)
    return params, grads
