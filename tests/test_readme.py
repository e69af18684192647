"""The code shown in README.md runs and prints what the README says."""

import doctest
import pathlib
import re

import jax.numpy as jnp
import numpy as np

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_repr_block_is_a_passing_doctest():
    (block,) = [b for b in BLOCKS if b.startswith(">>>")]
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_readme_training_loop_trains():
    (block,) = [b for b in BLOCKS if not b.startswith(">>>")]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
    y = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3
    params, state, step = namespace["params"], namespace["state"], namespace["step"]
    losses = []
    for _ in range(300):
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    assert losses[-1] < 0.01 * losses[0]
