# Cluster targets: thin wrappers over `ray up`, `ray job submit` and `ray down` (included by the Makefile).
#
#   make cluster-up BUCKET=my-bucket        # render + check cluster/aws-gpu.yaml, then ray up
#   make cluster-dashboard                  # second terminal: SSH tunnel, Jobs API on 127.0.0.1:8265 only
#   make cluster-submit BUCKET=my-bucket    # the ResNet-50 grid (cluster/README.md)
#   make cluster-logs JOB=<submission id>
#   make cluster-down
#
# Every `ray` command here runs with RAY_AUTH_MODE=token: the token is ~/.ray/auth_token, made on the first
# cluster-up and copied to every node by the config's file_mounts. The Jobs API is only ever reached through
# the `ray dashboard` tunnel on localhost, never a public port.

# Restored at the end: including this file leaves the including Makefile's default goal alone.
_CLUSTER_MK_DEFAULT_GOAL := $(.DEFAULT_GOAL)

VENV ?= .venv
PY ?= $(VENV)/bin/python
RAY := RAY_AUTH_MODE=token $(VENV)/bin/ray

CLUSTER ?= cluster/aws-gpu.yaml
CLUSTER_BUILD ?= build/cluster
CLUSTER_CONFIG = $(CLUSTER_BUILD)/$(notdir $(CLUSTER))
CLUSTER_REGION ?= us-west-2
# Empty: the current Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) of CLUSTER_REGION, from its
# public SSM parameter (needs the AWS CLI). Set CLUSTER_AMI=ami-... to pin one.
CLUSTER_AMI ?=
DLAMI_PARAMETER ?= /aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id
BUCKET ?=
CLUSTER_ADDRESS ?= http://127.0.0.1:8265
CLUSTER_EXPERIMENT ?= resnet50-paper
# The paper's ResNet-50 grid: 3 seeds x alpha in {0, 0.2, 0.3, 1} (standard, GNP, GNP, SAM), r = 0.05, one
# 8-GPU node per trial. --no-resource-check: the cluster autoscales, so the grid must not size itself on
# the GPUs that happen to be up when it is submitted (Ray queues the trials that do not fit yet).
CLUSTER_GRID ?= --recipe imagenet-resnet50 --data /mnt/imagenet --seeds 0,1,2 --alpha 0,0.2,0.3,1 --r 0.05 \
	--workers 8 --gpus-per-worker 1 --cpus-per-worker 10 --experiment $(CLUSTER_EXPERIMENT) \
	--results s3://$(BUCKET)/gnp-results --storage s3://$(BUCKET)/gnp-ray-storage --no-resource-check
JOB ?=
# The job's code: this working tree, without the environment, results and version control.
CLUSTER_RUNTIME_ENV = {"working_dir": ".", "excludes": [".venv", ".git", "build", "results", "runs", "data", "out"]}

KUBERAY_MANIFESTS ?= cluster/kuberay-raycluster.yaml cluster/kuberay-rayjob.yaml
REGISTRY ?=
KUBERAY_IMAGE = $(REGISTRY)/gnp-ray:$(shell sed -n 's/^ARG RAY_IMAGE=rayproject\/ray://p' cluster/Dockerfile)

.PHONY: cluster-render cluster-check cluster-up cluster-dashboard cluster-submit cluster-logs cluster-status \
	cluster-down cluster-args kuberay-render kuberay-image

define cluster_need
@test -n "$($(1))" || { echo "error: set $(1)=... ($(2))" >&2; exit 2; }
endef

# build/cluster/aws-gpu.yaml: the template with the bucket, region and AMI filled in.
cluster-render:
	$(call cluster_need,BUCKET,the S3 bucket with imagenet/ and for the results)
	@mkdir -p $(CLUSTER_BUILD)
	@ami="$(CLUSTER_AMI)"; \
	if [ -z "$$ami" ]; then \
	  ami=$$(aws ssm get-parameter --region $(CLUSTER_REGION) --name $(DLAMI_PARAMETER) \
	         --query Parameter.Value --output text) || { echo "error: AMI lookup failed; set CLUSTER_AMI=ami-..." >&2; exit 1; }; \
	fi; \
	sed -e 's|__BUCKET__|$(BUCKET)|g' -e 's|__REGION__|$(CLUSTER_REGION)|g' -e "s|__AMI__|$$ami|g" \
	  $(CLUSTER) > $(CLUSTER_CONFIG).tmp && mv $(CLUSTER_CONFIG).tmp $(CLUSTER_CONFIG)
	@! grep -n '__[A-Z]*__' $(CLUSTER_CONFIG) || { echo "error: unfilled placeholder in $(CLUSTER_CONFIG)" >&2; exit 1; }
	@echo "wrote $(CLUSTER_CONFIG)"

cluster-check: $(VENV)/.installed
	$(PY) cluster/check.py $(CLUSTER_CONFIG)

cluster-up: $(VENV)/.installed cluster-render
	$(PY) cluster/check.py $(CLUSTER_CONFIG)
	@$(PY) -c "import boto3" 2>/dev/null || $(PY) -m pip install --quiet boto3  # ray up talks to EC2 through boto3
	@test -s $$HOME/.ray/auth_token || $(RAY) get-auth-token --generate >/dev/null
	@chmod 600 $$HOME/.ray/auth_token
	$(RAY) up -y $(CLUSTER_CONFIG)
	@# The autoscaler on the head launches the GPU nodes with the head's own instance profile (S3 access), which
	@# EC2 allows only with iam:PassRole on that role; Ray's default role (created by the first ray up) lacks it.
	aws iam put-role-policy --role-name ray-autoscaler-v1 --policy-name gnp-ray-pass-role \
	  --policy-document file://cluster/aws-pass-role.json

cluster-dashboard: $(VENV)/.installed
	@test -f $(CLUSTER_CONFIG) || { echo "error: no $(CLUSTER_CONFIG); run make cluster-up first" >&2; exit 2; }
	$(RAY) dashboard $(CLUSTER_CONFIG)

cluster-submit: $(VENV)/.installed
	$(call cluster_need,BUCKET,the S3 bucket for the results)
	@$(PY) -c "import socket, sys, urllib.parse as u; a = u.urlparse(sys.argv[1]); socket.create_connection((a.hostname, a.port or 80), 5)" \
	  $(CLUSTER_ADDRESS) 2>/dev/null \
	  || { echo "error: no Jobs API at $(CLUSTER_ADDRESS); run make cluster-dashboard in another terminal" >&2; exit 2; }
	$(RAY) job submit --address $(CLUSTER_ADDRESS) --no-wait $(if $(JOB),--submission-id $(JOB)) \
	  --runtime-env-json '$(CLUSTER_RUNTIME_ENV)' -- python -m jobs.grid $(CLUSTER_GRID)

cluster-logs: $(VENV)/.installed
	$(call cluster_need,JOB,the submission id that cluster-submit printed; or see: $(VENV)/bin/ray job list --address $(CLUSTER_ADDRESS))
	$(RAY) job logs --address $(CLUSTER_ADDRESS) --follow $(JOB)

cluster-status: $(VENV)/.installed
	$(RAY) exec $(CLUSTER_CONFIG) "RAY_AUTH_MODE=token ray status"

cluster-down: $(VENV)/.installed
	@test -f $(CLUSTER_CONFIG) || { echo "error: no $(CLUSTER_CONFIG); nothing was brought up from here" >&2; exit 2; }
	$(RAY) down -y $(CLUSTER_CONFIG)

# The grid's arguments as cluster-submit passes them (tests/test_cluster.py parses them with jobs.grid's parser).
cluster-args:
	@echo python -m jobs.grid $(CLUSTER_GRID)

# Kubernetes: the manifests with the bucket and the image registry filled in, and the image they run.
kuberay-render:
	$(call cluster_need,BUCKET,the S3 bucket with imagenet/)
	$(call cluster_need,REGISTRY,where kuberay-image pushed the image: 123456789012.dkr.ecr.us-west-2.amazonaws.com for example)
	@mkdir -p $(CLUSTER_BUILD)
	@for f in $(KUBERAY_MANIFESTS); do \
	  sed -e 's|__BUCKET__|$(BUCKET)|g' -e 's|__REGISTRY__|$(REGISTRY)|g' $$f > $(CLUSTER_BUILD)/$$(basename $$f) || exit 1; \
	  ! grep -n '__[A-Z]*__' $(CLUSTER_BUILD)/$$(basename $$f) || exit 1; \
	  echo "wrote $(CLUSTER_BUILD)/$$(basename $$f)"; \
	done

kuberay-image:
	$(call cluster_need,REGISTRY,an image registry you can push to)
	docker build -f cluster/Dockerfile -t $(KUBERAY_IMAGE) .
	docker push $(KUBERAY_IMAGE)

.DEFAULT_GOAL := $(_CLUSTER_MK_DEFAULT_GOAL)
