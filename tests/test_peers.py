"""Step-for-step parity with optax and torch.optim where conventions coincide.

The argument mapping, spelled out in each case below, is tabulated in
docs/conventions.md. In short: torch's `betas=(b1, b2)` are `b1, b2`; torch
RMSprop's `alpha` is `decay` and its eps sits outside the root (the gradtx
default), optax's inside (`eps_in_sqrt=True`); torch `Adam(weight_decay=wd)`
is `adam_l2`, torch `AdamW` and optax `adamw` are `adamw`; torch `SGD` needs
`dampening=0` to match; optax `adadelta` needs its learning rate given.
Where the conventions differ, `test_conventions.py` pins the difference.
"""

import optax
import pytest
import torch
from peers import (
    gradtx_trajectory,
    max_relative_gap,
    optax_trajectory,
    torch_trajectory,
)

import gradtx

# Float32 against float32 with a different order of operations: differences
# are a few ulps per step. optax's Adam bias correction rounds b2 to float32
# before computing 1 - b2**t, a 1.3e-5 relative offset in v_hat, hence 2e-5.
RTOL_OPTAX = 2e-5
RTOL_TORCH = 1e-5


OPTAX_CASES = {
    "adam": (gradtx.adam(0.01), optax.adam(0.01)),
    "adam/betas_eps_root": (
        gradtx.adam(0.01, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
        optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
    ),
    "adam/nesterov": (
        gradtx.adam(0.01, nesterov=True),
        optax.adam(0.01, nesterov=True),
    ),
    "adamw": (
        gradtx.adamw(0.01, weight_decay=0.1),
        optax.adamw(0.01, weight_decay=0.1),
    ),
    "sgd": (gradtx.sgd(0.05), optax.sgd(0.05)),
    "sgd/momentum": (gradtx.sgd(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
    "sgd/nesterov": (
        gradtx.sgd(0.05, momentum=0.9, nesterov=True),
        optax.sgd(0.05, momentum=0.9, nesterov=True),
    ),
    "rmsprop/eps_in_sqrt": (
        gradtx.rmsprop(0.01, decay=0.9, eps=1e-6, eps_in_sqrt=True),
        optax.rmsprop(0.01, decay=0.9, eps=1e-6),
    ),
    "rmsprop/centered_momentum": (
        gradtx.rmsprop(0.01, eps=1e-6, eps_in_sqrt=True, centered=True, momentum=0.9),
        optax.rmsprop(0.01, eps=1e-6, centered=True, momentum=0.9),
    ),
    "adadelta": (gradtx.adadelta(1.0), optax.adadelta(1.0)),
    "adadelta/rho_eps": (
        gradtx.adadelta(0.5, rho=0.95, eps=1e-5),
        optax.adadelta(0.5, rho=0.95, eps=1e-5),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_step_for_step_with_optax(case):
    ours, theirs = OPTAX_CASES[case]
    gap = max_relative_gap(gradtx_trajectory(ours), optax_trajectory(theirs))
    assert gap < RTOL_OPTAX


TORCH_CASES = {
    "Adam": (gradtx.adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "Adam/betas": (
        gradtx.adam(0.01, b1=0.8, b2=0.99, eps=1e-6),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    ),
    "Adam/weight_decay_is_adam_l2": (
        gradtx.adam_l2(0.01, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    ),
    "AdamW": (
        gradtx.adamw(0.01, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ),
    "SGD": (gradtx.sgd(0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    "SGD/weight_decay_is_sgd_l2": (
        gradtx.sgd_l2(0.05, weight_decay=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
    ),
    "SGD/momentum": (
        gradtx.sgd(0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    ),
    "SGD/nesterov": (
        gradtx.sgd(0.05, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ),
    "RMSprop": (
        gradtx.rmsprop(0.01, decay=0.99),
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.99, eps=1e-8),
    ),
    "RMSprop/centered_momentum": (
        gradtx.rmsprop(0.01, decay=0.9, eps=1e-6, centered=True, momentum=0.9),
        lambda p: torch.optim.RMSprop(
            p, lr=0.01, alpha=0.9, eps=1e-6, centered=True, momentum=0.9
        ),
    ),
    "Adagrad": (gradtx.adagrad(0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    "Adagrad/initial": (
        gradtx.adagrad(0.1, initial_accumulator_value=0.5, eps=1e-6),
        lambda p: torch.optim.Adagrad(
            p, lr=0.1, initial_accumulator_value=0.5, eps=1e-6
        ),
    ),
    "Adadelta": (gradtx.adadelta(1.0), lambda p: torch.optim.Adadelta(p, lr=1.0)),
    "Adadelta/rho_eps": (
        gradtx.adadelta(0.5, rho=0.95, eps=1e-5),
        lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.95, eps=1e-5),
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_step_for_step_with_torch(case):
    ours, make_theirs = TORCH_CASES[case]
    gap = max_relative_gap(gradtx_trajectory(ours), torch_trajectory(make_theirs))
    assert gap < RTOL_TORCH
