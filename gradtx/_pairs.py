"""`(init, update)` pairs from any library: recognising, checking, calling.

A gradtx transformation is interchangeable with any other library's pair of
the same shape (an optax transformation, say). These helpers are the one
place that decides what counts as such a pair and how a foreign update,
which may not take keyword extras, is called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def is_transformation(x: Any) -> bool:
    """Whether `x` is an `(init, update)` pair with those two attributes."""
    return (
        isinstance(x, tuple)
        and len(x) == 2
        and all(callable(f) for f in x)
        and hasattr(x, "init")
        and hasattr(x, "update")
    )


def check_transformation(fn: str, name: str, tx: Any) -> Callable[..., Any]:
    """Raise `TypeError` unless `tx` is a pair; return its extras-taking update.

    Args:
        fn: The function that received `tx`, for the message.
        name: What `tx` is to `fn` ("inner", "link 2"), for the message.
        tx: The value to check.

    Returns:
        `tx.update`, wrapped by `accepting_extras` where it needs to be.
    """
    if not is_transformation(tx):
        raise TypeError(
            f"{fn}: {name} must be an (init, update) pair such as a "
            f"GradientTransformation, got {type(tx).__name__}"
        )
    return accepting_extras(tx.update)


def accepting_extras(update: Callable[..., Any]) -> Callable[..., Any]:
    """`update`, or a wrapper of it that drops keyword extras it cannot take.

    Every gradtx update accepts and ignores extras such as `loss=`; a
    foreign one whose signature has no `**kwargs` is called without them.
    """
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return update

    def update_without_extras(updates, state, params=None, **extra):
        del extra
        return update(updates, state, params)

    return update_without_extras
