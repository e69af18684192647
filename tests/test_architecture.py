"""The package's layout rules, read from its source.

- No module imports an underscore name from another module: what several
  modules share lives in a private module (`gradtx/_checks.py`,
  `gradtx/_pairs.py`, `gradtx/_describing.py`) under a public name.
- The core never imports the fused annex (`gradtx/fused/`), and without it
  the library imports and runs.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gradtx

PACKAGE = Path(gradtx.__file__).parent
ANNEX = PACKAGE / "fused"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _imports(tree):
    """(module, name) for every `from gradtx... import name` in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "gradtx"
        ):
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gradtx"):
                    yield alias.name, None


def test_no_module_imports_a_private_name_from_another():
    offences = []
    for path, tree in _modules():
        for module, name in _imports(tree):
            if name is not None and name.startswith("_"):
                offences.append(f"{path.relative_to(PACKAGE)}: {module}.{name}")
        for node in ast.walk(tree):  # gradtx.module._name reached by attribute
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "gradtx"
            ):
                offences.append(f"{path.relative_to(PACKAGE)}: {ast.unparse(node)}")
    assert not offences, offences


def test_the_core_never_imports_the_annex():
    offences = []
    for path, tree in _modules():
        if ANNEX in path.parents:
            continue
        for module, name in _imports(tree):
            if module.startswith("gradtx.fused") or (
                module == "gradtx" and name == "fused"
            ):
                offences.append(f"{path.relative_to(PACKAGE)}: {module} {name}")
    assert not offences, offences


def test_without_the_annex_the_library_runs(tmp_path):
    # A copy of the package with the annex deleted, imported first.
    copy = tmp_path / "gradtx"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(copy / "fused", ignore_errors=True)  # absent if deleted
    script = """
import sys
# The editable install maps gradtx's modules to the checkout; drop its finder
# so that gradtx and its submodules come from the copy.
sys.meta_path[:] = [
    f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", repr(f))
]
import jax.numpy as jnp
import gradtx

assert gradtx.__file__.startswith(sys.argv[1]), gradtx.__file__
assert "fused_step" not in gradtx.__all__ and not hasattr(gradtx, "fused_step")
tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(0.1))
params = {"w": jnp.ones(3)}
updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
assert float(gradtx.apply_updates(params, updates)["w"][0]) < 1.0
print("ok")
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
