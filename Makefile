# Two commands for a fresh machine: `make demo` and `make test`.
# The virtual environment is (re)built only when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed.stamp
BIN    := $(VENV)/bin

.PHONY: install demo test lint bench clean docs docs-serve runtime-wheel

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

# The light runtime for exported models (no torch): dist/mammolab_runtime-*.whl (docs/guide/export.md).
runtime-wheel: $(STAMP)
	$(BIN)/python scripts/build_runtime.py --out dist

# The documentation site (mkdocs.yml): strict, so a warning or a broken link fails; into site/.
DOCS_STAMP := $(VENV)/.docs.stamp
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

clean:
	rm -rf $(VENV) demo .pytest_cache site
