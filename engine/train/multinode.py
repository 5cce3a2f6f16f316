"""A training stage over several machines without Kubernetes (launcher torchrun or accelerate, nnodes > 1).

The orchestrator runs node 0: it starts node 0's torchrun agent (accelerate launch starts one too) and says, before that agent waits at the rendezvous,
the exact command each other node runs (engine/train/launch.py other_node_commands). The rendezvous is bounded by
launcher.join_timeout; when it runs out, the stage fails in one line naming the nodes that did not join.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from engine.train.launch import other_node_commands

# torchrun's agent writes its own failure here (torch.distributed.elastic's @record on its main): a rendezvous that
# timed out says how many nodes joined
AGENT_ERROR_FILE = "rendezvous-error.json"
JOINED = re.compile(r"(\d+)/(\d+) clients joined")  # static rendezvous' TCPStore: "... 1/2 clients joined."


def node_zero_environment(spec: Path) -> dict[str, str]:
    """What node 0's torchrun agent gets beyond the training environment: where it records a failed rendezvous."""
    (spec.parent / AGENT_ERROR_FILE).unlink(missing_ok=True)
    return {"TORCHELASTIC_ERROR_FILE": str(spec.parent / AGENT_ERROR_FILE)}


def joining_instructions(launcher, stage: str, spec: Path, root: Path) -> list[str]:
    """The lines node 0 says before it waits: what each other node runs, and what it needs."""
    lines = [f"{stage}: node 0 of {launcher.nnodes} waits up to {launcher.join_timeout} s (launcher.join_timeout) at "
             f"the rendezvous {launcher.rdzv_endpoint} for the other nodes; each needs this project's code and Python "
             f"environment, the artifact root at {root} (shared), and runs:"]
    lines += [f"  node {rank}: {shlex.join(command)}"
              for rank, command in other_node_commands(launcher, stage, spec).items()]
    return lines


def rendezvous_failure(launcher, stage: str, spec: Path) -> str | None:
    """The one-line reason of a rendezvous that ran out of time on node 0, or None when node 0 failed otherwise."""
    path = spec.parent / AGENT_ERROR_FILE
    if not path.is_file():
        return None
    try:
        message = json.loads(path.read_text())["message"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    if not (found := JOINED.search(message)):
        return None
    joined, expected = int(found.group(1)), int(found.group(2))
    others = ", ".join(str(rank) for rank in range(1, expected))
    missing = expected - joined
    who = (f"node {others} did not join" if expected == 2 else f"nodes {others} did not join" if joined == 1
           else f"{missing} of nodes {others} did not join")
    return (f"{stage}: {who} the rendezvous at {launcher.rdzv_endpoint} within launcher.join_timeout "
            f"{launcher.join_timeout} s ({joined} of {expected} nodes joined); run on each the command printed when "
            "the stage started")
