"""The `launcher` section: how a training stage's processes start (one process, torchrun, accelerate, a pod)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.recipe.fields import Int, Section


class KubernetesSection(Section):
    """A pod per training stage (launcher.type kubernetes, through dagster-k8s' PipesK8sClient). Every pod mounts
    the artifact root at the same path (a ReadWriteMany volume): the spec, parents and work directory are there."""
    image: str | None = Field(None, description="an image with this project installed (the same versions as the "
                                                "orchestrator); required for type kubernetes")
    namespace: str | None = Field(None, description='the pods\' namespace; unset: the current one, else "default"')
    gpus_per_pod: Int = Field(1, ge=0, description="nvidia.com/gpu per pod; more than 1 starts torchrun inside the "
                                                   "pod")
    volume_claim: str | None = Field(None, description="the PersistentVolumeClaim holding the artifact root; "
                                                       "required for type kubernetes")
    service_account: str | None = Field(None, description="the pods' service account; unset: the namespace's "
                                                          "default")
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels a pod must be scheduled on "
                                                                            "(Kubernetes' nodeSelector)")


class LauncherSection(Section):
    """How a training stage's processes start: one process (`local`; with several visible GPUs it starts torchrun
    itself, as LLaMA-Factory does), `torchrun`, or `accelerate launch` with an accelerate config; sharded by DeepSpeed
    ZeRO-2/3 or FSDP2 (`deepspeed`, `fsdp`: engine/train/sharding.py). Only the process of rank 0 writes and reports."""
    type: Literal["local", "torchrun", "accelerate", "kubernetes"] = Field(
        "local", description="local (one process; torchrun by itself with several visible GPUs), torchrun, "
        "accelerate (accelerate launch) or kubernetes (a pod per training stage)")
    nproc_per_node: Int | None = Field(None, ge=1, description="processes per node; unset: one per visible GPU (one "
                                                               "on a CPU)")
    nnodes: Int = Field(1, ge=1, description="machines taking part (torchrun's nnodes)")
    node_rank: Int = Field(0, ge=0, description="this machine's rank among nnodes, from 0")
    rdzv_endpoint: str | None = Field(None, description="host:port of node 0, reachable from every node; required "
                                                        "for nnodes > 1")
    accelerate_config: str | None = Field(None, description="an accelerate config YAML (from `accelerate config`, "
                                                            "e.g. DeepSpeed ZeRO-3 or FSDP2), for type accelerate")
    deepspeed: str | None = Field(None, description="LLaMA-Factory's key: DeepSpeed's config, a shipped one (ds_z2, "
                                                    "ds_z3, ds_z3_offload) or a JSON file's path; it goes into the "
                                                    "trainer's arguments, ranks started by torchrun (needs deepspeed "
                                                    "and CUDA GPUs)")
    fsdp: str | None = Field(None, description="PyTorch FSDP2 sharding: the trainer's fsdp_config, the shipped one "
                                               "(fsdp2) or a JSON file's path; ranks started by torchrun (needs CUDA "
                                               "GPUs)")
    kubernetes: KubernetesSection = Field(KubernetesSection(), description="the pods of type kubernetes")

    @model_validator(mode="after")
    def complete(self):
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0, reachable from every node)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.type == "kubernetes" and not (self.kubernetes.image and self.kubernetes.volume_claim):
            raise ValueError("type kubernetes needs kubernetes.image (this project installed) and "
                             "kubernetes.volume_claim (the volume every pod mounts the artifact root from)")
        if self.type == "accelerate" and not self.accelerate_config:
            raise ValueError("type accelerate needs accelerate_config (a YAML from `accelerate config`, e.g. a "
                             "DeepSpeed ZeRO-3 or FSDP2 one)")
        if self.type == "accelerate" and (self.deepspeed or self.fsdp):
            raise ValueError("deepspeed and fsdp go into the trainer's arguments under torchrun (type local or "
                             "torchrun); with type accelerate the accelerate_config says how to shard")
        return self
