"""A training stage (or an export or evaluation stage the recipe runs as a pod) as a Kubernetes pod, through
dagster-k8s' PipesK8sClient: the same spec and entry point as a local process, with the artifact root mounted at the
same path in every pod, on a node with the declared accelerator."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from engine.cluster.pods import ROOT_VOLUME, resources, scheduling, volume_mounts, volumes
from engine.train.launch import launch_command, training_environment

__all__ = ["ROOT_VOLUME", "TRAIN_PROCESS", "pod_spec", "run_in_pod"]
TRAIN_PROCESS = "pipelines.train_process"  # the training child that reports through Dagster Pipes, in a pod or here


def pod_spec(cfg, root: Path) -> dict:
    """The pod spec beyond image and command: resources, the artifact root's volume at the same path, /dev/shm,
    placement (the declared accelerator's node label among the node selector) and tolerations
    (engine/cluster/pods.py)."""
    return {"containers": [{"resources": resources(cfg), "volume_mounts": volume_mounts(cfg, root)}],
            "volumes": volumes(cfg), "restart_policy": "Never", **scheduling(cfg)}


def run_in_pod(context: dg.AssetExecutionContext, launcher, stage: str, spec_path: Path, root: Path,
               client: dg.PipesClient | None = None, training: bool = True) -> None:
    """Start the stage's pod and wait for it; its log and messages come back through Pipes. A training stage starts
    torchrun in a pod of several GPUs; an export or evaluation stage is one process over all of them."""
    from dagster_k8s import PipesK8sClient
    cfg = launcher.kubernetes
    command = (launch_command(launcher, stage, spec_path, TRAIN_PROCESS) if training
               else ["python", "-m", TRAIN_PROCESS, stage, "--spec", str(spec_path)])
    (client or PipesK8sClient()).run(context=context, image=cfg.image, namespace=cfg.namespace, command=command,
                                     base_pod_spec=pod_spec(cfg, root), env={**training_environment(), **cfg.env},
                                     pod_wait_timeout=cfg.wait_timeout or 0)  # 0: no limit (dagster-k8s: 24 h)
