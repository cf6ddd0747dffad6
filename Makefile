# The two commands of the README: `make pipeline` (the main job) and `make test` (every test).
# Each sets up .venv on first use. On a GPU machine, pip takes torch's CUDA build from PyPI; here the CPU build on disk.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= default
# The main job's settings, sized for a 2-core CPU (about 8 minutes, plus 1-2 to create .venv): an 8192-token vocabulary and the tiny preset,
# trained for 1200 small steps, which on a CPU learns far more than fewer, larger steps of a bigger model (BENCHMARKS.md).
# On a GPU, see README.md ("On a GPU, and on many") for the 125m settings.
PIPELINE_PARAMS ?= -p card_dir=data_cards -p vocab_size=8192 -p preset=tiny -p seq_len=256 -p micro_batch=8 \
                   -p batch_tokens=2048 -p max_steps=1200 -p warmup_steps=50 -p lr=3e-3 -p eval_every=200 -p save_every=200 \
                   -p bpb_max_bytes=300000 -p max_new_tokens=128 -p fim_max_cases=200
PARAMS ?=
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)  # Jupyter refuses root (containers, CI) without it
NB_WORKERS ?= 2
PYTEST_WORKERS ?= 2

.PHONY: pipeline test check-sync nbtest pytest bench lab clean-venv

$(STAMP): settings.ini setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip check
	touch $@

## The main job: curate -> tokenizer -> train -> evaluate on the embedded default corpus, into runs/$(RUN)/.
pipeline: $(STAMP)
	$(BIN)/codecomplete run pipeline --run $(RUN) $(PIPELINE_PARAMS) $(PARAMS)

## Every test: notebooks in sync with the package, notebook tests (nbdev_test), then pytest.
test: $(STAMP) check-sync nbtest pytest

check-sync: $(STAMP)
	PATH=$(BIN):$$PATH bash .ci/check_sync

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers $(NB_WORKERS) --timing

pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --durations=15 tests

## Explore the notebooks: JupyterLab on nbs/, listening on loopback only, with this project's .venv as the python3 kernel.
lab: $(STAMP)
	PATH=$(BIN):$$PATH jupyter-lab --notebook-dir=nbs --ServerApp.ip=127.0.0.1 $(LAB_ROOT) $(LAB_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
