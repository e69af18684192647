"""Side-by-side timing of gradtx, optax and torch.optim optimizer steps.

`python -m benchmarks --quick` from the repository root; `benchmarks/README.md`
says what is timed and how.
"""
