"""The one abstraction: a gradient transformation is a pair of pure functions.

    state = tx.init(params)
    updates, state = tx.update(grads, state, params=None, **extra)
    params = apply_updates(params, updates)

This module holds `GradientTransformation`, the `chain` that composes them,
the two trivial transformations, `apply_updates`, `describe`, and the small
helpers every other module uses to map equations over trees.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

import jax
import jax.numpy as jnp
from jax.core import Tracer
from jax.sharding import AxisType, NamedSharding

from gradtx._checks import check_same_tree
from gradtx._describing import recorded_call, render
from gradtx._pairs import check_transformation, is_transformation

ArrayLike = jax.typing.ArrayLike
Params = Any  # a pytree of arrays
Updates = Any  # a pytree of arrays with the structure of the params
OptState = Any  # a pytree of arrays: NamedTuples, tuples, arrays
Schedule = Callable[[jax.Array], ArrayLike]  # a scalar for each step count
ScalarOrSchedule = float | jax.Array | Schedule


class InitFn(Protocol):
    """Build the initial state of a transformation from the parameters."""

    def __call__(self, params: Params) -> OptState:  # noqa: D102
        ...


class UpdateFn(Protocol):
    """Turn incoming updates into outgoing updates and a new state."""

    def __call__(  # noqa: D102
        self, updates: Updates, state: OptState, params: Params | None = None, **extra
    ) -> tuple[Updates, OptState]: ...


class _Pair(NamedTuple):
    init: InitFn
    update: UpdateFn


class GradientTransformation(_Pair):
    """A pure `(init, update)` pair: the only abstraction in gradtx.

    It is a `NamedTuple` of two functions, so it unpacks as `init, update = tx`
    and can be passed wherever another library expects such a pair (an optax
    chain, for example). Transformations built by gradtx also carry a
    description of how they were built, used by `repr` and `describe`; the
    description plays no part in `init` or `update`.

    Attributes:
        init: `init(params) -> state`. The state is a pytree of arrays.
        update: `update(updates, state, params=None, **extra) -> (updates,
            state)`. Keyword extras that a transformation does not use (for
            example `loss=`) are accepted and ignored.
        name: Name of the factory that built it, or None if built by hand.
        factory: The factory function itself (`gradtx.scale_by_adam`), or
            None: what code that inspects a chain compares against.
        children: Transformations it is made of, in order (for `chain`).
        hyperparams: The factory's keyword arguments, defaults included.

    Examples:
        >>> import gradtx
        >>> tx = gradtx.sgd(0.1)
        >>> tx
        chain(scale_by_learning_rate(learning_rate=0.1))
        >>> init, update = tx  # still a plain pair
        >>> tx.children[0].hyperparams
        {'learning_rate': 0.1}
    """

    name: str | None = None
    factory: Callable[..., Any] | None = None
    children: tuple[Any, ...] = ()
    hyperparams: Mapping[str, Any] = {}

    def __new__(
        cls,
        init: InitFn,
        update: UpdateFn,
        *,
        name: str | None = None,
        factory: Callable[..., Any] | None = None,
        children: tuple[Any, ...] = (),
        hyperparams: Mapping[str, Any] | None = None,
    ) -> GradientTransformation:
        """Build a transformation; the keywords only describe it."""
        self = super().__new__(cls, init, update)
        if name is not None:
            self.name = name
            self.factory = factory
            self.children = tuple(children)
            self.hyperparams = dict(hyperparams or {})
        return self

    def __repr__(self) -> str:
        """The text of `describe`: the factory calls that built it."""
        return describe(self)


class EmptyState(NamedTuple):
    """State of a transformation that keeps none.

    Examples:
        >>> import gradtx
        >>> gradtx.clip(1.0).init({"w": 0.0})
        EmptyState()
    """


F = TypeVar("F", bound=Callable[..., GradientTransformation])


def described(factory: F) -> F:
    """Record the factory name and arguments on the transformation it returns.

    Every public factory in gradtx is wrapped in this decorator, which is
    what lets `print(tx)` read as the calls that built `tx`.
    """
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def build(*args, **kwargs):
        tx = _taking_python_numbers(factory(*args, **kwargs))
        children, hyperparams = recorded_call(signature, args, kwargs)
        return GradientTransformation(
            tx.init,
            tx.update,
            name=factory.__name__,
            factory=build,
            children=children,
            hyperparams=hyperparams,
        )

    return build  # type: ignore[return-value]


def _as_arrays(tree: Any) -> Any:
    """`tree` with its Python-number leaves (`1.0`, `2`) made JAX arrays."""
    if not any(isinstance(x, numbers.Number) for x in jax.tree.leaves(tree)):
        return tree  # the usual case: no copy of the tree
    return jax.tree.map(
        lambda x: jnp.asarray(x) if isinstance(x, numbers.Number) else x, tree
    )


def _taking_python_numbers(tx: Any) -> Any:
    """`tx` with init and update accepting Python numbers as leaves.

    Equations call array methods (`astype`, `size`) on each leaf; a tree of
    Python floats, which `jax.grad` accepts, would otherwise fail there.
    """
    init, update = tx

    def init_arrays(params: Params) -> OptState:
        return init(_as_arrays(params))

    def update_arrays(
        updates: Updates, state: OptState, params: Params | None = None, **extra
    ) -> tuple[Updates, OptState]:
        return update(_as_arrays(updates), state, _as_arrays(params), **extra)

    return GradientTransformation(init_arrays, update_arrays)


# ----------------------------------------------------------------------------
# describe


def describe(tx: Any, width: int = 88) -> str:
    """Describe a transformation as the factory calls that built it.

    Every hyperparameter is shown, defaults included. A description longer
    than `width` characters is spread over several lines, one link of a chain
    per line. Transformations from other libraries are named after their
    update function.

    Args:
        tx: A `GradientTransformation`, or any `(init, update)` pair.
        width: Longest single-line description; longer ones are split.

    Returns:
        The description, as a string.

    Examples:
        >>> import gradtx
        >>> print(gradtx.describe(gradtx.adagrad(0.01)))
        chain(
            scale_by_adagrad(initial_accumulator_value=0.0, eps=1e-10),
            scale_by_learning_rate(learning_rate=0.01),
        )
    """
    if not is_transformation(tx):
        raise TypeError(
            f"describe: expected a GradientTransformation, got {type(tx).__name__}"
        )
    return render(tx, width)


# ----------------------------------------------------------------------------
# helpers for the equations


def compute_dtype(*xs: Any) -> jnp.dtype:
    """The dtype an equation runs in: the widest of its arrays, at least float32.

    Low-precision leaves (bfloat16, float16) are widened for the arithmetic
    and rounded once when stored, so a constant such as `b2 = 0.999` is never
    rounded to the leaf's precision (in bfloat16 it would become 1.0).
    """
    dtype = jnp.dtype(jnp.float32)
    for x in xs:
        dtype = jnp.promote_types(dtype, jnp.result_type(x))
    return dtype


def scalar_dtype(tree: Any) -> jnp.dtype:
    """The dtype of per-step scalars (bias corrections): the widest leaf's."""
    return compute_dtype(*jax.tree.leaves(tree))


def value_at(value: Any, count: Any) -> Any:
    """A hyperparameter at step `count`: a schedule's value, or the number."""
    return jnp.asarray(value(count)) if callable(value) else value


def abs_sq(x: jax.Array) -> jax.Array:
    """The element-wise squared magnitude, real for complex leaves."""
    if jnp.iscomplexobj(x):
        return jnp.square(x.real) + jnp.square(x.imag)
    return jnp.square(x)


def bias_correction(decay: ArrayLike, t: jax.Array) -> jax.Array:
    """`1 - decay**t`, accurate to a few ulps in the dtype of `t`.

    Written as `-expm1(t * log(decay))` with the logarithm of a Python
    `decay` taken in double precision. The direct form rounds `decay` to
    float32 before subtracting from 1 and loses digits: for `decay = 0.999`
    it is 1.3e-5 off in relative terms, enough that Adam's first step is not
    exactly the sign of the gradient.
    """
    if isinstance(decay, int | float):
        log_decay = math.log(decay) if decay > 0 else -math.inf
    else:
        log_decay = jnp.log(jnp.asarray(decay, t.dtype))
    return -jnp.expm1(t * log_decay)


def safe_increment(count: jax.Array) -> jax.Array:
    """Add one to an int32 step counter, saturating instead of wrapping."""
    top = jnp.iinfo(count.dtype).max
    return jnp.where(count < top, count + 1, count)


def map_leaves(
    fn: Callable[..., tuple[jax.Array, ...]], n_out: int, tree: Any, *rest: Any
) -> tuple[Any, ...]:
    """Apply a multi-output function leaf by leaf; return one tree per output.

    `fn` receives the leaf of `tree` and the matching leaves of `rest` (which
    must have `tree`'s structure) and returns a tuple of `n_out` arrays. All
    outputs of one leaf come from one call, so XLA sees each leaf's equation
    whole.
    """
    leaves, treedef = jax.tree.flatten(tree)
    others = [treedef.flatten_up_to(r) for r in rest]
    results = [fn(*args) for args in zip(leaves, *others, strict=True)]
    return tuple(treedef.unflatten([r[i] for r in results]) for i in range(n_out))


def explicit_split(x: jax.Array) -> NamedSharding | None:
    """X's sharding if its type splits it over an explicit mesh axis, else None.

    Under explicit sharding an operation whose output sharding JAX cannot
    infer (a product contracted over a split axis) must be written around
    the split; with automatic axes XLA places the collectives itself.
    """
    sharding = jax.typeof(x).sharding
    if not isinstance(sharding, NamedSharding):
        return None
    mesh = sharding.mesh
    split = (
        not mesh.empty
        and any(t == AxisType.Explicit for t in mesh.axis_types)
        and any(axis is not None for axis in sharding.spec)
    )
    return sharding if split else None


def init_like(params: Params, dtype: Any = None, fill: ArrayLike = 0.0) -> Any:
    """A tree shaped like `params`, filled with `fill`, in `dtype` or the leaf's.

    Each leaf is placed like its parameter, so that optimizer state follows
    the params' sharding. Called eagerly on arrays, `jax.lax.full_like`
    copies the parameter's sharding. Under `jax.jit` a constant carries no
    sharding of its own (XLA may build it on one device), so the fill is
    tied to its parameter::

        leaf = fill + 0 * isfinite(p)

    Sharding propagation then gives the leaf the parameter's layout; the
    value is `fill` exactly, whatever `p` holds (NaN and Inf included), and
    the tie costs one read of each parameter, in `init` only. It is made
    whatever the number of devices, so that `init` traces to the same
    program in every process.
    """

    def leaf(p: Any) -> jax.Array:
        leaf_dtype = jnp.dtype(dtype or jnp.result_type(p))
        filled = jax.lax.full_like(p, fill, leaf_dtype)
        if isinstance(p, Tracer) and jnp.issubdtype(leaf_dtype, jnp.inexact):
            filled = jnp.isfinite(p).astype(leaf_dtype) * 0 + filled
        return filled

    return jax.tree.map(leaf, params)


# ----------------------------------------------------------------------------
# the core transformations


@described
def identity() -> GradientTransformation:
    """Pass updates through unchanged; keeps no state.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.identity()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(None))[0]
        Array([ 1., -2.], dtype=float32)
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        return updates, state

    return GradientTransformation(init, update)


@described
def set_to_zero() -> GradientTransformation:
    """Replace every update with zeros of the same shape and dtype.

    Used to freeze parameters: chained last, the parameters never move.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.set_to_zero()
        >>> tx.update({"w": jnp.array([1.0, -2.0])}, tx.init(None))[0]
        {'w': Array([0., 0.], dtype=float32)}
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(init, update)


@described
def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations one after the other.

    The updates leaving one link enter the next; `params` and any keyword
    extras reach every link. The state is a tuple with one entry per link.
    Links may come from other libraries with the same `(init, update)` shape:
    those whose update takes no keyword extras are called without them.

    Args:
        *transforms: The links, in the order they apply.

    Returns:
        A `GradientTransformation` whose state is a tuple of the links' states.

    Raises:
        TypeError: If a link is not an `(init, update)` pair.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.chain(gradtx.clip(1.0), gradtx.scale(-0.5))
        >>> state = tx.init(jnp.zeros(2))
        >>> updates, state = tx.update(jnp.array([3.0, 0.5]), state)
        >>> updates
        Array([-0.5 , -0.25], dtype=float32)
    """
    update_fns = tuple(
        check_transformation("chain", f"link {position}", tx)
        for position, tx in enumerate(transforms)
    )

    def init(params: Params) -> tuple[OptState, ...]:
        return tuple(tx.init(params) for tx in transforms)

    def update(
        updates: Updates,
        state: tuple[OptState, ...],
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, tuple[OptState, ...]]:
        if not isinstance(state, tuple) or len(state) != len(update_fns):
            got = len(state) if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"chain: expected a state with one entry per link "
                f"({len(update_fns)}), got {got}; pass the state returned by this "
                "chain's init"
            )
        new_state = []
        for update_fn, link_state in zip(update_fns, state, strict=True):
            updates, link_state = update_fn(updates, link_state, params, **extra)
            new_state.append(link_state)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Add updates to parameters, keeping each parameter's dtype.

    Args:
        params: The current parameters.
        updates: Updates with the structure and shapes of `params`.

    Returns:
        `params + updates`, leaf by leaf, each leaf cast back to its own dtype.

    Raises:
        ValueError: If the trees differ in structure or shape, naming the first
            differing path.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> gradtx.apply_updates({"w": jnp.ones(2)}, {"w": jnp.array([0.5, -1.0])})
        {'w': Array([1.5, 0. ], dtype=float32)}
    """
    check_same_tree("apply_updates", "updates", updates, "params", params)
    return jax.tree.map(
        lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates
    )
