"""Write one page per optimizer under docs/optimizers/ (run by the docs build).

Each page is assembled from the library itself: the chain is what
`gradtx.describe` prints for the optimizer, and the update equations are the
equation blocks of the docstrings of the links it is made of, so the page
cannot disagree with the code. Run directly with
`python docs/gen_optimizers.py [output_dir]`.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import sys

import gradtx

# name -> (the call shown, what torch.optim and optax call the same thing)
OPTIMIZERS = {
    "sgd": (
        "gradtx.sgd(learning_rate=0.1, momentum=0.9, nesterov=True)",
        "`torch.optim.SGD(lr, momentum, nesterov)`; "
        "`optax.sgd(lr, momentum, nesterov)`",
    ),
    "sgd_l2": (
        "gradtx.sgd_l2(learning_rate=0.1, weight_decay=1e-4, momentum=0.9)",
        "`torch.optim.SGD(lr, momentum, weight_decay=wd)`",
    ),
    "sgdw": (
        "gradtx.sgdw(learning_rate=0.1, weight_decay=1e-4, momentum=0.9)",
        "none in torch.optim; in optax, `chain(trace(momentum), "
        "add_decayed_weights(wd), scale(-lr))`",
    ),
    "rmsprop": (
        "gradtx.rmsprop(learning_rate=1e-3, decay=0.9, momentum=0.9)",
        "`torch.optim.RMSprop(lr, alpha=decay, eps)`; `optax.rmsprop(lr, decay, eps)` "
        "puts eps under the root (`eps_in_sqrt=True` here)",
    ),
    "adagrad": (
        "gradtx.adagrad(learning_rate=0.1)",
        "`torch.optim.Adagrad(lr)`; `optax.adagrad` starts the sum at 0.1 and puts "
        "eps under the root",
    ),
    "adadelta": (
        "gradtx.adadelta(learning_rate=1.0, rho=0.9, eps=1e-6)",
        "`torch.optim.Adadelta(lr, rho, eps)`; `optax.adadelta(lr, rho, eps)` with "
        "the learning rate given",
    ),
    "adam": (
        "gradtx.adam(learning_rate=1e-3)",
        "`torch.optim.Adam(lr, betas=(b1, b2), eps)`; `optax.adam(lr, b1, b2, eps)`",
    ),
    "adam_l2": (
        "gradtx.adam_l2(learning_rate=1e-3, weight_decay=1e-4)",
        "`torch.optim.Adam(lr, weight_decay=wd)`",
    ),
    "adamw": (
        "gradtx.adamw(learning_rate=1e-3, weight_decay=1e-4)",
        "`torch.optim.AdamW(lr, weight_decay=wd)` (whose default wd is 1e-2); "
        "`optax.adamw(lr, weight_decay=wd)`",
    ),
    "adamw_multiplier": (
        "gradtx.adamw_multiplier(\n"
        "    learning_rate=1e-3,\n"
        "    weight_decay=1e-4,\n"
        "    schedule=gradtx.cosine_decay_schedule(1.0, 10_000),\n"
        ")",
        "none: Loshchilov and Hutter's Algorithm 2",
    ),
    "adamw_independent": (
        "gradtx.adamw_independent(learning_rate=1e-3, weight_decay=1e-5)",
        "none in torch.optim or optax",
    ),
    "amsgrad": (
        "gradtx.amsgrad(learning_rate=1e-3)",
        "`optax.amsgrad(lr, b1, b2, eps)`; `torch.optim.Adam(lr, betas=(b1, b2), eps, "
        "amsgrad=True)` takes the maximum before the bias correction "
        "(`max_before_correction=True` here)",
    ),
    "adamax": (
        "gradtx.adamax(learning_rate=2e-3)",
        "`optax.adamax(lr, b1, b2, eps)`; "
        "`torch.optim.Adamax(lr, betas=(b1, b2), eps)`",
    ),
    "adamaxw": (
        "gradtx.adamaxw(learning_rate=2e-3, weight_decay=1e-4)",
        "`optax.adamaxw(lr, b1, b2, eps, weight_decay)`; none in torch.optim "
        "(`Adamax(weight_decay=wd)` is coupled L2)",
    ),
    "radam": (
        "gradtx.radam(learning_rate=1e-3)",
        "`optax.radam(lr, b1, b2, eps, eps_root, threshold)`; "
        "`torch.optim.RAdam(lr, betas=(b1, b2), eps)` divides eps by "
        "sqrt(1 - b2**t) (`eps_before_correction=True` here)",
    ),
    "nadam": (
        "gradtx.nadam(learning_rate=2e-3)",
        "`optax.nadam(lr, b1, b2, eps)`; `torch.optim.NAdam(lr, betas=(b1, b2), eps, "
        "momentum_decay=0.004)` is `nadam(lr, momentum_decay=0.004)` here",
    ),
    "nadamw": (
        "gradtx.nadamw(learning_rate=2e-3, weight_decay=1e-4)",
        "`optax.nadamw(lr, weight_decay=wd)`; `torch.optim.NAdam(lr, weight_decay=wd, "
        "decoupled_weight_decay=True)` is `nadamw(lr, weight_decay=wd, "
        "momentum_decay=0.004)` here",
    ),
    "adabelief": (
        "gradtx.adabelief(learning_rate=1e-3)",
        "`optax.adabelief(lr, b1, b2, eps, eps_root)`; none in torch.optim",
    ),
    "yogi": (
        "gradtx.yogi(learning_rate=1e-2)",
        "`optax.yogi(lr, b1, b2, eps)`; none in torch.optim",
    ),
    "adopt": (
        "gradtx.adopt(learning_rate=1e-3)",
        "`optax.contrib.adopt(lr, b1, b2, eps)`; none in torch.optim",
    ),
    "ademamix": (
        "gradtx.ademamix(learning_rate=1e-3, weight_decay=1e-2)",
        "`optax.contrib.ademamix(lr, b1, b2, b3, alpha, eps, eps_root, mu_dtype, "
        "weight_decay)`; none in torch.optim",
    ),
    "sign_sgd": (
        "gradtx.sign_sgd(learning_rate=1e-3)",
        "`optax.sign_sgd(lr)`; none in torch.optim",
    ),
    "signum": (
        "gradtx.signum(learning_rate=1e-3, beta=0.9)",
        "`optax.signum(lr, beta, accumulator_dtype)`; none in torch.optim",
    ),
    "lion": (
        "gradtx.lion(learning_rate=1e-4, weight_decay=1e-2)",
        "`optax.lion(lr, b1, b2, mu_dtype, weight_decay, mask)`; none in torch.optim",
    ),
    "rprop": (
        "gradtx.rprop(learning_rate=0.01)",
        "`torch.optim.Rprop(lr, etas=(eta_minus, eta_plus), step_sizes=(min_step_size, "
        "max_step_size))` is `rprop(..., clip_every_step=True)` here; "
        "`optax.rprop(lr, eta_minus, eta_plus, min_step_size, max_step_size)` "
        "computes the same steps but, in optax 0.2.8, returns each one a step late",
    ),
    "lamb": (
        "gradtx.lamb(learning_rate=1e-3, weight_decay=1e-2)",
        "`optax.lamb(lr, b1, b2, eps, eps_root, weight_decay, mask)`; none in "
        "torch.optim",
    ),
    "lars": (
        "gradtx.lars(learning_rate=0.1, weight_decay=1e-4, momentum=0.9)",
        "`optax.lars(lr, weight_decay, weight_decay_mask, trust_coefficient, eps, "
        "trust_ratio_mask, momentum, nesterov)`; none in torch.optim",
    ),
    "novograd": (
        "gradtx.novograd(learning_rate=1e-2, weight_decay=1e-3)",
        "`optax.novograd(lr, b1, b2, eps, eps_root, weight_decay)`; none in "
        "torch.optim",
    ),
    "adafactor": (
        "gradtx.adafactor(learning_rate=1e-2)",
        "`optax.adafactor(learning_rate)` (same defaults and order); "
        "`torch.optim.Adafactor(lr, beta2_decay=-b, eps=(e1, e2), d, weight_decay)` "
        "is `adafactor(lr, decay_rate=b, eps=e1, min_scale=e2, clipping_threshold=d, "
        'weight_decay_rate=wd, convention="torch")` here',
    ),
    "schedule_free_adamw": (
        "gradtx.schedule_free_adamw(\n"
        "    learning_rate=2.5e-3, warmup_steps=1000, weight_decay=1e-4\n"
        ")",
        "`optax.contrib.schedule_free_adamw(learning_rate, warmup_steps, b1, b2, "
        "eps, weight_decay)` (same defaults and order); none in torch.optim "
        "(the `schedulefree` package's `AdamWScheduleFree`)",
    ),
    "schedule_free_sgd": (
        "gradtx.schedule_free_sgd(learning_rate=1.0, warmup_steps=1000)",
        "`optax.contrib.schedule_free_sgd(learning_rate, warmup_steps, b1, "
        "weight_decay)` (same defaults and order); none in torch.optim "
        "(the `schedulefree` package's `SGDScheduleFree`)",
    ),
    "muon": (
        "gradtx.muon(learning_rate=0.02, weight_decay=0.1)",
        "`optax.contrib.muon(learning_rate, ...)` (same arguments, order and "
        "defaults); `torch.optim.Muon(lr, weight_decay=wd)` for the matrices plus "
        '`torch.optim.AdamW` for the rest is `convention="torch"` here',
    ),
    "prodigy": (
        "gradtx.prodigy(\n"
        "    learning_rate=gradtx.cosine_decay_schedule(1.0, 10_000),\n"
        "    weight_decay=1e-2,\n"
        ")",
        "`optax.contrib.prodigy(learning_rate, betas, beta3, eps, estim_lr0, "
        "estim_lr_coef, weight_decay, safeguard_warmup)` (same defaults and "
        "order); none in torch.optim",
    ),
    "lbfgs": (
        "gradtx.lbfgs()",
        "`optax.lbfgs(learning_rate, memory_size, scale_init_precond, linesearch)` "
        "(same defaults and numbers); `torch.optim.LBFGS(lr, history_size=h, "
        "max_iter=1)` is `lbfgs(lr, memory_size=h, linesearch=None, "
        'convention="torch")`',
    ),
    # wrappers around any optimizer
    "ema_params": (
        "gradtx.ema_params(gradtx.adamw(1e-3, weight_decay=1e-2), decay=0.999)",
        "`torch.optim.swa_utils.AveragedModel(model, "
        "multi_avg_fn=get_ema_multi_avg_fn(decay))`; none in optax",
    ),
    "swa_params": (
        "gradtx.swa_params(gradtx.sgd(0.05, momentum=0.9), every_k=100, "
        "start_step=7_500)",
        "`torch.optim.swa_utils.AveragedModel(model)` updated every k steps; "
        "none in optax",
    ),
    "lookahead": (
        "gradtx.lookahead(gradtx.adam(1e-3), sync_period=6, slow_step_size=0.5)",
        "`optax.lookahead(fast_optimizer, sync_period, slow_step_size)` with its "
        "`LookaheadParams`; none in torch.optim",
    ),
    "sam": (
        "gradtx.sam(gradtx.sgd(0.1, momentum=0.9), rho=0.05)",
        "`optax.contrib.sam(optimizer, adv_optimizer, sync_period, "
        "opaque_mode=True)` with `adv_optimizer = chain(contrib.normalize(), "
        "sgd(rho))`; none in torch.optim",
    ),
}


def equation_block(factory) -> str:
    """The indented block after the first `::` of a factory's docstring."""
    doc = inspect.getdoc(factory) or ""
    if "::" not in doc:
        return ""
    after = doc.split("::", 1)[1].splitlines()[1:]
    block = []
    for line in after:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip("\n")


def papers(factory) -> list[str]:
    """The papers of a factory's `References:` section, one string each.

    The section is one block of text; a new paper starts after a period,
    at an author list ("Name,", "Name and Name,", "Name et al.,").
    """
    doc = inspect.getdoc(factory) or ""
    if "References:" not in doc:
        return []
    text = []
    for line in doc.split("References:", 1)[1].splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break
        text.append(line.strip())
    author = r"[A-Z][\w'-]+(?: and [A-Z][\w'-]+| et al\.)?,"
    entries = re.split(rf"(?<=\.)\s+(?={author})", " ".join(text).strip())
    return [entry for entry in entries if entry]


def summary_line(factory) -> str:
    """The first line of a factory's docstring."""
    return (inspect.getdoc(factory) or "").splitlines()[0]


def links(tx) -> list:
    """The links of a chain in order, each name once.

    A chain stands for its links. A link that wraps others (the inner
    transformation of `masked`, the base of `schedule_free`, the groups of
    `multi_transform`) is followed by the ones it wraps.
    """
    found = []

    def visit(link):
        if link.children:
            for child in link.children:
                visit(child)
            return
        if link.name not in [f.name for f in found]:
            found.append(link)
        for value in link.hyperparams.values():
            inner = value.values() if isinstance(value, dict) else [value]
            for each in inner:  # a transformation, or the groups of multi_transform
                if isinstance(each, gradtx.GradientTransformation) and each.name:
                    visit(each)

    visit(tx)
    return found


def page(name: str, call: str, peers: str) -> str:
    """The markdown page of one optimizer."""
    tx = eval(call, {"gradtx": gradtx})  # the call shown on the page
    factory = getattr(gradtx, name)
    lines = [
        f"# {name}",
        "",
        "<!-- Written by docs/gen_optimizers.py at every docs build; do not edit. -->",
        "",
        summary_line(factory),
        "",
        "```python",
        f"tx = {call}",
        "```",
        "",
        "## The chain",
        "",
        "`print(tx)` shows the links it is made of, in the order they apply:",
        "",
        "```text",
        gradtx.describe(tx),
        "```",
        "",
        "## Update equations, link by link",
        "",
        "Each link turns the incoming update `g` into its output; the first link's "
        "`g` is the gradient and the last link's output is added to the "
        "parameters.",
        "",
    ]
    for link in links(tx):
        link_factory = getattr(gradtx, link.name)
        block = equation_block(link_factory)
        lines += [f"### `{link.name}`", "", summary_line(link_factory), ""]
        if block:
            lines += ["```text", block, "```", ""]
    cited: list[str] = []
    for factory_of_link in [factory, *(getattr(gradtx, k.name) for k in links(tx))]:
        cited += [entry for entry in papers(factory_of_link) if entry not in cited]
    if cited:
        lines += ["## Papers", ""] + [f"- {entry}" for entry in cited] + [""]
    lines += [
        "## In other libraries",
        "",
        peers + ". The [conventions page](../conventions.md) lists every "
        "difference, each pinned by a test.",
        "",
        "## Reference",
        "",
        f"::: gradtx.{name}",
        "",
    ]
    return "\n".join(lines)


def generate(docs_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write docs_dir/optimizers/<name>.md for every optimizer."""
    out = docs_dir / "optimizers"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (call, peers) in OPTIMIZERS.items():
        path = out / f"{name}.md"
        path.write_text(page(name, call, peers))
        written.append(path)
    return written


if __name__ == "__main__":
    target = (
        pathlib.Path(sys.argv[1])
        if len(sys.argv) > 1
        else pathlib.Path(__file__).parent
    )
    for path in generate(target):
        print(path)
