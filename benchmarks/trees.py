"""The parameter trees the harness times.

A tree is a list of leaf shapes; the values are random float32, since an
optimizer step costs the same whatever the numbers are. The ResNet-50 and
GPT-2 trees copy the published models' shapes, so the leaf count and the mix
of leaf sizes are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Tree:
    name: str
    description: str
    shapes: tuple[Shape, ...]

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    def keys(self) -> list[str]:
        # Zero-padded so that JAX's sorted dict order is the leaf order, which
        # is also the order of the torch tensors.
        width = len(str(len(self.shapes)))
        return [f"{i:0{width}d}" for i in range(len(self.shapes))]


def resnet50() -> list[Shape]:
    """torchvision `resnet50()` parameters in `named_parameters()` order."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:  # the downsample conv and its batch norm
                shapes += [(4 * width, inplanes, 1, 1), (4 * width,), (4 * width,)]
            inplanes = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def gpt2_small(d: int = 768) -> list[Shape]:
    """Hugging Face `GPT2Model` (the LM head is tied to the embedding)."""
    shapes: list[Shape] = [(50257, d), (1024, d)]
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
    block += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + 12 * block + [(d,), (d,)]


TREES = {
    "resnet50": ("the shapes of torchvision's ResNet-50", resnet50),
    "gpt2-small": ("the shapes of GPT-2 small", gpt2_small),
    "many-small": (
        "2000 x (64,) + 200 x (256, 256)",
        lambda: 2000 * [(64,)] + 200 * [(256, 256)],
    ),
    "one-big": ("one vector of 2^24", lambda: [(2**24,)]),
    # Not in the default set: 16 GiB per contender, for large GPUs.
    "one-1b": ("one vector of 2^30", lambda: [(2**30,)]),
}
DEFAULT_TREES = ("resnet50", "gpt2-small", "many-small", "one-big")


def get_tree(name: str) -> Tree:
    if name not in TREES:
        raise ValueError(f"unknown tree {name!r}; expected one of {list(TREES)}")
    description, shapes = TREES[name]
    return Tree(name, description, tuple(shapes()))


def make_data(tree: Tree, seed: int = 0) -> tuple[dict, dict]:
    """Random float32 `(params, grads)`, as dicts of NumPy arrays."""
    rng = np.random.default_rng(seed)
    params, grads = {}, {}
    for key, shape in zip(tree.keys(), tree.shapes, strict=True):
        params[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        grads[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(1e-3)
    return params, grads
