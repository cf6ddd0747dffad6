# The two commands of the README: `make pipeline` (the main job) and `make test` (every test).
# Each sets up .venv on first use. On a GPU machine, pip takes torch's CUDA build from PyPI; here the CPU build on disk.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= default
PARAMS ?=
NB_WORKERS ?= 2
PYTEST_WORKERS ?= 2

.PHONY: pipeline test check-sync nbtest pytest bench clean-venv

$(STAMP): settings.ini setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip check
	touch $@

## The main job: curate -> tokenizer -> train -> evaluate on the embedded default corpus, into runs/$(RUN)/.
pipeline: $(STAMP)
	$(BIN)/codecomplete run pipeline --run $(RUN) -p card_dir=data_cards $(PARAMS)

## Every test: notebooks in sync with the package, notebook tests (nbdev_test), then pytest.
test: $(STAMP) check-sync nbtest pytest

check-sync: $(STAMP)
	PATH=$(BIN):$$PATH bash .ci/check_sync

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers $(NB_WORKERS) --timing

pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --durations=15 tests

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
