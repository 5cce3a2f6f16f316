"""Multi-node torchrun without Kubernetes: node 0 starts through the orchestrator's launch path, each other node runs
the command node 0 prints. Two torchrun agents on localhost (--nnodes 2 --node_rank 0/1, one process each, gloo)
train the tiny SFT with a per-device batch of 8 as one process with a batch of 16 does; a node that never comes
ends the rendezvous within launcher.join_timeout, named in one line."""

import shlex
import socket
from pathlib import Path

import pytest

import engine.train.sft
from assets.kubernetes import TRAIN_PROCESS
from engine.errors import RecipeError
from engine.models.device import PRECISION_KEYS
from engine.recipe import LauncherSection, load_recipe
from engine.train.child import read_result, spec_of, write_spec
from engine.train.launch import launch_command, other_node_commands, world_size
from engine.train.multinode import joining_instructions, node_zero_environment, rendezvous_failure
from tests.processes import started
from tests.test_distributed import COMMON, train

TRAINING_TIMEOUT = 900  # seconds for both nodes' 8 steps on two shared CPU cores (measured: about 60 s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(port: int, join_timeout: int = 120) -> LauncherSection:
    return LauncherSection(type="torchrun", nnodes=2, nproc_per_node=1, rdzv_endpoint=f"127.0.0.1:{port}",
                           join_timeout=join_timeout)


def child_environment() -> dict[str, str]:
    import os
    return os.environ | {"PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.cpu_only("two nodes share the CPU through gloo; on CUDA each rank takes a GPU of its own")
def test_two_torchrun_nodes_on_localhost_train_as_one_process_with_twice_the_batch(tmp_path, tiny_model_dir,
                                                                                    formatted_dir):
    launcher = two_nodes(free_port())
    assert world_size(launcher) == 2
    recipe = load_recipe("tiny", {**COMMON, "sft.per_device_train_batch_size": 8})[0]
    out = tmp_path / "two" / "work"
    out.mkdir(parents=True)
    spec = write_spec(spec_of("sft_adapter", "two", engine.train.sft.train_sft_adapter,
                              ("sft", "data.cutoff_len", "launcher", *PRECISION_KEYS), recipe,
                              {"pt_model": tiny_model_dir, "formatted_data": formatted_dir}, out, tmp_path / "home"),
                      tmp_path / "two" / "run")
    node_one = other_node_commands(launcher, "sft_adapter", spec)[1]
    said = "\n".join(joining_instructions(launcher, "sft_adapter", spec, tmp_path))
    assert f"node 1: {shlex.join(node_one)}" in said  # what node 0 prints is what node 1 runs below
    assert node_one[node_one.index("--node_rank") + 1] == "1" and node_one[-4:-2] == ["engine.train", "sft_adapter"]

    zero_command = launch_command(launcher, "sft_adapter", spec, TRAIN_PROCESS)  # the orchestrator's own
    with started(zero_command, tmp_path / "logs", env=child_environment() | node_zero_environment(spec)) as zero, \
            started(node_one, tmp_path / "logs", env=child_environment()) as one:
        assert zero.wait(TRAINING_TIMEOUT) == 0, (zero.out() + zero.err())[-4000:]
        assert one.wait(60) == 0, (one.out() + one.err())[-4000:]
    nodes = read_result(spec)

    single, _, _ = train(tmp_path, "one", LauncherSection(), 16, tiny_model_dir, formatted_dir)
    assert nodes["processes"] == 2 and single["processes"] == 1
    losses = ([p["loss"] for p in single["loss_curve"]], [p["loss"] for p in nodes["loss_curve"]])
    assert len(losses[1]) == len(losses[0]) == 8
    for two, one in zip(losses[1], losses[0]):
        assert two == pytest.approx(one, rel=0.01)  # measured: equal to the 4 decimals logged (7.1544 ... 2.8048)
    assert sorted(p.name for p in out.iterdir()) == ["adapter"]  # rank 0, on node 0, wrote it


def test_a_node_that_never_joins_ends_the_rendezvous_naming_it(tmp_path):
    launcher = two_nodes(free_port(), join_timeout=3)
    spec = tmp_path / "run" / "spec.json"  # no training process starts: the rendezvous never completes
    spec.parent.mkdir()
    spec.write_text("{}")
    command = launch_command(launcher, "sft_adapter", spec, TRAIN_PROCESS)
    assert command[command.index("--rdzv_backend") + 1] == "static"  # node_rank is the group rank: rank 0 is here
    assert command[command.index("--rdzv_conf") + 1] == "timeout=3"
    with started(command, tmp_path / "logs", env=child_environment() | node_zero_environment(spec)) as zero:
        assert zero.wait(120) not in (0, None), (zero.out() + zero.err())[-3000:]
    assert rendezvous_failure(launcher, "sft_adapter", spec) == (
        f"sft_adapter: node 1 did not join the rendezvous at {launcher.rdzv_endpoint} within launcher.join_timeout "
        "3 s (1 of 2 nodes joined); run on each the command printed when the stage started")


def test_a_recipe_for_another_node_is_refused_in_one_line():
    with pytest.raises(RecipeError, match="tuneline runs on node 0 only; on node 1 run the command node 0 prints"):
        load_recipe("tiny", {"launcher.type": "torchrun", "launcher.nnodes": 2, "launcher.node_rank": 1,
                             "launcher.rdzv_endpoint": "node0:29500"})
    with pytest.raises(RecipeError, match="on node 1 run the command node 0 prints"):
        load_recipe("tiny", {"launcher.type": "accelerate", "launcher.accelerate_config": "multi.yaml",
                             "launcher.nnodes": 2, "launcher.node_rank": 1, "launcher.rdzv_endpoint": "node0:29500"})
    with pytest.raises(RecipeError, match="rdzv_endpoint"):
        load_recipe("tiny", {"launcher.type": "torchrun", "launcher.nnodes": 2})
    assert load_recipe("tiny", {"launcher.type": "kubernetes", "launcher.nnodes": 2, "launcher.kubernetes.image": "i",
                                "launcher.kubernetes.volume_claim": "v"})[0].launcher.rdzv_endpoint is None


def test_the_orchestrator_says_the_other_nodes_command_and_fails_naming_the_node_that_did_not_join(tmp_path):
    import dagster as dg
    from assets.stage_asset import TrainingFailed, out_of_process
    from engine.graph import SFT_ADAPTER
    from engine.runtime import progress
    from engine.stage import RecipeView, StageRun
    from engine.store.home import Home
    recipe = load_recipe("tiny", {"launcher.type": "torchrun", "launcher.nnodes": 2, "launcher.nproc_per_node": 1,
                                  "launcher.rdzv_endpoint": f"127.0.0.1:{free_port()}", "launcher.join_timeout": 3})[0]
    home = Home(tmp_path / "home")
    run = StageRun("sft_adapter", "f" * 16, RecipeView(recipe, ("sft",), "sft_adapter"), {}, tmp_path / "work", home)
    failures = []

    @dg.asset
    def sft_adapter(context: dg.AssetExecutionContext):
        with progress.forwarded(context.log.log):
            try:
                out_of_process(context)(SFT_ADAPTER, run)
            except TrainingFailed as failed:
                failures.append(str(failed))
        return dg.MaterializeResult()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([sft_adapter], instance=instance, resources={})
    assert result.success
    logged = "\n".join(record.user_message for record in instance.all_logs(result.run_id))
    spec = home.run_dir("sft_adapter", "f" * 16) / "spec.json"
    node_one = shlex.join(other_node_commands(recipe.launcher, "sft_adapter", spec)[1])
    assert f"node 1: {node_one}" in logged  # said before node 0 waited
    assert failures == [f"sft_adapter: node 1 did not join the rendezvous at {recipe.launcher.rdzv_endpoint} within "
                        "launcher.join_timeout 3 s (1 of 2 nodes joined); run on each the command printed when the "
                        "stage started"]


def test_accelerate_over_two_machines_prints_the_other_machines_command_with_the_same_bounded_rendezvous():
    launcher = LauncherSection(type="accelerate", accelerate_config="multi.yaml", nnodes=2, nproc_per_node=4,
                               rdzv_endpoint="node0:29500", join_timeout=300)
    spec = Path("/shared/artifacts/sft_adapter/.run-f/spec.json")
    zero, (one,) = launch_command(launcher, "sft_adapter", spec), other_node_commands(launcher, "sft_adapter", spec).values()
    one = one[one.index("accelerate.commands.launch") - 2:]  # past `env` and the allocator settings
    assert one[:3] == zero[:3] and one[-4:] == ["engine.train", "sft_adapter", "--spec", str(spec)]
    for flag, value in {"--config_file": "multi.yaml", "--num_processes": "8", "--num_machines": "2",
                        "--main_process_ip": "node0", "--main_process_port": "29500", "--rdzv_backend": "static",
                        "--rdzv_conf": "timeout=300"}.items():
        assert zero[zero.index(flag) + 1] == one[one.index(flag) + 1] == value, flag
    assert (zero[zero.index("--machine_rank") + 1], one[one.index("--machine_rank") + 1]) == ("0", "1")
