"""Validation helpers shared by every transformation.

Hyperparameters are checked once, when a transformation is built; trees are
checked when `update` is traced. Numbers and concrete arrays are
range-checked; tracers and schedules pass through untouched, because their
values are not known when the transformation is built.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer


def check_in_range(
    fn: str,
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> None:
    """Raise unless `value` is a real number in the interval from `low` to `high`.

    The bounds are closed unless `low_open` or `high_open` is set; with no
    upper bound (`high = math.inf`) infinity itself is refused unless
    `allow_inf` is set (for a bound such as a clipping threshold, where inf
    means "no bound"). NaN is always refused.

    Numbers and concrete arrays (NumPy or JAX, every element) are checked.
    Schedules (callables), tracers and None are not: their values are unknown
    when the transformation is built (`inject_hyperparams` checks a
    schedule's first value itself).

    Args:
        fn: Name of the function that received the value, for the message.
        name: Name of the argument, for the message.
        value: The value to check.
        low: Lower bound.
        high: Upper bound, `math.inf` for none.
        low_open: Exclude `low` itself.
        high_open: Exclude `high` itself.
        allow_inf: Accept `inf` when there is no upper bound.

    Raises:
        TypeError: If `value` is a bool, a string, a complex number or
            anything else that is not a real number or array.
        ValueError: If a real value lies outside the interval, or is NaN.
    """
    if value is None or callable(value) or isinstance(value, Tracer):
        return
    values = _real_values(fn, name, value)
    if values is None:
        return  # an array spread over processes: not readable here
    inf_ok = allow_inf and high == math.inf
    with np.errstate(invalid="ignore"):
        too_low = values <= low if low_open else values < low
        open_top = high_open or (high == math.inf and not inf_ok)
        too_high = values >= high if open_top else values > high
        bad = too_low | too_high | np.isnan(values)
    if np.any(bad):
        left = f"({low:g}" if low_open else f"[{low:g}"
        if high == math.inf:
            right = "inf]" if inf_ok else "inf)"
        else:
            right = f"{high:g})" if high_open else f"{high:g}]"
        got = value if np.ndim(value) == 0 else values[bad].flat[0]
        got = got.item() if isinstance(got, np.generic | np.ndarray) else got
        if isinstance(got, jax.Array):
            got = np.asarray(got).item()
        raise ValueError(f"{fn}: {name} must be in {left}, {right}, got {got!r}")


def check_real(fn: str, name: str, value: Any) -> None:
    """Raise `TypeError` unless `value` is a real number or array (or traced)."""
    if not isinstance(value, Tracer):
        _real_values(fn, name, value)


def _real_values(fn: str, name: str, value: Any) -> np.ndarray | None:
    """`value` as a float64 NumPy array, or a `TypeError` if it is not real."""
    dtype = getattr(value, "dtype", None)
    if isinstance(value, bool | np.bool_) or (
        dtype is not None and np.dtype(dtype) == np.bool_
    ):
        raise TypeError(f"{fn}: {name} must be a real number, got the bool {value!r}")
    if isinstance(value, numbers.Real):
        return np.asarray(float(value))
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return None
        if jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(
            value.dtype, jnp.floating
        ):
            return np.asarray(value, np.float64)
    raise TypeError(
        f"{fn}: {name} must be a real number, a real array or a schedule, got "
        f"{type(value).__name__} {value!r}"
    )


def check_count(
    fn: str, name: str, value: Any, low: int, *, strict: bool = False
) -> int:
    """Return `value` as an int if it is a whole number >= low (> low if strict).

    Step counts and sizes (`transition_steps`, `every_k`) take Python or NumPy
    integers, or floats with no fractional part (`1e3`).

    Raises:
        TypeError: If `value` is not a whole number (a bool, 2.5, a string,
            an array).
        ValueError: If it is below `low` (or equal to it with `strict`).
    """
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{fn}: {name} must be a whole number of steps, got "
            f"{type(value).__name__} {value!r}"
        )
    check_in_range(fn, name, int(value), low, low_open=strict)
    return int(value)


def check_dtype(fn: str, name: str, dtype: Any) -> jnp.dtype | None:
    """`dtype` as a floating-point `jnp.dtype` (None stays None), or `ValueError`."""
    if dtype is None:
        return None
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as error:
        raise ValueError(f"{fn}: {name} must be a dtype, got {dtype!r}") from error
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(
            f"{fn}: {name} must be a floating-point dtype, got {dtype.name}"
        )
    return dtype


def check_flag(fn: str, name: str, value: Any) -> None:
    """Raise `TypeError` unless a flag such as `nesterov` is a bool.

    A flag that takes any truthy value would turn an argument given in
    another library's positional order (a dtype, a number) into a silent
    switch.
    """
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"{fn}: {name} must be True or False, got {type(value).__name__} {value!r}"
        )


def path_str(path: tuple[Any, ...]) -> str:
    """Render a JAX key path as `a/b/0`, the form used in every message."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts) if parts else "<root>"


def _describe_leaf(leaf: Any) -> str:
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None:
        return type(leaf).__name__
    return f"{dtype}{list(shape)}"


def check_same_tree(
    fn: str, name_a: str, tree_a: Any, name_b: str, tree_b: Any
) -> None:
    """Raise `ValueError` unless two trees have the same structure and shapes.

    The message names the first path at which the trees differ, so a user can
    find the offending leaf in a large model. Runs in Python at trace time:
    under `jax.jit` it costs nothing per step.

    Args:
        fn: Name of the transformation doing the check, for the message.
        name_a: What `tree_a` is (for example "updates").
        tree_a: The tree whose structure is expected.
        name_b: What `tree_b` is (for example "state.mu").
        tree_b: The tree to compare against `tree_a`.

    Raises:
        ValueError: If the structures or any leaf shapes differ.
    """
    flat_a, def_a = jax.tree.flatten(tree_a)
    flat_b, def_b = jax.tree.flatten(tree_b)
    if def_a == def_b and all(
        getattr(a, "shape", ()) == getattr(b, "shape", ())
        for a, b in zip(flat_a, flat_b, strict=True)
    ):
        return  # the common case, without building any path
    leaves_a = jax.tree_util.tree_flatten_with_path(tree_a)[0]
    leaves_b = jax.tree_util.tree_flatten_with_path(tree_b)[0]
    if def_a == def_b:
        for (path, a), (_, b) in zip(leaves_a, leaves_b, strict=True):
            if getattr(a, "shape", ()) != getattr(b, "shape", ()):
                raise ValueError(
                    f"{fn}: {name_a} and {name_b} differ in shape at "
                    f"'{path_str(path)}': {_describe_leaf(a)} against "
                    f"{_describe_leaf(b)}. Pass a tree with the same shapes as "
                    "the params given to init."
                )
        return
    paths_a = [path_str(p) for p, _ in leaves_a]
    paths_b = [path_str(p) for p, _ in leaves_b]
    set_a, set_b = set(paths_a), set(paths_b)
    only_a = [p for p in paths_a if p not in set_b]
    only_b = [p for p in paths_b if p not in set_a]
    if only_a and only_b:
        where = (
            f"'{only_a[0]}' in {name_a} is not in {name_b}, which has "
            f"'{only_b[0]}' instead"
        )
    elif only_a:
        where = f"'{only_a[0]}' in {name_a} is not in {name_b}"
    elif only_b:
        where = f"'{only_b[0]}' in {name_b} is missing from {name_a}"
    else:
        where = f"the containers: {def_a} against {def_b}"
    raise ValueError(
        f"{fn}: the structure of {name_a} does not match {name_b}; first "
        f"difference at {where}. Pass a tree with the same structure as the "
        "params given to init."
    )


def require_params(fn: str, params: Any) -> None:
    """Raise `ValueError` if a transformation that reads params got none."""
    if params is None:
        raise ValueError(
            f"{fn} reads the parameters, but update() got params=None; call "
            "update(updates, state, params) with the current parameters."
        )


def broadcast_prefix(
    fn: str, name: str, prefix: Any, tree: Any
) -> list[tuple[str, Any]]:
    """One `(path, value)` per leaf of `tree`: the leaf of `prefix` covering it.

    `prefix` has the structure of `tree` or of a prefix of it (a value at an
    inner node covers that whole subtree). Used for masks and group labels.

    Raises:
        ValueError: If `prefix` is not a prefix of `tree`, naming the first
            differing path.
    """
    flat, prefix_def = jax.tree_util.tree_flatten_with_path(prefix)
    try:
        subtrees = prefix_def.flatten_up_to(tree)
    except (ValueError, TypeError):
        _explain_prefix_mismatch(fn, name, [path_str(p) for p, _ in flat], tree)
        check_same_tree(fn, name, prefix, "params", tree)
        raise  # one of the two raises first; kept for type checkers
    pairs: list[tuple[str, Any]] = []
    for (path, value), subtree in zip(flat, subtrees, strict=True):
        pairs.extend([(path_str(path), value)] * len(jax.tree.leaves(subtree)))
    return pairs


def _explain_prefix_mismatch(
    fn: str, name: str, prefix_paths: list[str], tree: Any
) -> None:
    """Raise a `ValueError` naming the key a prefix tree lacks or has extra.

    A prefix leaf at `c` covers every leaf of the tree under `c/`, so the
    paths are compared up to that prefix, not leaf by leaf.
    """
    tree_paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]

    def parts(path: str) -> list[str]:
        return [] if path == "<root>" else path.split("/")

    covers = [parts(p) for p in prefix_paths]
    nodes = {tuple(c[:i]) for c in covers for i in range(len(c) + 1)}
    missing = None  # the first params key the prefix has no entry for
    for path in tree_paths:
        keys = parts(path)
        if not any(keys[: len(c)] == c for c in covers):
            depth = max(i for i in range(len(keys) + 1) if tuple(keys[:i]) in nodes)
            missing = "/".join(keys[: depth + 1])
            break
    tree_nodes = {
        tuple(parts(p)[:i]) for p in tree_paths for i in range(len(parts(p)) + 1)
    }
    extra = next((p for p in prefix_paths if tuple(parts(p)) not in tree_nodes), None)
    hint = f"give {name} the params' structure (a value at a node covers its subtree)"
    if missing and extra:
        raise ValueError(
            f"{fn}: {name} has no entry for '{missing}' of the params; it has "
            f"'{extra}' instead, which the params lack; {hint}"
        )
    if missing:
        raise ValueError(
            f"{fn}: {name} has no entry for '{missing}' of the params; {hint}"
        )
    if extra:
        raise ValueError(f"{fn}: {name} has '{extra}', which the params lack; {hint}")


def mask_flags(fn: str, mask: Any, params: Any) -> list[bool]:
    """Resolve a mask into one bool per leaf of `params`, in flattening order.

    `mask` is a tree of bools with the structure of `params` or a prefix of it
    (a bool at an inner node covers the whole subtree), or a function that
    returns such a tree when called on `params`. Leaves must be Python or
    NumPy bools: a mask selects leaves by structure, never by traced values.

    Raises:
        ValueError: If the mask's structure is not a prefix of the params',
            naming the first differing path.
        TypeError: If a mask leaf is not a bool, naming its path.
    """
    if callable(mask):
        mask = mask(params)
    flags: list[bool] = []
    for path, flag in broadcast_prefix(fn, "mask", mask, params):
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(
                f"{fn}: mask leaves must be Python bools, got "
                f"{type(flag).__name__} at '{path}'; build the mask from "
                "the tree's structure or shapes, not from array values"
            )
        flags.append(bool(flag))
    return flags
