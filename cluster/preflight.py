"""What a KubeRay run needs from the Kubernetes cluster beyond the CRDs: checked before anything is created.

    python cluster/preflight.py build/cluster/kuberay-prereqs.yaml --cuda 13.0 [--eks-cluster NAME]

(`make kuberay-preflight` runs it, after cluster/check.py and before the server-side dry run.) One line per
problem, exit status 1:
  - the GPU nodes that are up: an NVIDIA driver too old for the image's torch (GPU feature discovery's
    nvidia.com/cuda.driver-version.* labels; without them the stage-imagenet init container checks it when
    the pod starts), and kubelet storage under 1 TiB: the root volume, not the instance-store NVMe RAID
    (p4d 8 x 1 TB, p5 8 x 3.84 TB) where the ImageNet folder must be;
  - the shared volume's StorageClass: missing, a driver that is not installed, a ReadWriteOnce-only
    provisioner (EBS), or an EFS class without fileSystemId / provisioningMode efs-ap;
  - the workers' service account: no IRSA role annotation and no EKS Pod Identity association, so the
    stager cannot read the shards.
GPU nodes that are not up yet (autoscaled from zero) cannot be checked here: the stager checks the driver.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_driver  # noqa: E402  (cluster/ is a folder of tools, not a package)

MIN_NVME = 1 << 40  # 1 TiB: both instance-store RAIDs are far above it, the root volumes far below
RWO_ONLY = {"ebs.csi.aws.com", "kubernetes.io/aws-ebs", "pd.csi.storage.gke.io", "disk.csi.azure.com"}
EFS = "efs.csi.aws.com"
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
IRSA = "eks.amazonaws.com/role-arn"
UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
         "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50}


def quantity(text: str) -> float:
    """A Kubernetes quantity ('7681470196Ki', '100Gi', '107361579008') in bytes."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    if not match or match.group(2) not in UNITS:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def node_driver(labels: dict) -> str | None:
    """The driver version GPU feature discovery labels a node with, if it does."""
    if labels.get("nvidia.com/cuda.driver-version.full"):
        return labels["nvidia.com/cuda.driver-version.full"]
    for prefix, parts in (("nvidia.com/cuda.driver-version.", ("major", "minor", "revision")),
                          ("nvidia.com/cuda.driver.", ("major", "minor", "rev"))):
        found = [labels.get(prefix + p) for p in parts]
        if found[0]:
            return ".".join(str(int(p)) for p in found if p)
    return None


def gpu_nodes(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if int((n.get("status", {}).get("capacity") or {}).get("nvidia.com/gpu", 0)) > 0]


def node_problems(nodes: list[dict], cuda: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of the GPU nodes that are up."""
    problems, notes = [], []
    gpus = gpu_nodes(nodes)
    if not gpus:
        return [], ["no GPU node is up yet: the driver is checked by the stager when one starts"]
    for node in gpus:
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        kind = labels.get("node.kubernetes.io/instance-type", "?")
        driver = node_driver(labels)
        if driver is None:
            notes.append(f"node {name}: no nvidia.com/cuda.driver-version label (GPU feature discovery): "
                         "the stager checks the driver when the pod starts")
        elif problem := gpu_driver.driver_problem(driver, cuda, "the image's torch"):
            problems.append(f"node {name} ({kind}): {problem}")
        storage = quantity((node["status"]["capacity"]).get("ephemeral-storage", "0"))
        if storage < MIN_NVME:
            problems.append(f"node {name} ({kind}): kubelet storage is {storage / (1 << 30):.0f} GiB, the root volume, "
                            "not the instance-store NVMe the ImageNet folder needs; give the GPU nodes nodeadm "
                            "localStorage strategy RAID0 (Karpenter: instanceStorePolicy RAID0)")
    return problems, notes


def storage_problems(claim: dict, storage_class: dict | None, csi_driver: dict | None) -> list[str]:
    """The shared ReadWriteMany claim can be provisioned: its class exists, on an installed RWX driver."""
    name = claim["spec"].get("storageClassName")
    if storage_class is None:
        return [f"StorageClass {name} (claim {claim['metadata']['name']}) does not exist: install the EFS CSI "
                f"driver (EKS add-on aws-efs-csi-driver) and create {name} with provisioner {EFS}, "
                "provisioningMode efs-ap and your fileSystemId (cluster/README.md)"]
    provisioner = storage_class.get("provisioner", "")
    if provisioner in RWO_ONLY:
        return [f"StorageClass {name}: {provisioner} volumes are ReadWriteOnce; the shared volume must be "
                f"ReadWriteMany (EFS: {EFS})"]
    problems = []
    if "." in provisioner and csi_driver is None:
        problems.append(f"StorageClass {name}: its CSI driver {provisioner} is not installed "
                        "(no CSIDriver object); install it (EKS add-on aws-efs-csi-driver)")
    parameters = storage_class.get("parameters") or {}
    if provisioner == EFS and not (parameters.get("fileSystemId") and parameters.get("provisioningMode") == "efs-ap"):
        problems.append(f"StorageClass {name}: EFS needs parameters provisioningMode: efs-ap and fileSystemId: fs-...")
    return problems


def identity_problems(account: dict, associations: list | None) -> list[str]:
    """The workers' service account has a role: an IRSA annotation, or an EKS Pod Identity association."""
    annotation = ((account.get("metadata") or {}).get("annotations") or {}).get(IRSA)
    name = account["metadata"]["name"]
    if annotation:
        if ROLE_ARN.fullmatch(annotation):
            return []
        return [f"ServiceAccount {name}: {IRSA} {annotation!r} is not a role ARN; "
                "make kuberay-up SHARDS_ROLE=arn:aws:iam::<account>:role/<role>"]
    if associations:
        return []
    how = ("no EKS Pod Identity association for it" if associations is not None
           else "SHARDS_ROLE=pod-identity needs EKS_CLUSTER=<name> to look up its association")
    return [f"ServiceAccount {name}: no IRSA role and {how}: the stager could not read the shards; make "
            "kuberay-up SHARDS_ROLE=arn:aws:iam::<account>:role/<role with s3:GetObject on imagenet-shards/>"]


def _run(argv: list[str]) -> str | None:
    """The command's stdout, or None if it failed (a missing object)."""
    out = subprocess.run(argv, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def _json(argv: list[str], run) -> dict | None:
    out = run(argv)
    return json.loads(out) if out else None


def problems(prereqs: list[dict], cuda: str, eks_cluster: str = "", run=_run) -> tuple[list[str], list[str]]:
    """(problems, notes) of the live cluster for these prereqs; `run` runs kubectl / aws."""
    nodes = _json(["kubectl", "get", "nodes", "-o", "json"], run)
    if nodes is None:
        return ["kubectl get nodes failed: is kubectl pointed at the cluster (kubectl config current-context)?"], []
    found, notes = node_problems(nodes["items"], cuda)
    claim = next(d for d in prereqs if d["kind"] == "PersistentVolumeClaim")
    name = claim["spec"].get("storageClassName")
    storage_class = _json(["kubectl", "get", "storageclass", name, "-o", "json"], run)
    csi = _json(["kubectl", "get", "csidriver", storage_class["provisioner"], "-o", "json"], run) \
        if storage_class else None
    found += storage_problems(claim, storage_class, csi)
    account = next(d for d in prereqs if d["kind"] == "ServiceAccount")
    associations = None
    if eks_cluster:
        namespace = (run(["kubectl", "config", "view", "--minify", "-o", "jsonpath={..namespace}"]) or "").strip()
        listed = _json(["aws", "eks", "list-pod-identity-associations", "--cluster-name", eks_cluster,
                        "--namespace", namespace or "default", "--service-account", account["metadata"]["name"],
                        "--output", "json"], run)
        associations = (listed or {}).get("associations", [])
    found += identity_problems(account, associations)
    return found, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/preflight.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prereqs", type=Path, help="the rendered kuberay-prereqs.yaml")
    p.add_argument("--cuda", required=True, help="the CUDA version of the image's torch")
    p.add_argument("--eks-cluster", default="", help="EKS cluster name, to find a Pod Identity association")
    args = p.parse_args(argv)
    prereqs = [d for d in yaml.safe_load_all(args.prereqs.read_text()) if d]
    found, notes = problems(prereqs, args.cuda, args.eks_cluster)
    for note in notes:
        print(f"note: {note}")
    for problem in found:
        print(f"preflight: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
