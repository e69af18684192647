"""Masks that select leaves of a parameter tree by where they sit and what they are.

Each helper is a function of the params that returns a tree of Python bools
with the params' structure, ready for any `mask=` argument (`masked`,
`freeze`, `add_decayed_weights`, `adamw`) or, turned into label strings, for
`multi_transform`. They read structure, names, shapes and dtypes only, never
values, so they give the same answer on arrays and on traced values under
`jax.jit`.

They work on any pytree: plain dicts and lists, flax Linen `FrozenDict`
params, flax `nnx.State`, and equinox modules. Every leaf that is not an
array (an equinox module's activation function, a Python number, a string)
maps to False: it is never selected, so a transformation never touches it.
Empty nodes (`None`, as in `eqx.filter(model, eqx.is_array)`) stay `None`.

A leaf's path is its key path joined by `/`, as in every gradtx message:
`encoder/layers/0/kernel` for nested dicts and lists, `layers/1/weight` for an
equinox module. In `nnx.State` each array sits in the `value` attribute of its
`Variable` (`linear/kernel/value`); the helpers also accept the path without
that last `value` (`linear/kernel`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._checks import path_str
from gradtx.base import Params


def _is_array(leaf: Any) -> bool:
    """JAX arrays (tracers included) and NumPy arrays and scalars."""
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def _in_variable(path: tuple[Any, ...]) -> bool:
    """Whether the path ends in the `value` attribute of an nnx Variable."""
    if not path:
        return False
    last = path[-1]
    return isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value"


def _paths(path: tuple[Any, ...]) -> list[str]:
    """The leaf's path, and the same path without an nnx Variable's `value`."""
    if _in_variable(path):
        return [path_str(path), path_str(path[:-1])]
    return [path_str(path)]


def _matches(pattern: str | re.Pattern[str], path: str) -> bool:
    """A regular expression matching the whole path, or a glob."""
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(path) is not None
    return fnmatch.fnmatchcase(path, pattern)


class _PathMask:
    """The function `by_path` returns; its repr is the call that built it."""

    def __init__(self, patterns: tuple[str | re.Pattern[str], ...]):
        self.patterns = patterns

    def _matches(self, path: str) -> bool:
        return any(_matches(pattern, path) for pattern in self.patterns)

    def __call__(self, params: Params) -> Any:
        def select(path: tuple[Any, ...], leaf: Any) -> bool:
            return _is_array(leaf) and any(self._matches(p) for p in _paths(path))

        selected = jax.tree_util.tree_map_with_path(select, params)
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        paths = [q for path, leaf in leaves if _is_array(leaf) for q in _paths(path)]
        for pattern in self.patterns:
            if not any(_matches(pattern, q) for q in paths):
                shown = ", ".join(repr(q) for q in paths[:5])
                raise ValueError(
                    f"by_path: the pattern {pattern!r} matches no array leaf of "
                    f"the params (a typo?); their paths begin {shown}"
                )
        return selected

    def __repr__(self) -> str:
        return f"by_path({', '.join(repr(p) for p in self.patterns)})"


def by_path(*patterns: str | re.Pattern[str]) -> Callable[[Params], Any]:
    """Select the array leaves whose `/`-joined path matches a pattern.

    A string is a glob, matched with `fnmatch` against the whole path and
    case-sensitively: `*` matches any run of characters, `/` included, `?`
    one character, `[abc]` one of a set. A compiled `re.Pattern` is a regular
    expression that must match the whole path (`re.fullmatch`); write `.*`
    where a part of the path may be anything. A leaf is selected when any
    pattern matches its path (or, in `nnx.State`, its path without the final
    `value`). Leaves that are not arrays are never selected.

    Args:
        *patterns: One or more globs (`str`) or regular expressions
            (`re.Pattern`).

    Returns:
        A function of the params returning a tree of bools with their
        structure. Its repr is the call that built it, so `describe` shows it.

    Raises:
        TypeError: If no pattern is given or a pattern is neither a string
            nor a compiled regular expression.
        ValueError: When the returned function is called, if a pattern
            matches no array leaf of the params (a misspelt name would
            otherwise select nothing, silently).

    Examples:
        >>> import re
        >>> import jax.numpy as jnp
        >>> from gradtx import masks
        >>> params = {
        ...     "embed": jnp.zeros((10, 4)),
        ...     "layers": [{"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)}],
        ... }
        >>> masks.by_path("embed", "*/bias")(params)
        {'embed': True, 'layers': [{'bias': True, 'kernel': False}]}
        >>> masks.by_path(re.compile(r"layers/[0-9]+/kernel"))(params)
        {'embed': False, 'layers': [{'bias': False, 'kernel': True}]}
    """
    if not patterns:
        raise TypeError("by_path: expected at least one pattern, got none")
    for pattern in patterns:
        if not isinstance(pattern, str | re.Pattern):
            raise TypeError(
                "by_path: a pattern must be a glob string or a compiled "
                f"re.Pattern, got {type(pattern).__name__} {pattern!r}"
            )
    return _PathMask(patterns)


_BIAS_NAMES = {"bias", "b"}


def _words(name: str) -> list[str]:
    """`LayerNorm_0` -> ['layernorm'], `ln_f` -> ['ln', 'f'], `norm1` -> ['norm']."""
    return [w for w in re.split(r"[^a-z]+", name.lower()) if w]


# Words that name a normalization layer, after `_words` (`LayerNorm_0` ->
# `layernorm`, `batch_norm` -> `batch`, `norm`). A word merely beginning or
# ending in "norm" (`normal_head`, `normalizing_flow`, `enorm`) is not one.
_NORM_WORDS = {
    "norm",
    "ln",
    "layernorm",
    "batchnorm",
    "groupnorm",
    "rmsnorm",
    "instancenorm",
    "prenorm",
    "postnorm",
    "qknorm",
}


def _names_norm(name: str) -> bool:
    """Whether a key names a normalization layer: `LayerNorm_0`, `norm1`, `ln_f`."""
    return any(w in _NORM_WORDS for w in _words(name))


def _is_norm_module(node: Any) -> bool:
    """A module object (equinox, nnx) of a normalization layer, by class name."""
    return type(node).__name__.endswith("Norm") and not _is_array(node)


def _decays(path: tuple[Any, ...], leaf: Any) -> bool:
    if not _is_array(leaf) or not jnp.issubdtype(leaf.dtype, jnp.inexact):
        return False
    if np.ndim(leaf) <= 1:
        return False
    names = [path_str((key,)) for key in path]
    if _in_variable(path):
        names = names[:-1]  # the leaf's name is its Variable's
    leaf_name = names[-1].lower() if names else ""
    if leaf_name in _BIAS_NAMES or "bias" in _words(leaf_name):
        return False
    return not any(_names_norm(name) for name in names)


def no_decay_for_biases_and_norms(params: Params) -> Any:
    """Mark where weight decay applies: True for weights, False for the rest.

    A leaf is decayed (True) when all of these hold:

    - it is a floating-point array with at least 2 dimensions: kernels,
      convolution filters, embeddings;
    - its name (the last key of its path) is not `bias` or `b` and has no
      `bias` word in it (`bias`, `in_proj_bias`), so a convolution bias of
      shape (C, 1, 1) is not decayed;
    - no key on its path names a normalization layer (a word `norm`, `ln`,
      `layernorm`, `batchnorm`, `groupnorm`, `rmsnorm`, `instancenorm`,
      `prenorm`, `postnorm` or `qknorm`, as in `LayerNorm_0`, `norm1`,
      `batch_norm`, `ln_f`; `normal_head` or `normalizing_flow` is not one),
      and it does not sit inside a module object whose class name ends in
      `Norm` (equinox `LayerNorm`, `RMSNorm`, `GroupNorm`, `BatchNorm`).

    Every other leaf is False: biases, norm scales and offsets, scalars and
    every leaf with ndim <= 1, integer arrays, and leaves that are not arrays
    at all. Pass it as it is to `mask=`, for example
    `adamw(1e-3, weight_decay=1e-2, mask=masks.no_decay_for_biases_and_norms)`.

    Args:
        params: The params: any pytree, including `nnx.State`, Linen
            `FrozenDict` params and equinox modules.

    Returns:
        A tree of bools with the structure of `params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import masks
        >>> conv = {"weight": jnp.zeros((8, 3, 3, 3)), "bias": jnp.zeros((8, 1, 1))}
        >>> norm = {"scale": jnp.ones((2, 4)), "bias": jnp.zeros(4)}
        >>> mask = masks.no_decay_for_biases_and_norms({"conv": conv, "ln_1": norm})
        >>> mask["conv"]
        {'bias': False, 'weight': True}
        >>> mask["ln_1"]
        {'bias': False, 'scale': False}
    """

    def visit(path: tuple[Any, ...], node: Any) -> Any:
        if _is_norm_module(node):
            return jax.tree.map(lambda _: False, node)
        return _decays(path, node)

    return jax.tree_util.tree_map_with_path(visit, params, is_leaf=_is_norm_module)
