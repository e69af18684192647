"""Where each link's state sits in the chain's state, and its moments' layout.

A chain's state is a tuple with one entry per link (nested for nested
chains); a link's `StatePath` leads to its entry. The moments (Adam's `mu`
and `nu`, the momentum's `velocity`) are trees shaped like the params, or,
with flat moments, one 1-D array each.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._checks import check_same_tree
from gradtx.base import OptState, Params, Updates
from gradtx.fused._plan import Link, Plan

StatePath = tuple[int, ...]


def get(state: Any, path: StatePath) -> Any:
    """The entry of `state` at `path`."""
    for i in path:
        state = state[i]
    return state


def put(state: Any, path: StatePath, value: Any) -> Any:
    """`state` with the entry at `path` replaced (new tuples; nothing mutated)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    items = list(state)
    items[head] = put(items[head], rest, value)
    return tuple(items)


def _where(path: StatePath) -> str:
    return "state" + "".join(f"[{i}]" for i in path)


def _links(plan: Plan) -> list[Link]:
    roles = (plan.clip, plan.coupled, plan.core, plan.decoupled, plan.lr)
    return [link for link in roles if link is not None]


def moment_slots(plan: Plan | None) -> list[tuple[StatePath, str]]:
    """(path, field) of each moment tree in the chain's state, in kernel order."""
    if plan is None or plan.core is None:
        return []
    return [(plan.core.path, field) for field in plan.moments()]


def replace_moments(
    state: Any, slots: list[tuple[StatePath, str]], moments: list[Any]
) -> Any:
    """`state` with the moment at each slot replaced by the matching one."""
    for (path, field), value in zip(slots, moments, strict=True):
        state = put(state, path, get(state, path)._replace(**{field: value}))
    return state


def _check_flat(field: str, flat: Any, total: int) -> None:
    shape = np.shape(flat) if hasattr(flat, "shape") else None
    if shape != (total,):
        raise ValueError(
            f"fused_step: state.{field} must be a flat array of {total} elements "
            f"(from step.init), got "
            f"{'shape ' + str(shape) if shape else type(flat).__name__}"
        )


def flatten_moments(plan: Plan | None, state: OptState) -> OptState:
    """The chain's state with every moment tree concatenated into 1-D."""
    slots = moment_slots(plan)
    flat = []
    for path, field in slots:
        leaves = [
            jnp.ravel(x) for x in jax.tree.leaves(getattr(get(state, path), field))
        ]
        flat.append(jnp.concatenate(leaves) if leaves else jnp.zeros([0], jnp.float32))
    return replace_moments(state, slots, flat)


def unflatten_moments(plan: Plan | None, state: OptState, params: Params) -> OptState:
    """The chain's state with every flat moment cut into leaves like `params`.

    Raises:
        ValueError: If a moment is not one flat array of the params' size.
    """
    leaves, treedef = jax.tree.flatten(params)
    starts = np.cumsum([0, *(int(np.size(x)) for x in leaves)])
    slots = moment_slots(plan)
    trees = []
    for path, field in slots:
        flat = getattr(get(state, path), field)
        _check_flat(field, flat, int(starts[-1]))
        pieces = zip(starts[:-1], starts[1:], leaves, strict=True)
        trees.append(
            treedef.unflatten([flat[a:b].reshape(np.shape(x)) for a, b, x in pieces])
        )
    return replace_moments(state, slots, trees)


def check_state(
    plan: Plan, flat: bool, params: Params, state: OptState, grads: Updates
) -> None:
    """Raise `ValueError` for a state the plain step refuses too.

    That is a state not made for this chain (a link's state missing where the
    chain keeps it, or a moment missing from it), a moment tree whose
    structure is not the gradients', or with `flat` a moment that is not one
    flat array of the params' size.
    """
    init = "step.init" if flat else "init"
    for link in _links(plan):
        try:
            get(state, link.path)
        except (TypeError, IndexError, KeyError):
            raise ValueError(
                f"fused_step: the state has no entry for {link.name} at "
                f"{_where(link.path)}; pass the state that this chain's {init} "
                "returned"
            ) from None
    total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    for path, field in moment_slots(plan):
        moments = getattr(get(state, path), field, None)
        if moments is None:
            raise ValueError(
                f"fused_step: {_where(path)} has no {field}; pass the state that "
                f"this chain's {init} returned"
            )
        if flat:
            _check_flat(field, moments, total)
        else:
            check_same_tree("fused_step", "grads", grads, f"state.{field}", moments)
