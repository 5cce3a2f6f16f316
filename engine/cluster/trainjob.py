"""A multi-node training stage as a Kubeflow Trainer v2 TrainJob (launcher.type kubernetes, nnodes > 1).

The TrainJob names a torch ClusterTrainingRuntime (launcher.kubernetes.trainer_runtime, `torch-distributed` by
default): the runtime makes a JobSet of numNodes pods and gives each torchrun its rendezvous (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT); pod 0 holds node rank 0 and so rank 0, the
process that writes and reports. Every pod mounts the artifact root at the same path, as the single pod does.
Kubeflow rather than a bare JobSet: the runtime owns rendezvous, headless service and gang restarts, which a JobSet
would leave to us; a cluster without Kubeflow Trainer answers the create with a 404 naming the resource.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.cluster.pods import resources, scheduling, volume_mounts, volumes
from engine.train.launch import processes_per_node

# rendered against Kubeflow Trainer v2.1's API (trainer.kubeflow.org/v1alpha1, podTemplateOverrides; v2.0 named it
# podSpecOverrides): kubeflow/trainer pkg/apis/trainer/v1alpha1/trainjob_types.go
GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE_JOB = "node"  # the torch runtime's replicated job, and its trainer container, are both named "node"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tuneline"}


def trainjob_name(stage: str, fingerprint: str, suffix: str) -> str:
    """An RFC 1035 label of at most 63 characters: the stage, the fingerprint's start, a per-attempt suffix."""
    name = f"{stage}-{fingerprint[:12]}-{suffix}".lower().replace("_", "-")
    return re.sub(r"[^a-z0-9-]", "", name)[:63].strip("-")


def trainjob(name: str, namespace: str, launcher, command: list[str], env: dict[str, str], root: Path,
             stage: str) -> dict:
    """The TrainJob manifest: numNodes x numProcPerNode processes (world_size of the fingerprint), the image and
    command, the environment (sorted), requests/limits per node, and the pod overrides: placement, tolerations,
    the artifact root's volume and /dev/shm."""
    cfg = launcher.kubernetes
    pod = {"volumes": volumes(cfg), "containers": [{"name": NODE_JOB, "volumeMounts": volume_mounts(cfg, root)}],
           **scheduling(cfg)}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {**MANAGED_BY, "tuneline/stage": stage}},
        "spec": {
            "runtimeRef": {"name": cfg.trainer_runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
            "trainer": {"image": cfg.image, "command": list(command), "numNodes": launcher.nnodes,
                        "numProcPerNode": processes_per_node(launcher), "resourcesPerNode": resources(cfg),
                        "env": [{"name": k, "value": v} for k, v in sorted(env.items())]},
            "podTemplateOverrides": [{"targetJobs": [{"name": NODE_JOB}], "spec": pod}],
        },
    }


def rank_zero_selector(name: str) -> str:
    """The label selector of the TrainJob's pod of node rank 0 (JobSet labels its pods with the JobSet's name, which
    is the TrainJob's, and the Job's completion index, which is the node rank)."""
    return f"jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0"


def finished(status: dict | None) -> tuple[str, str] | None:
    """("Complete" | "Failed", message) once a TrainJob's status says it ended, else None."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("message") or condition.get("reason") or ""
    return None
