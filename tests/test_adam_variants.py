"""Adam's variants (gradtx/adam_variants.py): AMSGrad, Adamax, RAdam, NAdam.

Each link and optimizer is held to a float64 NumPy reference written below
from the docstring equations, to optax step for step where optax has it, and
to torch.optim step for step through the documented torch-form argument:

- AMSGrad: optax takes the maximum over the bias-corrected second moment,
  torch (`Adam(amsgrad=True)`) over the raw one and corrects the maximum:
  `max_before_correction=True`.
- Adamax: optax and torch agree (eps inside the maximum); no argument.
- RAdam: torch adds eps to sqrt(v) before dividing by sqrt(1 - b2**t):
  `eps_before_correction=True`. torch compares rho_t > 5, optax rho_t >= 5;
  they differ only where rho_t is exactly 5, which no step up to t = 5 can
  be (rho_t < t for t >= 2), so both first rectify at t = 6 for b2 near 1.
- NAdam: optax's is Adam with `nesterov=True`; torch's has the momentum
  schedule mu_t: `nadam(..., momentum_decay=0.004)`.

torch's `weight_decay` on Adamax, RAdam and NAdam is coupled L2
(`add_decayed_weights` first in the chain); RAdam's and NAdam's
`decoupled_weight_decay=True` is `add_decayed_weights` before the learning
rate. Measured errors and gaps are printed (run with -s to see them).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import references as R
import torch
from peers import (
    gradtx_trajectory,
    max_relative_gap,
    optax_trajectory,
    torch_trajectory,
)

import gradtx

RTOL = 1e-4  # float32 against float64 over R.STEPS steps
# optax rounds b1 and b2 to float32 before 1 - b**t (see test_peers.py).
RTOL_OPTAX = 2e-5
RTOL_TORCH = 1e-5
LR = 0.01


# ----------------------------------------------------------------------------
# float64 references, one line per equation of the docstrings


def zeros3(p):
    return (np.zeros_like(p), np.zeros_like(p), np.zeros_like(p))


def ref_amsgrad(
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    bias_correction_mu=True,
    bias_correction_nu=True,
    max_before_correction=False,
):
    def step(g, s, p, t):
        m, v, v_max = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        c1 = 1 - b1**t if bias_correction_mu else 1.0
        c2 = 1 - b2**t if bias_correction_nu else 1.0
        m_hat = m / c1
        if max_before_correction:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / c2
        else:
            v_max = np.maximum(v_max, v / c2)
            v_hat = v_max
        return m_hat / (np.sqrt(v_hat + eps_root) + eps), (m, v, v_max)

    return R.per_leaf(zeros3, step)


def ref_adamax(b1=0.9, b2=0.999, eps=1e-8):
    def step(g, s, p, t):
        m, n = s
        m = b1 * m + (1 - b1) * g
        n = np.maximum(b2 * n, np.abs(g) + eps)
        return m / ((1 - b1**t) * n), (m, n)

    return R.per_leaf(lambda p: (np.zeros_like(p), np.zeros_like(p)), step)


def ref_rho(b2, t):
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf - 2 * t * b2**t / (1 - b2**t), rho_inf


def ref_radam(
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    threshold=5.0,
    nesterov=False,
    eps_before_correction=False,
):
    def step(g, s, p, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        rho, rho_inf = ref_rho(b2, t)
        if rho < threshold:
            return m_hat, (m, v)
        r = math.sqrt(
            (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
        )
        e = eps / math.sqrt(1 - b2**t) if eps_before_correction else eps
        return r * m_hat / (np.sqrt(v_hat + eps_root) + e), (m, v)

    return R.per_leaf(lambda p: (np.zeros_like(p), np.zeros_like(p)), step)


def ref_nadam(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, momentum_decay=0.004):
    def mu(t):
        return b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))

    def step(g, s, p, t):
        m, v, product = s
        product = product * mu(t)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = mu(t + 1) * m / (1 - product * mu(t + 1)) + (1 - mu(t)) * g / (
            1 - product
        )
        v_hat = v / (1 - b2**t)
        return m_hat / (np.sqrt(v_hat + eps_root) + eps), (m, v, product)

    return R.per_leaf(lambda p: (np.zeros_like(p), np.zeros_like(p), 1.0), step)


def ref_optimizer(link, lr=LR, weight_decay=None):
    """link -> [decay] -> lr, the chain of every decoupled optimizer here."""
    decay = [] if weight_decay is None else [R.add_decayed_weights(weight_decay)]
    return R.chain(link, *decay, R.scale_by_learning_rate(lr))


EQUATION_CASES = {
    "amsgrad": (gradtx.amsgrad(LR), ref_optimizer(ref_amsgrad())),
    "scale_by_amsgrad/max_before_correction": (
        gradtx.scale_by_amsgrad(b2=0.99, eps_root=1e-8, max_before_correction=True),
        ref_amsgrad(b2=0.99, eps_root=1e-8, max_before_correction=True),
    ),
    "scale_by_amsgrad/no_bias_correction": (
        gradtx.scale_by_amsgrad(
            b1=0.8, bias_correction_mu=False, bias_correction_nu=False
        ),
        ref_amsgrad(b1=0.8, bias_correction_mu=False, bias_correction_nu=False),
    ),
    "adamax": (gradtx.adamax(LR), ref_optimizer(ref_adamax())),
    "scale_by_adamax/b2_eps": (
        gradtx.scale_by_adamax(b1=0.8, b2=0.9, eps=1e-3),
        ref_adamax(b1=0.8, b2=0.9, eps=1e-3),
    ),
    "adamaxw": (
        gradtx.adamaxw(LR, weight_decay=0.1),
        ref_optimizer(ref_adamax(), weight_decay=0.1),
    ),
    "radam": (gradtx.radam(LR), ref_optimizer(ref_radam())),
    # b2 = 0.9999: rho_t is where float32 cancellation would hurt most
    "scale_by_radam/b2_9999_eps_before_correction": (
        gradtx.scale_by_radam(b2=0.9999, eps=1e-3, eps_before_correction=True),
        ref_radam(b2=0.9999, eps=1e-3, eps_before_correction=True),
    ),
    "scale_by_radam/nesterov_threshold": (
        gradtx.scale_by_radam(b2=0.99, eps_root=1e-8, threshold=8.0, nesterov=True),
        ref_radam(b2=0.99, eps_root=1e-8, threshold=8.0, nesterov=True),
    ),
    "nadam": (gradtx.nadam(LR), ref_optimizer(R.adam(nesterov=True))),
    "nadam/momentum_decay": (
        gradtx.nadam(LR, momentum_decay=0.004),
        ref_optimizer(ref_nadam()),
    ),
    # Its worst step (about 4e-5) is one where the scalar leaf's update
    # nearly cancels to 3.6e-4: an absolute error of 1.6e-8, round-off.
    "scale_by_nadam/psi": (
        gradtx.scale_by_nadam(b1=0.8, b2=0.99, eps_root=1e-8, momentum_decay=0.04),
        ref_nadam(b1=0.8, b2=0.99, eps_root=1e-8, momentum_decay=0.04),
    ),
    "nadamw": (
        gradtx.nadamw(LR, weight_decay=0.1),
        ref_optimizer(R.adam(nesterov=True), weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_matches_float64_equation(case):
    tx, ref = EQUATION_CASES[case]
    got, want = R.run_side_by_side(tx, ref, steps=R.STEPS)
    error = R.max_relative_error(got, want)
    print(f"\n{case}: max relative error against float64 {error:.2e}")
    assert error < RTOL


# ----------------------------------------------------------------------------
# step for step with optax and torch.optim


def chain_lr(*links, lr=LR):
    return gradtx.chain(*links, gradtx.scale_by_learning_rate(lr))


def torch_opt(name, **kwargs):
    return lambda p: getattr(torch.optim, name)(p, lr=LR, **kwargs)


SAME, DIFFERS = "same", "differs"

# case -> (gradtx optimizer, optax optimizer or None, (torch optimizer,
# SAME or DIFFERS) or None). One gradtx trajectory is compared to each peer.
# DIFFERS: the default is optax's form, and without the torch-form argument
# the trajectory leaves torch's by far more than round-off.
PEER_CASES = {
    "amsgrad": (
        gradtx.amsgrad(LR),
        optax.amsgrad(LR),
        (torch_opt("Adam", amsgrad=True), DIFFERS),
    ),
    "amsgrad/no_bias_correction": (
        gradtx.amsgrad(LR, 0.9, 0.999, 1e-8, 0.0, None, False, False),
        optax.amsgrad(LR, 0.9, 0.999, 1e-8, 0.0, None, False, False),
        None,
    ),
    "amsgrad/max_before_correction": (
        gradtx.amsgrad(LR, max_before_correction=True),
        None,
        (torch_opt("Adam", amsgrad=True), SAME),
    ),
    "amsgrad/max_before_correction/coupled_decay": (
        chain_lr(
            gradtx.add_decayed_weights(0.1),
            gradtx.scale_by_amsgrad(0.8, 0.99, 1e-6, max_before_correction=True),
        ),
        None,
        (
            torch_opt(
                "Adam", betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True
            ),
            SAME,
        ),
    ),
    "adamax": (gradtx.adamax(LR), optax.adamax(LR), (torch_opt("Adamax"), SAME)),
    "adamaxw": (
        gradtx.adamaxw(LR, 0.9, 0.999, 1e-8, 0.1),
        optax.adamaxw(LR, 0.9, 0.999, 1e-8, 0.1),
        None,
    ),
    "adamax/coupled_decay": (
        chain_lr(
            gradtx.add_decayed_weights(0.1), gradtx.scale_by_adamax(0.8, 0.9, 1e-3)
        ),
        None,
        (torch_opt("Adamax", betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1), SAME),
    ),
    "radam/b2_9_nesterov": (
        gradtx.radam(LR, b2=0.9, nesterov=True),
        optax.radam(LR, b2=0.9, nesterov=True),
        None,
    ),
    "radam/eps_after_correction": (
        gradtx.radam(LR, eps=1e-2),
        None,
        (torch_opt("RAdam", eps=1e-2), DIFFERS),
    ),
    "radam/eps_before_correction": (
        gradtx.radam(LR, b1=0.8, b2=0.9999, eps=1e-2, eps_before_correction=True),
        None,
        (torch_opt("RAdam", betas=(0.8, 0.9999), eps=1e-2), SAME),
    ),
    "radam/eps_before_correction/coupled_decay": (
        chain_lr(
            gradtx.add_decayed_weights(0.1),
            gradtx.scale_by_radam(eps_before_correction=True),
        ),
        None,
        (torch_opt("RAdam", weight_decay=0.1), SAME),
    ),
    "radam/eps_before_correction/decoupled_decay": (
        chain_lr(
            gradtx.scale_by_radam(eps_before_correction=True),
            gradtx.add_decayed_weights(0.1),
        ),
        None,
        (torch_opt("RAdam", weight_decay=0.1, decoupled_weight_decay=True), SAME),
    ),
    "nadam": (gradtx.nadam(LR), optax.nadam(LR), (torch_opt("NAdam"), DIFFERS)),
    "nadam/momentum_decay": (
        gradtx.nadam(LR, momentum_decay=0.004),
        None,
        (torch_opt("NAdam"), SAME),
    ),
    "nadam/momentum_decay/coupled_decay": (
        chain_lr(
            gradtx.add_decayed_weights(0.1),
            gradtx.scale_by_nadam(0.8, 0.99, 1e-6, momentum_decay=0.04),
        ),
        None,
        (
            torch_opt(
                "NAdam",
                betas=(0.8, 0.99),
                eps=1e-6,
                momentum_decay=0.04,
                weight_decay=0.1,
            ),
            SAME,
        ),
    ),
    "nadamw": (
        gradtx.nadamw(LR, 0.9, 0.999, 1e-8, 0.0, None, 0.1),
        optax.nadamw(LR, 0.9, 0.999, 1e-8, 0.0, None, 0.1),
        None,
    ),
    "nadamw/momentum_decay": (
        gradtx.nadamw(LR, weight_decay=0.1, momentum_decay=0.004),
        None,
        (torch_opt("NAdam", weight_decay=0.1, decoupled_weight_decay=True), SAME),
    ),
}


@pytest.mark.parametrize("case", sorted(PEER_CASES))
def test_step_for_step_with_peers(case):
    ours, theirs, torch_case = PEER_CASES[case]
    trajectory = gradtx_trajectory(ours)
    if theirs is not None:
        gap = max_relative_gap(trajectory, optax_trajectory(theirs))
        print(f"\n{case}: max relative gap to optax {gap:.2e}")
        assert gap < RTOL_OPTAX
    if torch_case is not None:
        make_theirs, expected = torch_case
        gap = max_relative_gap(trajectory, torch_trajectory(make_theirs))
        print(f"\n{case}: max relative gap to torch {gap:.2e} ({expected})")
        if expected == SAME:
            assert gap < RTOL_TORCH
        else:
            assert gap > 1e-3


def test_radam_with_optax_defaults_differs_only_by_optax_rho_rounding():
    # optax computes rho_t = rho_inf - 2 t b2**t / (1 - b2**t) in float32: two
    # numbers near 1999 subtracted, off by up to 0.04 at the first rectified
    # steps (b2 = 0.999), where r_t is most sensitive to rho_t. gradtx
    # evaluates rho_t to float32 round-off, so the trajectories part by more
    # than round-off; with b2 = 0.9 (above) optax's rho_t is accurate and the
    # gap is round-off. torch, in double precision, agrees with gradtx.
    trajectory = gradtx_trajectory(gradtx.radam(LR))
    gap = max_relative_gap(trajectory, optax_trajectory(optax.radam(LR)))
    print(f"\nradam (b2=0.999): max relative gap to optax {gap:.2e}")
    assert gap < 2e-4
    gap = max_relative_gap(trajectory, torch_trajectory(torch_opt("RAdam")))
    print(f"\nradam (b2=0.999): max relative gap to torch {gap:.2e}")
    assert gap < RTOL_TORCH  # eps = 1e-8 is too small for its placement to show


def test_optax_radam_rectifies_too_early_with_b2_9999():
    # With b2 = 0.9999, rho_2 = 1.9999, but optax's float32 rho_2 is about
    # 6.3: it takes the rectified step at t = 2 instead of t = 6. gradtx and
    # torch return the bias-corrected momentum until rho_t reaches 5.
    g1, g2 = jnp.array([1.0, -2.0, 0.5]), jnp.array([-0.5, 1.0, 3.0])
    params = jnp.zeros(3)

    def second_update(tx):
        state = tx.init(params)
        _, state = tx.update(g1, state, params)
        return tx.update(g2, state, params)[0]

    m_hat = (0.9 * 0.1 * np.asarray(g1) + 0.1 * np.asarray(g2)) / (1 - 0.9**2)
    ours, theirs = jax.jit(
        lambda: [
            second_update(gradtx.scale_by_radam(b2=0.9999)),
            second_update(optax.scale_by_radam(b2=0.9999)),
        ]
    )()
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    np.testing.assert_allclose(ours, m_hat, rtol=1e-6)
    assert np.max(np.abs(theirs - m_hat) / np.abs(m_hat)) > 0.1


def test_radam_first_rectified_step_is_the_sixth_whatever_b2_near_one():
    # rho_1 = 1 and rho_t < t for t >= 2, so with threshold 5 neither
    # rho_t >= 5 (optax, gradtx) nor rho_t > 5 (torch) holds before t = 6:
    # the two comparisons agree. The first five updates are m_hat.
    g = jnp.array([1.0, -2.0, 0.5])
    b2s = (0.99, 0.999, 0.9999, 0.99999)

    def six_updates(b2):
        tx = gradtx.scale_by_radam(b1=0.0, b2=b2)
        state, out = tx.init(jnp.zeros(3)), []
        for _ in range(6):
            u, state = tx.update(g, state)
            out.append(u)
        return out

    runs = jax.jit(lambda: [six_updates(b2) for b2 in b2s])()
    for b2, updates in zip(b2s, runs, strict=True):
        for u in updates[:5]:
            np.testing.assert_allclose(u, g, rtol=1e-6)
        u = updates[5]
        rho, rho_inf = ref_rho(b2, 6)
        r = math.sqrt(
            (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
        )
        np.testing.assert_allclose(u, r * np.sign(g), rtol=1e-5)


# ----------------------------------------------------------------------------
# construction refuses out-of-range hyperparameters

BAD = [
    (gradtx.scale_by_amsgrad, {"b1": 1.0}, "b1"),
    (gradtx.scale_by_amsgrad, {"b2": -0.1}, "b2"),
    (gradtx.scale_by_amsgrad, {"eps": -1e-8}, "eps"),
    (gradtx.scale_by_amsgrad, {"eps_root": float("nan")}, "eps_root"),
    (gradtx.scale_by_amsgrad, {"mu_dtype": jnp.int32}, "mu_dtype"),
    (gradtx.scale_by_adamax, {"b1": -0.5}, "b1"),
    (gradtx.scale_by_adamax, {"b2": 1.5}, "b2"),
    (gradtx.scale_by_adamax, {"eps": -1.0}, "eps"),
    (gradtx.scale_by_radam, {"b2": 1.0}, "b2"),
    (gradtx.scale_by_radam, {"threshold": 3.0}, "threshold"),
    (gradtx.scale_by_radam, {"eps": float("inf")}, "eps"),
    (gradtx.scale_by_nadam, {"b1": 1.0}, "b1"),
    (gradtx.scale_by_nadam, {"momentum_decay": -0.004}, "momentum_decay"),
    (gradtx.scale_by_nadam, {"eps_root": -1.0}, "eps_root"),
    (gradtx.amsgrad, {"learning_rate": -0.1}, "learning_rate"),
    (gradtx.adamax, {"learning_rate": 0.1, "b2": 1.0}, "b2"),
    (gradtx.adamaxw, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
    (gradtx.radam, {"learning_rate": 0.1, "threshold": 1.0}, "threshold"),
    (gradtx.nadam, {"learning_rate": 0.1, "momentum_decay": -1.0}, "momentum_decay"),
    (gradtx.nadam, {"learning_rate": 0.1, "b1": 2.0}, "b1"),
    (gradtx.nadamw, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
    (gradtx.nadamw, {"learning_rate": 0.1, "momentum_decay": -1.0}, "momentum_decay"),
]


@pytest.mark.parametrize(("factory", "kwargs", "name"), BAD)
def test_construction_refuses_out_of_range(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


@pytest.mark.parametrize(
    ("factory", "flag"),
    [
        (gradtx.scale_by_amsgrad, "max_before_correction"),
        (gradtx.scale_by_amsgrad, "bias_correction_nu"),
        (gradtx.scale_by_radam, "eps_before_correction"),
        (gradtx.scale_by_radam, "nesterov"),
    ],
)
def test_flags_must_be_bools(factory, flag):
    with pytest.raises(TypeError, match=flag):
        factory(**{flag: 1})


def test_positional_calls_mean_what_they_mean_in_optax():
    # optax.amsgrad's 7th and 8th positional arguments are the bias flags;
    # optax.adamaxw's 5th is weight_decay; optax.nadamw's 7th is weight_decay.
    tx = gradtx.amsgrad(LR, 0.9, 0.999, 1e-8, 0.0, None, False, True)
    assert tx.children[0].hyperparams["bias_correction_mu"] is False
    assert gradtx.adamaxw(LR, 0.9, 0.999, 1e-8, 0.3).children[1].hyperparams[
        "weight_decay"
    ] == pytest.approx(0.3)
    nadamw = gradtx.nadamw(LR, 0.9, 0.999, 1e-8, 0.0, None, 0.3)
    assert nadamw.children[1].hyperparams["weight_decay"] == pytest.approx(0.3)
    assert gradtx.radam(LR, 0.9, 0.999, 1e-8, 0.0, 6.0).children[0].hyperparams[
        "threshold"
    ] == pytest.approx(6.0)
    with pytest.raises(TypeError):
        gradtx.adamax(LR, 0.9, 0.999, 1e-8, jnp.float32)  # mu_dtype: keyword-only
    with pytest.raises(TypeError):
        gradtx.radam(LR, 0.9, 0.999, 1e-8, 0.0, 5.0, True)  # nesterov: keyword


# ----------------------------------------------------------------------------
# dtypes

LINKS = {
    "scale_by_amsgrad": gradtx.scale_by_amsgrad,
    "scale_by_adamax": gradtx.scale_by_adamax,
    "scale_by_radam": gradtx.scale_by_radam,
    "scale_by_nadam": gradtx.scale_by_nadam,
}


def test_mu_dtype_sets_the_first_moment_only():
    params = {"w": jnp.zeros((2, 3)), "s": jnp.zeros(())}
    txs = {name: link(mu_dtype=jnp.bfloat16) for name, link in LINKS.items()}

    def one_step(tx):
        state = tx.init(params)
        return state, *tx.update(jax.tree.map(jnp.ones_like, params), state)

    results = jax.jit(lambda: {name: one_step(tx) for name, tx in txs.items()})()
    for name, (state, updates, new_state) in results.items():
        mu_dtypes = {x.dtype for x in jax.tree.leaves(state.mu)}
        assert mu_dtypes == {jnp.dtype(jnp.bfloat16)}, name
        assert {x.dtype for x in jax.tree.leaves(state.nu)} == {jnp.dtype("float32")}
        assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
            lambda x: x.dtype, state
        )
        assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype("float32")}


def test_nadam_keeps_the_momentum_product_in_float32():
    tx = gradtx.scale_by_nadam()
    params = jnp.zeros(3, jnp.float16)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for _ in range(3):
        u, state = update(jnp.full(3, 0.5, jnp.float16), state)
    assert state.mu_product.dtype == jnp.float32
    assert state.mu.dtype == state.nu.dtype == u.dtype == jnp.float16
    want = np.prod([0.9 * (1 - 0.5 * 0.96 ** (t * 0.004)) for t in (1, 2, 3)])
    np.testing.assert_allclose(state.mu_product, want, rtol=1e-6)


# ----------------------------------------------------------------------------
# inject_hyperparams and vmap

OPTIMIZERS = {
    "amsgrad": (gradtx.amsgrad, {"b1": 0.8, "max_before_correction": True}),
    "adamax": (gradtx.adamax, {"b2": 0.99}),
    "adamaxw": (gradtx.adamaxw, {"weight_decay": 0.1}),
    "radam": (gradtx.radam, {"b2": 0.99, "eps_before_correction": True}),
    "nadam": (gradtx.nadam, {"momentum_decay": 0.004}),
    "nadamw": (gradtx.nadamw, {"weight_decay": 0.1}),
}


def small_params(dtype=jnp.float32):
    return {
        "w": jnp.linspace(-1.0, 2.0, 6, dtype=jnp.float32).reshape(2, 3).astype(dtype),
        "s": jnp.array(-0.5, dtype),
    }


def grads_at(params, k):
    return jax.tree.map(lambda p: jnp.sin(p.astype(jnp.float32) * (k + 1.5)), params)


def trajectory(tx, params, steps, state=None):
    """Params, state and every step's updates after `steps` steps (traceable)."""

    def step(carry, k):
        params, state = carry
        grads = jax.tree.map(
            lambda g, p: g.astype(p.dtype), grads_at(params, k), params
        )
        updates, state = tx.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), updates

    state = tx.init(params) if state is None else state
    (params, state), updates = jax.lax.scan(step, (params, state), jnp.arange(steps))
    return params, state, updates


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_inject_hyperparams(name):
    factory, kwargs = OPTIMIZERS[name]
    injected = gradtx.inject_hyperparams(factory)(learning_rate=0.05, **kwargs)

    @jax.jit
    def runs():  # 20 steps: past RAdam's first rectified step (t = 6)
        low = trajectory(injected, small_params(jnp.bfloat16), 20)
        got = trajectory(injected, small_params(), 20)
        want = trajectory(factory(0.05, **kwargs), small_params(), 20)
        return low, got[0], want[0]

    (low, low_state, low_updates), got, want = runs()
    for u in jax.tree.leaves(low_updates):
        assert u.dtype == jnp.bfloat16
        assert bool(jnp.all(jnp.isfinite(u)))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(low))
    assert low_state.hyperparams, "no numeric hyperparameter was injected"
    for value in low_state.hyperparams.values():
        assert value.dtype == jnp.float32
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "hyperparam", "values"),
    [("radam", "b2", (0.99, 0.999, 0.9999)), ("nadam", "b1", (0.8, 0.9, 0.95))],
)
def test_vmap_over_a_hyperparameter_equals_separate_runs(name, hyperparam, values):
    factory, kwargs = OPTIMIZERS[name]
    base = {"learning_rate": 0.05, **kwargs, hyperparam: values[0]}
    opt = gradtx.inject_hyperparams(factory)(**base)
    params = small_params()
    assert hyperparam in opt.init(params).hyperparams

    def run(value):
        state = opt.init(params)
        hyperparams = dict(state.hyperparams, **{hyperparam: value})
        return trajectory(opt, params, 10, state._replace(hyperparams=hyperparams))[0]

    stored = jnp.asarray(values, jnp.float32)  # what the state holds
    batched = jax.jit(jax.vmap(run))(stored)
    separate = [factory(**dict(base, **{hyperparam: float(v)})) for v in stored]
    alone = jax.jit(lambda: [trajectory(tx, params, 10)[0] for tx in separate])()
    for i, want in enumerate(alone):
        for got, w in zip(jax.tree.leaves(batched), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got[i], w, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# inside the wrappers


def test_inside_masked_the_unselected_leaf_passes_through():
    tx = gradtx.masked(gradtx.radam(LR), {"w": True, "s": False})
    params = small_params()
    grads = grads_at(params, 0)
    alone_tx = gradtx.radam(LR)
    updates, alone = jax.jit(
        lambda: [t.update(grads, t.init(params), params)[0] for t in (tx, alone_tx)]
    )()
    np.testing.assert_array_equal(updates["s"], grads["s"])
    np.testing.assert_allclose(updates["w"], alone["w"], rtol=1e-6)


def test_inside_multi_transform_each_group_gets_its_optimizer():
    adamax, nadam = gradtx.adamax(LR), gradtx.nadam(LR, momentum_decay=0.004)
    tx = gradtx.multi_transform({"a": adamax, "n": nadam}, {"w": "a", "s": "n"})
    got, by_adamax, by_nadam = jax.jit(
        lambda: [trajectory(t, small_params(), 5)[0] for t in (tx, adamax, nadam)]
    )()
    np.testing.assert_allclose(got["w"], by_adamax["w"], rtol=1e-6)
    np.testing.assert_allclose(got["s"], by_nadam["s"], rtol=1e-6)


def test_inside_apply_if_finite_a_nan_step_is_skipped():
    inner = gradtx.amsgrad(LR)
    tx = gradtx.apply_if_finite(inner, max_consecutive_errors=3)
    params = small_params()
    g1, g2 = grads_at(params, 0), grads_at(params, 1)
    bad = jax.tree.map(lambda g: g.at[()].set(jnp.nan) if g.ndim == 0 else g, g1)

    def run():
        state = tx.init(params)
        _, state = tx.update(g1, state, params)
        skipped, state = tx.update(bad, state, params)
        updates, state = tx.update(g2, state, params)
        inner_state = inner.init(params)
        _, inner_state = inner.update(g1, inner_state, params)
        want, _ = inner.update(g2, inner_state, params)
        return skipped, updates, state, want

    skipped, updates, state, want = jax.jit(run)()
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(skipped))
    for g, w in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    assert int(state.notfinite_total) == 1


def test_inside_accumulate_gradients_two_micro_steps_are_one_mean_step():
    inner = gradtx.nadam(LR, momentum_decay=0.004)
    tx = gradtx.accumulate_gradients(inner, every_k=2)
    params = small_params()
    g1, g2 = grads_at(params, 0), grads_at(params, 1)

    def run():
        state = tx.init(params)
        first, state = tx.update(g1, state, params)
        second, state = tx.update(g2, state, params)
        mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
        return first, second, inner.update(mean, inner.init(params), params)[0]

    first, second, want = jax.jit(run)()
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(first))
    for g, w in zip(jax.tree.leaves(second), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)


# ----------------------------------------------------------------------------
# describe


def test_describe_names_links_and_hyperparameters():
    text = gradtx.describe(gradtx.nadamw(1e-3, weight_decay=0.01, momentum_decay=4e-3))
    assert "scale_by_nadam(" in text and "momentum_decay=0.004" in text
    assert "add_decayed_weights(weight_decay=0.01" in text
    assert "scale_by_learning_rate(learning_rate=0.001)" in text
    text = gradtx.describe(gradtx.radam(1e-3, eps_before_correction=True))
    assert "scale_by_radam(" in text and "eps_before_correction=True" in text
    assert "threshold=5.0" in text
    text = gradtx.describe(gradtx.amsgrad(1e-3, max_before_correction=True))
    assert "scale_by_amsgrad(" in text and "max_before_correction=True" in text
    assert "scale_by_adamax(b1=0.9, b2=0.999, eps=1e-08" in gradtx.describe(
        gradtx.adamaxw(1e-3)
    )
