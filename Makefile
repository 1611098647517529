# gnp-ray: `make imagenet` and `make test` are the only two commands anyone needs to type.
# Every target that needs the environment builds it first (pip into .venv; uv/poetry would download GBs).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# make imagenet / make cifar: the paper's grid for RECIPE with DATA=/path/to/the/data (GPUs); the demo grid on
# the embedded digits without. GRID="..." replaces the grid's arguments entirely (python -m jobs.grid --help
# lists them); EXPERIMENT names it (the same name resumes or extends it); DRY_RUN=1 prints the trials and their
# GPU-hours and starts nothing.
DATA ?=
RECIPE ?=
RESULTS ?= $(CURDIR)/results
EXPERIMENT ?=
EXPERIMENT_ARG = $(if $(EXPERIMENT),--experiment $(EXPERIMENT))  # default: the recipe's name
DRY_RUN ?=
ADDRESS ?= http://127.0.0.1:8265
# The interpreter the job runs on the cluster: one with this project's environment (README, "On a Ray cluster").
CLUSTER_PYTHON ?= python

# The demo grid on the embedded digits (no DATA): 2 seeds x (standard, GNP alpha 0.8, SAM), 2 CPU workers each,
# two trials at once (half a CPU per worker), so that one trial trains while the next starts its workers.
DEMO_GRID = --recipe digits --seeds 0,1 --alpha 0,0.8,1 --r 0.05 --workers 2 --cpus-per-worker 0.49 \
	$(EXPERIMENT_ARG)
# The paper's ImageNet grid for RECIPE (DATA given; default imagenet-resnet50): 3 seeds x alpha in
# {0, 0.2, 0.3, 1}, r = 0.05, each trial 4 GPUs (the paper's 128 images per GPU).
IMAGENET_RECIPE = $(or $(RECIPE),imagenet-resnet50)
PAPER_GRID = --recipe $(IMAGENET_RECIPE) --data $(DATA) --seeds 0,1,2 --alpha 0,0.2,0.3,1 --r 0.05 \
	--workers 4 --gpus-per-worker 1 $(EXPERIMENT_ARG)
IMAGENET_GRID = $(or $(GRID),$(if $(DATA),$(PAPER_GRID),$(DEMO_GRID)))

# The CIFAR demo on the embedded digits in CIFAR's format (no DATA): 2 seeds x (standard, GNP, SAM) x the
# basic and cutout augmentations (Table 1's two columns), 10 epochs, 2 CPU workers each, two trials at once.
CIFAR_DEMO_GRID = --recipe digits-cifar --seeds 0,1 --alpha 0,0.8,1 --r 0.05 --augmentation basic,cutout --epochs 10 \
	--workers 2 --cpus-per-worker 0.49 $(EXPERIMENT_ARG)
# The paper's CIFAR grid for RECIPE (DATA given; default cifar10-wrn28-10): 5 seeds (PyramidNet 3) x
# alpha in {0, 0.8, 1} at the scripts' r = 0.1 x basic and cutout (PyramidNet: its AutoAugment + mixcut),
# each trial 4 GPUs (64 images per GPU).
# A ViT recipe (Tables 2-3) is one column already (its basic and heavy settings are recipes of their own): 5 seeds.
CIFAR_RECIPE = $(or $(RECIPE),cifar10-wrn28-10)
PYRAMIDNET = $(findstring pyramidnet,$(CIFAR_RECIPE))
VIT = $(findstring -vit-,$(CIFAR_RECIPE))
THREE_SEEDS := --seeds 0,1,2
FIVE_SEEDS := --seeds 0,1,2,3,4
CIFAR_SEEDS = $(if $(PYRAMIDNET),$(THREE_SEEDS),$(if $(VIT),$(FIVE_SEEDS),$(FIVE_SEEDS) --augmentation basic,cutout))
CIFAR_PAPER_GRID = --recipe $(CIFAR_RECIPE) --data $(DATA) $(CIFAR_SEEDS) \
	--alpha 0,0.8,1 --r 0.1 --workers 4 --gpus-per-worker 1 $(EXPERIMENT_ARG)
# PROTOCOL=greedy: the paper's search instead (standard; r in {0.01, ..., 0.2} with SAM; alpha in {0.1, ..., 0.9}
# at the best r; then the seeds of each scheme's best), one resumable command; SELECT=holdout HOLDOUT=5000 picks
# on held-out training images instead of the test set; ASHA=1 stops unpromising search trials (stages 2-3) early.
# Without DATA, a small version on the digits.
PROTOCOL ?=
SELECT ?= test
HOLDOUT ?=
ASHA ?=
PROTOCOL_ARGS = --protocol $(PROTOCOL) --select $(SELECT) $(if $(HOLDOUT),--holdout-images $(HOLDOUT)) \
	$(if $(ASHA),--asha) $(EXPERIMENT_ARG)
CIFAR_PROTOCOL = $(if $(DATA),--recipe $(CIFAR_RECIPE) --data $(DATA) $(if $(PYRAMIDNET),$(THREE_SEEDS),$(FIVE_SEEDS)) \
	--workers 4 --gpus-per-worker 1,--recipe digits-cifar --seeds 0,1 --search-r 0.02,0.05,0.1 --search-alpha 0.3,0.5,0.8 \
	--epochs 10 --workers 2 --cpus-per-worker 0.49) $(PROTOCOL_ARGS)
CIFAR_GRID = $(or $(GRID),$(if $(PROTOCOL),$(CIFAR_PROTOCOL),$(if $(DATA),$(CIFAR_PAPER_GRID),$(CIFAR_DEMO_GRID))))
# SMOKE=50: first a few steps of the grid where it will run (jobs/smoke.py), a go/no-go and its hours.
SMOKE ?=
COMMON_ARGS = --results $(RESULTS) $(if $(DRY_RUN),--dry-run) $(if $(SMOKE),--smoke $(SMOKE))

.PHONY: install test test-oldest test-gpu gpu-wheels imagenet cifar train tables lint bench submit local-cluster local-cluster-stop clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=15

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

# The wheels a bare GPU image lacks (timm, for the ViTs), into .whl/ for bench/gpu.sh to install from.
gpu-wheels: $(VENV)/.installed
	$(PY) -m pip download --quiet --no-deps -c constraints.txt timm -d .whl

imagenet: $(VENV)/.installed
	$(PY) -m jobs.grid $(IMAGENET_GRID) $(COMMON_ARGS)

cifar: $(VENV)/.installed
	$(PY) -m jobs.grid $(CIFAR_GRID) $(COMMON_ARGS)

# The same grid on a running Ray cluster through the Jobs API (RESULTS must then be shared: s3://... or NFS);
# it waits for the job, prints its log's end and its final status, and fails when the job did.
submit: $(VENV)/.installed
	RAY_AUTH_MODE=token $(PY) -m jobs.submit --address $(ADDRESS) --python $(CLUSTER_PYTHON) -- $(IMAGENET_GRID) \
		$(COMMON_ARGS)

# A local Ray cluster to try `make submit` on: every process of it on 127.0.0.1 only, this project's 0600 token
# (~/.ray/auth_token), the dashboard and Jobs API at http://127.0.0.1:8265 (ADDRESS's default), jobs run by
# .venv/bin/python, its files in $GNP_CACHE (default ~/.cache/gnp-ray)/cluster. The stop ends that cluster's
# processes only (never `ray stop`, which stops every Ray cluster of this user).
local-cluster: $(VENV)/.installed
	$(PY) -m jobs.local start

local-cluster-stop:
	$(PY) -m jobs.local stop

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
