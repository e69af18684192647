"""Saving optimizer state, and restoring it only into a state it fits.

State is a plain pytree of arrays, so any checkpoint library can save it
(Orbax's `StandardCheckpointer`, for one). This module adds a format with no
dependency beyond NumPy, one `.npz` file, and checks made before anything
is restored:

    save_state(path, state, tx=tx)
    state = restore_state(path, like, tx=tx)  # like: tx.init(params), or abstract
    check_state(restored, like)               # after any other library's restore

Leaves are matched by their path in the tree (`0/mu/w` is the first
moment of parameter `w` in the first link of a chain), so the check does not
care whether a library gives back NamedTuples, dicts or lists. Paths,
shapes and dtypes say nothing of hyperparameters, and many optimizers share
a layout (adam and adamw; sgd with and without nesterov), so `save_state`
can also record the optimizer's description (`gradtx.describe(tx)`) for
`restore_state` to compare.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._checks import path_str
from gradtx.base import GradientTransformation, OptState, describe

_MANIFEST = "__gradtx_state__"
_FORMAT = "gradtx.state"
_VERSION = 2  # 2: entries named by leaf index; 1: entries named by path
_READS = (1, 2)

Spec = tuple[tuple[int, ...], np.dtype]


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    return [(path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _spec(leaf: Any) -> Spec:
    """Shape and dtype of an array, a ShapeDtypeStruct or array metadata."""
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    dtype = getattr(leaf, "dtype", None)
    return shape, jnp.dtype(dtype if dtype is not None else np.result_type(leaf))


def _show(spec: Spec) -> str:
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
                f"checkpoint holds {_show(got_specs[path])}, the state needs "
                f"{_show(spec)}. {hint}"
            )


def check_state(state: Any, like: Any) -> None:
    """Raise `ValueError` unless restored state has the layout of `like`.

    Only the layout is checked: each leaf's path, shape and dtype. The kind
    of container is not (a NamedTuple field `mu` and a dict key `mu` both
    read `mu`), so the check takes what a checkpoint library gives back,
    restored arrays or just their metadata, and it costs nothing on the
    device. Run it before the first training step. Hyperparameters are not
    checked, nor which transformations made the state: optimizers that keep
    the same arrays pass (adam and adamw, sgd with and without nesterov, a
    chain with or without a stateless clip). To refuse those too, save with
    `save_state(path, state, tx=tx)` and restore with
    `restore_state(path, like, tx=tx)`.

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
        >>> nesterov = gradtx.sgd(0.5, momentum=0.9, nesterov=True)
        >>> check_state(saved, nesterov.init(params))  # same layout: passes
        >>> check_state(saved, gradtx.adam(0.1).init(params))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: check_state: ... the state needs '0/count', which the ...
    """
    got = [(p, _spec(x)) for p, x in _leaves(state)]
    want = [(p, _spec(x)) for p, x in _leaves(like)]
    _compare("check_state", got, want)


# ----------------------------------------------------------------------------
# writing


def _entry(index: int) -> str:
    """The name of leaf `index` in the file: unique, and never a path."""
    return f"leaf_{index:05d}"


def _stored_dtype(dtype: np.dtype, version: int = _VERSION) -> np.dtype:
    """The dtype a leaf is stored in: its own, or raw bits where NumPy lacks it.

    Dtypes NumPy lacks (bfloat16, float8, int4) are stored as unsigned
    integers of their size; format version 1 left NumPy to store them as
    opaque bytes (`V2` for bfloat16).
    """
    if dtype.isbuiltin == 1:  # 2: a dtype registered by another package
        return dtype
    return np.dtype(f"u{dtype.itemsize}" if version >= 2 else f"V{dtype.itemsize}")


def _description(fn: str, tx: Any) -> str:
    """`describe(tx)`, or a `TypeError` naming `fn` if `tx` is no transformation."""
    try:
        return describe(tx)
    except TypeError:
        raise TypeError(
            f"{fn}: tx must be a GradientTransformation, got {type(tx).__name__}"
        ) from None


def _entries(fn: str, state: OptState, optimizer: str | None) -> dict[str, Any]:
    """The arrays to store, by entry name, with the manifest that lists them."""
    arrays: dict[str, Any] = {}  # Any: savez takes keywords of any name
    manifest = []
    paths = set()
    for index, (key, leaf) in enumerate(_leaves(state)):
        if key in paths:
            raise ValueError(f"{fn}: two leaves of the state share the path '{key}'")
        paths.add(key)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            raise ValueError(
                f"{fn}: the leaf at '{key}' spans devices of other processes; save "
                "state spread over hosts with a distributed checkpointer (Orbax)"
            )
        value = np.asarray(leaf)
        manifest.append({"path": key, "dtype": value.dtype.name, "shape": value.shape})
        arrays[_entry(index)] = value.view(_stored_dtype(value.dtype))
    header = {
        "format": _FORMAT,
        "version": _VERSION,
        "optimizer": optimizer,
        "leaves": manifest,
    }
    arrays[_MANIFEST] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    return arrays


def _sync_folder(folder: str) -> None:
    """Make a rename in `folder` durable, where the OS lets a folder be synced."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(handle)
    except OSError:  # nor can every file system sync one
        pass
    finally:
        os.close(handle)


def _write_atomically(path: str, arrays: dict[str, Any]) -> None:
    """Write an `.npz` beside `path`, sync it, rename it over `path`, sync."""
    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    handle = os.open(partial, flags, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
    _sync_folder(folder)


def save_state(
    path: str | os.PathLike,
    state: OptState,
    *,
    tx: GradientTransformation | None = None,
) -> None:
    """Save optimizer state to one `.npz` file, exactly.

    Every leaf is stored with its bits unchanged (bfloat16 and other dtypes
    NumPy lacks are stored as raw bits), and a manifest records each leaf's
    path, dtype and shape, so restoring gives back the same values, counts,
    schedule positions and injected hyperparameters, and training goes on
    bit for bit. The file is written and synced beside `path`, renamed over
    it and the folder synced, so an interrupted save never leaves a
    half-written checkpoint. It gets the mode a plain `open()` would give
    it (0o666 less the umask).

    Args:
        path: The file to write; no suffix is added.
        state: The state of an optimizer, a pytree of arrays. Every array
            must be fully addressable from this process; for state spread
            over several hosts, use a distributed checkpointer such as Orbax.
        tx: The optimizer that made `state`. Its description
            (`gradtx.describe(tx)`: the factory calls and every
            hyperparameter) is recorded, so that `restore_state` can refuse
            to restore into another optimizer with the same layout.

    Raises:
        ValueError: If two leaves have the same path, or a leaf is not fully
            addressable, naming the path.
        TypeError: If `tx` is not a `GradientTransformation`.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.checkpoint import restore_state, save_state
        >>> tx = gradtx.adam(1e-3)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> path = os.path.join(tempfile.mkdtemp(), "opt_state.npz")
        >>> save_state(path, state, tx=tx)
        >>> restore_state(path, like=state, tx=tx)[0].mu
        {'w': Array([0., 0.], dtype=float32)}
    """
    fn = "save_state"
    optimizer = None if tx is None else _description(fn, tx)
    _write_atomically(os.fspath(path), _entries(fn, state, optimizer))


# ----------------------------------------------------------------------------
# reading


def _has_member(data: Any, member: str) -> bool:
    """Whether an `.npz` holds exactly this zip member (numpy's lookup aliases)."""
    try:
        data.zip.getinfo(member)
    except KeyError:
        return False
    return True


def _read_header(fn: str, path: str, data: Any) -> dict[str, Any]:
    """The manifest of a file written by `save_state`, of a version read here."""
    if not _has_member(data, _MANIFEST + ".npy"):
        raise ValueError(
            f"{fn}: {path!r} was not written by save_state (it has no {_MANIFEST} "
            "entry)"
        )
    try:
        header = json.loads(data[_MANIFEST + ".npy"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{fn}: the manifest of {path!r} is damaged") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValueError(f"{fn}: {path!r} was not written by save_state")
    version = header.get("version")
    if version not in _READS:
        raise ValueError(
            f"{fn}: {path!r} holds {_FORMAT!r} version {version!r}; this gradtx "
            f"reads versions {', '.join(map(str, _READS))}"
        )
    return header


def _saved_leaves(fn: str, path: str, header: dict[str, Any]) -> dict[str, Any]:
    """Map each saved path to its zip member, manifest spec and stored dtype."""
    saved = {}
    try:
        for index, leaf in enumerate(header["leaves"]):
            key = leaf["path"]
            member = _entry(index) if header["version"] >= 2 else key
            spec = (tuple(leaf["shape"]), jnp.dtype(leaf["dtype"]))
            if key in saved:
                raise ValueError(f"{fn}: the manifest of {path!r} lists '{key}' twice")
            stored = _stored_dtype(spec[1], header["version"])
            saved[key] = (member + ".npy", spec, stored)  # exact zip name: no alias
    except (KeyError, TypeError):
        raise ValueError(f"{fn}: the manifest of {path!r} is damaged") from None
    return saved


def _check_optimizer(fn: str, saved: str | None, here: str | None) -> None:
    """Raise unless two optimizer descriptions agree, where both are known."""
    if saved is None or here is None or saved == here:
        return
    pairs = itertools.zip_longest(saved.splitlines(), here.splitlines(), fillvalue="")
    line, (was, now) = next((i, p) for i, p in enumerate(pairs, 1) if p[0] != p[1])
    raise ValueError(
        f"{fn}: the checkpoint was saved by another optimizer; line {line} "
        f"differs:\n  saved: {was.strip()}\n  here:  {now.strip()}\n"
        f"Saved by:\n{saved}\nRestoring into:\n{here}\n"
        "Build the optimizer that saved it, or pass allow_other_optimizer=True "
        "to restore its state into this one."
    )


def _read_leaf(
    fn: str, data: Any, key: str, member: str, spec: Spec, stored: np.dtype
) -> np.ndarray:
    """Read one stored array, refused unless it is what the manifest says."""
    shape, dtype = spec
    if not _has_member(data, member):
        raise ValueError(f"{fn}: the checkpoint lacks the entry of '{key}'")
    value = data[member]
    if value.dtype != stored or value.shape != shape:
        raise ValueError(
            f"{fn}: the entry of '{key}' holds {value.dtype.name}{list(value.shape)}, "
            f"but the manifest says {_show(spec)}; the file is damaged or was not "
            "written by save_state"
        )
    return value.view(dtype)


def _place(value: np.ndarray, leaf: Any) -> jax.Array:
    """Put a restored array where `leaf` is, shard by shard if it is sharded."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        return jnp.asarray(value)
    # each process reads only the shards its devices hold
    return jax.make_array_from_callback(
        value.shape, sharding, lambda index: value[index]
    )


def restore_state(
    path: str | os.PathLike,
    like: Any,
    *,
    tx: GradientTransformation | None = None,
    allow_other_optimizer: bool = False,
) -> OptState:
    """Read state saved by `save_state`, checked against the optimizer's.

    The file's leaves must match `like` leaf for leaf, by path, shape and
    dtype (see `check_state`), and each stored array must be what the
    manifest says; otherwise nothing is restored and the error names the
    first path that differs, before any training step runs. When the file
    records the optimizer that saved it (`save_state(..., tx=...)`) and
    `tx` is given, their descriptions must also agree, hyperparameters
    included. Each restored array is placed like the matching leaf of
    `like`: give `gradtx.sharding.abstract_state(tx, params)` to restore
    sharded state straight into its shards. Files of format version 1 are
    read too.

    Args:
        path: A file written by `save_state`.
        like: The state the optimizer expects, which gives the tree, and the
            placement where its leaves have a `sharding`: `tx.init(params)`,
            `jax.eval_shape(tx.init, params)` or
            `gradtx.sharding.abstract_state(tx, params)`.
        tx: The optimizer to restore into, compared with the one recorded in
            the file. Without it, or for a file that records none, only the
            layout is checked.
        allow_other_optimizer: Restore even if the file records another
            optimizer than `tx` (the layout must still match), for example to
            go on from adam's moments with adamw.

    Returns:
        The saved state, in the tree of `like`.

    Raises:
        ValueError: If the file was not written by `save_state`, is damaged,
            does not match `like` (naming the first path that differs), or
            was saved by another optimizer than `tx` (showing both).
        TypeError: If `tx` is not a `GradientTransformation`.

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
        >>> save_state(path, state, tx=tx)
        >>> like = jax.eval_shape(tx.init, params)  # nothing allocated
        >>> restore_state(path, like, tx=tx)[0].velocity
        {'w': Array([1., 1.], dtype=float32)}
        >>> nesterov = gradtx.sgd(0.1, momentum=0.9, nesterov=True)
        >>> restore_state(path, like, tx=nesterov)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: restore_state: the checkpoint was saved by another optimizer; ...
          saved: scale_by_momentum(decay=0.9, nesterov=False, ...
          here:  scale_by_momentum(decay=0.9, nesterov=True, ...
        ...
    """
    fn = "restore_state"
    path = os.fspath(path)
    here = None if tx is None else _description(fn, tx)
    with np.load(path, allow_pickle=False) as data:
        header = _read_header(fn, path, data)
        saved = _saved_leaves(fn, path, header)
        wanted = _leaves(like)
        _compare(
            fn,
            [(key, spec) for key, (_, spec, _) in saved.items()],
            [(key, _spec(leaf)) for key, leaf in wanted],
        )
        if not allow_other_optimizer:
            _check_optimizer(fn, header.get("optimizer"), here)
        restored = [
            _place(_read_leaf(fn, data, key, *saved[key]), leaf) for key, leaf in wanted
        ]
    return jax.tree.unflatten(jax.tree.structure(like), restored)
