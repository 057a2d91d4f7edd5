# Set-up commands for a fresh machine: `make test` and `make demo` create .venv, install, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch and torchvision are pinned to the builds this project is tested with (they install from local disk here).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast lint demo clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/python -m ruff check .

demo: $(STAMP)
	$(BIN)/mmalign demo --out outputs/demo --overwrite

clean:
	rm -rf $(VENV) outputs .pytest_cache
