"""Run the how-to guides' snippets and write their code and output into the pages.

Each guide is two files:

- docs/howto/src/<name>.py, the snippet: a plain Python program (run it
  with `python docs/howto/src/<name>.py`), cut into parts by lines that
  start with `# %%`. What comes before the first `# %%` line is a header
  that the page does not show.
- docs/howto/<name>.md, the page: hand-written prose with one region per
  part, `<!-- snippet N -->` ... `<!-- /snippet -->` (N counts from 1).

`generate` runs each snippet in a fresh Python process (so a snippet may
configure jax before importing it), in a temporary working folder, its
parts in order in one namespace, and rewrites every region of the page as
the part's code followed by what that part printed. A part that raises
stops the build with an error naming the snippet, the part and its line;
so does a snippet that runs longer than `TIMEOUT` seconds. Warnings raised
by gradtx or by the snippet itself are shown in the part's output; others
go to stderr.

Run directly with `python docs/gen_howto.py [name ...]` to rewrite the
named pages (all without names); `python docs/gen_howto.py --run SOURCE
RESULT` runs one snippet and writes its outputs to RESULT as JSON (what
each snippet's process does).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

DOCS = pathlib.Path(__file__).resolve().parent
PAGES = DOCS / "howto"
SOURCES = PAGES / "src"
TIMEOUT = 240  # seconds per snippet; a cold build of the fused kernel takes ~20
OUTPUT_FENCE = '```text title="Output"'
_CELL = re.compile(r"^# %%.*\n?", flags=re.M)
_REGION = re.compile(
    r"^<!-- snippet (\d+) -->\n(.*?)^<!-- /snippet -->$", flags=re.S | re.M
)
_OUTPUT = re.compile(
    r"\n" + re.escape(OUTPUT_FENCE) + r"\n(.*)^```\n\Z", flags=re.S | re.M
)


class SnippetError(RuntimeError):
    """A snippet failed or timed out; the message names the file and part."""


def sources() -> list[pathlib.Path]:
    """Every guide's snippet, by name."""
    return sorted(SOURCES.glob("*.py"))


def page_of(source: pathlib.Path, docs_dir: pathlib.Path = DOCS) -> pathlib.Path:
    """The page that shows a snippet."""
    return pathlib.Path(docs_dir) / "howto" / f"{source.stem}.md"


def parts(text: str) -> list[tuple[int, str]]:
    """A snippet's parts: each one's code and the line its code starts on.

    Blank lines at either end of a part are dropped.
    """
    cuts = list(_CELL.finditer(text))
    found = []
    for i, cut in enumerate(cuts):
        end = cuts[i + 1].start() if i + 1 < len(cuts) else len(text)
        body = text[cut.end() : end]
        stripped = body.lstrip("\n")
        line = text.count("\n", 0, cut.end()) + 1 + (len(body) - len(stripped))
        found.append((line, stripped.rstrip() + "\n"))
    return found


def region(code: str, output: str) -> str:
    """What the page shows for one part: its code, then its output if any."""
    text = f"```python\n{code}```\n"
    if output.strip():
        text += f"\n{OUTPUT_FENCE}\n{output.rstrip()}\n```\n"
    return text


def render(name: str, page: str, codes: list[str], outputs: list[str]) -> str:
    """The page with region N rewritten from part N's code and output."""
    numbers = [int(m.group(1)) for m in _REGION.finditer(page)]
    if numbers != list(range(1, len(codes) + 1)):
        raise SnippetError(
            f"docs/howto/{name}.md: its snippet regions are numbered {numbers}, "
            f"but docs/howto/src/{name}.py has {len(codes)} parts"
        )

    def rewrite(match: re.Match) -> str:
        i = int(match.group(1)) - 1
        body = region(codes[i], outputs[i])
        return f"<!-- snippet {i + 1} -->\n{body}<!-- /snippet -->"

    return _REGION.sub(rewrite, page)


def shown(page: str) -> list[tuple[str, str]]:
    """The code and the output shown in each region of a page ('' for none)."""
    found = []
    for match in _REGION.finditer(page):
        body = match.group(2)
        code = re.match(r"```python\n(.*?)^```\n", body, flags=re.S | re.M)
        rest = body[code.end() :] if code else body
        output = _OUTPUT.match(rest)
        found.append(
            (
                code.group(1) if code else "",
                output.group(1).rstrip() + "\n" if output else "",
            )
        )
    return found


def run_source(source: pathlib.Path, timeout: float = TIMEOUT) -> list[str]:
    """Run a snippet's parts in a fresh process; return what each printed."""
    with tempfile.TemporaryDirectory(prefix=f"howto_{source.stem}_") as work:
        result = pathlib.Path(work) / "result.json"
        command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--run"]
        try:
            proc = subprocess.run(
                [*command, str(source.resolve()), str(result)],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise SnippetError(
                f"{source.name}: ran longer than {timeout:g} s"
            ) from error
        if not result.exists():
            raise SnippetError(
                f"{source.name}: the process ended without a result "
                f"(exit code {proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        report = json.loads(result.read_text())
    if proc.stderr.strip():
        sys.stderr.write(f"[{source.name}] {proc.stderr}")
    if "error" in report:
        raise SnippetError(
            f"{source.name}, part {report['part']} (line {report['line']}) "
            f"failed:\n{report['error']}"
        )
    return report["outputs"]


def _shown_warning(warning: warnings.WarningMessage, source: pathlib.Path) -> bool:
    """Whether a warning comes from gradtx or from the snippet itself.

    A warning whose stack level reaches above the snippet's code is
    attributed to this file, which runs it.
    """
    filename = pathlib.Path(warning.filename)
    return filename in (source, pathlib.Path(__file__)) or "gradtx" in filename.parts


def _run(source: pathlib.Path, result: pathlib.Path) -> int:
    """Run one snippet's parts here (the snippet's own process)."""
    namespace: dict = {"__name__": "__main__", "__file__": str(source)}
    outputs: list[str] = []
    report: dict = {"outputs": outputs}
    for number, (line, code) in enumerate(parts(source.read_text()), 1):
        printed = io.StringIO()
        compiled = compile("\n" * (line - 1) + code, str(source), "exec")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                with contextlib.redirect_stdout(printed):
                    exec(compiled, namespace)
        except BaseException:  # noqa: BLE001 - reported with the file and part
            report.update(error=traceback.format_exc(), part=number, line=line)
            break
        finally:
            sys.stdout.flush()
        for warning in caught:
            text = f"{warning.category.__name__}: {warning.message}"
            if _shown_warning(warning, source):
                printed.write(text + "\n")
            else:
                print(f"part {number}: {text}", file=sys.stderr)
        lines = printed.getvalue().splitlines()
        outputs.append("".join(line.rstrip() + "\n" for line in lines))
    result.write_text(json.dumps(report))
    return 1 if "error" in report else 0


def build(source: pathlib.Path, docs_dir: pathlib.Path = DOCS) -> pathlib.Path:
    """Run one snippet and write its page under docs_dir (from docs/howto/)."""
    start = time.perf_counter()
    outputs = run_source(source)
    codes = [code for _, code in parts(source.read_text())]
    page = render(source.stem, page_of(source).read_text(), codes, outputs)
    path = page_of(source, docs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != page:
        path.write_text(page)
    seconds = time.perf_counter() - start
    print(f"gen_howto: {source.name} ran in {seconds:.1f} s", file=sys.stderr)
    return path


def generate(
    docs_dir: pathlib.Path = DOCS,
    names: list[str] | None = None,
    jobs: int | None = None,
) -> list[pathlib.Path]:
    """Run every snippet (or those named) and rewrite its page under docs_dir."""
    chosen = [s for s in sources() if names is None or s.stem in names]
    jobs = jobs or min(2, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda s: build(s, docs_dir), chosen))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        sys.exit(_run(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])))
    for written in generate(DOCS, sys.argv[1:] or None):
        print(written)
