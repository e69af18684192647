# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo study test lint docs docs-serve bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

# The flagship: coupled versus decoupled weight decay on scikit-learn's digits
# (2-4 minutes on 2 cores). Results go to runs/decay_study/.
demo: $(VENV)/.installed-examples
	$(BIN)/python examples/decay_study.py

# The same study where the network memorises and the decay decides the test
# error: scikit-learn's digits with 30% of the training labels made random,
# an MLP with two hidden layers, 9 variants x 8 x 8 grids x 5 seeds x 2
# schedules (up to 30 minutes on 2 cores). Results go to
# runs/decay_study_noisy_digits/; writes its section of docs/decay_study.md.
# (`python examples/decay_study.py --problem mnist1d --docs` runs the same
# study on MNIST-1D.)
study: $(VENV)/.installed-examples
	$(BIN)/python examples/decay_study.py --problem noisy_digits --docs

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright gradtx

# Runs every docstring example, regenerates the generated pages (schedule
# gallery, optimizer pages) and builds the site with warnings as errors
# (strict mode is set in mkdocs.yml).
docs: $(VENV)/.installed-docs
	$(BIN)/python -m pytest -q -p no:cacheprovider --doctest-modules gradtx
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build

# Builds the site and serves it at http://127.0.0.1:8000 until Ctrl-C; rerun
# it to see edits. (Without --no-livereload every rebuild would set off the
# next: the build hooks rewrite the generated pages inside docs/.)
docs-serve: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --no-livereload --dev-addr 127.0.0.1:8000

# The benchmark harness (benchmarks/README.md): gradtx next to optax and
# torch.optim in one process. Both rewrite docs/benchmarks.md from the results.
bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) build *.egg-info
