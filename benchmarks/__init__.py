"""Side-by-side timing of gradtx, optax and torch.optim optimizer steps.

Run `python -m benchmarks --quick` from the repository root; see
`benchmarks/README.md` for the options and how to read the numbers.
"""
