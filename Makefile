# tuneline: `make run` materializes the whole graph, `make test` runs the suite, `make ui` opens Dagster.
# Each creates the environment first when it is missing (CPU torch from the local wheel, then the pinned stack).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export TUNELINE_HOME ?= $(CURDIR)/.tuneline
export DAGSTER_HOME  ?= $(TUNELINE_HOME)/dagster
export HF_HUB_OFFLINE := 1

.PHONY: env run ui test clean-artifacts

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: env
	$(BIN)/tuneline run

ui: env
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

test: env
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean-artifacts:
	rm -rf $(TUNELINE_HOME)
