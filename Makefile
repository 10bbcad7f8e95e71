# Two commands for a fresh machine: `make demo` and `make test`.
# The virtual environment is (re)built only when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed.stamp
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,postgres]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	BIN=$(BIN) bash scripts/demo.sh $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/train_input.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
