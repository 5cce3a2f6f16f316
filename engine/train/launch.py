"""The command that starts a training stage's processes: one Python process, torchrun, or accelerate launch.

torchrun and accelerate start the ranks and forward signals to them; the stage's code finds its rank in the
environment they set (RANK, WORLD_SIZE, LOCAL_RANK), and transformers' Trainer joins the process group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def processes_per_node(launcher) -> int:
    """The recipe's nproc_per_node, else one per GPU (a pod's GPUs on Kubernetes; the visible ones, or one on a
    CPU, here)."""
    if launcher.type == "kubernetes":
        return launcher.nproc_per_node or max(launcher.kubernetes.gpus(), 1)
    return launcher.nproc_per_node or max(torch.cuda.device_count(), 1)


def world_size(launcher) -> int:
    """How many processes train together: part of every training stage's fingerprint, as it sets the global
    batch (processes x per-device batch x accumulation)."""
    return processes_per_node(launcher) * launcher.nnodes


# glibc's allocator: keep freed memory for reuse (no mmap'd blocks, no trimming) instead of handing each large block
# back to the system. TRL's LM head on a CPU allocates and frees tiles of tens of MB many times a step, and each
# fresh mmap page-faults all over again: a DPO step here took 36 s of wall time that way, 21 s this way, at 13% more
# peak memory (sys time 13 s -> 4 s). Other allocators ignore these variables.
ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def training_environment() -> dict[str, str]:
    """Environment variables a training process gets beyond its caller's (which win where both set one)."""
    return {name: value for name, value in ALLOCATOR.items() if name not in os.environ}


def launch_command(launcher, stage: str, spec: Path, module: str = "engine.train") -> list[str]:
    """argv for the stage: `python -m <module> <stage> --spec <spec>` (engine.train, or a module that wraps it
    with a reporter), under torchrun or accelerate when the recipe asks, or when one process would see several
    GPUs (TRL's trainers refuse to train on them in one)."""
    stage_argv = ["-m", module, stage, "--spec", str(spec)]
    processes = processes_per_node(launcher)
    if launcher.type == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", launcher.accelerate_config,
                "--num_processes", str(processes * launcher.nnodes), "--num_machines", str(launcher.nnodes),
                "--machine_rank", str(launcher.node_rank),
                *(["--main_process_ip", launcher.rdzv_endpoint.rsplit(":", 1)[0], "--main_process_port",
                   launcher.rdzv_endpoint.rsplit(":", 1)[1]] if launcher.rdzv_endpoint else []),
                *(["--rdzv_backend", "static", "--rdzv_conf", f"timeout={launcher.join_timeout}"]  # as torchrun's below
                  if launcher.nnodes > 1 else []), *stage_argv]
    if launcher.type == "kubernetes" and launcher.nnodes > 1:  # a TrainJob's node: the runtime's PET_NODE_RANK,
        # PET_MASTER_ADDR and PET_MASTER_PORT name the rendezvous; nnodes and processes stated, never defaulted to 1
        return ["python", "-m", "torch.distributed.run", "--nnodes", str(launcher.nnodes), "--nproc_per_node",
                str(processes), *stage_argv]
    if launcher.type == "kubernetes":  # inside the pod: its own interpreter, torchrun for several GPUs
        return (["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                 *stage_argv] if processes > 1 else ["python", *stage_argv])
    if launcher.type == "torchrun" or processes > 1 or launcher.nnodes > 1:
        if launcher.nnodes == 1:
            where = ["--standalone"]
        else:  # static rendezvous: node_rank is the group rank, so rank 0 (it writes, it reports) runs on node 0
            # with the orchestrator; c10d would rank the nodes by host name. Kubeflow's torch runtime does the same.
            where = ["--nnodes", str(launcher.nnodes), "--node_rank", str(launcher.node_rank), "--rdzv_backend",
                     "static", "--rdzv_endpoint", launcher.rdzv_endpoint, "--rdzv_conf",
                     f"timeout={launcher.join_timeout}"]
        return [sys.executable, "-m", "torch.distributed.run", *where, "--nproc_per_node", str(processes),
                *stage_argv]
    return [sys.executable, *stage_argv]


def other_node_commands(launcher, stage: str, spec: Path) -> dict[int, list[str]]:
    """node rank -> the command that node runs to join a multi-node stage (torchrun or accelerate, nnodes > 1): the
    training child itself (engine.train) under torchrun or accelerate launch, with the spec on the shared artifact root; no orchestrator, so no
    fingerprint or training lock stands in its way. Prefixed with `env` and the training environment node 0's
    processes get (the allocator settings), so every node trains alike."""
    settings = [f"{name}={value}" for name, value in training_environment().items()]
    return {rank: [*(["env", *settings] if settings else []),
                   *launch_command(launcher.model_copy(update={"node_rank": rank}), stage, spec)]
            for rank in range(1, launcher.nnodes)}
