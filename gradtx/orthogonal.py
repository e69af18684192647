"""Muon: momentum orthogonalised by a Newton-Schulz iteration.

The links are the momentum (`scale_by_muon_momentum`), the orthogonalisation
of each matrix (`orthogonalize`) and the per-matrix shape factor
(`scale_by_shape`); `muon` (in gradtx/aliases.py) chains them for the
matrices of a model and sends every other leaf to AdamW. Which axes of a
leaf form its matrix is told by a `MuonDimensionNumbers` per leaf;
`muon_dimension_numbers` writes them for a whole model (convolution
kernels, stacked layers, embeddings and heads left to AdamW) and
`muon_mask` says which leaves it picks.

The iteration runs in at least float32 (`compute_dtype`), or in `ns_dtype`
when one is given, and each result is rounded once to the dtype it is
stored in.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gradtx._checks import (
    check_count,
    check_dtype,
    check_flag,
    check_in_range,
    check_same_tree,
    path_str,
)
from gradtx.base import (
    ArrayLike,
    EmptyState,
    GradientTransformation,
    Params,
    Updates,
    abs_sq,
    bias_correction,
    compute_dtype,
    described,
    explicit_split,
    init_like,
    map_leaves,
    safe_increment,
    scalar_dtype,
)

DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Per-step coefficient tables by name, as optax.contrib.muon accepts them.
NS_COEFFS_PRESETS = {
    "standard": DEFAULT_NS_COEFFS,
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}
# Path components (globs, case-insensitive) that the Muon recipes leave to
# AdamW: token embeddings and the output head.
DEFAULT_EXCLUDE = ("*embed*", "head", "lm_head", "output_head")
_LAYOUTS = ("in_out", "out_in")
_PRECONDITIONINGS = ("frobenius", "spectral")
_ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
CONVENTIONS = ("optax", "torch")


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a leaf form the matrix that Muon orthogonalises.

    The matrix maps inputs to outputs as `y = x @ W` (flax's `(in, out)`
    layout): its rows are the `reduction_axis` axes flattened together, its
    columns the `output_axis` axes. Every other axis is a batch axis: the
    leaf holds one matrix per index of the batch axes (stacked or scanned
    layers), each orthogonalised on its own. Axes may be negative.

    Examples:
        >>> from gradtx import MuonDimensionNumbers
        >>> MuonDimensionNumbers()  # a plain (in, out) matrix
        MuonDimensionNumbers(reduction_axis=0, output_axis=1)
        >>> MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)  # HWIO
        MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
    """

    reduction_axis: int | tuple[int, ...] = 0  # the "in" axes, rows
    output_axis: int | tuple[int, ...] = 1  # the "out" axes, columns


DimensionNumbers = Any  # None, one MuonDimensionNumbers, a tree of them (None
# marks a leaf that is not a matrix), or a function of the updates returning one


# ----------------------------------------------------------------------------
# helpers


def _is_dims_leaf(x: Any) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def _default_dims(layout: str) -> MuonDimensionNumbers:
    return MuonDimensionNumbers(*((0, 1) if layout == "in_out" else (1, 0)))


def _check_layout(fn: str, layout: Any) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"{fn}: layout must be 'in_out' or 'out_in', got {layout!r}")


def check_dims_argument(fn: str, dims: Any) -> None:
    """Refuse a weight_dimension_numbers argument that is not one of its forms."""
    if dims is None or callable(dims) or isinstance(dims, MuonDimensionNumbers):
        return
    for leaf in jax.tree.leaves(dims, is_leaf=_is_dims_leaf):
        if not _is_dims_leaf(leaf):
            raise TypeError(
                f"{fn}: weight_dimension_numbers must hold MuonDimensionNumbers "
                f"or None, got {type(leaf).__name__} {leaf!r}"
            )


def dims_per_leaf(fn: str, dims: DimensionNumbers, tree: Any, layout: str) -> list:
    """One MuonDimensionNumbers (or None: not a matrix) per leaf of `tree`."""
    leaves = jax.tree.leaves(tree)
    if callable(dims):
        dims = dims(tree)
    if dims is None:
        default = _default_dims(layout)
        return [default if jnp.ndim(x) == 2 else None for x in leaves]
    if isinstance(dims, MuonDimensionNumbers):
        return [dims] * len(leaves)
    flat, treedef = jax.tree.flatten(dims, is_leaf=_is_dims_leaf)
    try:
        subtrees = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{fn}: weight_dimension_numbers must have the params' structure "
            f"(or a prefix of it): {error}"
        ) from error
    per_leaf = []
    for d, subtree in zip(flat, subtrees, strict=True):
        if not _is_dims_leaf(d):
            raise TypeError(
                f"{fn}: weight_dimension_numbers must hold MuonDimensionNumbers "
                f"or None, got {type(d).__name__} {d!r}"
            )
        per_leaf.extend([d] * len(jax.tree.leaves(subtree)))
    return per_leaf


def _axes(fn: str, dims: MuonDimensionNumbers, shape: tuple[int, ...]):
    """(batch, reduction, output) axes of a leaf, checked."""
    ndim = len(shape)

    def normal(axes: Any, name: str) -> tuple[int, ...]:
        axes = (axes,) if isinstance(axes, int | np.integer) else tuple(axes)
        if not axes or any(not -ndim <= int(a) < ndim for a in axes):
            raise ValueError(
                f"{fn}: {name} {axes} does not name axes of a leaf of shape {shape}"
            )
        return tuple(int(a) % ndim for a in axes)

    if ndim < 2:
        raise ValueError(
            f"{fn}: a leaf of shape {shape} has dimension numbers {dims}, but a "
            "matrix needs at least 2 axes; give it None to leave it out"
        )
    reduction = normal(dims.reduction_axis, "reduction_axis")
    output = normal(dims.output_axis, "output_axis")
    named = reduction + output
    if len(set(named)) != len(named):
        raise ValueError(
            f"{fn}: reduction_axis {reduction} and output_axis {output} must be "
            f"distinct axes (leaf of shape {shape})"
        )
    batch = tuple(a for a in range(ndim) if a not in named)
    return batch, reduction, output


def _fans(fn: str, dims: MuonDimensionNumbers, shape: tuple[int, ...]):
    _, reduction, output = _axes(fn, dims, shape)
    return math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)


def _as_matrices(fn: str, x: jax.Array, dims: MuonDimensionNumbers):
    """`x` as a (batch, rows=in, cols=out) stack, and the way back."""
    batch, reduction, output = _axes(fn, dims, x.shape)
    order = batch + reduction + output
    permuted = tuple(x.shape[a] for a in order)
    stacked = x.transpose(order).reshape(
        math.prod(x.shape[a] for a in batch),
        math.prod(x.shape[a] for a in reduction),
        math.prod(x.shape[a] for a in output),
    )
    inverse = tuple(int(i) for i in np.argsort(order))

    def back(y: jax.Array) -> jax.Array:
        return y.reshape(permuted).transpose(inverse)

    return stacked, back


def _ns_coeff_rows(fn: str, ns_coeffs: Any, ns_steps: int) -> tuple:
    """The coefficient triple of each iteration, as Python floats."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_COEFFS_PRESETS:
            raise ValueError(
                f"{fn}: ns_coeffs preset must be one of "
                f"{sorted(NS_COEFFS_PRESETS)}, got {ns_coeffs!r}"
            )
        ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
    try:
        table = np.asarray(ns_coeffs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{fn}: ns_coeffs must be three numbers (a, b, c) or a table of "
            f"them, got {ns_coeffs!r}"
        ) from error
    if table.ndim not in (1, 2) or table.shape[-1] != 3 or table.size == 0:
        raise ValueError(
            f"{fn}: ns_coeffs must have shape (3,) or (n, 3), got {table.shape}"
        )
    if not np.all(np.isfinite(table)):
        raise ValueError(f"{fn}: ns_coeffs must be finite, got {ns_coeffs!r}")
    if table.ndim == 1:
        return tuple([tuple(float(c) for c in table)] * ns_steps)
    return tuple(tuple(float(c) for c in row) for row in table)


def _precision(dtype: Any) -> Any:
    # Full float32 products where the iteration runs in float32 or wider (GPU
    # and TPU would otherwise use reduced-precision passes); a bfloat16
    # iteration asks for bfloat16 and gets the accelerator's fast path.
    return jax.lax.Precision.HIGHEST if jnp.finfo(dtype).bits >= 32 else None


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """Batched `a @ b` of two (batch, m, k) and (batch, k, n) stacks."""
    return jnp.matmul(a, b, precision=_precision(a.dtype))


def _gram(x: jax.Array, axis: int) -> jax.Array:
    """Per matrix of a (batch, m, n) stack, `x x^H` (axis=2) or `x^H x` (1).

    One product contracting both operands' `axis`: written as a product
    with a transpose, XLA:CPU copies the transpose out before a batched
    product, which takes as long as the product itself on a 768 x 3072
    matrix.
    """
    contract_batch = (((axis,), (axis,)), ((0,), (0,)))
    precision = _precision(x.dtype)
    if axis == 2:
        return jax.lax.dot_general(x, x.conj(), contract_batch, precision=precision)
    return jax.lax.dot_general(x.conj(), x, contract_batch, precision=precision)


def _per_matrix(
    fn: str, leaf: Any, dims: DimensionNumbers, layout: str
) -> GradientTransformation:
    """A stateless link applying `leaf(g, dims_of_g)` to every leaf."""

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra
    ) -> tuple[Updates, EmptyState]:
        del params
        per_leaf = dims_per_leaf(fn, dims, updates, layout)
        leaves, treedef = jax.tree.flatten(updates)
        out = [leaf(g, d) for g, d in zip(leaves, per_leaf, strict=True)]
        return treedef.unflatten(out), state

    return GradientTransformation(init, update)


def _whole(x: jax.Array) -> tuple[jax.Array, Any]:
    """`x` gathered whole if its type is sharded on explicit mesh axes.

    Returns the array and a function that puts a result of its shape back
    where `x` was. Under explicit sharding a product whose contracted axis is
    sharded has no sharding of its own, so the matrix is gathered once
    before the iteration (an all-gather of its m*n elements) and the result
    resharded like the leaf; with automatic axes XLA places the collectives.
    """
    sharding = explicit_split(x)
    if sharding is None:
        return x, lambda y: y
    whole = jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))
    return whole, lambda y: jax.sharding.reshard(y, sharding)


def _newton_schulz(
    x: jax.Array,
    rows: tuple,
    eps: ArrayLike,
    clamp_norm: bool,
    preconditioning: str,
) -> jax.Array:
    """The iteration on a (batch, m, n) stack.

    Its products are min(m, n) square: a tall stack (m > n) runs the
    transposed iteration, `x <- a x + x (b G + c G^2)` with `G = x^H x`,
    rather than being transposed, which XLA:CPU would copy out.
    """
    tall = x.shape[1] > x.shape[2]
    if preconditioning == "spectral":
        norm = jnp.linalg.norm(x, ord=2, axis=(-2, -1), keepdims=True)
    else:
        norm = jnp.sqrt(jnp.sum(abs_sq(x), axis=(-2, -1), keepdims=True))
    denom = jnp.maximum(norm, eps) if clamp_norm else norm + eps
    x = x / denom.astype(x.dtype)
    for a, b, c in rows:
        gram = _gram(x, 1 if tall else 2)
        poly = b * gram + c * _matmul(gram, gram)
        x = a * x + (_matmul(x, poly) if tall else _matmul(poly, x))
    return x


# ----------------------------------------------------------------------------
# links


class ScaleByMuonMomentumState(NamedTuple):
    """State of `scale_by_muon_momentum`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import scale_by_muon_momentum
        >>> tx = scale_by_muon_momentum(beta=0.5)
        >>> _, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
        >>> state.count, state.mu
        (Array(1, dtype=int32), {'w': Array([0.5, 0.5], dtype=float32)})
    """

    count: jax.Array  # int32 scalar: updates applied so far
    mu: Updates  # the momentum m, in mu_dtype or the params' dtype


@described
def scale_by_muon_momentum(
    beta: ArrayLike = 0.95,
    nesterov: bool = True,
    debias: bool = True,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Muon's momentum: an EMA of the gradients, looking one step ahead.

    Per leaf, with t = 1, 2, ... and m_0 = 0::

        m_t = beta * m_{t-1} + (1 - beta) * g_t
        u_t = beta * m_t / (1 - beta**(t+1)) + (1 - beta) * g_t / (1 - beta**t)
                                           (nesterov=True, debias=True: optax)
        u_t = m_t / (1 - beta**t)          (nesterov=False, debias=True)
        u_t = beta * m_t + (1 - beta) * g_t  (nesterov=True, debias=False: torch)
        u_t = m_t                          (nesterov=False, debias=False)

    The debiased forms are optax.contrib.muon's; the others are
    torch.optim.Muon's (its buffer is `m`, updated by `lerp`). Since the
    orthogonalisation that follows divides by the norm, debiasing changes the
    result only through the relative weight of `m_t` and `g_t` in the
    Nesterov form, which tends to torch's as t grows.

    Args:
        beta: EMA rate of the momentum, in [0, 1).
        nesterov: Use the look-ahead (Nesterov) form.
        debias: Divide by the bias corrections, as optax does.
        mu_dtype: Dtype of the momentum; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByMuonMomentumState`.

    Raises:
        ValueError: If `beta` is outside its range or `mu_dtype` is not a
            floating-point dtype.
        TypeError: If `nesterov` or `debias` is not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import scale_by_muon_momentum
        >>> tx = scale_by_muon_momentum(beta=0.5, debias=False)
        >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> u  # 0.5 * (0.5 * 2) + 0.5 * 2
        Array([1.5], dtype=float32)

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural
        networks", 2024, https://kellerjordan.github.io/posts/muon/.
    """
    fn = "scale_by_muon_momentum"
    check_in_range(fn, "beta", beta, 0.0, 1.0, high_open=True)
    check_flag(fn, "nesterov", nesterov)
    check_flag(fn, "debias", debias)
    mu_dtype = check_dtype(fn, "mu_dtype", mu_dtype)

    def init(params: Params) -> ScaleByMuonMomentumState:
        return ScaleByMuonMomentumState(
            count=jnp.zeros([], jnp.int32), mu=init_like(params, mu_dtype)
        )

    def leaf(g, m, factors):
        g_c = g.astype(compute_dtype(g, m))
        m_factor, g_factor = factors(g_c.dtype)
        m_new = beta * m.astype(g_c.dtype) + (1 - beta) * g_c
        if nesterov:
            u = beta * m_new * m_factor + (1 - beta) * g_c * g_factor
        else:
            u = m_new * g_factor
        return u.astype(g.dtype), m_new.astype(m.dtype)

    def update(
        updates: Updates,
        state: ScaleByMuonMomentumState,
        params: Params | None = None,
        **extra,
    ) -> tuple[Updates, ScaleByMuonMomentumState]:
        del params
        check_same_tree(fn, "updates", updates, "state.mu", state.mu)
        count = safe_increment(state.count)
        t = count.astype(scalar_dtype(updates))

        def factors(dtype):
            if not debias:
                one = jnp.ones([], dtype)
                return one, one
            now = 1 / bias_correction(beta, t).astype(dtype)
            ahead = 1 / bias_correction(beta, t + 1).astype(dtype)
            return ahead, now

        mu_updates, mu = map_leaves(
            functools.partial(leaf, factors=functools.cache(factors)),
            2,
            updates,
            state.mu,
        )
        return mu_updates, ScaleByMuonMomentumState(count=count, mu=mu)

    return GradientTransformation(init, update)


@described
def orthogonalize(
    ns_coeffs: Sequence[Any] | str = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    eps: ArrayLike = 1e-8,
    *,
    weight_dimension_numbers: DimensionNumbers = None,
    layout: str = "in_out",
    preconditioning: str = "frobenius",
    clamp_norm: bool = False,
    adaptive: bool = False,
    ns_dtype: Any = None,
) -> GradientTransformation:
    """Replace each matrix by an approximate orthogonalisation (Newton-Schulz).

    Per matrix G (m rows, n columns, m <= n; a tall matrix, m > n, runs the
    same iteration on its transpose, so that the Gram matrix A is the
    smaller one, written as A = X^T X and X = a * X + X B)::

        X = G / (||G||_F + eps)        (clamp_norm=True: G / max(||G||_F, eps))
        repeat ns_steps times:
            A = X X^T
            B = b * A + c * A A
            X = a * X + B X
        u = X                           (adaptive=True: u = <G, X>_F * X)

    with (a, b, c) = `ns_coeffs`. The quintic's coefficients push every
    singular value of the normalised matrix into roughly [0.7, 1.2] in five
    steps, so `u` is close to U V^T for G = U S V^T: the direction of
    steepest descent under the spectral norm. The result does not depend on how large
    G is, only on its direction.

    Which axes form the matrix of a leaf is its `MuonDimensionNumbers`: the
    `reduction_axis` axes flattened into rows (in), the `output_axis` axes
    into columns (out); every other axis is a batch axis, with one matrix
    per index (stacked or scanned layers `(L, in, out)` are L matrices). A
    leaf without one (None) passes unchanged. By default every 2-D leaf is a
    matrix and every other leaf passes unchanged; `muon_dimension_numbers`
    writes the rule for convolution kernels and stacked layers.

    Sharding: under `jax.jit` with sharded params XLA's partitioner inserts
    the collectives itself, and the result equals the unsharded one (the
    state is placed like each param). The iteration is a chain of products
    of whole matrices, so a sharded matrix is not orthogonalised piece by
    piece: per step, `A = X X^T` contracts over the long side n, which with
    n sharded is an all-reduce of the small m x m Gram matrix (m <= n) and
    with m sharded needs X's rows from every device (an all-gather of the
    matrix, m*n elements); `A A` and `B X` then follow the same layout. On
    CPU meshes XLA gathers each sharded matrix, once per product. With
    explicit mesh axes the matrix is gathered once, before the iteration,
    and the result resharded like the leaf. The norm
    is one scalar all-reduce. Compute per matrix (m <= n) is about
    ns_steps * (4 m^2 n + 2 m^3) flops on every device that holds the
    gathered matrix.

    Args:
        ns_coeffs: The coefficients (a, b, c), or a table of n rows (one
            per step, which then sets the number of steps), or the name of a
            preset table ("standard", "dion"), finite numbers.
        ns_steps: Number of iterations, an int >= 1 (with a table: unused).
        eps: Added to the norm, in [0, inf).
        weight_dimension_numbers: A `MuonDimensionNumbers` for every leaf, a
            tree of them (or a prefix; None marks a leaf that is not a
            matrix), or a function of the updates returning such a tree;
            None for the default rule (2-D leaves only).
        layout: The default rule's matrix layout: "in_out" (flax, jax) or
            "out_in" (torch's weights); the iteration is the same in both,
            only `scale_by_shape` reads which side is "out".
        preconditioning: "frobenius" (divide by the Frobenius norm) or
            "spectral" (by the largest singular value, an SVD per matrix).
        clamp_norm: Divide by max(norm, eps) instead of norm + eps, as
            torch.optim.Muon does.
        adaptive: Scale each matrix's result by its Frobenius inner product
            with G (the dual norm of G, as optax's `adaptive`; computed per
            matrix, which for a stacked leaf is each layer's own).
        ns_dtype: Dtype the iteration runs in; None for the leaf's compute
            dtype (at least float32). torch.optim.Muon runs it in bfloat16.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Raises:
        ValueError: If a hyperparameter is outside its range, `ns_coeffs` is
            not three finite numbers or a table of them, or a string
            argument is not one of its choices; at update, if a leaf's
            dimension numbers do not fit its shape.
        TypeError: If a flag is not a bool or `ns_steps` not an int.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import orthogonalize
        >>> tx = orthogonalize()
        >>> g = jnp.array([[3.0, 0.0], [0.0, 0.1]])
        >>> u, _ = tx.update(g, tx.init(g))
        >>> jnp.round(jnp.diag(u), 2)  # both singular values near 1
        Array([0.7 , 1.13], dtype=float32)

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural
        networks", 2024, https://kellerjordan.github.io/posts/muon/.
        Bernstein and Newhouse, "Old Optimizer, New Norm: An Anthology",
        2024, arXiv:2409.20325.
    """
    fn = "orthogonalize"
    ns_steps = check_count(fn, "ns_steps", ns_steps, 1)
    rows = _ns_coeff_rows(fn, ns_coeffs, ns_steps)
    check_in_range(fn, "eps", eps, 0.0)
    _check_layout(fn, layout)
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(
            f"{fn}: preconditioning must be 'frobenius' or 'spectral', got "
            f"{preconditioning!r}"
        )
    check_flag(fn, "clamp_norm", clamp_norm)
    check_flag(fn, "adaptive", adaptive)
    ns_dtype = check_dtype(fn, "ns_dtype", ns_dtype)
    check_dims_argument(fn, weight_dimension_numbers)

    def leaf(g: jax.Array, dims: MuonDimensionNumbers | None) -> jax.Array:
        if dims is None:
            return g
        g, placed_back = _whole(g)
        work = ns_dtype or compute_dtype(g)
        x, back = _as_matrices(fn, g.astype(work), dims)
        # The iteration amplifies round-off in its input (by up to a^ns_steps
        # for small singular values). The barrier keeps XLA from fusing the
        # producer of `x` (momentum, transpose) into the norm and the first
        # product, which it does differently with and without a batch axis
        # (jax.vmap): so a batch of problems gives each problem's own numbers.
        x = jax.lax.optimization_barrier(x)
        y = _newton_schulz(x, rows, eps, clamp_norm, preconditioning)
        if adaptive:
            x_c = x.astype(compute_dtype(x))
            y_c = y.astype(x_c.dtype)
            dual = jnp.sum(x_c.conj() * y_c, axis=(1, 2), keepdims=True)
            y = dual * y_c
        return placed_back(back(y).astype(g.dtype))

    return _per_matrix(fn, leaf, weight_dimension_numbers, layout)


@described
def scale_by_shape(
    weight_dimension_numbers: DimensionNumbers = None,
    consistent_rms: ArrayLike | None = None,
    *,
    layout: str = "in_out",
    adjust_lr_fn: str | None = None,
) -> GradientTransformation:
    """Multiply each matrix by a factor of its shape, as Muon does.

    Per matrix, with fan_in its rows (the `reduction_axis` axes) and fan_out
    its columns (the `output_axis` axes)::

        u = sqrt(max(1, fan_out / fan_in)) * g           (consistent_rms=None)
        u = consistent_rms * sqrt(max(fan_in, fan_out)) * g   (otherwise)

    The first is Keller Jordan's width scaling (optax's default, torch's
    `adjust_lr_fn="original"`, whose weights are (out, in) so that its
    `rows / cols` is fan_out / fan_in); the second gives an orthogonalised
    update an RMS of `consistent_rms`, AdamW's typical 0.2 being torch's
    `adjust_lr_fn="match_rms_adamw"`. Leaves that are not matrices pass
    unchanged.

    Args:
        weight_dimension_numbers: As in `orthogonalize`: one
            `MuonDimensionNumbers` for all leaves, a tree of them (None for
            a leaf that is not a matrix), a function of the updates returning
            one, or None for the default rule (2-D leaves in `layout`).
        consistent_rms: Target RMS, in [0, inf), or None for width scaling.
        layout: The default rule's layout: "in_out" (flax) or "out_in"
            (torch), which says which axis of a 2-D leaf is fan_out.
        adjust_lr_fn: torch's name for the factor: "original" (width
            scaling) or "match_rms_adamw" (consistent_rms=0.2); None to
            follow `consistent_rms`.

    Returns:
        A `GradientTransformation` whose state is an `EmptyState`.

    Raises:
        ValueError: If `consistent_rms` is negative, `adjust_lr_fn` or
            `layout` is not one of its choices, or `adjust_lr_fn` is given
            together with `consistent_rms`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import scale_by_shape
        >>> tx = scale_by_shape()
        >>> u, _ = tx.update({"w": jnp.ones((2, 8))}, tx.init(None))
        >>> float(u["w"][0, 0])  # sqrt(8 / 2)
        2.0

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural
        networks", 2024, https://kellerjordan.github.io/posts/muon/.
        Liu et al., "Muon is Scalable for LLM Training", 2025,
        arXiv:2502.16982.
    """
    fn = "scale_by_shape"
    check_in_range(fn, "consistent_rms", consistent_rms, 0.0)
    _check_layout(fn, layout)
    if adjust_lr_fn not in _ADJUST_LR_FNS:
        raise ValueError(
            f"{fn}: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', "
            f"got {adjust_lr_fn!r}"
        )
    if adjust_lr_fn is not None and consistent_rms is not None:
        raise ValueError(
            f"{fn}: give adjust_lr_fn or consistent_rms, not both "
            f"(got {adjust_lr_fn!r} and {consistent_rms!r})"
        )
    if adjust_lr_fn == "match_rms_adamw":
        consistent_rms = 0.2
    check_dims_argument(fn, weight_dimension_numbers)

    def leaf(g: jax.Array, dims: MuonDimensionNumbers | None) -> jax.Array:
        if dims is None or g.size == 0:  # an empty matrix has nothing to scale
            return g
        fan_in, fan_out = _fans(fn, dims, g.shape)
        if consistent_rms is None:
            factor: Any = math.sqrt(max(1.0, fan_out / fan_in))
        else:
            factor = math.sqrt(max(fan_in, fan_out)) * consistent_rms
        return (g.astype(compute_dtype(g)) * factor).astype(g.dtype)

    return _per_matrix(fn, leaf, weight_dimension_numbers, layout)


# ----------------------------------------------------------------------------
# which leaves are matrices


def _excluded(path: tuple[Any, ...], patterns: Sequence[str]) -> bool:
    text = path_str(path).lower()
    parts = [text, *text.split("/")]
    return any(fnmatch.fnmatchcase(part, p.lower()) for p in patterns for part in parts)


def muon_dimension_numbers(
    params: Params,
    *,
    layout: str = "in_out",
    batch_axes: int = 0,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> Any:
    """The matrix of every leaf of a model, for Muon; None where there is none.

    The rule, per leaf with `ndim` axes and not excluded: the first
    `batch_axes` axes are batch axes (stacked or scanned layers, one matrix
    per index); of the remaining axes, with layout "in_out" (flax, jax) the
    last is the output axis and all the others, flattened, the reduction
    axes: a dense `(in, out)` kernel is itself, a convolution kernel in
    flax's HWIO layout is the matrix `(H*W*I, O)`, scanned layers
    `(L, in, out)` with `batch_axes=1` are L matrices. With layout "out_in"
    (torch's weights, `(O, I, H, W)` convolutions) the first remaining axis
    is the output axis and the others the reduction axes, as in Keller
    Jordan's `p.view(len(p), -1)`.

    A leaf gets None (AdamW's, in `muon`) when fewer than 2 axes remain
    after the batch axes, when it is not an array, or when its path matches
    one of `exclude`: token embeddings and output heads, which the Muon
    recipes train with AdamW. Patterns are globs matched, ignoring case,
    against the whole `/`-joined path and each of its parts.

    Args:
        params: The model's params (or updates: only shapes and paths are
            read).
        layout: "in_out" or "out_in".
        batch_axes: Number of leading batch axes, an int >= 0.
        exclude: Glob patterns of paths left to AdamW.

    Returns:
        A tree with the params' structure of `MuonDimensionNumbers` or None,
        for `orthogonalize`, `scale_by_shape` and
        `muon(muon_weight_dimension_numbers=...)`, which also take this
        function itself (with `functools.partial` for other arguments).

    Raises:
        ValueError: If `layout` is not one of the two or `batch_axes` is
            negative.
        TypeError: If `exclude` is a single string.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import muon_dimension_numbers, muon_mask
        >>> params = {
        ...     "embed": jnp.zeros((10, 4)),
        ...     "conv": jnp.zeros((3, 3, 4, 8)),
        ...     "dense": {"kernel": jnp.zeros((8, 2)), "bias": jnp.zeros(2)},
        ... }
        >>> muon_dimension_numbers(params)["conv"]
        MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
        >>> muon_mask(params)
        {'conv': True, 'dense': {'bias': False, 'kernel': True}, 'embed': False}
    """
    fn = "muon_dimension_numbers"
    _check_layout(fn, layout)
    batch_axes = check_count(fn, "batch_axes", batch_axes, 0)
    if isinstance(exclude, str):
        raise TypeError(f"{fn}: exclude must be a sequence of patterns, got a string")

    def rule(path: tuple[Any, ...], x: Any) -> MuonDimensionNumbers | None:
        ndim = getattr(x, "ndim", None)
        if ndim is None or ndim - batch_axes < 2 or _excluded(path, exclude):
            return None
        rest = tuple(range(batch_axes, ndim))
        if layout == "in_out":
            reduction, output = rest[:-1], rest[-1]
        else:
            reduction, output = rest[1:], rest[0]
        if len(reduction) == 1:
            reduction = reduction[0]
        return MuonDimensionNumbers(reduction_axis=reduction, output_axis=output)

    return jax.tree_util.tree_map_with_path(rule, params)


def muon_mask(
    params: Params,
    *,
    layout: str = "in_out",
    batch_axes: int = 0,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> Any:
    """Which leaves `muon_dimension_numbers` makes matrices: a tree of bools.

    True where Muon applies, False where AdamW does; for `masked`,
    `multi_transform` labels and logging. Arguments as in
    `muon_dimension_numbers`.

    Args:
        params: The model's params.
        layout: "in_out" or "out_in".
        batch_axes: Number of leading batch axes, an int >= 0.
        exclude: Glob patterns of paths left to AdamW.

    Returns:
        A tree of Python bools with the params' structure.

    Examples:
        >>> import jax.numpy as jnp
        >>> from gradtx import muon_mask
        >>> muon_mask({"lm_head": jnp.zeros((4, 9)), "w": jnp.zeros((4, 4))})
        {'lm_head': False, 'w': True}
    """
    dims = muon_dimension_numbers(
        params, layout=layout, batch_axes=batch_axes, exclude=exclude
    )
    return jax.tree.map(lambda d: d is not None, dims, is_leaf=_is_dims_leaf)
