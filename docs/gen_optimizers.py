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


def summary_line(factory) -> str:
    """The first line of a factory's docstring."""
    return (inspect.getdoc(factory) or "").splitlines()[0]


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
    for link in tx.children:
        link_factory = getattr(gradtx, link.name)
        block = equation_block(link_factory)
        lines += [f"### `{link.name}`", "", summary_line(link_factory), ""]
        if block:
            lines += ["```text", block, "```", ""]
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
