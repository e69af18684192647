"""Saving optimizer state, and restoring it only into the optimizer it fits.

State is a plain pytree of arrays, so any checkpoint library can save it
(Orbax's `StandardCheckpointer`, for one). This module adds a format with no
dependency beyond NumPy, one `.npz` file, and the check that stops a
checkpoint of one optimizer from being restored into another:

    save_state(path, state)
    state = restore_state(path, like)    # like: tx.init(params), or abstract
    check_state(restored, like)          # after any other library's restore

Leaves are matched by their path in the tree (`0/mu/w` is the first
moment of parameter `w` in the first link of a chain), so the check does not
care whether a library gives back NamedTuples, dicts or lists.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._checks import path_str
from gradtx.base import OptState

_MANIFEST = "__gradtx_state__"
_FORMAT = "gradtx.state"
_VERSION = 1


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    return [(path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array, a ShapeDtypeStruct or array metadata."""
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    dtype = getattr(leaf, "dtype", None)
    return shape, jnp.dtype(dtype if dtype is not None else np.result_type(leaf))


def _describe(spec: tuple[tuple[int, ...], np.dtype]) -> str:
    shape, dtype = spec
    return f"{dtype.name}{list(shape)}"


def _compare(fn: str, got: list[tuple[str, Any]], want: list[tuple[str, Any]]) -> None:
    """Raise unless two lists of (path, shape-and-dtype) agree, naming a path."""
    got_specs, want_specs = dict(got), dict(want)
    hint = (
        "Was it saved by another optimizer (another chain, a schedule where "
        "there was a constant, other params)? Build the optimizer that saved "
        "it, or start this one afresh."
    )
    missing = [p for p, _ in want if p not in got_specs]
    extra = [p for p, _ in got if p not in want_specs]
    if missing or extra:
        if missing and extra:
            where = (
                f"the state needs '{missing[0]}', which the checkpoint lacks; it "
                f"has '{extra[0]}' instead"
            )
        elif missing:
            where = f"the state needs '{missing[0]}', which the checkpoint lacks"
        else:
            where = f"the checkpoint has '{extra[0]}', which the state does not"
        raise ValueError(
            f"{fn}: checkpoint and optimizer state differ: {where}. {hint}"
        )
    for path, spec in want:
        if got_specs[path] != spec:
            raise ValueError(
                f"{fn}: checkpoint and optimizer state differ at '{path}': the "
                f"checkpoint holds {_describe(got_specs[path])}, the state needs "
                f"{_describe(spec)}. {hint}"
            )


def check_state(state: Any, like: Any) -> None:
    """Raise `ValueError` unless restored state fits the optimizer's state.

    Leaves are compared by path, shape and dtype: the kind of container is
    not (a NamedTuple field `mu` and a dict key `mu` both read `mu`), so the
    check takes what a checkpoint library gives back, restored arrays or
    just their metadata, and it costs nothing on the device. Run it before
    the first training step.

    Args:
        state: The restored state, or a tree of anything with `shape` and
            `dtype` (Orbax's checkpoint metadata, for one).
        like: The state the optimizer expects: `tx.init(params)`, or
            `jax.eval_shape(tx.init, params)`.

    Raises:
        ValueError: If a leaf is missing, extra, or has another shape or
            dtype, naming the first such path.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.checkpoint import check_state
        >>> params = {"w": jnp.zeros(3)}
        >>> saved = gradtx.sgd(0.1, momentum=0.9).init(params)
        >>> check_state(saved, gradtx.sgd(0.1, momentum=0.9).init(params))
        >>> check_state(saved, gradtx.adam(0.1).init(params))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: check_state: ... the state needs '0/count', which the ...
    """
    got = [(p, _spec(x)) for p, x in _leaves(state)]
    want = [(p, _spec(x)) for p, x in _leaves(like)]
    _compare("check_state", got, want)


def save_state(path: str | os.PathLike, state: OptState) -> None:
    """Save optimizer state to one `.npz` file, exactly.

    Every leaf is stored under its path with its bits unchanged (bfloat16
    and other dtypes NumPy lacks are stored as raw bits, and a manifest
    records their dtype), so restoring gives back the same values, counts,
    schedule positions and injected hyperparameters, and training goes on
    bit for bit. The file is written beside `path` and then renamed over
    it, so an interrupted save never leaves a half-written checkpoint.

    Args:
        path: The file to write; no suffix is added.
        state: The state of an optimizer, a pytree of arrays. Every array
            must be fully addressable from this process; for state spread
            over several hosts, use a distributed checkpointer such as Orbax.

    Raises:
        ValueError: If two leaves have the same path, or a leaf is not fully
            addressable, naming the path.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.checkpoint import restore_state, save_state
        >>> tx = gradtx.adam(1e-3)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> path = os.path.join(tempfile.mkdtemp(), "opt_state.npz")
        >>> save_state(path, state)
        >>> restore_state(path, like=state)[0].mu
        {'w': Array([0., 0.], dtype=float32)}
    """
    fn = "save_state"
    arrays: dict[str, Any] = {}  # Any: savez takes keywords of any name
    manifest = []
    for key, leaf in _leaves(state):
        if key in arrays or key == _MANIFEST:
            raise ValueError(f"{fn}: two leaves of the state share the path '{key}'")
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            raise ValueError(
                f"{fn}: the leaf at '{key}' spans devices of other processes; save "
                "state spread over hosts with a distributed checkpointer (Orbax)"
            )
        value = np.asarray(leaf)
        manifest.append({"path": key, "dtype": value.dtype.name, "shape": value.shape})
        if not value.dtype.isbuiltin:  # bfloat16, float8, int4: keep the bits
            value = value.view(f"u{value.dtype.itemsize}")
        arrays[key] = value
    header = json.dumps({"format": _FORMAT, "version": _VERSION, "leaves": manifest})
    arrays[_MANIFEST] = np.frombuffer(header.encode(), np.uint8)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def restore_state(path: str | os.PathLike, like: Any) -> OptState:
    """Read state saved by `save_state`, checked against the optimizer's.

    The file's leaves must match `like` leaf for leaf, by path, shape and
    dtype (see `check_state`); otherwise nothing is restored and the error
    names the first path that differs, before any training step runs. Each
    restored array is placed like the matching leaf of `like`: give
    `gradtx.sharding.abstract_state(tx, params)` to restore sharded state
    straight into its shards.

    Args:
        path: A file written by `save_state`.
        like: The state the optimizer expects, which gives the tree, and the
            placement where its leaves have a `sharding`: `tx.init(params)`,
            `jax.eval_shape(tx.init, params)` or
            `gradtx.sharding.abstract_state(tx, params)`.

    Returns:
        The saved state, in the tree of `like`.

    Raises:
        ValueError: If the file was not written by `save_state`, or does not
            match `like`, naming the first path that differs.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.checkpoint import restore_state, save_state
        >>> tx = gradtx.sgd(0.1, momentum=0.9)
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.update(params, tx.init(params))[1]
        >>> path = os.path.join(tempfile.mkdtemp(), "opt_state.npz")
        >>> save_state(path, state)
        >>> like = jax.eval_shape(tx.init, params)  # nothing allocated
        >>> restore_state(path, like)[0].velocity
        {'w': Array([1., 1.], dtype=float32)}
    """
    fn = "restore_state"
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if _MANIFEST not in data.files:
            raise ValueError(
                f"{fn}: {os.fspath(path)!r} was not written by save_state (it has "
                f"no {_MANIFEST} entry)"
            )
        header = json.loads(data[_MANIFEST].tobytes().decode())
        if header.get("format") != _FORMAT or header.get("version") != _VERSION:
            raise ValueError(
                f"{fn}: {os.fspath(path)!r} holds format {header.get('format')!r} "
                f"version {header.get('version')!r}; this gradtx reads {_FORMAT!r} "
                f"version {_VERSION}"
            )
        saved = [
            (e["path"], (tuple(e["shape"]), jnp.dtype(e["dtype"])))
            for e in header["leaves"]
        ]
        wanted = _leaves(like)
        _compare(fn, saved, [(p, _spec(x)) for p, x in wanted])
        restored = []
        for key, leaf in wanted:
            shape, dtype = _spec(leaf)
            value = data[key].view(dtype).reshape(shape)
            sharding = getattr(leaf, "sharding", None)
            if sharding is None:
                restored.append(jnp.asarray(value))
            else:  # each process reads only the shards its devices hold
                restored.append(
                    jax.make_array_from_callback(
                        shape, sharding, lambda index, value=value: value[index]
                    )
                )
    return jax.tree.unflatten(jax.tree.structure(like), restored)
