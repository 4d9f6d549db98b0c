# Two commands do all the set-up (README): `make simulate` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nebula-installed

.PHONY: setup simulate benchmark test test-fast lint clean
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "needs $(PY) (Python 3.11)"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build; an unpinned torch pulls gigabytes of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/nebula setup
	touch $(STAMP)

setup: $(STAMP)

simulate: $(STAMP)
	$(BIN)/nebula simulate

benchmark: $(STAMP)
	$(BIN)/nebula benchmark

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The fast lane: every test but the end-to-end ones on real models and loopback deployments (about 1 min).
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -m "not e2e"

# Layer contracts (pyproject.toml, [tool.importlinter]), then ruff's lint and format check ([tool.ruff]),
# then what a device runs (common, client with its edge runtime, learning) against Python 3.10 (JetPack 6):
# vermin fails on 3.11-only syntax or stdlib (datetime.UTC, tomllib, typing.Self, except*, ...), annotations
# counted as if evaluated.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin --quiet --target=3.10- --violations --no-tips --eval-annotations common client learning

clean:
	rm -rf runs .pytest_cache
