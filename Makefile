# A newcomer runs `make demo` or `make test` on a fresh machine; both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch/torchvision are pinned first: this pair installs from local disk on our machines,
# while a looser requirement could start a multi-GB download.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint format readme dist clean

# NetsPresso Trainer's wheel brings its ResNet for the interop tests; its own dependencies (gradio, datasets,
# opencv, ...) are not needed for that and are left out.
NETSPRESSO := netspresso-trainer==1.4.1

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(NETSPRESSO)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/zoo list
	$(BIN)/zoo count 'resnet*' 'resnext*' 'wide_*'
	$(BIN)/python benchmarks/throughput.py --models resnet50 --batch-sizes 8 --iters 5 --repeats 3 --optimize \
		--baseline torchvision --out runs/demo-bench

test: $(STAMP)
	$(BIN)/ruff check zoo tools benchmarks tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check zoo tools benchmarks tests
	$(BIN)/ruff format --check zoo tools benchmarks tests

format: $(STAMP)
	$(BIN)/ruff format zoo tools benchmarks tests
	$(BIN)/ruff check --fix zoo tools benchmarks tests

readme: $(STAMP)
	$(BIN)/python tools/update_readme.py

# An sdist, then a wheel built from it (python -m build; no isolation: the build tools come from .venv).
# The wheel carries weights/ as the package data zoo._weights.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	ls -l dist

# runs/ holds training runs, which are never deleted here: only what `make demo` wrote.
clean:
	rm -rf $(VENV) runs/demo-bench dist build .pytest_cache .ruff_cache .hypothesis
