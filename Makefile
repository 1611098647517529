# gnp-ray: `make imagenet` and `make test` are the only two commands anyone needs to type.
# Every target that needs the environment builds it first (pip into .venv; uv/poetry would download GBs).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# make imagenet: the paper's grid with DATA=/path/to/imagenet (GPUs); the demo grid on the embedded digits without.
DATA ?=
RECIPE ?= imagenet-resnet50
RESULTS ?= $(CURDIR)/results
EXPERIMENT ?=
ADDRESS ?= http://127.0.0.1:8265

.PHONY: install test imagenet train tables lint bench submit clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

imagenet: $(VENV)/.installed
	$(PY) -m jobs.imagenet --recipe $(RECIPE) $(if $(DATA),--data $(DATA)) --results $(RESULTS) $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

train: $(VENV)/.installed
	$(PY) -m gnp.train $(ARGS)

tables: $(VENV)/.installed
	@test -n "$(RESULTS)" || { echo "usage: make tables RESULTS=results/<experiment>"; exit 2; }
	$(PY) -m analysis table $(RESULTS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gnp jobs analysis tests bench

bench: $(VENV)/.installed
	$(PY) bench/step_ratio.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
