"""A whole optimizer step in one pass over memory: `fused_step`.

The plain step is two calls::

    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

XLA compiles it into a few loops per leaf. On a GPU it fuses them into one
kernel that reads p, g, m, v and writes p, m, v once (28 bytes per float32
parameter for Adam, the least there is). XLA:CPU does not: it writes the new
moments, then reads them back to update the parameter, and it runs each
leaf's loops one after another.

`fused_step(tx)` returns a function with the plain step's meaning, `params,
state = step(params, state, grads)`. For the chains it knows (SGD with or
without momentum, Adam, AdamW, Adam with coupled L2, each with an optional
`clip_by_global_norm` in front), float32 params and gradients (moments in
float32 or bfloat16) on a single CPU device, it runs the whole step as a few
calls of a small C++ kernel that visits each element once, on all the cores
XLA uses. The kernel evaluates the plain step's equations in float32, with
the same per-step scalars, but it is not the code XLA generates: which
multiply-adds XLA:CPU contracts into fused multiply-adds, and whether it
computes in float32 or wider (float64 hyperparameters under x64), depends on
the chain, the jax version and the instruction set it compiles for. So the
two steps agree to a bound, not bit for bit, on every CPU: after one step
from the same inputs, each parameter and each float32 moment is within
8 float32 epsilons (2**-23) of the plain step's, and within 8 of the step
evaluated in float64, the epsilon taken at the size of the terms the value
sums (|p| plus the learning rate times the update with every term taken in
absolute value: the parameter's own size unless its terms cancel). A moment
kept in bfloat16 may be one bfloat16 place further. Over 120 steps both stay
within 32 epsilons of the float64 trajectory, relative to each leaf's
largest value. See docs/fused.md, "Same numbers". For anything else (another
chain, another dtype, a GPU or TPU, a tree sharded over several devices) it
runs the plain step, which is what it means. `flat_moments=True` keeps each
moment in one flat array, so that a tree of many small leaves passes half as
many buffers to the step.

The kernel (`gradtx/fused/_kernel.cc`) is compiled on first use with the
system C++ compiler (`$CXX` if set, else `c++`, `g++` or `clang++`) against
the XLA FFI headers that jaxlib ships, and cached in `$GRADTX_CACHE_DIR`
(default `~/.cache/gradtx`) with its SHA-256, which is checked before each
load (a damaged library is built again). Without a compiler the step warns
once and runs the plain path. Set `GRADTX_FUSED=0` to turn the kernel off
(it is read when a step is traced).

This subpackage is an annex: the core library never imports it, and a
transformation is run by the kernel only if its factory has a reader in
`_plan.READERS`. The modules, one concern each: `_plan` (which chains run
the kernel), `_build` (compiling, caching and loading it), `_call` (calling
it over a step's leaves), `_state` (where the chain's state keeps each
link's entry and moments) and `_step` (`FusedStep`: the kernel or the plain
step, and the kernel's inputs).

Examples:
    Whether the kernel runs here (without a compiler, the first call warns
    why not, once per process):

    >>> import warnings
    >>> import gradtx
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     available = gradtx.fused.kernel_available()
    >>> isinstance(available, bool)
    True
"""

from gradtx.fused._build import kernel_available as kernel_available
from gradtx.fused._step import FusedStep as FusedStep
from gradtx.fused._step import fused_step as fused_step

__all__ = ["FusedStep", "fused_step", "kernel_available"]
