# The two commands of the README. Both create and use .venv in the repo root.
#   make demo   build the synthetic demo corpus and run the whole pipeline (dvc repro in the Prefect flow);
#               `stego run` ends with the compact scores table (preset, weights, report path)
#   make test   install everything needed and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# requirements.lock pins every transitive package to the set proven on this machine kind.
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# `stego run` is `dvc repro` inside the Prefect flow `stego`, with one local Prefect server
# for all stages (each stage would otherwise start its own, about 7 s apiece).
demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/stego run --no-record

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf artifacts data/demo metrics plots
