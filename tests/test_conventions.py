"""Each difference listed in docs/conventions.md, pinned by a test.

If a peer changes its convention, the matching test fails and the page needs
updating.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from peers import gradtx_trajectory, max_relative_gap, torch_trajectory

import gradtx


def first_update(tx, g, params=None):
    params = jnp.zeros_like(g) if params is None else params
    updates, _ = tx.update(g, tx.init(params), params)
    return np.asarray(updates, np.float64)


def torch_first_update(make_opt, g):
    p = torch.zeros(len(g), requires_grad=True)
    opt = make_opt([p])
    p.grad = torch.tensor(np.asarray(g), dtype=torch.float32)
    opt.step()
    return p.detach().numpy().astype(np.float64)


G = jnp.array([1e-4, -0.02, 3.0])


def test_rmsprop_eps_placement():
    lr, eps = 1.0, 1e-8
    ours = first_update(gradtx.rmsprop(lr), G)
    np.testing.assert_allclose(ours, -G / (np.sqrt(0.1 * G**2) + eps), rtol=1e-6)
    theirs = first_update(optax.rmsprop(lr), G)  # eps inside the root
    np.testing.assert_allclose(theirs, -G / np.sqrt(0.1 * G**2 + eps), rtol=1e-6)
    assert abs(ours[0] - theirs[0]) > 0.5  # a small gradient sees the difference
    np.testing.assert_allclose(
        first_update(gradtx.rmsprop(lr, eps_in_sqrt=True), G), theirs, rtol=1e-6
    )


def test_rmsprop_default_decay():
    assert gradtx.rmsprop(0.1).children[0].hyperparams["decay"] == 0.9
    assert torch.optim.RMSprop([torch.zeros(1)]).defaults["alpha"] == 0.99


def test_adagrad_defaults_follow_torch_not_optax():
    lr = 0.1
    ours = first_update(gradtx.adagrad(lr), G)
    np.testing.assert_allclose(
        ours, torch_first_update(lambda p: torch.optim.Adagrad(p, lr=lr), G), rtol=1e-6
    )
    np.testing.assert_allclose(ours, -lr * G / (np.abs(G) + 1e-10), rtol=1e-6)
    theirs = first_update(optax.adagrad(lr), G)  # r starts at 0.1, eps under the root
    np.testing.assert_allclose(theirs, -lr * G / np.sqrt(0.1 + G**2 + 1e-7), rtol=1e-5)
    same_start = gradtx.adagrad(lr, initial_accumulator_value=0.1, eps=0.0)
    np.testing.assert_allclose(
        first_update(same_start, G), -lr * G / np.sqrt(0.1 + G**2), rtol=1e-6
    )


def test_torch_sgd_skips_dampening_on_the_first_step():
    lr, momentum, dampening = 0.1, 0.9, 0.5
    ours = first_update(gradtx.sgd(lr, momentum=momentum, dampening=dampening), G)
    theirs = torch_first_update(
        lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, dampening=dampening), G
    )
    np.testing.assert_allclose(ours, -lr * (1 - dampening) * G, rtol=1e-6)
    np.testing.assert_allclose(theirs, -lr * G, rtol=1e-6)  # buffer starts at g itself


def test_optax_adadelta_without_learning_rate_ascends():
    ours = first_update(gradtx.adadelta(), G)
    theirs = first_update(optax.adadelta(), G)  # learning_rate=None: no sign flip
    assert np.all(np.sign(ours) == -np.sign(G))
    assert np.all(np.sign(theirs) == np.sign(G))
    np.testing.assert_allclose(ours, -theirs, rtol=1e-6)
    np.testing.assert_allclose(first_update(optax.adadelta(1.0), G), ours, rtol=1e-6)


def test_optax_adam_bias_correction_rounds_b2_first():
    g = jnp.array([0.5, -2.0])
    ours = first_update(gradtx.scale_by_adam(), g)
    theirs = first_update(optax.scale_by_adam(), g)
    np.testing.assert_array_equal(ours, [1.0, -1.0])  # m_hat / sqrt(v_hat) = sign(g)
    assert 5e-6 < abs(theirs[0] - 1.0) < 1e-5  # 1 - f32(0.999) != f64(1 - 0.999)


def test_nesterov_adam_is_optax_form_not_torch_nadam():
    ours = gradtx_trajectory(gradtx.adam(0.01, nesterov=True))
    nadam = torch_trajectory(lambda p: torch.optim.NAdam(p, lr=0.01))
    assert max_relative_gap(ours, nadam) > 1e-3  # torch decays the momentum


def test_weight_decay_defaults():
    assert gradtx.adamw(1e-3).children[1].hyperparams["weight_decay"] == 1e-4
    assert torch.optim.AdamW([torch.zeros(1)]).defaults["weight_decay"] == 1e-2
    assert torch.optim.Adam([torch.zeros(1)]).defaults["weight_decay"] == 0


def test_torch_adam_weight_decay_is_coupled_l2():
    ours = gradtx_trajectory(gradtx.adam_l2(0.01, weight_decay=0.1))
    coupled = torch_trajectory(lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1))
    assert max_relative_gap(ours, coupled) < 1e-5
    decoupled = gradtx_trajectory(gradtx.adamw(0.01, weight_decay=0.1))
    assert max_relative_gap(decoupled, coupled) > 1e-3


def test_torch_adagrad_lr_decay_is_a_schedule():
    lr, lr_decay = 0.1, 0.05
    ours = gradtx_trajectory(gradtx.adagrad(lambda t: lr / (1 + t * lr_decay)))
    theirs = torch_trajectory(
        lambda p: torch.optim.Adagrad(p, lr=lr, lr_decay=lr_decay)
    )
    assert max_relative_gap(ours, theirs) < 1e-5


def _torch_lr_after(make_scheduler, steps):
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=1.0)
    scheduler = make_scheduler(opt)
    for _ in range(steps):
        param.grad = torch.zeros(1)
        opt.step()
        scheduler.step()
    return opt.param_groups[0]["lr"]


def test_cosine_holds_its_floor_where_torch_climbs_back():
    ours = gradtx.cosine_decay_schedule(1.0, 20, alpha=0.1)
    theirs = _torch_lr_after(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=0.1),
        30,
    )
    assert float(ours(30)) == np.float32(0.1)
    assert theirs > 0.5  # half way back up the cosine


def test_one_cycle_holds_where_torch_raises():
    ours = gradtx.one_cycle_schedule(20, 1.0)
    assert float(ours(25)) == float(ours(19))
    with pytest.raises(ValueError):
        _torch_lr_after(
            lambda o: torch.optim.lr_scheduler.OneCycleLR(
                o, max_lr=1.0, total_steps=20, cycle_momentum=False
            ),
            25,
        )
