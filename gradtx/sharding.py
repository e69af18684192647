"""Where optimizer state lives: the shapes and shardings of `tx.init(params)`.

gradtx state follows the params: every moment is placed like the parameter
it belongs to (`init_like` in `gradtx.base`), and the scalars (step counts,
injected hyperparameters) are replicated. `jax.jit(tx.init)(params)` on
sharded params therefore already gives sharded state. The functions here
give the same placement without building anything, from params that may be
`jax.ShapeDtypeStruct`s: to pass as `out_shardings` (state created directly
in its shards, never gathered on one device), as the `in_shardings` of a
training step, or as the target of a checkpoint restore.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec, SingleDeviceSharding

from gradtx._checks import path_str
from gradtx._pairs import check_transformation
from gradtx.base import GradientTransformation, OptState, Params


def _with_sharding(abstract: Any, sharding: jax.sharding.Sharding) -> Any:
    return jax.ShapeDtypeStruct(
        abstract.shape, abstract.dtype, sharding=sharding, weak_type=abstract.weak_type
    )


def _on_one_device(
    fn: str, tx: Any, params: Params, paths: list, shardings: list
) -> OptState:
    """The state of params that are all on one device (or carry no placement)."""
    placed = [(p, s) for p, s in zip(paths, shardings, strict=True) if s is not None]
    for path, s in placed[1:]:
        if s != placed[0][1]:
            raise ValueError(
                f"{fn}: the params are spread over devices without a mesh: "
                f"'{path_str(placed[0][0])}' is on {placed[0][1]} but "
                f"'{path_str(path)}' is on {s}. Place them with NamedShardings of "
                "one mesh, or all on one device."
            )
    sharding = placed[0][1] if placed else SingleDeviceSharding(jax.devices()[0])
    state = jax.eval_shape(tx.init, params)
    return jax.tree.map(lambda s: _with_sharding(s, sharding), state)


def abstract_state(tx: GradientTransformation, params: Params) -> OptState:
    """The state `tx.init(params)` builds, as shapes, dtypes and shardings.

    Nothing is computed or allocated: `tx.init` is traced once with each
    parameter's sharding as part of its type (JAX's explicit sharding mode),
    so every state leaf gets the placement its computation implies. For
    gradtx transformations that is::

        moment of parameter p   ->  p's sharding
        scalar (count, hyperparameter, flag)  ->  replicated over the mesh

    Params on one device (or with no placement, such as NumPy arrays) give
    state on that device (or on the default device).

    Args:
        tx: The transformation whose state is wanted.
        params: The params given to `tx.init`: arrays, or
            `jax.ShapeDtypeStruct`s whose `sharding` is a `NamedSharding`.
            Leaves without a `NamedSharding` count as replicated when others
            have one.

    Returns:
        The state's tree with a `jax.ShapeDtypeStruct` (shape, dtype and
        sharding) at every leaf: a restore target for a checkpoint, or
        (through `.sharding`) the shardings of the state.

    Raises:
        TypeError: If `tx` is not an `(init, update)` pair.
        ValueError: If the params are on different meshes, or on different
            single devices, naming two parameters that disagree.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.sharding import abstract_state
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> rows = jax.NamedSharding(mesh, jax.P("data"))
        >>> params = {"w": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=rows)}
        >>> state = abstract_state(gradtx.adam(1e-3), params)
        >>> state[0].mu["w"].shape, state[0].mu["w"].sharding.spec
        ((8, 2), P('data', None))
        >>> state[0].count.sharding.spec  # replicated
        P()
    """
    return _abstract_state("abstract_state", tx, params)


def _abstract_state(fn: str, tx: Any, params: Params) -> OptState:
    check_transformation(fn, "tx", tx)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path for path, _ in flat]
    shardings = [getattr(leaf, "sharding", None) for _, leaf in flat]
    named = [
        (path, s)
        for path, s in zip(paths, shardings, strict=True)
        if isinstance(s, NamedSharding)
    ]
    if not named:
        return _on_one_device(fn, tx, params, paths, shardings)
    first_path, first = named[0]
    mesh = first.mesh
    for path, s in named[1:]:
        if s.mesh != mesh:
            raise ValueError(
                f"{fn}: the params must share one mesh: '{path_str(first_path)}' "
                f"is on {mesh} but '{path_str(path)}' is on {s.mesh}"
            )
    # Trace init with the shardings in the types: every array a traced init
    # builds then carries the sharding JAX infers for it, with no compiling.
    abstract_mesh: Any = getattr(mesh, "abstract_mesh", mesh)
    explicit = abstract_mesh.update_axis_types(
        {name: AxisType.Explicit for name in abstract_mesh.axis_names}
    )

    def typed(leaf: Any, s: Any) -> jax.ShapeDtypeStruct:
        spec = s.spec if isinstance(s, NamedSharding) else PartitionSpec()
        return jax.ShapeDtypeStruct(
            jnp.shape(leaf),
            jnp.result_type(leaf),
            sharding=NamedSharding(explicit, spec),
        )

    typed_params = treedef.unflatten(
        [typed(leaf, s) for (_, leaf), s in zip(flat, shardings, strict=True)]
    )
    with jax.sharding.use_abstract_mesh(explicit):
        state = jax.eval_shape(tx.init, typed_params)

    def placed(s: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        spec = s.sharding.spec if s.sharding is not None else PartitionSpec()
        return _with_sharding(s, NamedSharding(mesh, spec))

    return jax.tree.map(placed, state)


def state_shardings(tx: GradientTransformation, params: Params) -> Any:
    """The sharding of every leaf of `tx.init(params)`, without building it.

    The shardings of `abstract_state`, in the state's tree. Pass them as
    `out_shardings` to create the state directly in its shards, and as the
    state's `in_shardings` and `out_shardings` of a jitted training step.

    Args:
        tx: The transformation whose state is wanted.
        params: The params given to `tx.init`: arrays, or
            `jax.ShapeDtypeStruct`s carrying a `sharding`.

    Returns:
        The state's tree with a `jax.sharding.Sharding` at every leaf.

    Raises:
        TypeError: If `tx` is not an `(init, update)` pair.
        ValueError: If the params are on different meshes, or on different
            single devices, naming two parameters that disagree.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> from gradtx.sharding import state_shardings
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> rows = jax.NamedSharding(mesh, jax.P("data"))
        >>> params = {"w": jax.device_put(jnp.ones((8, 2)), rows)}
        >>> tx = gradtx.adamw(1e-3)
        >>> shardings = state_shardings(tx, params)
        >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
        >>> state[0].nu["w"].sharding.spec
        P('data', None)
    """
    state = _abstract_state("state_shardings", tx, params)
    return jax.tree.map(lambda s: s.sharding, state)
