# Two entry points, both self-contained from a fresh clone:
#   make demo  - create .venv, install, train + test a ViT on the built-in synthetic set
#   make test  - create/update .venv and run the test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The demo always starts afresh: its run folder is its own and is replaced on every `make demo`.
demo: $(STAMP)
	rm -rf runs/synthetic-demo
	$(BIN)/fgir train synthetic/vit

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs
