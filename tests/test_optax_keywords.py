"""optax's keyword names work in gradtx wherever the meaning is the same.

A user moving from optax changes the import and nothing else: every keyword
an optax function of the same name takes is accepted by gradtx, with the same
numbers, unless it is listed in `KNOWN_DIFFERENCES` below (each entry is
explained there and on docs/coming_from_optax.md).
"""

import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import optax.schedules
import peers
import pytest

import gradtx

STEPS = 12  # the point is the spelling, not a long run
OPTAX_TOL = 2e-5

# optax keyword -> gradtx argument of the same meaning, per function.
ALIASES = {
    "multi_transform": {"param_labels": "labels"},
    "scale": {"step_size": "factor"},
    "scale_by_schedule": {"step_size_fn": "schedule"},
    "inject_hyperparams": {"inner_factory": "factory"},
}

# Keywords of an optax function that gradtx's function of the same name does
# not take, and why. Each one is a row of the table on
# docs/coming_from_optax.md (checked below).
KNOWN_DIFFERENCES = {
    # gradtx.global_norm(tree) is optax.global_norm(updates); positional calls
    # agree, only the keyword spelling differs.
    "global_norm": {"updates": "gradtx names it tree"},
    # optax masks extra update arguments shaped like the params on request;
    # gradtx forwards extras to the inner transformation unmasked.
    "masked": {"mask_compatible_extra_args": "not implemented"},
    "multi_transform": {"mask_compatible_extra_args": "not implemented"},
    # gradtx.lookahead(inner, ...) is optax.lookahead(fast_optimizer, ...)
    # without optax's LookaheadParams pair (the slow copy lives in the state):
    # the params differ, so a keyword alias alone would not migrate a call.
    "lookahead": {"fast_optimizer": "another interface for the params"},
    # optax.sgdr_schedule takes a list of warmup-cosine kwargs; gradtx's is
    # torch's CosineAnnealingWarmRestarts (peak, first_period, period_mult).
    "sgdr_schedule": {"cosine_kwargs": "a different schedule API"},
    # gradtx.sam(optimizer, rho, ...) computes the ascent from update's
    # grad_fn (optax's opaque mode with a normalised SGD ascent); optax's
    # adversarial optimizer and its default mode have no counterpart.
    # optax's line search can print its progress; gradtx's keeps the step
    # length, the iterations and the two Wolfe errors in its state instead.
    "scale_by_zoom_linesearch": {"verbose": "no printing"},
    "sam": {
        "adv_optimizer": "the ascent is rho, not an optimizer",
        "reset_state": "no adversarial state to reset",
        "opaque_mode": "always the opaque mode",
    },
}

# Shared names whose positional parameters differ on purpose (above).
DIFFERENT_API = {"sgdr_schedule", "sam"}

# Defaults that differ where both libraries take the argument, and why.
# Each one is a row of the table on docs/coming_from_optax.md too.
DEFAULT_DIFFERENCES = {
    # optax's Adadelta has no rate by default (and then ascends); gradtx's is 1.
    "adadelta": {"learning_rate"},
    # gradtx's Adagrad starts where torch's does.
    "adagrad": {"initial_accumulator_value", "eps"},
    # gradtx puts eps outside the root by default, as torch does.
    "rmsprop": {"eps_in_sqrt"},
    "scale_by_rms": {"eps_in_sqrt"},
    # optax accepts None (no scaling); gradtx needs a rate (identity() is None).
    "scale_by_learning_rate": {"learning_rate"},
}

# Defaults that are spelled differently but mean the same thing.
SAME_DEFAULT = {
    # None is 1e-30 under adafactor's default (optax) convention.
    ("adafactor", "eps"),
}

# Positional parameters named differently but meaning the same at the same
# place (see KNOWN_DIFFERENCES).
SAME_PLACE = {
    "global_norm": {"updates": "tree"},
    "lookahead": {"fast_optimizer": "inner"},
}

PAGE = Path(__file__).resolve().parent.parent / "docs" / "coming_from_optax.md"
TABLE_ROWS = [line for line in PAGE.read_text().splitlines() if line.startswith("| `")]
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)

_NAMESPACES = (optax, optax.schedules, optax.contrib)


def optax_twin(name):
    for namespace in _NAMESPACES:
        if hasattr(namespace, name):
            return getattr(namespace, name)
    return None


def shared_functions():
    out = []
    for name in sorted(gradtx.__all__):
        ours = getattr(gradtx, name)
        theirs = optax_twin(name)
        if theirs is None or isinstance(ours, type) or not callable(ours):
            continue
        out.append(name)
    return out


SHARED = shared_functions()


def test_the_walk_finds_the_shared_names():
    for name in ["adam", "sgd", "multi_transform", "cosine_decay_schedule"]:
        assert name in SHARED
    assert len(SHARED) > 60


@pytest.mark.parametrize("name", SHARED)
def test_every_optax_keyword_is_accepted(name):
    ours = inspect.signature(getattr(gradtx, name)).parameters
    theirs = inspect.signature(optax_twin(name)).parameters
    known = KNOWN_DIFFERENCES.get(name, {})
    missing = [
        p
        for p, param in theirs.items()
        if p not in ours and p not in known and param.kind not in VARIADIC
    ]
    assert not missing, f"gradtx.{name} lacks optax's keywords {missing}"
    stale = [p for p in known if p in ours]
    assert not stale, f"gradtx.{name} now takes {stale}: drop them from the list"


@pytest.mark.parametrize("name", SHARED)
def test_every_optax_default_is_gradtx_default_or_a_listed_difference(name):
    ours = inspect.signature(getattr(gradtx, name)).parameters
    theirs = inspect.signature(optax_twin(name)).parameters
    listed = DEFAULT_DIFFERENCES.get(name, set())
    differ = []
    for p, param in theirs.items():
        if p not in ours or param.kind in VARIADIC or (name, p) in SAME_DEFAULT:
            continue
        default, our_default = param.default, ours[p].default
        if default is inspect.Parameter.empty or not _plain(default):
            continue  # required in optax, or an object gradtx builds its own way
        if our_default is inspect.Parameter.empty or default != our_default:
            differ.append(p)
    assert sorted(differ) == sorted(listed), (
        f"gradtx.{name}: defaults differing from optax's {differ}, listed {listed}"
    )


def _plain(value):
    """Whether a default is a number, string, flag or None (or a tuple of them)."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, bool | int | float | str | type(None))


def test_every_listed_difference_is_a_row_of_the_page():
    listed = [(n, k) for n, ks in KNOWN_DIFFERENCES.items() for k in ks]
    listed += [(n, k) for n, ks in DEFAULT_DIFFERENCES.items() for k in ks]
    for name, keyword in listed:
        rows = [r for r in TABLE_ROWS if name in r and keyword in r]
        assert rows, f"docs/coming_from_optax.md has no row on {name}'s {keyword}"


@pytest.mark.parametrize("name", SHARED)
def test_a_positional_optax_call_means_the_same_or_fails(name):
    """optax's positional parameters keep their places in gradtx.

    A gradtx parameter may be keyword-only where optax's is positional (the
    call then raises TypeError), but it never sits at another position.
    """
    if name in DIFFERENT_API:
        return  # see KNOWN_DIFFERENCES
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    ours = [
        p.name
        for p in inspect.signature(getattr(gradtx, name)).parameters.values()
        if p.kind in positional
    ]
    renames = {**ALIASES.get(name, {}), **SAME_PLACE.get(name, {})}
    theirs = [
        renames.get(p.name, p.name)
        for p in inspect.signature(optax_twin(name)).parameters.values()
        if p.kind in positional
    ]
    n = min(len(ours), len(theirs))
    assert ours[:n] == theirs[:n], (name, ours, theirs)


@pytest.mark.parametrize(
    "build, both",
    [
        (
            lambda **kw: gradtx.multi_transform({"a": gradtx.sgd(0.1)}, **kw),
            {"labels": {"w": "a"}, "param_labels": {"w": "a"}},
        ),
        (gradtx.scale, {"factor": 0.5, "step_size": 0.5}),
        (gradtx.scale_by_schedule, {"schedule": 0.5, "step_size_fn": 0.5}),
        (
            gradtx.inject_hyperparams,
            {"factory": gradtx.sgd, "inner_factory": gradtx.sgd},
        ),
    ],
)
def test_both_spellings_at_once_is_a_type_error_naming_both(build, both):
    gradtx_name, optax_name = both
    with pytest.raises(TypeError) as info:
        build(**both)
    assert gradtx_name in str(info.value) and optax_name in str(info.value)


def test_inject_hyperparams_needs_a_factory():
    with pytest.raises(TypeError, match="inner_factory"):
        gradtx.inject_hyperparams()


# ----------------------------------------------------------------------------
# the same numbers as optax, and as the gradtx spelling


def trajectories(ours, same, theirs, steps=STEPS):
    a = peers.gradtx_trajectory(ours, steps)
    b = peers.gradtx_trajectory(same, steps)
    c = peers.optax_trajectory(theirs, steps)
    return peers.max_relative_gap(a, b), peers.max_relative_gap(a, c)


LABELS = {"w": "fast", "b": "slow", "s": "slow"}

CASES = {
    "multi_transform(param_labels=)": (
        lambda: gradtx.multi_transform(
            {"fast": gradtx.adam(0.05), "slow": gradtx.sgd(0.01)}, param_labels=LABELS
        ),
        lambda: gradtx.multi_transform(
            {"fast": gradtx.adam(0.05), "slow": gradtx.sgd(0.01)}, labels=LABELS
        ),
        lambda: optax.multi_transform(
            {"fast": optax.adam(0.05), "slow": optax.sgd(0.01)}, param_labels=LABELS
        ),
    ),
    "sgd(accumulator_dtype=)": (
        lambda: gradtx.sgd(0.05, 0.9, accumulator_dtype=jnp.bfloat16),
        lambda: gradtx.chain(
            gradtx.scale_by_momentum(0.9, accumulator_dtype=jnp.bfloat16),
            gradtx.scale_by_learning_rate(0.05),
        ),
        lambda: optax.sgd(0.05, 0.9, accumulator_dtype=jnp.bfloat16),
    ),
    "scale_by_learning_rate(flip_sign=False)": (
        lambda: gradtx.chain(
            gradtx.scale(-1.0), gradtx.scale_by_learning_rate(0.05, flip_sign=False)
        ),
        lambda: gradtx.scale_by_learning_rate(0.05),
        lambda: optax.chain(
            optax.scale(-1.0), optax.scale_by_learning_rate(0.05, flip_sign=False)
        ),
    ),
    "scale_by_learning_rate(schedule, flip_sign=False)": (
        lambda: gradtx.chain(
            gradtx.scale(-1.0),
            gradtx.scale_by_learning_rate(
                gradtx.exponential_decay(0.05, 3, 0.5), flip_sign=False
            ),
        ),
        lambda: gradtx.scale_by_learning_rate(gradtx.exponential_decay(0.05, 3, 0.5)),
        lambda: optax.chain(
            optax.scale(-1.0),
            optax.scale_by_learning_rate(
                optax.exponential_decay(0.05, 3, 0.5), flip_sign=False
            ),
        ),
    ),
    "scale(step_size=)": (
        lambda: gradtx.scale(step_size=-0.05),
        lambda: gradtx.scale(factor=-0.05),
        lambda: optax.scale(step_size=-0.05),
    ),
    "scale_by_schedule(step_size_fn=)": (
        lambda: gradtx.scale_by_schedule(step_size_fn=lambda t: -0.05 / (1.0 + t)),
        lambda: gradtx.scale_by_schedule(schedule=lambda t: -0.05 / (1.0 + t)),
        lambda: optax.scale_by_schedule(step_size_fn=lambda t: -0.05 / (1.0 + t)),
    ),
    "cosine_decay_schedule(exponent=)": (
        lambda: gradtx.sgd(gradtx.cosine_decay_schedule(0.1, 8, 0.1, exponent=2.0)),
        lambda: gradtx.sgd(
            lambda t: (
                0.1
                * (
                    0.9 * (0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, 8) / 8))) ** 2
                    + 0.1
                )
            )
        ),
        lambda: optax.sgd(optax.cosine_decay_schedule(0.1, 8, 0.1, exponent=2.0)),
    ),
    "warmup_cosine_decay_schedule(exponent=)": (
        lambda: gradtx.sgd(
            gradtx.warmup_cosine_decay_schedule(0.0, 0.1, 3, 10, 0.01, exponent=0.5)
        ),
        lambda: gradtx.sgd(
            gradtx.join_schedules(
                [
                    gradtx.linear_schedule(0.0, 0.1, 3),
                    lambda t: (
                        0.01
                        + 0.09
                        * (0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, 7) / 7))) ** 0.5
                    ),
                ],
                [3],
            )
        ),
        lambda: optax.sgd(
            optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 10, 0.01, exponent=0.5)
        ),
    ),
    "rmsprop(initial_scale=)": (
        lambda: gradtx.rmsprop(0.01, eps_in_sqrt=True, initial_scale=1.0),
        lambda: gradtx.chain(
            gradtx.scale_by_rms(eps_in_sqrt=True, initial_scale=1.0),
            gradtx.scale_by_learning_rate(0.01),
        ),
        lambda: optax.rmsprop(0.01, initial_scale=1.0),
    ),
    "rmsprop(bias_correction=True)": (
        lambda: gradtx.rmsprop(0.01, decay=0.8, eps=1e-3, bias_correction=True),
        lambda: gradtx.adam(0.01, b1=0.0, b2=0.8, eps=1e-3),
        lambda: optax.rmsprop(
            0.01, decay=0.8, eps=1e-3, eps_in_sqrt=False, bias_correction=True
        ),
    ),
    "rmsprop(bias_correction=True, eps_in_sqrt=True, ...)": (
        lambda: gradtx.rmsprop(
            0.01,
            decay=0.8,
            eps=1e-3,
            eps_in_sqrt=True,
            initial_scale=1.0,
            momentum=0.9,
            bias_correction=True,
        ),
        lambda: gradtx.chain(
            gradtx.scale_by_rms(
                0.8, 1e-3, eps_in_sqrt=True, initial_scale=1.0, bias_correction=True
            ),
            gradtx.scale_by_momentum(0.9),
            gradtx.scale_by_learning_rate(0.01),
        ),
        lambda: optax.rmsprop(
            0.01,
            decay=0.8,
            eps=1e-3,
            initial_scale=1.0,
            momentum=0.9,
            bias_correction=True,
        ),
    ),
    "adadelta(weight_decay=, weight_decay_mask=)": (
        lambda: gradtx.adadelta(
            0.5, weight_decay=0.1, weight_decay_mask={"w": True, "b": False, "s": True}
        ),
        lambda: gradtx.chain(
            gradtx.add_decayed_weights(0.1, mask={"w": True, "b": False, "s": True}),
            gradtx.adadelta(0.5),
        ),
        lambda: optax.adadelta(
            0.5, weight_decay=0.1, weight_decay_mask={"w": True, "b": False, "s": True}
        ),
    ),
    "nadam(nesterov=False)": (
        lambda: gradtx.nadam(0.05, nesterov=False),
        lambda: gradtx.adam(0.05),
        lambda: optax.nadam(0.05, nesterov=False),
    ),
    "nadamw(nesterov=False)": (
        lambda: gradtx.nadamw(0.05, weight_decay=0.1, nesterov=False),
        lambda: gradtx.adamw(0.05, weight_decay=0.1),
        lambda: optax.nadamw(0.05, weight_decay=0.1, nesterov=False),
    ),
    "inject_hyperparams(inner_factory=)": (
        lambda: gradtx.inject_hyperparams(inner_factory=gradtx.adam)(
            learning_rate=0.05
        ),
        lambda: gradtx.adam(0.05),
        lambda: optax.inject_hyperparams(inner_factory=optax.adam)(learning_rate=0.05),
    ),
}


# optax multiplies the bfloat16 buffer by the decay in bfloat16 before adding
# the float32 gradient; gradtx widens the buffer first. One extra bfloat16
# rounding (2**-8 relative) per step: measured 6.5e-3 after 12 steps.
CASE_TOL = {"sgd(accumulator_dtype=)": 2e-2}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_optax_spelling_gives_the_numbers_of_optax_and_of_gradtx(case):
    ours, same, theirs = (make() for make in CASES[case])
    to_gradtx, to_optax = trajectories(ours, same, theirs)
    print(
        f"{case}: gap to the gradtx spelling {to_gradtx:.2e}, to optax {to_optax:.2e}"
    )
    assert to_gradtx < 1e-6
    assert to_optax < CASE_TOL.get(case, OPTAX_TOL)


def test_bias_corrected_rms_matches_a_float64_reference():
    decay, eps, init = 0.8, 1e-3, 0.5
    tx = gradtx.scale_by_rms(decay, eps, initial_scale=init, bias_correction=True)
    grads = [np.array([0.5, -2.0, 3.0]) * (t + 1) ** 0.5 for t in range(10)]
    state = tx.init(jnp.zeros(3, jnp.float32))
    update = jax.jit(tx.update)
    nu = np.full(3, init)
    for t, g in enumerate(grads, start=1):
        nu = decay * nu + (1 - decay) * g**2
        want = g / (np.sqrt(nu / (1 - decay**t)) + eps)
        got, state = update(jnp.asarray(g, jnp.float32), state)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert int(state.count) == 10


def test_centered_bias_corrected_rms_is_finite_and_close_to_optax():
    # At t = 1 the bias-corrected centred variance is exactly zero, so the
    # step divides round-off by sqrt(eps): with eps under the root gradtx and
    # optax agree to 1e-4 (measured 9.2e-5); with eps outside the root optax
    # takes the root of a round-off negative and returns NaN, while gradtx
    # clamps the variance at zero.
    def ours(eps_in_sqrt):
        return gradtx.rmsprop(
            0.01,
            0.8,
            1e-3,
            eps_in_sqrt=eps_in_sqrt,
            centered=True,
            bias_correction=True,
        )

    theirs = optax.rmsprop(0.01, 0.8, 1e-3, centered=True, bias_correction=True)
    gap = peers.max_relative_gap(
        peers.gradtx_trajectory(ours(True), STEPS),
        peers.optax_trajectory(theirs, STEPS),
    )
    assert gap < 2e-4
    run = peers.gradtx_trajectory(ours(False), STEPS)
    assert all(np.isfinite(x).all() for p in run for x in jax.tree.leaves(p))


def test_bias_correction_is_described_only_when_set_and_checked():
    assert "bias_correction" not in repr(gradtx.scale_by_rms())
    assert "bias_correction=True" in repr(gradtx.scale_by_rms(bias_correction=True))
    assert gradtx.scale_by_rms().init(jnp.zeros(2)).count is None
    with pytest.raises(TypeError, match="bias_correction"):
        gradtx.scale_by_rms(bias_correction=1)


def test_cosine_schedules_take_step_counts_past_int32():
    # optax's own schedule tests check this value.
    sched = gradtx.cosine_decay_schedule(1000.0, decay_steps=int(1e10), exponent=1)
    np.testing.assert_allclose(jax.jit(sched)(int(1e9)), 975.52826, rtol=1e-6)
    warm = gradtx.warmup_cosine_decay_schedule(0.0, 1000.0, 10, int(1e10) + 10)
    np.testing.assert_allclose(jax.jit(warm)(int(1e9) + 10), 975.52826, rtol=1e-6)


def test_cosine_exponent_matches_optax_value_by_value():
    for exponent in (0.5, 2.0):
        ours = gradtx.cosine_decay_schedule(0.3, 20, 0.1, exponent=exponent)
        theirs = optax.cosine_decay_schedule(0.3, 20, 0.1, exponent=exponent)
        warm = gradtx.warmup_cosine_decay_schedule(0.0, 0.3, 5, 25, 0.01, exponent)
        warm_o = optax.warmup_cosine_decay_schedule(0.0, 0.3, 5, 25, 0.01, exponent)
        t = jnp.arange(30)
        np.testing.assert_allclose(jax.vmap(ours)(t), jax.vmap(theirs)(t), rtol=1e-6)
        np.testing.assert_allclose(jax.vmap(warm)(t), jax.vmap(warm_o)(t), atol=1e-7)


def test_exponent_is_validated_and_printed_only_when_set():
    with pytest.raises(ValueError, match="exponent"):
        gradtx.cosine_decay_schedule(0.1, 10, exponent=0.0)
    with pytest.raises(ValueError, match="exponent"):
        gradtx.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10, exponent=-1.0)
    assert "exponent" not in repr(gradtx.cosine_decay_schedule(0.1, 10))
    assert "exponent=2.0" in repr(gradtx.cosine_decay_schedule(0.1, 10, exponent=2.0))


def test_flip_sign_is_described_only_when_set_and_checked():
    assert repr(gradtx.scale_by_learning_rate(0.1)) == (
        "scale_by_learning_rate(learning_rate=0.1)"
    )
    text = repr(gradtx.scale_by_learning_rate(0.1, flip_sign=False))
    assert "flip_sign=False" in text
    with pytest.raises(TypeError, match="flip_sign"):
        gradtx.scale_by_learning_rate(0.1, flip_sign=1)


def test_aliased_links_still_name_their_factory():
    # Code that inspects a chain compares tx.factory with the public function.
    tx = gradtx.sgd(0.1)
    assert tx.children[0].factory is gradtx.scale_by_learning_rate
    assert gradtx.scale(2.0).factory is gradtx.scale
    labels = {"w": "a"}
    mt = gradtx.multi_transform({"a": gradtx.sgd(0.1)}, param_labels=labels)
    assert mt.factory is gradtx.multi_transform
    assert mt.hyperparams["labels"] == labels
    assert "param_labels" not in mt.hyperparams
    assert float(gradtx.latest_learning_rate(tx, tx.init(jnp.ones(1)))) == np.float32(
        0.1
    )


def test_nadam_nesterov_false_refuses_torch_momentum_decay():
    with pytest.raises(ValueError, match="momentum_decay"):
        gradtx.nadam(1e-3, momentum_decay=0.004, nesterov=False)
    with pytest.raises(TypeError, match="nesterov"):
        gradtx.nadamw(1e-3, nesterov=1)


def test_adadelta_without_decay_keeps_its_two_links():
    assert [link.name for link in gradtx.adadelta().children] == [
        "scale_by_adadelta",
        "scale_by_learning_rate",
    ]


def test_sgd_accumulator_dtype_sets_the_buffer_dtype_and_is_checked():
    tx = gradtx.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.bfloat16)
    state = tx.init({"w": jnp.zeros(3)})
    assert state[0].velocity["w"].dtype == jnp.bfloat16
    assert len(gradtx.sgd(0.1, accumulator_dtype=jnp.bfloat16).children) == 1
    with pytest.raises((TypeError, ValueError), match="accumulator_dtype"):
        gradtx.sgd(0.1, momentum=0.9, accumulator_dtype="not a dtype")


# ----------------------------------------------------------------------------
# reduce_on_plateau: value= and optax's positional order

PLATEAU_LOSSES = [3.0, 2.0, 2.5, 2.4, 2.6, 1.0, 1.1, 1.2, 1.3, 1.4, 0.5, 0.6, 0.7]


def plateau_scales(tx, keyword):
    state = tx.init(jnp.zeros(1))
    update = jax.jit(lambda u, s, x: tx.update(u, s, **{keyword: x}))
    out = []
    for loss in PLATEAU_LOSSES:
        u, state = update(jnp.ones(1), state, jnp.float32(loss))
        out.append(float(u[0]))
    return np.array(out)


def test_reduce_on_plateau_reads_value_like_optax():
    # Positional, in optax's order: factor, patience, rtol, atol, cooldown.
    ours = gradtx.reduce_on_plateau(0.5, 1, 1e-4, 0.0, 1)
    by_value = plateau_scales(ours, "value")
    np.testing.assert_array_equal(by_value, plateau_scales(ours, "loss"))
    # optax counts patience one further: its patience=p is gradtx's p - 1.
    theirs = optax.contrib.reduce_on_plateau(0.5, 2, 1e-4, 0.0, 1)
    np.testing.assert_array_equal(by_value, plateau_scales(theirs, "value"))
    assert by_value.min() < 1.0


def test_reduce_on_plateau_inside_a_chain_takes_value():
    tx = gradtx.chain(gradtx.sgd(1.0), gradtx.reduce_on_plateau(0.5, 0))
    state = tx.init(jnp.zeros(1))
    _, state = tx.update(jnp.ones(1), state, value=1.0)
    u, state = tx.update(jnp.ones(1), state, value=2.0)
    np.testing.assert_allclose(u, -0.5)


def test_reduce_on_plateau_refuses_loss_and_value_together():
    tx = gradtx.reduce_on_plateau()
    with pytest.raises(TypeError, match="loss=.*value="):
        tx.update(jnp.ones(1), tx.init(jnp.ones(1)), loss=1.0, value=1.0)
