"""The parts every training pod shares, from the recipe's launcher.kubernetes (camelCase, as the Kubernetes API
writes them): resources, the artifact root's volume at the same path, /dev/shm, tolerations, extra environment."""

from __future__ import annotations

from pathlib import Path

ROOT_VOLUME = "tuneline-home"
SHM_VOLUME = "dshm"


def resources(cfg) -> dict:
    """requests and limits per pod: the recipe's cpu/memory, and its GPUs as limits (Kubernetes sets a GPU's
    request from its limit)."""
    limits = {**cfg.limits, **({"nvidia.com/gpu": str(cfg.gpus())} if cfg.gpus() else {})}
    return {**({"requests": dict(cfg.requests)} if cfg.requests else {}), "limits": limits}


def volumes(cfg) -> list[dict]:
    shm = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}] if cfg.shm_size else []
    return [{"name": ROOT_VOLUME, "persistentVolumeClaim": {"claimName": cfg.volume_claim}}, *shm]


def volume_mounts(cfg, root: Path) -> list[dict]:
    shm = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}] if cfg.shm_size else []
    return [{"name": ROOT_VOLUME, "mountPath": str(root)}, *shm]


def node_selector(cfg) -> dict[str, str]:
    """The recipe's node labels, and the declared accelerator's (its node label set to its type)."""
    accelerator = {cfg.accelerator.label: cfg.accelerator.type} if cfg.accelerator and cfg.accelerator.count else {}
    return {**cfg.node_selector, **accelerator}


def tolerations(cfg) -> list[dict]:
    return [dict(toleration) for toleration in cfg.tolerations]


def scheduling(cfg) -> dict:
    """Where and as whom a pod runs: its service account, node labels (the declared accelerator's among them) and
    tolerations, each only when the recipe sets it."""
    placed = {"serviceAccountName": cfg.service_account, "nodeSelector": node_selector(cfg),
              "tolerations": tolerations(cfg)}
    return {key: value for key, value in placed.items() if value}
