"""The `launcher` section: how a training stage's processes start (one process, torchrun, accelerate, a pod)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.recipe.fields import Int, Section

# a /dev/shm of 64 MB (the container runtime's default) fails NCCL and DataLoader workers with a bus error
DEFAULT_SHM = "16Gi"


class AcceleratorSection(Section):
    """The hardware every pod gets: what GPU-only keys (QLoRA, flash_attention_2, liger, fp16/bf16) are judged
    against, and what a pod stage's fingerprint records, instead of the orchestrator's own hardware."""
    type: str = Field(description="the GPU model as the nodes' `label` names it (NVIDIA's labels: "
                                  "NVIDIA-H100-80GB-HBM3; GKE's: nvidia-h100-80gb); pods are scheduled only on nodes "
                                  "whose `label` has this value, and fingerprints record it")
    count: Int = Field(ge=0, description="GPUs (nvidia.com/gpu) per pod; replaces gpus_per_pod (setting both to "
                                         "different numbers is refused); 0: the pods run on CPUs")
    bf16: bool = Field(description="whether the GPU computes bfloat16 (Ampere or newer: true); with count 0, "
                                   "whether the pods' CPUs compute bf16 natively (AVX512-BF16 or AMX)")
    label: str = Field("nvidia.com/gpu.product", description="the node label whose value is `type`: NVIDIA's GPU "
                                                             "feature discovery's, or GKE's "
                                                             "cloud.google.com/gke-accelerator")


class KubernetesSection(Section):
    """A pod per training stage (launcher.type kubernetes, through dagster-k8s' PipesK8sClient), or with nnodes > 1
    a Kubeflow Trainer TrainJob of nnodes pods (assets/trainjob.py), and a pod per export or evaluation stage where
    `also_in_pods` says. Every pod mounts the artifact root at the same path (a ReadWriteMany volume): the spec,
    parents and work directory are there."""
    image: str | None = Field(None, description="an image with this project installed (the same versions as the "
                                                "orchestrator); required for type kubernetes")
    namespace: str | None = Field(None, description='the pods\' namespace; unset: the current one, else "default"')
    gpus_per_pod: Int | None = Field(None, ge=0, description="nvidia.com/gpu per pod (unset: 1); more than 1 starts "
                                                          "torchrun inside a training pod; accelerator.count replaces "
                                                          "it")
    accelerator: AcceleratorSection | None = Field(
        None, description="the GPU every pod runs on ({type, count, bf16}); unset: GPU-only keys and fingerprints "
        "are judged on the orchestrator's own hardware")
    also_in_pods: list[Literal["export", "evaluation", "deployment"]] = Field(
        default_factory=list, description="non-training stages that run as pods too: export (merged_model, "
        "gptq_model, awq_model), evaluation (eval_*); deployment is refused (a served model is a Deployment and a "
        "Service, not a pod that runs to completion)")
    volume_claim: str | None = Field(None, description="the PersistentVolumeClaim holding the artifact root; "
                                                       "required for type kubernetes")
    service_account: str | None = Field(None, description="the pods' service account; unset: the namespace's "
                                                          "default")
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels a pod must be scheduled on "
                                                                            "(Kubernetes' nodeSelector)")
    tolerations: list[dict[str, str | Int]] = Field(
        default_factory=list, description="taints a pod tolerates (Kubernetes' tolerations: key, operator, value, "
                                          "effect), e.g. a GPU pool's nvidia.com/gpu NoSchedule")
    env: dict[str, str] = Field(default_factory=dict, description="more environment variables of every training "
                                                                  "process in a pod (e.g. NCCL_SOCKET_IFNAME)")
    requests: dict[str, str] = Field(default_factory=dict, description="resources a pod requests per node, e.g. "
                                                                       "{cpu: '32', memory: 400Gi}")
    limits: dict[str, str] = Field(default_factory=dict, description="resource limits per pod, e.g. {memory: 480Gi} "
                                                                     "(the GPUs come from gpus_per_pod)")
    shm_size: str | None = Field(DEFAULT_SHM, description="size of the memory-backed /dev/shm every pod mounts "
                                                          "(NCCL, DataLoader workers); null: the runtime's 64 MB")
    wait_timeout: Int | None = Field(None, ge=1, description="seconds a stage's pod or TrainJob may take before the "
                                                             "stage fails and it is deleted; unset: no limit")
    trainer_runtime: str = Field("torch-distributed", description="the Kubeflow Trainer ClusterTrainingRuntime a "
                                                                  "TrainJob runs on (nnodes > 1)")

    @model_validator(mode="after")
    def one_gpu_count(self):
        if "deployment" in self.also_in_pods:
            raise ValueError("also_in_pods: deployment cannot run as a pod (a served model is a Deployment and a "
                             "Service, not a pod that runs to completion); remove it: deployment runs on the "
                             "orchestrator (expected export, evaluation)")
        if self.accelerator and self.gpus_per_pod is not None and self.gpus_per_pod != self.accelerator.count:
            raise ValueError(f"gpus_per_pod {self.gpus_per_pod} and accelerator.count {self.accelerator.count} "
                             "disagree; accelerator.count replaces gpus_per_pod: remove gpus_per_pod")
        return self

    def gpus(self) -> int:
        """GPUs per pod: the declared accelerator's count, else gpus_per_pod."""
        if self.accelerator:
            return self.accelerator.count
        return 1 if self.gpus_per_pod is None else self.gpus_per_pod


class LauncherSection(Section):
    """How a training stage's processes start: one process (`local`; with several visible GPUs it starts torchrun
    itself, as LLaMA-Factory does), `torchrun`, or `accelerate launch` with an accelerate config; sharded by DeepSpeed
    ZeRO-2/3 or FSDP2 (`deepspeed`, `fsdp`: engine/train/sharding.py). Only the process of rank 0 writes and reports."""
    type: Literal["local", "torchrun", "accelerate", "kubernetes"] = Field(
        "local", description="local (one process; torchrun by itself with several visible GPUs), torchrun, "
        "accelerate (accelerate launch) or kubernetes (a pod per training stage; nnodes > 1: a Kubeflow TrainJob; "
        "kubernetes.also_in_pods adds export and evaluation stages)")
    nproc_per_node: Int | None = Field(None, ge=1, description="processes per node; unset: one per visible GPU (one "
                                                               "on a CPU)")
    nnodes: Int = Field(1, ge=1, description="machines taking part (torchrun's nnodes); above 1, tuneline runs node "
                                             "0 and prints the command each other node runs (kubernetes: a "
                                             "TrainJob starts them all)")
    node_rank: Int = Field(0, ge=0, description="the rank of the machine this recipe runs on: always 0 (the other "
                                                "nodes run the command node 0 prints)")
    rdzv_endpoint: str | None = Field(None, description="host:port of node 0, reachable from every node; required "
                                                        "for nnodes > 1 (not on kubernetes: the runtime sets it)")
    join_timeout: Int = Field(600, ge=1, description="seconds node 0 waits for the other nodes to join (nnodes > 1) "
                                                     "before the stage fails naming those that did not")
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
        if self.nnodes > 1 and not self.rdzv_endpoint and self.type != "kubernetes":
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0, reachable from every node)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.node_rank:
            raise ValueError(f"node_rank {self.node_rank}: tuneline runs on node 0 only; on node {self.node_rank} run "
                             "the command node 0 prints when the stage starts (torchrun's --node_rank or accelerate's "
                             f"--machine_rank {self.node_rank}, then -m engine.train <stage> --spec <spec.json>)")
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

    def runs_in_pod(self, kind: str) -> bool:
        """Whether a stage of `kind` (training, export, evaluation; deployment never) runs as a pod."""
        return self.type == "kubernetes" and (kind == "training" or kind in self.kubernetes.also_in_pods)
