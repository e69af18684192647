"""examples/second_order.py and examples/gradient_check.py with --quick.

Both examples turn on float64 (`jax_enable_x64`) for their whole process,
so they run in subprocesses and the tests read the numbers they print.
"""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def run_example(name):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def second_order():
    return run_example("second_order")


@pytest.fixture(scope="module")
def gradient_check():
    return run_example("gradient_check")


def method_rows(text):
    """{method: (iters, evals, loss gap, param dist)} from the first table."""
    rows = {}
    pattern = r"^(gd|adam|lbfgs|newton|scipy)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)$"
    for match in re.finditer(pattern, text, re.MULTILINE):
        name, iters, evals, gap, dist = match.groups()
        rows[name] = (int(iters), int(evals), float(gap), float(dist))
    return rows


def test_lbfgs_reaches_scipys_optimum(second_order):
    rows = method_rows(second_order)
    assert set(rows) == {"gd", "adam", "lbfgs", "newton", "scipy"}, second_order
    _, evals, gap, dist = rows["lbfgs"]
    assert abs(gap) < 1e-4  # the requirement; observed ~1e-16
    assert abs(gap) < 1e-8 and dist < 1e-3  # --quick: 100 iterations
    # first-order methods in the same budget are further away
    assert rows["gd"][2] > abs(gap) and rows["adam"][2] > abs(gap)
    assert evals < 3 * rows["lbfgs"][0]


def test_newton_converges_quadratically(second_order):
    table = second_order.split("Newton's method, step by step")[1]
    steps = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", table, re.MULTILINE)
    grad_norms = [float(g) for _, _, g, _ in steps]
    gaps = [float(gap) for _, gap, _, _ in steps]
    assert len(steps) >= 7
    assert abs(gaps[-1]) < 1e-12 and grad_norms[-1] < 1e-10
    # quadratic convergence: once below 1e-2, |g_{k+1}| <= C |g_k|^2 until
    # round-off (observed C = 15 to 30)
    close = [k for k, g in enumerate(grad_norms) if 1e-12 < g < 1e-2]
    assert len(close) >= 3
    for k in close[1:]:
        assert grad_norms[k] < 100 * grad_norms[k - 1] ** 2, grad_norms
    assert abs(method_rows(second_order)["newton"][2]) < 1e-12


def test_gradient_check_passes_jax_grad_and_flags_bugs(gradient_check):
    text = gradient_check
    assert "check jax.grad float64: PASS" in text
    assert "check jax.grad float32: PASS" in text
    max64 = float(re.search(r"check jax.grad float64: PASS \(max (\S+),", text)[1])
    assert max64 < 1e-8
    rows = re.findall(r"^\s+(correct|forgot L2 term|forgot tanh')\s+(float\d\d)\s.*?"
                      r"\s(PASS|FAIL.*)$", text, re.MULTILINE)  # fmt: skip
    verdicts = {(label, dtype): verdict for label, dtype, verdict in rows}
    assert len(verdicts) == 6, text
    assert verdicts["correct", "float64"] == "PASS"
    assert verdicts["correct", "float32"] == "PASS"
    for dtype in ("float64", "float32"):
        assert verdicts["forgot L2 term", dtype] == "FAIL w1,w2"
        assert verdicts["forgot tanh'", dtype] == "FAIL w1,b1"


def test_step_size_trade_off_is_shown(gradient_check):
    table = gradient_check.split("2. step size")[1].split("3. hand-written")[0]
    rows = re.findall(r"^\s+(\S+e-\d+)\s+(\S+)\s+(\S+)$", table, re.MULTILINE)
    errors = {float(h): (float(e64), float(e32)) for h, e64, e32 in rows}
    assert {1e-2, 1e-4, 1e-6} <= set(errors)
    # float64: truncation at large h; float32: round-off at small h
    assert errors[1e-6][0] < errors[1e-2][0]
    assert errors[1e-6][1] > errors[1e-2][1]
