# The two commands: `make run` (set up, then serve the bundled model on :8080) and
# `make test` (set up, then every check and test). `.ci/run` calls `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where torch comes from (scripts/torch_index_args.sh says exactly how). `auto`: the CPU build
# from PyTorch's CPU wheel index on a Linux machine without an NVIDIA GPU, unless pip already
# has a package index, mirror or wheel directory configured (then that, untouched). Override:
#   make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126   # torch from this index
#   make setup TORCH_INDEX_URL=                                         # pip's configuration alone
TORCH_INDEX_URL ?= auto
TORCH_CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.PHONY: setup system-deps run test lint typecheck unit bench clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: anything unpinned would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet $$(sh scripts/torch_index_args.sh '$(TORCH_INDEX_URL)' '$(TORCH_CPU_INDEX_URL)' $(BIN)/python) torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/install_system_deps.sh

run: setup
	$(BIN)/mobile-mm serve --host 0.0.0.0 --port 8080 --model default

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -q

test: setup lint typecheck unit

bench: setup
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
