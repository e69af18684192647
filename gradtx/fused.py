"""A whole optimizer step in one pass over memory: `fused_step`.

The plain step is two calls::

    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

XLA compiles it into a few loops per leaf. On a GPU it fuses them into one
kernel that reads p, g, m, v and writes p, m, v once (28 bytes per float32
parameter for Adam, the least there is). XLA:CPU does not: it writes the new
moments, then reads them back to update the parameter, about 40 bytes per
parameter, and it runs each leaf's loops one after another.

`fused_step(tx)` returns a function with the plain step's meaning, `params,
state = step(params, state, grads)`. For the chains it knows (SGD with or
without momentum, Adam, AdamW, Adam with coupled L2, each with an optional
`clip_by_global_norm` in front), float32 params and gradients (moments in
float32 or bfloat16) on a single CPU device, it runs the whole step as a few
calls of a small C++ kernel that visits each element once, on all the cores
XLA uses. The arithmetic is the plain path's, operation by operation,
including the fused multiply-adds XLA:CPU uses: with float32 moments the
parameters and the state are bit-identical to the plain step's (see
docs/fused.md). With clipping, the gradient's norm is the plain step's too,
except when its float32 sum of squares overflows or underflows: the plain
step then sums rescaled squares again under `lax.cond`, the fused step asks
a second small kernel that sums them in float64 (a `lax.cond` over every
gradient leaf costs XLA seconds of compile time on thousands of leaves), so
the two clip factors may differ in the last place. A moment kept in bfloat16
(`mu_dtype=jnp.bfloat16`) is widened, updated in float32 and rounded back as
XLA converts; the plain step computes such a moment twice, in two loops that
LLVM contracts differently, so the kernel's stored moment is the plain
step's or its bfloat16 neighbour. For anything else (another chain, another
dtype, a GPU or TPU, a tree sharded over several devices) it runs the plain
step, which is what it means. `flat_moments=True` keeps each moment in one
flat array, so that a tree of many small leaves passes half as many buffers
to the step.

The kernel (`gradtx/_fused.cc`) is compiled on first use with the system
C++ compiler (`$CXX`, else `c++`, `g++` or `clang++`) against the XLA FFI
headers that jaxlib ships, and cached in `$GRADTX_CACHE_DIR` (default
`~/.cache/gradtx`). Without a compiler the step warns once and runs the
plain path. Set `GRADTX_FUSED=0` to turn the kernel off (it is read when a
step is traced).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
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
from gradtx.clipping import _NormKernels, clip_factors
from gradtx.scaling import _adam_factors

__all__ = ["FusedStep", "fused_step"]

_SOURCE = Path(__file__).with_name("_fused.cc")
_TARGETS = {
    "adam": "gradtx_fused_adam",
    "sgd": "gradtx_fused_sgd",
    "norm": "gradtx_scaled_norm",
    "gather": "gradtx_gather",
}
_SYMBOLS = {
    "adam": "GradtxFusedAdam",
    "sgd": "GradtxFusedSgd",
    "norm": "GradtxScaledNorm",
    "gather": "GradtxGather",
}
# Leaves per kernel call. XLA's compile time grows faster than linearly in
# the number of buffers of one custom call (about 4 s for one call over 400
# leaves); calls over a few dozen leaves each keep it near the plain step's.
_GROUP = 32
# What `FusedStep._misfit` says of a state the plain step refuses.
_REFUSED = "refused"
# Per-leaf flag bits, as in _fused.cc.
_COUPLED, _DECOUPLED = 1, 2


# ----------------------------------------------------------------------------
# the plan: which links the step is made of


class _Link(NamedTuple):
    role: str  # clip, coupled, adam, momentum, decoupled, lr
    tx: GradientTransformation
    path: tuple[int, ...]  # where its state sits in the chain's state


class _Plan(NamedTuple):
    kind: str  # "adam" or "sgd"
    links: tuple[_Link, ...]

    def get(self, role: str) -> _Link | None:
        for link in self.links:
            if link.role == role:
                return link
        return None


class _Unsupported(Exception):
    pass


def _flatten_chain(tx: Any, path: tuple[int, ...] = ()) -> list[_Link]:
    """The links of a (nested) chain in order, with their state paths."""
    name = getattr(tx, "name", None)
    if name == "chain":
        links = []
        for i, child in enumerate(tx.children):
            links.extend(_flatten_chain(child, (*path, i)))
        return links
    if name is None:
        raise _Unsupported("a link was not built by a gradtx factory")
    return [_Link(name, tx, path)]


# The dtypes a moment may be kept in (None: the params', float32 for the kernel).
_MOMENT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def _kernel_moment_dtype(dtype: Any) -> bool:
    return dtype is None or jnp.dtype(dtype) in _MOMENT_DTYPES


def _make_plan(tx: GradientTransformation) -> _Plan:
    """Match the chain against the shapes the kernels run; raise otherwise."""
    links = _flatten_chain(tx)
    names = [link.role for link in links]
    shown = " -> ".join(names)
    roles: list[str] = []
    i = 0

    def take(name: str, role: str) -> bool:
        nonlocal i
        if i < len(names) and names[i] == name:
            roles.append(role)
            i += 1
            return True
        return False

    take("clip_by_global_norm", "clip")
    take("add_decayed_weights", "coupled")
    if take("scale_by_adam", "adam"):
        kind = "adam"
        take("add_decayed_weights", "decoupled")
    else:
        kind = "sgd"
        take("scale_by_momentum", "momentum")
    if not take("scale_by_learning_rate", "lr") or i != len(names):
        raise _Unsupported(
            f"no kernel for the chain {shown}; the kernels run [clip_by_global_norm]"
            " -> [add_decayed_weights] -> scale_by_adam -> [add_decayed_weights] ->"
            " scale_by_learning_rate and [clip_by_global_norm] ->"
            " [add_decayed_weights] -> [scale_by_momentum] -> scale_by_learning_rate"
        )
    plan = _Plan(
        kind,
        tuple(
            _Link(r, link.tx, link.path) for r, link in zip(roles, links, strict=True)
        ),
    )
    adam = plan.get("adam")
    if adam is not None:
        hp = adam.tx.hyperparams
        if not (
            _kernel_moment_dtype(hp["mu_dtype"])
            and _kernel_moment_dtype(hp["nu_dtype"])
        ):
            raise _Unsupported(
                "the kernel keeps Adam's moments in float32 or bfloat16 only"
            )
    momentum = plan.get("momentum")
    if momentum is not None and not _kernel_moment_dtype(
        momentum.tx.hyperparams["accumulator_dtype"]
    ):
        raise _Unsupported("the kernel keeps the momentum in float32 or bfloat16 only")
    return plan


# ----------------------------------------------------------------------------
# building and loading the kernel

_lock = threading.Lock()


def _cache_dir() -> Path:
    if "GRADTX_CACHE_DIR" in os.environ:
        return Path(os.environ["GRADTX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradtx"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(("model name", "flags", "Features"))
    ]
    return "\n".join(sorted(set(lines)))


def _build(compiler: str) -> Path:
    include = jax.ffi.include_dir()
    flags = [
        "-O3",
        "-march=native",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-pthread",
        "-ffp-contract=off",  # fused multiply-adds only where the source says
        "-fno-math-errno",  # lets sqrt vectorise; results are unchanged
    ]
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [
                source,
                " ".join([compiler, *flags]).encode(),
                jax.__version__.encode(),
                platform.machine().encode(),
                _cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:16]
    directory = _cache_dir()
    target = directory / f"gradtx_fused_{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        partial = Path(tmp) / target.name
        command = [compiler, *flags, "-isystem", include, str(_SOURCE), "-o"]
        result = subprocess.run(
            [*command, str(partial)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}"
            )
        os.replace(partial, target)  # atomic: concurrent builds are harmless
    return target


_loaded: list[str | None] = []  # filled once: the library's path, or None


def _load() -> str | None:
    """Build, load and register the kernels once; None if that failed.

    A failure warns once when JAX's default backend is the CPU, where the
    kernel would have run; elsewhere the plain step is what runs anyway.
    """
    with _lock:
        if _loaded:
            return _loaded[0]
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set $CXX)")
            library = ctypes.CDLL(str(_build(compiler)))
            for kind, symbol in _SYMBOLS.items():
                jax.ffi.register_ffi_target(
                    _TARGETS[kind],
                    jax.ffi.pycapsule(getattr(library, symbol)),
                    platform="cpu",
                )
            _loaded.append(str(library._name))
        except Exception as error:  # noqa: BLE001 - any failure means plain path
            _loaded.append(None)
            if jax.default_backend() == "cpu":
                warnings.warn(
                    "gradtx.fused_step: the CPU kernel is unavailable, running "
                    f"the plain step instead ({error})",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return _loaded[0]


def _cpu_only() -> bool:
    """Whether the CPU is the only backend this process has."""
    try:
        from jax.extend.backend import backends

        return set(backends()) == {"cpu"}
    except Exception:  # noqa: BLE001 - an older jax: trace both branches
        return False


def kernel_available() -> bool:
    """Whether the fused CPU kernel is built and loaded (building it if need be).

    False when `GRADTX_FUSED=0` is set or the kernel could not be built (a
    warning then says why).

    Examples:
        >>> import gradtx
        >>> gradtx.fused.kernel_available()
        True
    """
    if os.environ.get("GRADTX_FUSED", "1") == "0":
        return False
    return _load() is not None


# ----------------------------------------------------------------------------
# the step


def _get(state: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        state = state[i]
    return state


def _set(state: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    items = list(state)
    items[head] = _set(items[head], rest, value)
    return tuple(items)


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _rate_and_state(link: _Link, state: Any, name: str) -> tuple[Any, Any]:
    """A link's coefficient at this step and its next state, as the link does it."""
    value = link.tx.hyperparams[name]
    if callable(value):
        return jnp.asarray(value(state.count)), type(state)(
            count=safe_increment(state.count)
        )
    return value, state


def _state_fits(plan: _Plan, state: Any) -> bool:
    """Whether `state` has the chain's shape (otherwise the plain path explains)."""
    try:
        for link in plan.links:
            _get(state, link.path)
    except (TypeError, IndexError, KeyError):
        return False
    return True


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
        """Match `tx` against the kernels (see `fused_step`)."""
        self.tx = tx
        self.flat_moments = bool(flat_moments)
        self._warned_flat = False
        try:
            self._plan: _Plan | None = _make_plan(tx)
            self.reason: str | None = None
        except _Unsupported as unsupported:
            self._plan = None
            self.reason = str(unsupported)
        if self.flat_moments and self._plan is None:
            raise ValueError(
                f"fused_step: flat_moments=True needs a chain the kernel runs; "
                f"{self.reason}"
            )

    # -- flat moments ---------------------------------------------------------

    def _moment_fields(self) -> list[tuple[_Link, str]]:
        plan = self._plan
        assert plan is not None
        fields = []
        for role, names in (("adam", ("mu", "nu")), ("momentum", ("velocity",))):
            link = plan.get(role)
            if link is not None:
                fields.extend((link, name) for name in names)
        return fields

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
        for link, name in self._moment_fields() if self._plan else []:
            link_state = _get(state, link.path)
            leaves = [jnp.ravel(x) for x in jax.tree.leaves(getattr(link_state, name))]
            flat = jnp.concatenate(leaves) if leaves else jnp.zeros([0], jnp.float32)
            state = _set(state, link.path, link_state._replace(**{name: flat}))
        return state

    def chain_state(self, state: OptState, params: Params) -> OptState:
        """The chain's own state from a flat one: each moment shaped like `params`.

        `tx.update`, checkpoints written from the plain step and
        `gradtx.check_state` all take this form.
        """
        leaves, treedef = jax.tree.flatten(params)
        sizes = [int(np.size(x)) for x in leaves]
        starts = np.cumsum([0, *sizes])
        for link, name in self._moment_fields() if self._plan else []:
            link_state = _get(state, link.path)
            flat = getattr(link_state, name)
            shape = np.shape(flat) if hasattr(flat, "shape") else None
            if shape != (starts[-1],):
                raise ValueError(
                    f"fused_step: state.{name} must be a flat array of "
                    f"{starts[-1]} elements (from step.init), got "
                    f"{'shape ' + str(shape) if shape else type(flat).__name__}"
                )
            tree = treedef.unflatten(
                [
                    flat[a:b].reshape(np.shape(x))
                    for a, b, x in zip(starts[:-1], starts[1:], leaves, strict=True)
                ]
            )
            state = _set(state, link.path, link_state._replace(**{name: tree}))
        return state

    @property
    def fused(self) -> bool:
        """Whether the chain is one the CPU kernels run."""
        return self._plan is not None

    def __repr__(self) -> str:
        """`fused_step(<the chain>)`."""
        return f"fused_step({self.tx!r})"

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
        if self._plan is None or not self._fits(grads, state, params):
            return self.plain(params, state, grads, **extra)
        if not kernel_available():
            self._warn_flat("the kernel is turned off or could not be built")
            return self.plain(params, state, grads, **extra)

        def fused(params, state, grads):
            return self._fused(grads, state, params)

        def plain(params, state, grads):
            return self.plain(params, state, grads, **extra)

        if (backend := jax.default_backend()) != "cpu":
            self._warn_flat(f"JAX's default backend is {backend}, not the CPU")
        if _cpu_only():
            # A CPU-only process: the step can only be lowered for the CPU, so
            # the plain branch is not traced at all (tracing it costs about as
            # much as the plain step's whole lowering).
            return fused(params, state, grads)
        # The kernel on CPU; XLA's own fusion elsewhere (one kernel per leaf
        # on a GPU already). The choice is made when the step is lowered.
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

    def _fits(self, grads: Updates, state: OptState, params: Params) -> bool:
        misfit = self._misfit(grads, state, params)
        if misfit is not None and misfit != _REFUSED:
            self._warn_flat(misfit)
        return misfit is None

    def _misfit(self, grads: Updates, state: OptState, params: Params) -> str | None:
        """Why the kernel cannot take these arrays; None if it can.

        `_REFUSED` means a state that the plain step then refuses with an
        error (a flat moment of the wrong size, a state not made for the
        chain).
        """
        plan = self._plan
        assert plan is not None
        check_same_tree("fused_step", "grads", grads, "params", params)
        if jax.device_count() != 1:
            return f"{jax.device_count()} devices; the kernel runs on one"
        if not _state_fits(plan, state):
            return _REFUSED

        def arrays_of(dtypes: tuple[Any, ...], arrays: list[Any]) -> bool:
            return all(
                not isinstance(x, int | float) and jnp.result_type(x) in dtypes
                for x in arrays
            )

        arrays = [*jax.tree.leaves(params), *jax.tree.leaves(grads)]
        if not arrays or not arrays_of((jnp.dtype(jnp.float32),), arrays):
            return "params and gradients that are not all float32"
        total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
        for link, field in self._moment_fields():
            moments = getattr(_get(state, link.path), field, None)
            if moments is None:
                return _REFUSED
            if self.flat_moments:
                if getattr(moments, "shape", None) != (total,):
                    return _REFUSED
            else:
                where = f"fused_step ({link.role})"
                check_same_tree(where, "grads", grads, f"state.{field}", moments)
            # each moment tree in one dtype the kernel keeps (float32, bfloat16)
            leaves = jax.tree.leaves(moments)
            if not arrays_of(_MOMENT_DTYPES, leaves):
                return f"{field} not in float32 or bfloat16"
            if len({jnp.result_type(x) for x in leaves}) > 1:
                return f"{field} in more than one dtype"
        return None

    def _fused(
        self, grads: Updates, state: OptState, params: Params
    ) -> tuple[Params, OptState]:
        plan = self._plan
        assert plan is not None
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(grads)
        n = len(p_leaves)
        flags = np.zeros(n, np.int64)
        one = jnp.ones([], jnp.float32)
        zero = jnp.zeros([], jnp.float32)

        rescale = ratio = one
        if (link := plan.get("clip")) is not None:
            rescale, ratio = clip_factors(
                grads, link.tx.hyperparams["max_norm"], _NORM_KERNELS
            )

        def decay(role: str, bit: int) -> jax.Array:
            nonlocal state
            link = plan.get(role)
            if link is None:
                return zero
            rate, new = _rate_and_state(link, _get(state, link.path), "weight_decay")
            state = _set(state, link.path, new)
            mask = link.tx.hyperparams["mask"]
            selected = (
                [True] * n
                if mask is None
                else mask_flags("add_decayed_weights", mask, params)
            )
            flags[:] |= np.asarray(selected, bool) * bit
            return _f32(rate)

        coupled = decay("coupled", _COUPLED)
        core = plan.get("adam") or plan.get("momentum")
        decoupled = decay("decoupled", _DECOUPLED)
        lr_link = plan.get("lr")
        assert lr_link is not None
        rate, lr_state = _rate_and_state(
            lr_link, _get(state, lr_link.path), "learning_rate"
        )
        state = _set(state, lr_link.path, lr_state)
        step = _f32(-rate)

        if plan.kind == "adam":
            assert core is not None
            hp = core.tx.hyperparams
            b1, b2 = hp["b1"], hp["b2"]
            adam_state = _get(state, core.path)
            count = safe_increment(adam_state.count)
            t = count.astype(jnp.float32)
            # The factors scale_by_adam multiplies by, in float32.
            m_factor, g_factor, inv_c2 = _adam_factors(
                b1, b2, hp["nesterov"], t, jnp.float32
            )
            if hp["nesterov"]:
                inv_c1, nesterov_m, nesterov_g = one, m_factor, g_factor
            else:
                inv_c1, nesterov_m, nesterov_g = m_factor, one, one
            scalars = [
                rescale, ratio, coupled, b1, 1 - b1, b2, 1 - b2, inv_c1,
                nesterov_m, nesterov_g, inv_c2, hp["eps_root"], hp["eps"],
                decoupled, step,
            ]  # fmt: skip
            moments = [self._moment_leaves(adam_state.mu, treedef)]
            moments.append(self._moment_leaves(adam_state.nu, treedef))
            attrs = {"clip": plan.get("clip") is not None, "nesterov": hp["nesterov"]}
        else:
            momentum = 0.0
            dampening = 0.0
            moments = []
            if core is not None:
                hp = core.tx.hyperparams
                momentum, dampening = hp["decay"], hp["dampening"]
                velocity = _get(state, core.path).velocity
                moments = [self._moment_leaves(velocity, treedef)]
            scalars = [rescale, ratio, coupled, momentum, 1 - dampening, step]
            attrs = {
                "clip": plan.get("clip") is not None,
                "momentum": core is not None,
                "nesterov": core is not None and core.tx.hyperparams["nesterov"],
            }

        scalar_buffer = jnp.stack([_f32(s) for s in scalars])
        new_p, new_moments = _call_kernel(
            plan.kind,
            scalar_buffer,
            p_leaves,
            g_leaves,
            moments,
            flags,
            attrs,
            self.flat_moments,
        )

        def rebuild(old: Any, new: list[jax.Array]) -> Any:
            if self.flat_moments:
                return new[0]
            return jax.tree.structure(old).unflatten(new)

        if plan.kind == "adam":
            mu = rebuild(adam_state.mu, new_moments[0])
            nu = rebuild(adam_state.nu, new_moments[1])
            state = _set(state, core.path, type(adam_state)(count=count, mu=mu, nu=nu))
        elif core is not None:
            velocity_state = _get(state, core.path)
            velocity = rebuild(velocity_state.velocity, new_moments[0])
            state = _set(state, core.path, velocity_state._replace(velocity=velocity))
        return treedef.unflatten(new_p), state

    def _moment_leaves(self, moments: Any, treedef: Any) -> list[jax.Array]:
        """Per-leaf moments, or the one flat array (as a one-item list)."""
        if self.flat_moments:
            return [jnp.asarray(moments)]
        return treedef.flatten_up_to(moments)


def _call_kernel(
    kind: str,
    scalars: jax.Array,
    p_leaves: list[jax.Array],
    g_leaves: list[jax.Array],
    moments: list[list[jax.Array]],
    flags: np.ndarray,
    attrs: dict[str, bool],
    flat: bool,
) -> tuple[list[jax.Array], list[list[jax.Array]]]:
    """Run the kernel over the leaves, `_GROUP` at a time, every output in place.

    Per-leaf moments: `moments[j]` holds moment j of every leaf, and each
    call takes and returns its group's. Flat moments: `moments[j]` is one
    array; it goes through the calls one after another, each call updating
    its group's stretch of it in place.
    """
    n_moments = len(moments)
    n_calls = -(-len(p_leaves) // _GROUP)
    scalars = _priced(scalars, n_calls)
    sizes = [int(np.size(p)) for p in p_leaves]
    starts = np.cumsum([0, *sizes])[:-1].astype(np.int64)
    new_p: list[jax.Array] = []
    new_moments: list[list[jax.Array]] = [[] for _ in range(n_moments)]
    current = [m[0] for m in moments] if flat else []
    for start in range(0, len(p_leaves), _GROUP):
        stop = min(start + _GROUP, len(p_leaves))
        # (operand, updated in place?) in argument order
        group: list[tuple[jax.Array, bool]] = [(scalars, False)]
        if flat:
            group += [(m, True) for m in current]
        for k in range(start, stop):
            group += [
                (jnp.asarray(p_leaves[k]), True),
                (jnp.asarray(g_leaves[k]), False),
            ]
            if not flat:
                group += [(jnp.asarray(m[k]), True) for m in moments]
        operands = [operand for operand, _ in group]
        updated = [i for i, (_, in_place) in enumerate(group) if in_place]
        results = [
            jax.ShapeDtypeStruct(operands[i].shape, operands[i].dtype) for i in updated
        ]
        aliases = {i: out for out, i in enumerate(updated)}
        # Under jax.vmap every operand gets the batch axis in front (the
        # scalars too, shape (batch, n)); the kernel then runs row r of each
        # leaf with row r of the scalars.
        outputs = jax.ffi.ffi_call(
            _TARGETS[kind],
            results,
            input_output_aliases=aliases,
            vmap_method="broadcast_all",
        )(
            *operands,
            flags=flags[start:stop],
            offsets=starts[start:stop] if flat else np.zeros(0, np.int64),
            **attrs,
        )
        if flat:
            current = list(outputs[:n_moments])
            new_p.extend(outputs[n_moments:])
        else:
            width = 1 + n_moments
            new_p.extend(outputs[0::width])
            for j in range(n_moments):
                new_moments[j].extend(outputs[1 + j :: width])
    if flat:
        new_moments = [[m] for m in current]
    return new_p, new_moments


def _kernel_rescaled_norm(
    total: jax.Array, leaves: list[jax.Array], down: float, up: float
) -> tuple[jax.Array, jax.Array]:
    """The out-of-range branch of the clip's global norm, as one kernel call.

    The plain step chooses between `sqrt(total)` and a second, rescaled pass
    over the gradients with `lax.cond`, whose operands are every gradient
    leaf: XLA takes seconds to compile that for thousands of leaves (2 s of
    the 5000-leaf clipped step, 4 s of many-small's). The kernel reads only
    `total` unless it is inf or below the smallest normal number; then it
    sums the squares in float64 (see `NormImpl` in `_fused.cc`). In range,
    the step is therefore bit-identical to the plain one; out of range the
    norm may differ from the plain float32 rescaled sum in the last place.
    """
    out = jax.ffi.ffi_call(
        _TARGETS["norm"],
        jax.ShapeDtypeStruct((2,), jnp.float32),
        vmap_method="broadcast_all",
    )(total, *leaves, down=np.float32(down), up=np.float32(up))
    return out[0], out[1]


def _kernel_concatenate(arrays: list[jax.Array]) -> jax.Array:
    """`jnp.concatenate` of 1-D float32 arrays, as one kernel call.

    The norm joins the gradient's small leaves into pieces of 32K elements
    and reduces each piece (`gradtx.sharding._grouped_sum`). The code XLA:CPU
    emits for a concatenation grows with its operands, and LLVM's instruction
    scheduler (measured with perf) spends about a millisecond per 64-element
    leaf on it: most of the compile time of a clipped step over thousands of
    small leaves. The kernel copies the same bytes, so the reductions and the
    norm are unchanged, bit for bit.
    """
    sizes = np.asarray([int(np.size(x)) for x in arrays], np.int64)
    return jax.ffi.ffi_call(
        _TARGETS["gather"],
        jax.ShapeDtypeStruct((int(sizes.sum()),), jnp.float32),
        vmap_method="broadcast_all",
    )(*arrays, sizes=sizes)


_NORM_KERNELS = _NormKernels(_kernel_rescaled_norm, _kernel_concatenate)


def _priced(scalars: jax.Array, n_calls: int) -> jax.Array:
    """`scalars`, unchanged, through an op that XLA's cost model can count.

    XLA's cost analysis counts a custom call as -1 flops, so a step made of
    kernel calls looks like less than 1000 flops, and the CPU client runs
    such "cheap" programs synchronously on the calling thread: the caller
    cannot prepare the next step (flatten the pytree, hand over thousands of
    buffers) while this one runs. The maximum over identical copies of the
    scalars is the scalars, bit for bit (NaN and -0.0 included), and costs a
    few thousand counted flops, enough to get the step dispatched like any
    other XLA program.
    """
    copies = -(-(2000 + 2 * n_calls) // max(1, scalars.shape[-1]))
    return jnp.max(jnp.broadcast_to(scalars, (copies, *scalars.shape)), axis=0)


def fused_step(tx: GradientTransformation, *, flat_moments: bool = False) -> FusedStep:
    """The step `tx.update` + `apply_updates`, in one pass over memory on CPU.

    `step = fused_step(tx)` is a function with the meaning of::

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply_updates(params, updates), state

    and the same results, bit for bit, for every chain below with float32
    moments. With `clip_by_global_norm`, a gradient whose squares overflow
    or underflow float32 gets its norm summed in float64, which may differ
    from the plain step's in the last place. Moments kept in bfloat16
    (`mu_dtype`, `nu_dtype`, `accumulator_dtype`) are updated in float32 and
    rounded once; each stored value is the plain step's or its bfloat16
    neighbour, and the parameters agree to float32 round-off. There the
    kernel saves more: XLA:CPU recomputes a bfloat16 moment in the
    parameter's loop, and its plain step is slower than the float32 one
    (1.6-2.8x on a 2-core CPU).

    When `tx` is one of the chains below, params and grads are float32
    (moments float32 or bfloat16) and the step
    is lowered for a single CPU device, it runs as a C++ kernel that reads
    each parameter, gradient and moment once
    and writes each once, in place when params and state are donated
    (`jax.jit(step, donate_argnums=(0, 1))`; they come in and go out in the
    same order, so each output takes its own input's buffer). Everything
    else runs the plain step, so `fused_step` can wrap any transformation.
    The chains, links in brackets optional::

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
    the compiled step, which is most of such a step's cost. The numbers are
    the same as with per-leaf moments, bit for bit. Where the kernel does
    not run, the moments are cut into leaves and joined again every step,
    at the cost of a copy of each (the step warns once).

    The kernel has no derivative (differentiate through `step.plain`). Under
    `jax.vmap` each batch row runs with its own scalars. See the module
    docstring for how it is built and `GRADTX_FUSED=0` to turn it off.

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
