"""Write docs/examples.md, the examples gallery (run by the docs build).

Every script in examples/ gets an entry: its title and what it teaches (its
module docstring), how to run it, and what it prints. Several examples take
minutes, so their printed output is not produced by the docs build: it is
recorded once per example with

    .venv/bin/python docs/gen_gallery.py --refresh [name ...]

(no names: every example), which runs each script with no arguments, as a
user would, and stores what it printed in docs/examples/<name>.txt. The
build (`generate`) only reads those files, and refuses to write the page
when a runnable example has none. Modules without an
`if __name__ == "__main__":` guard (shared code such as study_problems.py)
are listed as helpers. Rerun `--refresh` for an example whenever its output
changes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import pathlib
import subprocess
import sys
import time

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
EXAMPLES = ROOT / "examples"
OUTPUTS = "examples"  # folder under docs/ holding <name>.txt
REFRESH = ".venv/bin/python docs/gen_gallery.py --refresh"

# The examples whose usual way in is a make target (Makefile); the gallery
# shows it next to the plain command, which runs the same thing.
MAKE_TARGETS = {"decay_study": "make demo"}

# The order of the page: first steps, then the integrations and techniques,
# then the studies; any example not listed here follows, by name.
ORDER = (
    "quickstart",
    "flax_training",
    "equinox_training",
    "param_groups",
    "gradient_accumulation",
    "batch_size_scaling",
    "regularisation",
    "schedule_comparison",
    "schedule_free",
    "second_order",
    "gradient_check",
    "meta_learning_rate",
    "decay_study",
)


@dataclasses.dataclass(frozen=True)
class Example:
    """One script in examples/."""

    name: str
    doc: str
    runnable: bool  # has an `if __name__ == "__main__":` guard

    @property
    def title(self) -> str:
        """The docstring's first line."""
        return self.doc.strip().splitlines()[0].strip() if self.doc else self.name

    @property
    def body(self) -> str:
        """The docstring after its first line."""
        lines = self.doc.strip().splitlines()[1:]
        return "\n".join(lines).strip("\n")

    @property
    def command(self) -> str:
        """How to run it from the repository root."""
        return f".venv/bin/python examples/{self.name}.py"


class MissingOutput(RuntimeError):
    """A runnable example has no stored printed output."""


def _has_main_guard(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            texts = {ast.unparse(n) for n in names}
            if texts == {"__name__", "'__main__'"}:
                return True
    return False


def find_examples(examples_dir: pathlib.Path = EXAMPLES) -> list[Example]:
    """Every examples/*.py, in the page's order."""
    found = {}
    for path in sorted(examples_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found[path.stem] = Example(
            name=path.stem,
            doc=ast.get_docstring(tree, clean=True) or "",
            runnable=_has_main_guard(tree),
        )
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found.values(), key=lambda e: (rank.get(e.name, len(ORDER)), e.name))


def output_path(docs_dir: pathlib.Path, name: str) -> pathlib.Path:
    """Where the example's printed output is stored."""
    return pathlib.Path(docs_dir) / OUTPUTS / f"{name}.txt"


def _fence(text: str, info: str = "text") -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


def _entry(example: Example, output: str) -> str:
    run = example.command
    if example.name in MAKE_TARGETS:
        run = f"{MAKE_TARGETS[example.name]}\n# the same as\n{run}"
    parts = [
        f"## {example.name}.py: {example.title}",
        example.body,
        "**Run it**",
        _fence(run, "sh"),
        "**What it prints**",
        _fence(output),
    ]
    return "\n\n".join(p for p in parts if p)


def render(docs_dir: pathlib.Path = DOCS, examples_dir: pathlib.Path = EXAMPLES):
    """The text of docs/examples.md; raises MissingOutput if one is not stored."""
    examples = find_examples(examples_dir)
    runnable = [e for e in examples if e.runnable]
    helpers = [e for e in examples if not e.runnable]
    missing = [e.name for e in runnable if not output_path(docs_dir, e.name).exists()]
    if missing:
        raise MissingOutput(
            f"no stored output for example(s) {', '.join(missing)}: run "
            f"`{REFRESH} {' '.join(missing)}`"
        )
    lines = [
        "# Examples",
        "",
        "<!-- Generated by docs/gen_gallery.py from examples/*.py and the outputs "
        "stored in docs/examples/; do not edit. -->",
        "",
        "Each script in the repository's `examples/` folder is a complete program "
        "that trains something with gradtx. They need the example extras: "
        "`make demo` installs them into `.venv` (elsewhere, "
        "`pip install -e '.[examples]'`). Run them from the repository root. "
        "What each prints below was recorded from a full run with no arguments "
        "on a 2-core CPU; your timings and the last digits of some losses will "
        "differ.",
        "",
        "| example | what it teaches |",
        "| --- | --- |",
    ]
    for e in runnable:
        anchor = f"{e.name}py-{_slug(e.title)}"
        lines.append(f"| [`{e.name}.py`](#{anchor}) | {e.title} |")
    lines.append("")
    for e in runnable:
        text = output_path(docs_dir, e.name).read_text()
        lines += [_entry(e, text), ""]
    if helpers:
        lines += [
            "## Helper modules",
            "",
            "These files are imported by the examples above and do not run on "
            "their own.",
            "",
        ]
        for e in helpers:
            lines.append(f"- `{e.name}.py`: {e.title}")
        lines.append("")
    return "\n".join(lines)


def _slug(text: str) -> str:
    """The anchor MkDocs' toc extension gives a heading (default slugify)."""
    import re
    import unicodedata

    value = unicodedata.normalize("NFKD", text)
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def generate(docs_dir=DOCS):
    """Write docs_dir/examples.md from the stored outputs (no example is run).

    The stored outputs are read from this file's folder (docs/examples/);
    docs_dir only says where the page goes.
    """
    text = render(DOCS)
    path = pathlib.Path(docs_dir) / "examples.md"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def run_examples(names=None, docs_dir=DOCS, examples_dir=EXAMPLES):
    """Run each named example (all runnable ones by default), store its output."""
    examples = {e.name: e for e in find_examples(examples_dir) if e.runnable}
    names = list(names or examples)
    unknown = [n for n in names if n not in examples]
    if unknown:
        raise SystemExit(f"unknown example(s) {unknown}; choose from {list(examples)}")
    out_dir = pathlib.Path(docs_dir) / OUTPUTS
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"running examples/{name}.py ...", flush=True)
        started = time.perf_counter()
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        done = subprocess.run(
            [sys.executable, str(pathlib.Path(examples_dir) / f"{name}.py")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"examples/{name}.py failed ({done.returncode})")
        text = "\n".join(line.rstrip() for line in done.stdout.splitlines())
        output_path(docs_dir, name).write_text(text.strip("\n") + "\n")
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--refresh",
        nargs="*",
        metavar="NAME",
        help="run these examples (none named: all) and store what they print",
    )
    args = parser.parse_args()
    if args.refresh is not None:
        run_examples(args.refresh)
    print(generate(DOCS))
