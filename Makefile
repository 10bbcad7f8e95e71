# Two commands for a fresh machine: `make demo` and `make test`.
# The virtual environment is (re)built only when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed.stamp
BIN    := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,postgres,export,tracking]"
	@touch $(STAMP)

install: $(STAMP)

# The whole study on generated data (experiments/demo.yaml writes under demo/); re-running skips
# what is already up to date.
demo: $(STAMP)
	$(BIN)/mammolab run experiments/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/train_input.py
	$(BIN)/python benchmarks/predict.py

clean:
	rm -rf $(VENV) demo .pytest_cache
