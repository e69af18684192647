"""`fused_step` and `FusedStep`: the kernel or the plain step.

Also what the kernel is given: per-step scalars, per-leaf arrays and flags.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._checks import check_same_tree, mask_flags
from gradtx.base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    apply_updates,
    safe_increment,
)
from gradtx.clipping import clip_factors
from gradtx.fused._build import kernel_available
from gradtx.fused._call import (
    COUPLED,
    DECOUPLED,
    KernelOutputs,
    LeafInputs,
    run_kernel,
)
from gradtx.fused._plan import MOMENT_DTYPES, Link, Plan, Unsupported, make_plan
from gradtx.fused._state import (
    StatePath,
    check_state,
    flatten_moments,
    get,
    moment_slots,
    put,
    replace_moments,
    unflatten_moments,
)
from gradtx.scaling import adam_factors

_FLOAT32 = (jnp.dtype(jnp.float32),)


def _all_in(dtypes: tuple[Any, ...], arrays: list[Any]) -> bool:
    return all(
        not isinstance(x, int | float) and jnp.result_type(x) in dtypes for x in arrays
    )


def _misfit(
    plan: Plan, flat: bool, params: Params, state: OptState, grads: Updates
) -> str | None:
    """Why the kernel cannot take these arrays; None if it can.

    Raises:
        ValueError: If the grads' tree is not the params', or the state is
            one the plain step refuses too (`check_state`).
    """
    check_same_tree("fused_step", "grads", grads, "params", params)
    check_state(plan, flat, params, state, grads)
    if jax.device_count() != 1:
        return f"{jax.device_count()} devices; the kernel runs on one"
    arrays = [*jax.tree.leaves(params), *jax.tree.leaves(grads)]
    if not arrays or not _all_in(_FLOAT32, arrays):
        return "params and gradients that are not all float32"
    for path, field in moment_slots(plan):
        # each moment tree in one dtype the kernel keeps
        leaves = jax.tree.leaves(getattr(get(state, path), field))
        if not _all_in(MOMENT_DTYPES, leaves):
            return f"{field} not in float32 or bfloat16"
        if len({jnp.result_type(x) for x in leaves}) > 1:
            return f"{field} in more than one dtype"
    return None


# ----------------------------------------------------------------------------
# the kernel's inputs: per-step scalars and per-leaf flags


class _Scalars(NamedTuple):
    values: list[Any]  # in the order of _kernel.cc's AdamScalar / SgdScalar
    attrs: dict[str, bool]  # the kernel's static switches
    link_states: dict[StatePath, Any]  # each counting link's next state


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _rate(value: Any, link_state: Any) -> tuple[Any, Any]:
    """A coefficient at this step and its link's next state, as the link does it."""
    if callable(value):  # a schedule of the link's own count
        count = link_state.count
        return jnp.asarray(value(count)), link_state._replace(
            count=safe_increment(count)
        )
    return value, link_state


def _decay_rate(link: Link | None, state: OptState) -> tuple[Any, dict[StatePath, Any]]:
    if link is None:
        return jnp.zeros([], jnp.float32), {}
    rate, link_state = _rate(link.spec.weight_decay, get(state, link.path))
    return _f32(rate), {link.path: link_state}


class _Common(NamedTuple):
    """The scalars of the links around the kernel's core, in float32."""

    rescale: jax.Array  # clip_by_global_norm's two factors (1 without a clip)
    ratio: jax.Array
    coupled: jax.Array  # the decay rates before and after scale_by_adam
    decoupled: jax.Array
    step: jax.Array  # minus the learning rate


def _adam_scalars(plan: Plan, state: OptState, c: _Common) -> _Scalars:
    core = plan.core
    assert core is not None
    spec = core.spec
    adam_state = get(state, core.path)
    count = safe_increment(adam_state.count)
    one = jnp.ones([], jnp.float32)
    # the factors scale_by_adam multiplies by, in float32
    m_factor, g_factor, inv_c2 = adam_factors(
        spec.b1, spec.b2, spec.nesterov, count.astype(jnp.float32), jnp.float32
    )
    if spec.nesterov:
        inv_c1, nesterov_m, nesterov_g = one, m_factor, g_factor
    else:
        inv_c1, nesterov_m, nesterov_g = m_factor, one, one
    b1, b2 = spec.b1, spec.b2
    return _Scalars(
        [
            c.rescale,
            c.ratio,
            c.coupled,
            b1,
            1 - b1,
            b2,
            1 - b2,
            inv_c1,
            nesterov_m,
            nesterov_g,
            inv_c2,
            spec.eps_root,
            spec.eps,
            c.decoupled,
            c.step,
        ],  # fmt: skip
        {"clip": plan.clip is not None, "nesterov": spec.nesterov},
        {core.path: adam_state._replace(count=count)},
    )


def _sgd_scalars(plan: Plan, c: _Common) -> _Scalars:
    core = plan.core
    momentum, dampening = (
        (0.0, 0.0) if core is None else (core.spec.decay, core.spec.dampening)
    )
    return _Scalars(
        [c.rescale, c.ratio, c.coupled, momentum, 1 - dampening, c.step],
        {
            "clip": plan.clip is not None,
            "momentum": core is not None,
            "nesterov": core is not None and core.spec.nesterov,
        },
        {},
    )


def _scalars(plan: Plan, state: OptState, grads: Updates) -> _Scalars:
    """The step's scalars, computed in JAX as the plain step computes them."""
    one = jnp.ones([], jnp.float32)
    rescale, ratio = (
        (one, one)
        if plan.clip is None
        else clip_factors(grads, plan.clip.spec.max_norm)
    )
    coupled, coupled_state = _decay_rate(plan.coupled, state)
    decoupled, decoupled_state = _decay_rate(plan.decoupled, state)
    rate, lr_state = _rate(plan.lr.spec.learning_rate, get(state, plan.lr.path))
    common = _Common(rescale, ratio, coupled, decoupled, _f32(-rate))
    if plan.kind == "adam":
        kernel = _adam_scalars(plan, state, common)
    else:
        kernel = _sgd_scalars(plan, common)
    states = {
        **coupled_state,
        **decoupled_state,
        plan.lr.path: lr_state,
        **kernel.link_states,
    }
    return kernel._replace(link_states=states)


def _decay_flags(plan: Plan, params: Params, n: int) -> np.ndarray:
    """Per leaf, the bits of the decays that apply to it (masks resolved)."""
    flags = np.zeros(n, np.int64)
    for link, bit in ((plan.coupled, COUPLED), (plan.decoupled, DECOUPLED)):
        if link is None:
            continue
        mask = link.spec.mask
        selected = (
            np.ones(n, bool)
            if mask is None
            else np.asarray(mask_flags("add_decayed_weights", mask, params), bool)
        )
        flags = flags | selected * bit
    return flags


def _kernel_inputs(
    plan: Plan, flat: bool, params: Params, state: OptState, grads: Updates
) -> tuple[list[LeafInputs], tuple[jax.Array, ...] | None]:
    """Each leaf's arrays and decay flags, and the flat moments (None if per leaf)."""
    p_leaves, treedef = jax.tree.flatten(params)
    g_leaves = treedef.flatten_up_to(grads)
    n = len(p_leaves)
    trees = [getattr(get(state, path), field) for path, field in moment_slots(plan)]
    if flat:
        flat_moments = tuple(jnp.asarray(tree) for tree in trees)
        per_leaf: list[tuple[Any, ...]] = [()] * n
    else:
        flat_moments = None
        by_moment = [treedef.flatten_up_to(tree) for tree in trees]
        per_leaf = [tuple(leaves[k] for leaves in by_moment) for k in range(n)]
    flags = _decay_flags(plan, params, n)
    leaves = [
        LeafInputs(p, g, m, int(f))
        for p, g, m, f in zip(p_leaves, g_leaves, per_leaf, flags, strict=True)
    ]
    return leaves, flat_moments


def _next_state(
    plan: Plan, state: OptState, link_states: dict[StatePath, Any], out: KernelOutputs
) -> OptState:
    """The chain's next state: its counting links' states, the kernel's moments."""
    slots = moment_slots(plan)
    if out.flat_moments is not None:
        moments = list(out.flat_moments)
    else:
        moments = [
            jax.tree.structure(getattr(get(state, path), field)).unflatten(
                [leaf[j] for leaf in out.moments]
            )
            for j, (path, field) in enumerate(slots)
        ]
    state = functools.reduce(lambda s, item: put(s, *item), link_states.items(), state)
    return replace_moments(state, slots, moments)


def _fused(
    plan: Plan, flat: bool, params: Params, state: OptState, grads: Updates
) -> tuple[Params, OptState]:
    """The step through the kernel: new params and state, nothing mutated."""
    leaves, flat_moments = _kernel_inputs(plan, flat, params, state, grads)
    scalars = _scalars(plan, state, grads)
    values = jnp.stack([_f32(x) for x in scalars.values])
    out = run_kernel(plan.kind, values, leaves, flat_moments, scalars.attrs)
    new_params = jax.tree.structure(params).unflatten(out.params)
    return new_params, _next_state(plan, state, scalars.link_states, out)


# ----------------------------------------------------------------------------
# the step


class FusedStep:
    """`params, state = step(params, state, grads)`: update and apply at once.

    Built by `fused_step`; see there. `fused` says whether the chain has a
    kernel and `reason` why not when it has none; `plain` is the same step
    without the kernel (differentiable, any chain, any dtype).

    Examples:
        >>> import jax.numpy as jnp
        >>> import gradtx
        >>> step = gradtx.fused_step(gradtx.sgd(0.5, momentum=0.9))
        >>> step.fused, step.reason
        (True, None)
        >>> params = {"w": jnp.ones(2)}
        >>> state = step.tx.init(params)
        >>> step(params, state, {"w": jnp.array([1.0, -1.0])})[0]
        {'w': Array([0.5, 1.5], dtype=float32)}
        >>> gradtx.fused_step(gradtx.adagrad(0.1)).reason.split(";")[0]
        'no kernel for the chain scale_by_adagrad -> scale_by_learning_rate'
    """

    def __init__(self, tx: GradientTransformation, flat_moments: bool = False) -> None:
        """Match `tx` against the kernels, once (see `fused_step`)."""
        self.tx = tx
        self.flat_moments = bool(flat_moments)
        self._warned_flat = False
        self._plan: Plan | None = None
        self.reason: str | None = None
        try:
            self._plan = make_plan(tx)
        except Unsupported as unsupported:
            self.reason = str(unsupported)
        if self.flat_moments and self._plan is None:
            raise ValueError(
                f"fused_step: flat_moments=True needs a chain the kernel runs; "
                f"{self.reason}"
            )

    @property
    def fused(self) -> bool:
        """Whether the chain is one the CPU kernels run."""
        return self._plan is not None

    def __repr__(self) -> str:
        """`fused_step(<the chain>)`."""
        return f"fused_step({self.tx!r})"

    def init(self, params: Params) -> OptState:
        """The initial state: `tx.init(params)`, moments flat if so chosen.

        With `flat_moments=True` each moment tree of the chain's state (Adam's
        `mu` and `nu`, the momentum's `velocity`) is one 1-D array holding
        the leaves one after another, in the params' flattening order.
        """
        state = self.tx.init(params)
        return self.flat_state(state) if self.flat_moments else state

    def flat_state(self, state: OptState) -> OptState:
        """The chain's state with every moment tree concatenated into 1-D."""
        return flatten_moments(self._plan, state)

    def chain_state(self, state: OptState, params: Params) -> OptState:
        """The chain's own state from a flat one: each moment shaped like `params`.

        `tx.update`, checkpoints written from the plain step and
        `gradtx.check_state` all take this form.
        """
        return unflatten_moments(self._plan, state, params)

    def plain(
        self, params: Params, state: OptState, grads: Updates, **extra: Any
    ) -> tuple[Params, OptState]:
        """The plain step: `tx.update`, then `apply_updates`.

        With flat moments the state is unflattened first and flattened again
        after (slices and a concatenation that XLA adds to the step, with a
        copy of each moment); the numbers then match the per-leaf plain
        step's to float32 round-off, as XLA fuses the loops differently.
        """
        if self.flat_moments:
            state = self.chain_state(state, params)
        updates, state = self.tx.update(grads, state, params, **extra)
        params = apply_updates(params, updates)
        return params, (self.flat_state(state) if self.flat_moments else state)

    def __call__(
        self, params: Params, state: OptState, grads: Updates, **extra: Any
    ) -> tuple[Params, OptState]:
        """One step: the new params and state."""
        plan = self._plan
        if plan is None:
            return self.plain(params, state, grads, **extra)
        reason = _misfit(plan, self.flat_moments, params, state, grads)
        if reason is None and not kernel_available():
            reason = "the kernel is turned off or could not be built"
        if reason is not None:
            self._warn_flat(reason)
            return self.plain(params, state, grads, **extra)
        if (backend := jax.default_backend()) != "cpu":
            self._warn_flat(f"JAX's default backend is {backend}, not the CPU")

        def fused(params, state, grads):
            return _fused(plan, self.flat_moments, params, state, grads)

        def plain(params, state, grads):
            return self.plain(params, state, grads, **extra)

        # The kernel on CPU; XLA's own fusion elsewhere (one kernel per leaf
        # on a GPU already). The choice is made when the step is lowered, not
        # from the backends of this process: a CPU host may lower the step
        # for a GPU or TPU (`jax.export`), where the kernel does not exist.
        return jax.lax.platform_dependent(
            params, state, grads, cpu=fused, default=plain
        )

    def _warn_flat(self, why: str) -> None:
        """Warn once that flat moments cost memory where the kernel does not run."""
        if not self.flat_moments or self._warned_flat:
            return
        self._warned_flat = True
        warnings.warn(
            f"gradtx.fused_step(flat_moments=True): the CPU kernel does not run "
            f"this step ({why}), so the plain step cuts each flat moment into "
            "leaves and joins them again, at the cost of a copy of each moment "
            "(scratch memory and traffic that per-leaf moments do not need; "
            "see docs/fused.md, 'Flat moments').",
            RuntimeWarning,
            stacklevel=3,
        )


def fused_step(tx: GradientTransformation, *, flat_moments: bool = False) -> FusedStep:
    """The step `tx.update` + `apply_updates`, in one pass over memory on CPU.

    `step = fused_step(tx)` is a function with the meaning of::

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply_updates(params, updates), state

    and its results to a bound, not bit for bit: the kernel evaluates the
    same equations in float32, but XLA:CPU's own code for the plain step
    (which multiply-adds it fuses, and whether it computes wider than
    float32) depends on the chain, the jax version and the CPU's instruction
    set. On every CPU, after one step from the same params, state and
    gradients, each parameter and each float32 moment is within 8 float32
    epsilons of the plain step's and within 8 of the step evaluated in
    float64, an epsilon being 2**-23 times the size of the value's terms
    (|p| + lr * |u|', with |u|' the update with every term taken in absolute
    value; the parameter's own size unless its terms cancel). Over 120 steps
    both stay within 32 epsilons of the float64 trajectory, relative to each
    leaf's largest value. Moments kept in bfloat16 (`mu_dtype`, `nu_dtype`,
    `accumulator_dtype`) are updated in float32 and rounded once; each
    stored value may be one bfloat16 place further from the plain step's.
    With `clip_by_global_norm` in the chain, a NaN anywhere in the gradient
    makes every parameter NaN, as in the plain step. See docs/fused.md,
    "Same numbers".

    When `tx` is one of the chains below, params and grads are float32
    (moments float32 or bfloat16) and the step is lowered for a single CPU
    device, it runs as a C++ kernel that reads each parameter, gradient and
    moment once and writes each once, in place when params and state are
    donated (`jax.jit(step, donate_argnums=(0, 1))`; they come in and go
    out in the same order, so each output takes its own input's buffer).
    Everything else runs the plain step, so `fused_step` can wrap any
    transformation. The chains, links in brackets optional::

        [clip_by_global_norm] -> [add_decayed_weights] -> scale_by_adam
            -> [add_decayed_weights] -> scale_by_learning_rate
        [clip_by_global_norm] -> [add_decayed_weights] -> [scale_by_momentum]
            -> scale_by_learning_rate

    That is `adam`, `adamw`, `adam_l2`, `sgd` (with or without momentum,
    Nesterov, dampening), `sgd_l2`, each with `clip_by_global_norm` chained in
    front, with numbers, arrays or schedules as hyperparameters and masks on
    the decay. The state is the chain's own, so checkpoints and the plain
    step work with it unchanged.

    With `flat_moments=True` the moments live in one flat array each
    instead of one array per leaf: build the state with `step.init(params)`
    and convert with `step.chain_state(state, params)` / `step.flat_state`.
    A tree of thousands of small leaves then passes half as many buffers to
    the compiled step, which is most of such a step's cost. The kernel runs
    the same code on the same scalars either way, so the numbers are those
    of per-leaf moments, bit for bit. Where the kernel does not run, the
    moments are cut into leaves and joined again every step, at the cost of
    a copy of each (the step warns once).

    The kernel has no derivative (differentiate through `step.plain`). Under
    `jax.vmap` each batch row runs with its own scalars. See `gradtx.fused`
    for how the kernel is built and `GRADTX_FUSED=0` to turn it off.

    Args:
        tx: Any gradient transformation.
        flat_moments: Keep the moments in flat arrays (needs a chain the
            kernel runs; see above).

    Returns:
        A `FusedStep`: call it as `params, state = step(params, state, grads)`.
        Its `fused` attribute says whether `tx` has a kernel, `reason` why not.

    Raises:
        TypeError: If `tx` is not an `(init, update)` pair.
        ValueError: If `flat_moments` is set for a chain the kernel does not
            run.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import gradtx
        >>> tx = gradtx.adamw(1e-3, weight_decay=0.01)
        >>> step = jax.jit(gradtx.fused_step(tx), donate_argnums=(0, 1))
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> params, state = step(params, state, {"w": jnp.array([1.0, -1.0, 0.0])})
        >>> params["w"]
        Array([0.99899, 1.00099, 0.99999], dtype=float32)
        >>> gradtx.fused_step(gradtx.rmsprop(1e-3)).fused
        False
    """
    if not (isinstance(tx, tuple) and len(tx) == 2):
        raise TypeError(
            f"fused_step: tx must be a gradient transformation, got {type(tx).__name__}"
        )
    if not isinstance(tx, GradientTransformation):
        tx = GradientTransformation(*tx)
    return FusedStep(tx, flat_moments=flat_moments)
