"""How a transformation or schedule prints: the factory calls that built it.

`recorded_call` is the one mechanism that remembers a factory's arguments
(`gradtx.base.described` for transformations, the schedules' decorator for
schedules); `render` and `format_value` turn what it recorded into text.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from gradtx._pairs import is_transformation


def recorded_call(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A factory call as `(children, hyperparams)`, defaults included.

    Positional `*transforms` (as in `chain`) become the children; every other
    argument, keyword extras included, is a hyperparameter by name.
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    children: tuple[Any, ...] = ()
    hyperparams: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        value = bound.arguments[name]
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            children = tuple(value)
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            hyperparams.update(value)
        else:
            hyperparams[name] = value
    return children, hyperparams


def render(tx: Any, width: int) -> str:
    """`tx` as the calls that built it, one link per line past `width`."""
    return _indented(tx, 0, width)


def _is_group(value: Any) -> bool:
    """A non-empty dict of transformations, such as multi_transform's groups."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(is_transformation(v) for v in value.values())
    )


def _foreign_name(tx: Any) -> str:
    """Name a transformation gradtx did not build, from its update function."""
    update = tx.update
    qualname = getattr(update, "__qualname__", type(update).__name__)
    qualname = qualname.split(".<locals>")[0]
    library = (getattr(update, "__module__", None) or "").split(".")[0]
    return f"<{library} {qualname}>" if library else f"<{qualname}>"


def format_value(value: Any) -> str:
    if is_transformation(value):
        return _one_line(value)
    if value is None or isinstance(value, bool | int | float | complex | str):
        return repr(value)
    if isinstance(value, np.dtype | type):
        try:
            return jnp.dtype(value).name  # numpy and jax.numpy scalar types
        except TypeError:
            return value.__name__ if isinstance(value, type) else repr(value)
    if isinstance(value, Tracer):
        return f"<traced {value.dtype}{list(value.shape)}>"
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        if np.ndim(value) == 0:
            return repr(np.asarray(value).item())
        return f"<array {value.dtype}{list(value.shape)}>"
    if inspect.isfunction(value) or inspect.ismethod(value):
        return f"<function {value.__qualname__}>"
    if _is_group(value):
        return "{" + ", ".join(f"{k!r}: {_one_line(v)}" for k, v in value.items()) + "}"
    if isinstance(value, dict | list | tuple):
        text = repr(value)
        if len(text) <= 40 and "<" not in text:
            return text
        return f"<pytree with {len(jax.tree.leaves(value))} leaves>"
    return repr(value)


def _parts(tx: Any) -> tuple[str, list[Any], list[tuple[str, Any]]]:
    name = getattr(tx, "name", None)
    if name is None:
        return _foreign_name(tx), [], []
    return name, list(tx.children), list(tx.hyperparams.items())


def _one_line(tx: Any) -> str:
    name, children, hyperparams = _parts(tx)
    if getattr(tx, "name", None) is None:
        return name
    items = [_one_line(c) for c in children]
    items += [f"{k}={format_value(v)}" for k, v in hyperparams]
    return f"{name}({', '.join(items)})"


def _indented(tx: Any, indent: int, width: int, lead: int = 0) -> str:
    """`tx` as text whose first line starts `lead` columns after `indent`."""
    line = _one_line(tx)
    name, children, hyperparams = _parts(tx)
    nested = children or any(
        is_transformation(v) or _is_group(v) for _, v in hyperparams
    )
    if indent + lead + len(line) <= width or not nested:
        return line  # a single link stays on one line, however long
    pad = " " * (indent + 4)
    rows = [pad + _indented(c, indent + 4, width) + "," for c in children]
    for key, value in hyperparams:
        text = format_value(value)
        if is_transformation(value):
            text = _indented(value, indent + 4, width, lead=len(key) + 1)
        elif _is_group(value) and indent + 4 + len(key) + 1 + len(text) > width:
            entries = [
                f"{pad}    {k!r}: "
                + _indented(v, indent + 8, width, lead=len(repr(k)) + 2)
                + ","
                for k, v in value.items()
            ]
            text = "\n".join(["{", *entries, pad + "}"])
        rows.append(f"{pad}{key}={text},")
    return "\n".join([f"{name}(", *rows, " " * indent + ")"])
