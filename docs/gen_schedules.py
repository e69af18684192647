"""Write docs/schedules.md and one plot per schedule (run by the docs build).

Every figure is computed from the library itself: each entry below is the
code shown on the page, executed here, and its schedule evaluated at every
step. Run directly with `python docs/gen_schedules.py [output_dir]`.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import gradtx  # noqa: E402

# (name, code defining `schedule`, steps to plot, what to notice)
GALLERY = [
    (
        "constant_schedule",
        "schedule = gradtx.constant_schedule(0.1)",
        100,
        "The same value at every step; what a plain float learning rate means.",
    ),
    (
        "linear_schedule",
        "schedule = gradtx.linear_schedule(\n"
        "    init_value=1e-3, end_value=1e-4, transition_steps=60,\n"
        "    transition_begin=20,\n"
        ")",
        100,
        "Holds for `transition_begin` steps, ramps in a straight line, then holds "
        "its end value. Swap the two values for a linear warmup.",
    ),
    (
        "polynomial_schedule",
        "schedule = gradtx.polynomial_schedule(\n"
        "    init_value=1.0, end_value=0.01, power=2.0, transition_steps=80\n"
        ")",
        100,
        "`power` bends the ramp: above 1 it falls fast then flattens.",
    ),
    (
        "piecewise_constant_schedule",
        "schedule = gradtx.piecewise_constant_schedule(\n"
        "    init_value=0.1, boundaries_and_scales={30: 0.1, 60: 0.1, 80: 0.1}\n"
        ")",
        100,
        "Step decay: the value is multiplied by each scale from its boundary on "
        "(torch's `MultiStepLR`).",
    ),
    (
        "exponential_decay",
        "smooth = gradtx.exponential_decay(\n"
        "    init_value=1.0, transition_steps=10, decay_rate=0.7\n"
        ")\n"
        "schedule = gradtx.exponential_decay(\n"
        "    init_value=1.0, transition_steps=10, decay_rate=0.7, staircase=True,\n"
        "    end_value=0.05,\n"
        ")",
        100,
        "A factor of `decay_rate` every `transition_steps` steps, smoothly or in a "
        "staircase (torch's `ExponentialLR` and `StepLR`); `end_value` sets a "
        "floor. The smooth form is drawn dashed.",
    ),
    (
        "cosine_decay_schedule",
        "schedule = gradtx.cosine_decay_schedule(init_value=0.1, decay_steps=80, "
        "alpha=0.1)",
        100,
        "Half a cosine from `init_value` down to `alpha * init_value`, then holds "
        "that floor (torch's `CosineAnnealingLR` climbs back up instead).",
    ),
    (
        "warmup_cosine_decay_schedule",
        "schedule = gradtx.warmup_cosine_decay_schedule(\n"
        "    init_value=0.0, peak_value=1e-3, warmup_steps=15, decay_steps=100,\n"
        "    end_value=1e-5,\n"
        ")",
        110,
        "A linear warmup followed by a cosine decay; `decay_steps` counts the "
        "whole schedule, warmup included.",
    ),
    (
        "inverse_sqrt_schedule",
        "schedule = gradtx.inverse_sqrt_schedule(peak_value=1e-3, warmup_steps=20)",
        200,
        "The Transformer schedule: a linear warmup to the peak at update number "
        "`warmup_steps`, then decay as one over the square root of the step.",
    ),
    (
        "cyclic_schedule",
        "schedule = gradtx.cyclic_schedule(\n"
        "    base_value=0.01, max_value=0.1, step_size=10, mode='triangular2'\n"
        ")",
        100,
        "Cyclical learning rates: triangles between two values; in "
        "`triangular2` mode the height halves every cycle (torch's `CyclicLR`).",
    ),
    (
        "sgdr_schedule",
        "schedule = gradtx.sgdr_schedule(\n"
        "    peak_value=0.1, first_period=10, period_mult=2, end_value=0.001\n"
        ")",
        150,
        "Cosine annealing with warm restarts; each period is `period_mult` times "
        "longer than the last (torch's `CosineAnnealingWarmRestarts`).",
    ),
    (
        "one_cycle_schedule",
        "schedule = gradtx.one_cycle_schedule(transition_steps=100, peak_value=0.1)",
        110,
        "The 1cycle policy: up to `peak_value` over the first 30% of the steps, "
        "then down far below the start (torch's `OneCycleLR`).",
    ),
    (
        "join_schedules",
        "warmup = gradtx.linear_schedule(0.0, 0.1, transition_steps=10)\n"
        "decay = gradtx.exponential_decay(0.1, transition_steps=20, decay_rate=0.5)\n"
        "schedule = gradtx.join_schedules([warmup, decay], boundaries=[10])",
        100,
        "Glue schedules end to end; each one counts steps from its own start.",
    ),
]


def _plot(name: str, code: str, steps: int, path: pathlib.Path) -> None:
    namespace: dict = {"gradtx": gradtx}
    exec(code, namespace)  # the code shown on the page
    ts = jnp.arange(steps, dtype=jnp.int32)
    fig, ax = plt.subplots(figsize=(6.0, 2.6), dpi=110)
    if "smooth" in namespace:
        ax.plot(ts, jax.vmap(namespace["smooth"])(ts), "--", color="0.6", lw=1.2)
    ax.plot(ts, jax.vmap(namespace["schedule"])(ts), color="tab:blue", lw=1.8)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step t (updates already applied)")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def generate(docs_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write the page and its figures under `docs_dir`; return what was written."""
    image_dir = docs_dir / "img" / "schedules"
    image_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Schedules",
        "",
        "<!-- Written by docs/gen_schedules.py at every docs build; do not edit. -->",
        "",
        "A schedule is a pure function of `t`, the number of updates already",
        "applied (0 at the first update), returning a float32 scalar. Pass one",
        "wherever a number is accepted for `learning_rate` or `weight_decay`, or",
        "inject it into any numeric hyperparameter with `gradtx.inject_hyperparams`.",
        "Every schedule below holds its last value once it is over. Each figure is",
        "drawn by running the code above it.",
        "",
    ]
    written = []
    for name, code, steps, note in GALLERY:
        path = image_dir / f"{name}.png"
        _plot(name, code, steps, path)
        written.append(path)
        lines += [
            f"## {name}",
            "",
            note,
            "",
            "```python",
            code,
            "```",
            "",
            f"![{name}](img/schedules/{name}.png)",
            "",
        ]
    page = docs_dir / "schedules.md"
    page.write_text("\n".join(lines))
    written.append(page)
    return written


if __name__ == "__main__":
    target = (
        pathlib.Path(sys.argv[1])
        if len(sys.argv) > 1
        else pathlib.Path(__file__).parent
    )
    for path in generate(target):
        print(path)
