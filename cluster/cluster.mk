# Cluster targets: thin wrappers over docker, `ray up`, `ray job submit`, `ray down` and kubectl (included by
# the Makefile).
#
#   make cluster-image REGISTRY=<registry>             # the nodes' image, tagged <ray>-py311-gpu-<commit>
#   make cluster-up BUCKET=<bucket> REGISTRY=<registry> SSH_CIDR=<your ip>/32
#   make cluster-dashboard                             # second terminal: SSH tunnel, Jobs API on 127.0.0.1:8265
#   make cluster-submit BUCKET=<bucket>                # the ResNet-50 grid (cluster/README.md)
#   make cluster-logs JOB=<submission id>
#   make cluster-resume                                # lost the head: leftovers, ray up, the same grid again
#   make cluster-leftovers [LEFTOVERS=terminate]       # the cluster's EC2 instances not terminated yet
#   make cluster-down
#   make kuberay-render kuberay-up BUCKET=<bucket> REGISTRY=<registry> SHARDS_ROLE=<role arn>; make kuberay-logs
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
CLUSTER_POLICIES = $(CLUSTER_BUILD)/aws-head-policy.json $(CLUSTER_BUILD)/aws-worker-policy.json
CLUSTER_REGION ?= us-west-2
# Empty: the current Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) of CLUSTER_REGION, from its
# public SSM parameter (needs the AWS CLI). Set CLUSTER_AMI=ami-... to pin one.
CLUSTER_AMI ?=
DLAMI_PARAMETER ?= /aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id
BUCKET ?=
# Where the image goes: an ECR registry host (123456789012.dkr.ecr.us-west-2.amazonaws.com), repository gnp-ray.
REGISTRY ?=
# The only CIDR SSH (22) is open to on AWS, e.g. SSH_CIDR=$$(curl -s https://checkip.amazonaws.com)/32
SSH_CIDR ?=
CLUSTER_ADDRESS ?= http://127.0.0.1:8265
CLUSTER_EXPERIMENT ?= imagenet-resnet50
# The paper's ResNet-50 grid: 3 seeds x alpha in {0, 0.2, 0.3, 1} (standard, GNP, GNP, SAM), r = 0.05, one
# 8-GPU node per trial. --no-resource-check skips the one-node fit check only: the trials at once still come
# from the autoscaler's node types and counts, not from the GPUs up when it is submitted. SMOKE=50 submits
# the smoke run instead (jobs/smoke.py: a few steps, a go/no-go; not recorded for cluster-resume). No
# precision flags: the ImageNet recipes choose bf16 + channels_last on CUDA themselves.
CLUSTER_GRID ?= --recipe imagenet-resnet50 --data /mnt/imagenet --seeds 0,1,2 --alpha 0,0.2,0.3,1 --r 0.05 \
	--workers 4 --gpus-per-worker 1 --cpus-per-worker 10 --experiment $(CLUSTER_EXPERIMENT) \
	--results s3://$(BUCKET)/gnp-results --storage s3://$(BUCKET)/gnp-ray-storage --no-resource-check
JOB ?=
# What cluster-submit sent last (cluster/resubmit.py): cluster-resume sends the same grid again.
CLUSTER_SUBMITTED = $(CLUSTER_BUILD)/last-submit.json
# LEFTOVERS=terminate: cluster-leftovers / cluster-resume terminate the old cluster's instances they list.
LEFTOVERS ?=
# The job's code: this working tree, without the environments, results and version control; and its version
# (the commit, +dirty for local edits), computed here since the uploaded tree has no .git: the rows record it.
# The same as `make submit` uploads (jobs.submit).
CLUSTER_RUNTIME_ENV = $(shell $(PY) -m jobs.submit --print-runtime-env)

# The image: the base image's tag (the Ray inside) plus the commit (the code inside).
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
IMAGE_TAG = $(shell sed -n 's/^ARG RAY_IMAGE=rayproject\/ray://p' cluster/Dockerfile)-$(COMMIT)
IMAGE = $(REGISTRY)/gnp-ray:$(IMAGE_TAG)
# What the image is built from: building with changes here that are not committed would give the commit's
# tag to other code.
IMAGE_SOURCES = constraints.txt pyproject.toml README.md gnp jobs analysis cluster/Dockerfile \
	cluster/Dockerfile.dockerignore cluster/imagenet_shards.py cluster/gpu_driver.py

# The GPU nodes (cluster/render.py): an 8-GPU type of cluster/aws-gpu.yaml (p5.48xlarge: 8 x H100,
# p4d.24xlarge: 8 x A100) and how many at most; capacity: MARKET=on-demand|spot|capacity-block and
# RESERVATION=cr-... (an On-Demand Capacity Reservation, or the Capacity Block's); where: SUBNET=subnet-...
# or ZONE=<region>a (a reservation needs one of them: it lives in one AZ). KubeRay: GPU_TYPE is the worker
# group's nodeSelector instance type, NODES its maxReplicas.
GPU_TYPE ?= p5.48xlarge
NODES ?= 4
MARKET ?= on-demand
RESERVATION ?=
SUBNET ?=
ZONE ?=

KUBERAY_MANIFESTS ?= cluster/kuberay-raycluster.yaml cluster/kuberay-rayjob.yaml
KUBERAY_PREREQS ?= $(CLUSTER_BUILD)/kuberay-prereqs.yaml
# Where the GPU nodes mount their instance-store NVMe RAID (EKS nodeadm localStorage RAID0, Karpenter
# instanceStorePolicy RAID0): the ImageNet folder, cached there across pods and RayJob retries.
KUBERAY_NVME ?= /mnt/k8s-disks/0
# The workers' role for reading the shards: SHARDS_ROLE=arn:aws:iam::<account>:role/<role> (IRSA), or
# SHARDS_ROLE=pod-identity with EKS_CLUSTER=<name> (an EKS Pod Identity association, found by the preflight).
SHARDS_ROLE ?=
EKS_CLUSTER ?=
# The CUDA of the image's torch (constraints.txt's wheel: 2.14.1+cu130); its driver minimum is checked.
IMAGE_CUDA ?= 13.0
RAYJOB ?= gnp-imagenet-resnet50
RENDER = sed -e 's|__BUCKET__|$(BUCKET)|g' -e 's|__REGISTRY__|$(REGISTRY)|g' -e 's|__COMMIT__|$(COMMIT)|g' \
	-e 's|__REGION__|$(CLUSTER_REGION)|g' -e 's|__SSH_CIDR__|$(SSH_CIDR)|g' -e 's|__GPU_TYPE__|$(GPU_TYPE)|g' \
	-e 's|__NVME__|$(KUBERAY_NVME)|g' -e 's|__SHARDS_ROLE__|$(SHARDS_ROLE)|g' -e '/role-arn: pod-identity$$/d'

.PHONY: cluster-image kuberay-image cluster-image-name cluster-render cluster-check cluster-up cluster-dashboard cluster-submit \
	cluster-logs cluster-status cluster-down cluster-leftovers cluster-resume cluster-resubmit cluster-args cluster-runtime-env kuberay-render kuberay-prereqs kuberay-preflight \
	kuberay-up kuberay-logs

define cluster_need
@test -n "$($(1))" || { echo "error: set $(1)=... ($(2))" >&2; exit 2; }
endef

# A config that cluster-up brought up from here (rendered, and the security group's id written in).
define cluster_need_up
@test -f $(CLUSTER_CONFIG) && ! grep -q __SECURITY_GROUP__ $(CLUSTER_CONFIG) || { echo "error: no cluster was \
brought up from here ($(CLUSTER_CONFIG)); run make cluster-up with the variables of the lost one" >&2; exit 2; }
endef

# ---- the image (AWS and KubeRay) ----

cluster-image:
	$(call cluster_need,REGISTRY,an image registry you can push to; ECR: 123456789012.dkr.ecr.us-west-2.amazonaws.com)
	$(call cluster_need,COMMIT,a git checkout: the image is tagged by commit)
	@test -z "$$(git status --porcelain -- $(IMAGE_SOURCES))" || { git status --short -- $(IMAGE_SOURCES) >&2; \
	  echo "error: commit these first: the image $(IMAGE) must hold commit $(COMMIT)" >&2; exit 2; }
	@case "$(REGISTRY)" in *.dkr.ecr.*) r="$(REGISTRY)"; region=$$(echo "$$r" | cut -d. -f4); \
	  aws ecr describe-repositories --region $$region --repository-names gnp-ray >/dev/null 2>&1 \
	    || aws ecr create-repository --region $$region --repository-name gnp-ray >/dev/null; \
	  aws ecr get-login-password --region $$region | docker login --username AWS --password-stdin "$${r%%/*}";; esac
	docker build -f cluster/Dockerfile --build-arg COMMIT=$(COMMIT) -t $(IMAGE) .
	docker push $(IMAGE)

kuberay-image: cluster-image

# The image the rendered configs name (what the nodes will pull).
cluster-image-name:
	@echo $(IMAGE)

# ---- AWS: the Ray cluster launcher ----

# build/cluster/aws-gpu.yaml (+ the IAM policies): the templates with bucket, registry, commit, region, AMI and
# SSH CIDR filled in, and the GPU nodes chosen (cluster/render.py: GPU_TYPE, NODES, MARKET, RESERVATION, SUBNET,
# ZONE); __SECURITY_GROUP__ is left for cluster/aws_setup.py (cluster-up), which creates the group.
cluster-render:
	$(call cluster_need,BUCKET,the S3 bucket with imagenet-shards/ and for the results)
	$(call cluster_need,REGISTRY,where make cluster-image pushed the image)
	$(call cluster_need,SSH_CIDR,the only addresses SSH may come from; e.g. your address /32)
	@mkdir -p $(CLUSTER_BUILD)
	@ami="$(CLUSTER_AMI)"; \
	if [ -z "$$ami" ]; then \
	  ami=$$(aws ssm get-parameter --region $(CLUSTER_REGION) --name $(DLAMI_PARAMETER) \
	         --query Parameter.Value --output text) || { echo "error: AMI lookup failed; set CLUSTER_AMI=ami-..." >&2; exit 1; }; \
	fi; \
	$(RENDER) -e "s|__AMI__|$$ami|g" $(CLUSTER) > $(CLUSTER_CONFIG).tmp \
	  && $(PY) cluster/render.py $(CLUSTER_CONFIG).tmp --gpu-type '$(GPU_TYPE)' --nodes '$(NODES)' --market '$(MARKET)' \
	       --reservation '$(RESERVATION)' --subnet '$(SUBNET)' --zone '$(ZONE)' \
	  && mv $(CLUSTER_CONFIG).tmp $(CLUSTER_CONFIG)
	@for f in cluster/aws-head-policy.json cluster/aws-worker-policy.json; do \
	  $(RENDER) $$f > $(CLUSTER_BUILD)/$$(basename $$f) || exit 1; done
	@! grep -n '__[A-Z_]*__' $(CLUSTER_CONFIG) $(CLUSTER_POLICIES) | grep -v __SECURITY_GROUP__ \
	  || { echo "error: unfilled placeholder in $(CLUSTER_BUILD)" >&2; exit 1; }
	@echo "wrote $(CLUSTER_CONFIG) $(CLUSTER_POLICIES)"

cluster-check: $(VENV)/.installed
	$(PY) cluster/check.py $(CLUSTER_CONFIG) $(CLUSTER_POLICIES)

# Before anything is created: the GPU type is offered where the nodes go and the reservation can take them
# (cluster/capacity.py). ray up runs autoscaler v2 (RAY_UP_enable_autoscaler_v2=1, said explicitly; Ray's
# default since 2.50): the config's RAY_AUTOSCALER_RECONCILE_RAY_INSTALL_STATUS_TIMEOUT_S is one of its settings.
cluster-up: $(VENV)/.installed cluster-render
	$(PY) cluster/check.py $(CLUSTER_CONFIG) $(CLUSTER_POLICIES)
	@$(PY) -c "import boto3" 2>/dev/null || $(PY) -m pip install --quiet boto3  # ray up talks to EC2 through boto3
	$(PY) cluster/capacity.py $(CLUSTER_CONFIG)
	$(PY) cluster/aws_setup.py $(CLUSTER_CONFIG) $(CLUSTER_POLICIES)
	$(PY) cluster/check.py $(CLUSTER_CONFIG)
	@test -s $$HOME/.ray/auth_token || $(RAY) get-auth-token --generate >/dev/null
	@chmod 600 $$HOME/.ray/auth_token
	RAY_UP_enable_autoscaler_v2=1 $(RAY) up -y $(CLUSTER_CONFIG)

cluster-dashboard: $(VENV)/.installed
	@test -f $(CLUSTER_CONFIG) || { echo "error: no $(CLUSTER_CONFIG); run make cluster-up first" >&2; exit 2; }
	$(RAY) dashboard $(CLUSTER_CONFIG)

cluster-submit: $(VENV)/.installed
	$(call cluster_need,BUCKET,the S3 bucket for the results)
	@$(PY) -c "import socket, sys, urllib.parse as u; a = u.urlparse(sys.argv[1]); socket.create_connection((a.hostname, a.port or 80), 5)" \
	  $(CLUSTER_ADDRESS) 2>/dev/null \
	  || { echo "error: no Jobs API at $(CLUSTER_ADDRESS); run make cluster-dashboard in another terminal" >&2; exit 2; }
	$(RAY) job submit --address $(CLUSTER_ADDRESS) --no-wait $(if $(JOB),--submission-id $(JOB)) \
	  --runtime-env-json '$(CLUSTER_RUNTIME_ENV)' -- python -m jobs.grid $(CLUSTER_GRID) $(if $(SMOKE),--smoke $(SMOKE))
	$(if $(SMOKE),,@$(PY) cluster/resubmit.py record $(CLUSTER_SUBMITTED) $(if $(JOB),--job $(JOB)) -- python -m jobs.grid $(CLUSTER_GRID))

cluster-logs: $(VENV)/.installed
	$(call cluster_need,JOB,the submission id that cluster-submit printed; or see: $(VENV)/bin/ray job list --address $(CLUSTER_ADDRESS))
	$(RAY) job logs --address $(CLUSTER_ADDRESS) --follow $(JOB)

cluster-status: $(VENV)/.installed
	$(RAY) exec $(CLUSTER_CONFIG) "RAY_AUTH_MODE=token ray status"

cluster-down: $(VENV)/.installed
	@test -f $(CLUSTER_CONFIG) || { echo "error: no $(CLUSTER_CONFIG); nothing was brought up from here" >&2; exit 2; }
	$(RAY) down -y $(CLUSTER_CONFIG)

# The EC2 instances of the config's cluster_name in any state but terminated, with the commands that remove them
# (cluster/leftovers.py); LEFTOVERS=terminate terminates them. Terminates nothing otherwise.
CLUSTER_LEFTOVERS = $(PY) cluster/leftovers.py $(CLUSTER_CONFIG) $(if $(filter terminate,$(LEFTOVERS)),--terminate)
# The grid cluster-submit recorded, sent again under a new submission id (JOB=..., else <experiment>-<UTC time>)
# through the cluster-dashboard tunnel, or one opened for it: the same experiment, results and storage resume.
CLUSTER_RESUBMIT = RAY_AUTH_MODE=token $(PY) cluster/resubmit.py submit $(CLUSTER_SUBMITTED) --config $(CLUSTER_CONFIG) \
	--address $(CLUSTER_ADDRESS) --runtime-env-json '$(CLUSTER_RUNTIME_ENV)' --ray $(VENV)/bin/ray $(if $(JOB),--job $(JOB))

define cluster_leftovers_choice
@case "$(LEFTOVERS)" in ""|terminate) ;; *) echo "error: LEFTOVERS=$(LEFTOVERS): terminate, or leave it unset to \
terminate nothing" >&2; exit 2;; esac
@$(PY) -c "import boto3" 2>/dev/null || $(PY) -m pip install --quiet boto3
endef

cluster-leftovers: $(VENV)/.installed
	$(cluster_need_up)
	$(cluster_leftovers_choice)
	$(CLUSTER_LEFTOVERS)

# After losing the head: what the old cluster left (terminated only with LEFTOVERS=terminate), `ray up` again on
# the same rendered config (same cluster name, image, nodes and security group; a head instance still running is
# kept and Ray restarted on it), then the recorded grid again. Refuses, before anything, without a record.
cluster-resume: $(VENV)/.installed
	$(cluster_need_up)
	@$(PY) cluster/resubmit.py show $(CLUSTER_SUBMITTED)
	$(cluster_leftovers_choice)
	$(CLUSTER_LEFTOVERS)
	$(PY) cluster/check.py $(CLUSTER_CONFIG)
	$(PY) cluster/capacity.py $(CLUSTER_CONFIG)
	@test -s $$HOME/.ray/auth_token || $(RAY) get-auth-token --generate >/dev/null
	@chmod 600 $$HOME/.ray/auth_token
	RAY_UP_enable_autoscaler_v2=1 $(RAY) up -y $(CLUSTER_CONFIG)
	$(CLUSTER_RESUBMIT)

# The recorded grid again on a cluster that is up (when cluster-resume's submission failed).
cluster-resubmit: $(VENV)/.installed
	$(cluster_need_up)
	$(CLUSTER_RESUBMIT)

# The grid's arguments and runtime env as cluster-submit passes them (tests/test_cluster.py reads both).
cluster-args:
	@echo python -m jobs.grid $(CLUSTER_GRID)

cluster-runtime-env:
	@echo '$(CLUSTER_RUNTIME_ENV)'

# ---- Kubernetes: KubeRay ----

# The manifests filled in, with NODES as the GPU worker group's maxReplicas (cluster/render.py; the RayJob's
# group, started at full size, also starts at NODES) and GPU_TYPE as its nodeSelector.
kuberay-render:
	$(call cluster_need,BUCKET,the S3 bucket with imagenet-shards/)
	$(call cluster_need,REGISTRY,where make cluster-image pushed the image)
	$(call cluster_need,COMMIT,a git checkout: the image is tagged by commit)
	@mkdir -p $(CLUSTER_BUILD)
	@for f in $(KUBERAY_MANIFESTS); do \
	  out=$(CLUSTER_BUILD)/$$(basename $$f); \
	  $(RENDER) $$f > $$out.tmp && $(PY) cluster/render.py $$out.tmp --nodes '$(NODES)' \
	    && ! grep -n '__[A-Z_]*__' $$out.tmp || { rm -f $$out.tmp; exit 1; }; \
	  mv $$out.tmp $$out && echo "wrote $$out"; \
	done

# The prereqs with the workers' role: an IRSA role ARN, or pod-identity (the annotation dropped).
kuberay-prereqs:
	$(call cluster_need,SHARDS_ROLE,the workers' S3 role: arn:aws:iam::<account>:role/<role> for IRSA or pod-identity)
	@mkdir -p $(CLUSTER_BUILD)
	@$(RENDER) cluster/kuberay-prereqs.yaml > $(KUBERAY_PREREQS)
	@echo "wrote $(KUBERAY_PREREQS)"

# Before applying: the manifests pass cluster/check.py with the NetworkPolicy of the prereqs; the cluster has
# what they silently rely on (cluster/preflight.py: the GPU nodes' driver and NVMe kubelet storage, the RWX
# StorageClass and its CSI driver, the workers' IRSA role or Pod Identity); and the API server validates them
# against the installed CRDs without creating anything. --validate=strict makes a field a CRD would drop an
# error (KubeRay < 1.6's CRD drops authOptions.secretName: the cluster would not take our token).
kuberay-preflight: $(VENV)/.installed kuberay-prereqs
	@test -f $(CLUSTER_BUILD)/kuberay-rayjob.yaml || { echo "error: run make kuberay-render first" >&2; exit 2; }
	$(PY) cluster/check.py $(KUBERAY_PREREQS) $(addprefix $(CLUSTER_BUILD)/,$(notdir $(KUBERAY_MANIFESTS)))
	$(PY) cluster/preflight.py $(KUBERAY_PREREQS) --cuda $(IMAGE_CUDA) $(if $(EKS_CLUSTER),--eks-cluster $(EKS_CLUSTER))
	kubectl apply --dry-run=server --validate=strict -f $(KUBERAY_PREREQS) \
	  $(addprefix -f $(CLUSTER_BUILD)/,$(notdir $(KUBERAY_MANIFESTS)))

# The prereqs (idempotent), then the RayJob; --validate=strict makes the API server refuse unknown fields.
kuberay-up: kuberay-preflight
	kubectl apply --validate=strict -f $(KUBERAY_PREREQS)
	kubectl create --validate=strict -f $(CLUSTER_BUILD)/kuberay-rayjob.yaml

# Follow the grid's log: the job driver's log file on the head (the RayJob runs in HTTPMode, so nothing else
# follows it). If the stream drops, run it again: the job does not notice.
kuberay-logs:
	@job=$$(kubectl get rayjob $(RAYJOB) -o jsonpath='{.status.jobId}'); \
	cluster=$$(kubectl get rayjob $(RAYJOB) -o jsonpath='{.status.rayClusterName}'); \
	head=$$(kubectl get pod -l ray.io/cluster=$$cluster,ray.io/node-type=head -o name | head -1); \
	test -n "$$job" -a -n "$$head" || { echo "error: RayJob $(RAYJOB) has no job or head pod yet" >&2; exit 2; }; \
	kubectl exec $$head -c ray-head -- tail -n +1 -F /tmp/ray/session_latest/logs/job-driver-$$job.log

.DEFAULT_GOAL := $(_CLUSTER_MK_DEFAULT_GOAL)
