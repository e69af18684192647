"""Hyperparameters that change during training.

`inject_hyperparams` turns any optimizer factory into one whose numeric
hyperparameters live in the optimizer state, where a schedule updates them,
a user can read them for logging or replace them, and `jax.grad` can reach
them. `reduce_on_plateau` scales updates down when a monitored loss stops
improving. `latest_learning_rate` reads back the learning rate a chain used.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from gradtx._checks import check_in_range, check_real
from gradtx._pairs import accepting_extras
from gradtx.base import (
    ArrayLike,
    GradientTransformation,
    OptState,
    Params,
    Updates,
    chain,
    compute_dtype,
    described,
    safe_increment,
)
from gradtx.scaling import scale_by_learning_rate

# The attribute of an injected transformation that checks new values.
_VALIDATE = "validate_hyperparams"

# A parameter whose annotation mentions one of these takes numbers (and so
# schedules); other callables (masks, label functions) are passed unchanged.
_NUMERIC_ANNOTATIONS = ("float", "ArrayLike", "Schedule", "Array", "Scalar")


class InjectHyperparamsState(NamedTuple):
    """State of a transformation built by `inject_hyperparams`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.inject_hyperparams(gradtx.sgd)(learning_rate=0.1)
        >>> state = tx.init(jnp.zeros(2))
        >>> state.count, state.hyperparams
        (Array(0, dtype=int32), {'learning_rate': Array(0.1, dtype=float32)})
    """

    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict[str, jax.Array]  # values used by the latest update
    inner_state: OptState  # state of the optimizer the factory built


def _declares_numbers(parameter: inspect.Parameter | None) -> bool | None:
    """Whether a factory parameter takes numbers; None when it does not say."""
    if parameter is None:
        return None
    if parameter.annotation is not inspect.Parameter.empty:
        text = str(parameter.annotation)
        return any(word in text for word in _NUMERIC_ANNOTATIONS)
    default = parameter.default
    if isinstance(default, float) and not isinstance(default, bool):
        return True
    return None


def _is_numeric_value(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Number):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        dtype is not None
        and isinstance(value, jax.Array | np.ndarray | np.generic)
        and (jnp.issubdtype(dtype, jnp.number))
    )


def _split_hyperparams(
    parameters: dict[str, inspect.Parameter] | None,
    takes_var_keyword: bool,
    kwargs: dict[str, Any],
    static_args: set[str],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Callable]]:
    """Sort keyword arguments into static values, numbers and schedules."""
    static, numeric, schedules = {}, {}, {}
    for name, value in kwargs.items():
        parameter = (parameters or {}).get(name)
        declared = _declares_numbers(parameter)
        if parameter is None and takes_var_keyword:
            declared = True  # forwarded through **kwargs, as adamw's b1
        if name in static_args:
            static[name] = value
        elif _is_numeric_value(value):
            # Integers are step counts or sizes unless declared numeric.
            if isinstance(value, numbers.Integral) and not declared:
                static[name] = value
            else:
                numeric[name] = value
        elif callable(value) and declared and not isinstance(value, type):
            schedules[name] = value  # a type (jnp.bfloat16) is a dtype, not one
        else:
            static[name] = value  # bools, strings, None, dtypes, masks
    return static, numeric, schedules


def inject_hyperparams(
    factory: Callable[..., GradientTransformation] | None = None,
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
    *,
    inner_factory: Callable[..., GradientTransformation] | None = None,
) -> Callable[..., GradientTransformation]:
    """Make an optimizer's numeric hyperparameters part of its state.

    `inject_hyperparams(factory)(**hyperparams)` builds `factory(**hyperparams)`,
    except that every numeric hyperparameter is kept in the state:

    - a number is stored once and read back at every update, so replacing it
      in `state.hyperparams` changes the next step without recompiling;
    - a schedule is evaluated at every update on the step count `t`, and the
      value it gave is stored (replacing a scheduled value has no effect);
    - arguments that are not numbers (booleans, strings, None, dtypes, masks
      given as trees or as callables) are passed to the factory unchanged. A
      callable counts as a schedule only for a parameter annotated as taking
      numbers (`float`, `ArrayLike`, `ScalarOrSchedule`) or forwarded
      through `**kwargs`; name any argument in `static_args` to keep it out.
      Integers are kept static unless the parameter is annotated numeric.

    Stored values are arrays of `hyperparam_dtype` (float32 by default),
    whatever the dtype of the parameters. The factory is called again each
    time `update` is traced, with the stored values as arrays, so everything
    stays jit-safe, and the updates are differentiable with respect to the
    injected values (`jax.grad` through a few unrolled steps learns a
    learning rate; with Adam, pass `eps_root=1e-8` so that parameters whose
    gradients are all zero do not give NaN derivatives). To change a value
    by hand, use `set_hyperparams(state, learning_rate=1e-4)`, which keeps
    the stored dtype and shape so that the jitted step does not recompile.

    Args:
        factory: A function returning a `GradientTransformation`, such as
            `gradtx.adamw`, or any factory of `(init, update)` pairs.
        static_args: Names of arguments never to inject.
        hyperparam_dtype: Dtype of the stored values; None for float32.
        inner_factory: optax's name for `factory`, accepted instead of it.

    Returns:
        A function taking the factory's arguments and returning a
        `GradientTransformation` whose state is an `InjectHyperparamsState`
        (`count`, `hyperparams`, `inner_state`).

    Raises:
        ValueError: If `static_args` names an argument the factory lacks.
        TypeError: If neither or both of `factory` and `inner_factory` are
            given.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> opt = gradtx.inject_hyperparams(gradtx.sgd)(
        ...     learning_rate=gradtx.linear_schedule(0.1, 0.0, 10), momentum=0.9
        ... )
        >>> state = opt.init(jnp.zeros(2))
        >>> for _ in range(3):
        ...     updates, state = opt.update(jnp.ones(2), state)
        >>> {k: round(float(v), 4) for k, v in state.hyperparams.items()}
        {'learning_rate': 0.08, 'momentum': 0.9}
    """
    if (factory is None) == (inner_factory is None):
        raise TypeError(
            "inject_hyperparams: give the factory once, as factory= or as its "
            "optax spelling inner_factory="
        )
    factory = factory or inner_factory
    assert factory is not None
    if isinstance(static_args, str):
        static_args = (static_args,)
    static_names = set(static_args)
    dtype = jnp.dtype(hyperparam_dtype or jnp.float32)
    factory_name = getattr(factory, "__name__", type(factory).__name__)
    fn = f"inject_hyperparams({factory_name})"
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    parameters = dict(signature.parameters) if signature else None
    kinds = {p.kind for p in (parameters or {}).values()}
    takes_var_keyword = inspect.Parameter.VAR_KEYWORD in kinds
    if parameters is not None and not takes_var_keyword:
        unknown = sorted(static_names - set(parameters))
        if unknown:
            raise ValueError(f"{fn}: static_args names unknown arguments {unknown}")

    def build(*args: Any, **kwargs: Any) -> GradientTransformation:
        if args:
            if signature is None or parameters is None:
                raise TypeError(f"{fn}: pass the hyperparameters by keyword")
            bound = signature.bind_partial(*args, **kwargs).arguments
            kwargs = {}
            for name, value in bound.items():
                if parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    kwargs.update(value)
                else:
                    kwargs[name] = value
        static, numeric, schedules = _split_hyperparams(
            parameters, takes_var_keyword, kwargs, static_names
        )

        def make(values: dict[str, jax.Array]) -> GradientTransformation:
            return factory(**static, **values)

        def values_at(count: jax.Array, stored: dict[str, Any]) -> dict[str, jax.Array]:
            values = {}
            for k in sorted([*numeric, *schedules]):  # sorted, as jax.tree does
                value = schedules[k](count) if k in schedules else stored[k]
                # A copy: the state must not hold the caller's own buffer,
                # which a donated step would consume (or donate twice).
                values[k] = jnp.array(value, dtype, copy=True)
            return values

        # The values the first step will use, as they will be stored (a b2 of
        # 1 - 1e-9 becomes 1.0 in float32), are checked by the factory's own
        # range checks. Values that only exist under a trace are not checked.
        first = {**numeric}
        first.update({k: schedules[k](jnp.zeros([], jnp.int32)) for k in schedules})

        def validate(new: dict[str, Any]) -> None:
            """Build the plain optimizer from concrete values: its checks run."""
            _check_types(fn, new)
            make({k: _as_stored(v, dtype) for k, v in {**first, **new}.items()})

        _check_types(fn, first)
        validate({})

        def init(params: Params) -> InjectHyperparamsState:
            count = jnp.zeros([], jnp.int32)
            values = values_at(count, numeric)
            return InjectHyperparamsState(
                count=count, hyperparams=values, inner_state=make(values).init(params)
            )

        def update(
            updates: Updates,
            state: InjectHyperparamsState,
            params: Params | None = None,
            **extra: Any,
        ) -> tuple[Updates, InjectHyperparamsState]:
            values = values_at(state.count, state.hyperparams)
            inner_update = accepting_extras(make(values).update)
            updates, inner_state = inner_update(
                updates, state.inner_state, params, **extra
            )
            new_state = InjectHyperparamsState(
                count=safe_increment(state.count),
                hyperparams=values,
                inner_state=inner_state,
            )
            return updates, new_state

        tx = GradientTransformation(init, update, name=fn, hyperparams=kwargs)
        setattr(tx, _VALIDATE, validate)  # read by set_hyperparams(tx=...)
        return tx

    return build


def _check_types(fn: str, values: dict[str, Any]) -> None:
    """Refuse what no numeric hyperparameter can be: bools, strings, complex."""
    for name, value in values.items():
        check_real(fn, name, value)


def _as_stored(value: Any, dtype: Any) -> Any:
    """`value` rounded to the stored dtype, concrete where it can be."""
    if isinstance(value, Tracer) or (
        isinstance(value, jax.Array) and not value.is_fully_addressable
    ):
        return value
    return np.asarray(value, dtype)


def _injected_links(tx: Any) -> list[GradientTransformation]:
    """Every transformation built by `inject_hyperparams` inside `tx`."""
    found = []
    if hasattr(tx, _VALIDATE):
        found.append(tx)
    inner = list(getattr(tx, "children", ()))
    for value in getattr(tx, "hyperparams", {}).values():
        inner.extend(value.values() if isinstance(value, dict) else [value])
    for link in inner:
        if isinstance(link, GradientTransformation):
            found.extend(_injected_links(link))
    return found


def set_hyperparams(
    state: OptState, tx: GradientTransformation | None = None, **values: ArrayLike
) -> OptState:
    """Replace injected hyperparameters wherever they sit in a state.

    Finds every `InjectHyperparamsState` in `state` (at the top, inside a
    chain or a wrapper, or nested in another one) and replaces the named
    values, keeping each stored value's dtype and shape so that the jitted
    step does not recompile. A value that a schedule computes is recomputed
    at the next update, so replacing it has no lasting effect.

    Concrete values are checked before anything is replaced. Every value
    must be a real number or array, and finite. Given the optimizer `tx`
    the state belongs to, each value is also checked exactly as that
    optimizer's factory checks it (so a negative learning rate or `b1 = 1`
    is refused, with the factory's message); a state alone does not say
    which ranges apply. Traced values (inside `jax.jit`) are not checked.

    Args:
        state: The state of a transformation that contains
            `inject_hyperparams` somewhere.
        tx: The optimizer that built `state`, to check values against its
            factories' ranges; None checks only that they are finite reals.
        **values: New values, by hyperparameter name.

    Returns:
        The state with the values replaced; `state` itself is unchanged.

    Raises:
        ValueError: If a name is not an injected hyperparameter of `state`,
            or a value is NaN, infinite or outside its factory's range.
        TypeError: If a value is a bool, a string or complex.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.chain(
        ...     gradtx.clip_by_global_norm(1.0),
        ...     gradtx.inject_hyperparams(gradtx.adamw)(learning_rate=1e-3),
        ... )
        >>> state = gradtx.set_hyperparams(tx.init(jnp.zeros(2)), learning_rate=5e-4)
        >>> state[1].hyperparams["learning_rate"]
        Array(0.0005, dtype=float32)
    """
    fn = "set_hyperparams"
    _check_types(fn, values)
    if tx is None:  # no factory to ask: any finite real is a candidate
        for name, value in values.items():
            check_in_range(fn, name, value, -math.inf, low_open=True)
    else:
        for link in _injected_links(tx):
            mine = {k: v for k, v in values.items() if k in link.hyperparams}
            if mine:
                getattr(link, _VALIDATE)(mine)
    seen: set[str] = set()

    def is_injected(node: Any) -> bool:
        return isinstance(node, InjectHyperparamsState)

    def replace(node: Any) -> Any:
        if not is_injected(node):
            return node
        hyperparams = dict(node.hyperparams)
        for name, value in values.items():
            if name in hyperparams:
                old = jnp.asarray(hyperparams[name])
                hyperparams[name] = jnp.broadcast_to(
                    jnp.array(value, old.dtype, copy=True), old.shape
                )
                seen.add(name)
        inner = jax.tree.map(replace, node.inner_state, is_leaf=is_injected)
        return node._replace(hyperparams=hyperparams, inner_state=inner)

    new_state = jax.tree.map(replace, state, is_leaf=is_injected)
    missing = sorted(set(values) - seen)
    if missing:
        raise ValueError(
            f"set_hyperparams: {missing} not injected anywhere in the state; build "
            "the optimizer with gradtx.inject_hyperparams and pass these names"
        )
    return new_state


# ----------------------------------------------------------------------------
# reduce_on_plateau


class ReduceOnPlateauState(NamedTuple):
    """State of `reduce_on_plateau`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> state = gradtx.reduce_on_plateau().init(jnp.zeros(2))
        >>> state.scale, state.best_value
        (Array(1., dtype=float32), Array(inf, dtype=float32))
    """

    scale: jax.Array  # float32: the factor applied to the updates
    best_value: jax.Array  # float32: best averaged loss seen so far
    plateau_count: jax.Array  # int32: evaluations since the last improvement
    cooldown_count: jax.Array  # int32: evaluations left before counting again
    count: jax.Array  # int32: losses accumulated towards the next evaluation
    avg_value: jax.Array  # float32: mean of the losses accumulated so far


@described
def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> GradientTransformation:
    """Scale updates down by `factor` when the loss stops improving.

    Reads the loss from `update(..., loss=x)`, or from `value=x`, optax's
    name for it (giving both is a TypeError). Losses are averaged over
    `accumulation_size` calls; each average is one evaluation, which follows
    torch's `ReduceLROnPlateau` (mode "min") exactly::

        improved = avg < best * (1 - rtol) - atol
        best     = avg if improved
        bad      = 0 if improved else bad + 1
        if cooldown_left > 0: cooldown_left -= 1; bad = 0
        if bad > patience:    scale = max(scale * factor, min_scale)
                              cooldown_left = cooldown; bad = 0

    The updates of a call are multiplied by the scale after its loss has been
    taken into account. torch's `threshold_mode="rel"` with `threshold=x` is
    `rtol=x, atol=0`; `"abs"` is `rtol=0, atol=x`; its `min_lr` is
    `min_scale * lr`. Unlike torch, a reduction below `min_scale` is never
    skipped for being smaller than torch's `eps`. The arguments come in
    optax's positional order; optax's `patience=p` reduces at the p-th bad
    evaluation in a row, which is `patience=p - 1` here.

    Args:
        factor: Multiplier applied at each reduction, in (0, 1).
        patience: Evaluations without improvement tolerated before reducing,
            an integer >= 0.
        rtol: Relative improvement required, in [0, 1).
        atol: Absolute improvement required, in [0, inf).
        cooldown: Evaluations after a reduction during which no bad step is
            counted, an integer >= 0.
        accumulation_size: Number of losses averaged per evaluation, >= 1.
        min_scale: The scale never goes below this, in [0, 1].

    Returns:
        A `GradientTransformation` whose state is a `ReduceOnPlateauState`.

    Raises:
        ValueError: If an argument is outside its range; at update, if no
            `loss` keyword is given.
        TypeError: At update, if both `loss` and `value` are given.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.reduce_on_plateau(factor=0.5, patience=1)
        >>> state = tx.init(jnp.zeros(1))
        >>> for loss in [3.0, 2.0, 2.5, 2.4, 2.6]:
        ...     u, state = tx.update(jnp.ones(1), state, loss=loss)
        >>> float(state.scale)
        0.5
    """
    fn = "reduce_on_plateau"
    check_in_range(fn, "factor", factor, 0.0, 1.0, low_open=True, high_open=True)
    check_in_range(fn, "patience", patience, 0)
    check_in_range(fn, "cooldown", cooldown, 0)
    check_in_range(fn, "min_scale", min_scale, 0.0, 1.0)
    check_in_range(fn, "rtol", rtol, 0.0, 1.0, high_open=True)
    check_in_range(fn, "atol", atol, 0.0)
    check_in_range(fn, "accumulation_size", accumulation_size, 1)

    def init(params: Params) -> ReduceOnPlateauState:
        del params
        # One array per field: a shared one could not be donated.
        return ReduceOnPlateauState(
            scale=jnp.ones([], jnp.float32),
            best_value=jnp.full([], jnp.inf, jnp.float32),
            plateau_count=jnp.zeros([], jnp.int32),
            cooldown_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], jnp.float32),
        )

    def evaluate(state: ReduceOnPlateauState, value: jax.Array) -> ReduceOnPlateauState:
        improved = value < state.best_value * (1 - rtol) - atol
        best = jnp.where(improved, value, state.best_value)
        bad = jnp.where(improved, 0, state.plateau_count + 1)
        in_cooldown = state.cooldown_count > 0
        cooldown_left = jnp.where(in_cooldown, state.cooldown_count - 1, 0)
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > patience
        scale = jnp.where(
            reduce, jnp.maximum(state.scale * factor, min_scale), state.scale
        )
        return state._replace(
            scale=scale.astype(jnp.float32),
            best_value=best,
            plateau_count=jnp.where(reduce, 0, bad).astype(jnp.int32),
            cooldown_count=jnp.where(reduce, cooldown, cooldown_left).astype(jnp.int32),
        )

    def update(
        updates: Updates,
        state: ReduceOnPlateauState,
        params: Params | None = None,
        **extra: Any,
    ) -> tuple[Updates, ReduceOnPlateauState]:
        del params
        given = [k for k in ("loss", "value") if extra.get(k) is not None]
        if len(given) == 2:
            raise TypeError(
                f"{fn}: loss= and its optax spelling value= mean the same thing; "
                "give one of them"
            )
        if not given:
            raise ValueError(
                f"{fn} reads the loss: call update(updates, state, params, loss=value)"
            )
        loss = jnp.asarray(extra[given[0]], jnp.float32)
        if loss.shape != ():
            raise ValueError(f"{fn}: loss must be a scalar, got shape {loss.shape}")
        count = state.count + 1
        avg = state.avg_value + (loss - state.avg_value) / count
        ready = count >= accumulation_size
        evaluated = evaluate(state, avg)
        new_state = jax.tree.map(
            lambda e, s: jnp.where(ready, e, s), evaluated, state
        )._replace(
            count=jnp.where(ready, 0, count).astype(jnp.int32),
            avg_value=jnp.where(ready, 0.0, avg),
        )
        scale = new_state.scale

        def leaf(g):
            return (g.astype(compute_dtype(g)) * scale).astype(g.dtype)

        return jax.tree.map(leaf, updates), new_state

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# reading the learning rate back


def _learning_rate_parts(tx: Any, state: Any) -> tuple[jax.Array | None, jax.Array]:
    """The learning rate in `tx` (or None) and the plateau scales around it."""
    factory = getattr(tx, "factory", None)
    one = jnp.ones([], jnp.float32)
    if factory is chain:
        lr, scale = None, one
        for child, child_state in zip(tx.children, state, strict=True):
            child_lr, child_scale = _learning_rate_parts(child, child_state)
            lr = child_lr if lr is None else lr
            scale = scale * child_scale
        return lr, scale
    if factory is scale_by_learning_rate:
        value = tx.hyperparams["learning_rate"]
        if callable(value):
            value = value(jnp.maximum(state.count - 1, 0))
        return jnp.asarray(value, jnp.float32), one
    if factory is reduce_on_plateau:
        return None, state.scale
    if isinstance(state, InjectHyperparamsState):
        if "learning_rate" in state.hyperparams:
            return jnp.asarray(state.hyperparams["learning_rate"]), one
        return None, one
    inner = tx.hyperparams.get("inner") if factory else None
    if inner is not None and hasattr(state, "inner_state"):
        return _learning_rate_parts(inner, state.inner_state)
    return None, one


def latest_learning_rate(tx: GradientTransformation, state: OptState) -> jax.Array:
    """The learning rate `tx` applied in its latest update, for logging.

    Finds the `scale_by_learning_rate` link of a chain (or the injected
    `learning_rate` of `inject_hyperparams`), evaluates its schedule at the
    latest step, and multiplies in the scale of any `reduce_on_plateau` link
    of the same chain. Before the first update it gives the rate the first
    update will use.

    Args:
        tx: The transformation, as built (an optimizer, chain or wrapper).
        state: Its current state.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: If `tx` has no learning rate to read.

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.adam(gradtx.exponential_decay(1e-2, 1, 0.5))
        >>> state = tx.init(jnp.zeros(2))
        >>> for _ in range(3):
        ...     _, state = tx.update(jnp.ones(2), state)
        >>> round(float(gradtx.latest_learning_rate(tx, state)), 6)
        0.0025
    """
    lr, scale = _learning_rate_parts(tx, state)
    if lr is None:
        raise ValueError(
            "latest_learning_rate: found no scale_by_learning_rate link and no "
            f"injected learning_rate in {getattr(tx, 'name', None) or tx!r}"
        )
    return (lr * scale).astype(jnp.float32)
