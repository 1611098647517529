# gnp-ray: `make imagenet` and `make test` are the only two commands anyone needs to type.
# Every target that needs the environment builds it first (pip into .venv; uv/poetry would download GBs).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# make imagenet: the paper's grid with DATA=/path/to/imagenet (GPUs); the demo grid on the embedded digits without.
# GRID="..." replaces the grid's arguments entirely (python -m jobs.grid --help lists them); EXPERIMENT names it
# (the same name resumes or extends it); DRY_RUN=1 prints the trials and their GPU-hours and starts nothing.
DATA ?=
RECIPE ?= imagenet-resnet50
RESULTS ?= $(CURDIR)/results
EXPERIMENT ?=
DRY_RUN ?=
ADDRESS ?= http://127.0.0.1:8265
# The interpreter the job runs on the cluster: one with this project's environment (README, "On a Ray cluster").
CLUSTER_PYTHON ?= python

# The demo grid on the embedded digits (no DATA): 2 seeds x (standard, GNP alpha 0.8, SAM), 2 CPU workers each,
# two trials at once (half a CPU per worker), so that one trial trains while the next starts its workers.
DEMO_GRID = --recipe digits --seeds 0,1 --alpha 0,0.8,1 --r 0.05 --workers 2 --cpus-per-worker 0.49 \
	--experiment $(or $(EXPERIMENT),digits-demo)
# The paper's ImageNet grid for RECIPE (DATA given): 3 seeds x alpha in {0, 0.2, 0.3, 1}, r = 0.05.
WORKERS ?= 4
PAPER_GRID = --recipe $(RECIPE) --data $(DATA) --seeds 0,1,2 --alpha 0,0.2,0.3,1 --r 0.05 \
	--workers $(WORKERS) --gpus-per-worker 1 --experiment $(or $(EXPERIMENT),$(RECIPE)-paper)
GRID ?= $(if $(DATA),$(PAPER_GRID),$(DEMO_GRID))
GRID_ARGS = $(GRID) --results $(RESULTS) $(if $(DRY_RUN),--dry-run)

.PHONY: install test test-oldest test-gpu imagenet train tables lint bench submit clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The suite on the oldest torch and torchvision pyproject.toml admits (its lower bounds), everything else as
# in constraints.txt, in its own environment (.venv-oldest; pip downloads about 3 GB of CUDA wheels).
OLDEST := torch==2.11.0 torchvision==0.26.0
VENV_OLDEST := .venv-oldest
test-oldest:
	test -x $(VENV_OLDEST)/bin/python || $(PYTHON) -m venv $(VENV_OLDEST)
	mkdir -p build && grep -vE '^(torch|torchvision)==' constraints.txt > build/constraints-oldest.txt
	printf '%s\n' $(OLDEST) >> build/constraints-oldest.txt
	$(VENV_OLDEST)/bin/python -m pip install --quiet -c build/constraints-oldest.txt -e '.[dev]'
	$(VENV_OLDEST)/bin/python -m pytest -q -p no:cacheprovider

# The CUDA tier and the GPU benchmarks on a machine with one GPU: torch and torchvision are enough (no Ray,
# no .venv), logs and JSON under OUT (about 9 minutes on an H100).
OUT ?= bench/results/gpu-run
test-gpu:
	bash bench/gpu.sh $(OUT)

imagenet: $(VENV)/.installed
	$(PY) -m jobs.grid $(GRID_ARGS)

# The same grid on a running Ray cluster through the Jobs API (RESULTS must then be shared: s3://... or NFS);
# it waits for the job, prints its log's end and its final status, and fails when the job did.
submit: $(VENV)/.installed
	RAY_AUTH_MODE=token $(PY) -m jobs.submit --address $(ADDRESS) --python $(CLUSTER_PYTHON) -- $(GRID_ARGS)

train: $(VENV)/.installed
	$(PY) -m gnp.train $(ARGS)

tables: $(VENV)/.installed
	$(PY) -m analysis table $(RESULTS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gnp jobs analysis tests bench cluster

bench: $(VENV)/.installed
	$(PY) bench/step_ratio.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) .pytest_cache .ruff_cache

include cluster/cluster.mk
