"""A multi-node stage on Kubernetes is a Kubeflow TrainJob: the rendered manifest against golden files (1x8, 2x8),
and the Pipes client against a fake Kubernetes API (no cluster here): submitted, rank 0's log streamed through
Pipes, waited on, and deleted on every exit path (complete, failed, timed out).

Regenerate the golden files after an intended change: TUNELINE_REGENERATE_GOLDEN=1 pytest tests/test_trainjob.py
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml

from assets.kubernetes import TRAIN_PROCESS
from assets.trainjob import PipesTrainJobClient, run_trainjob
from engine.cluster.trainjob import trainjob
from engine.recipe import LauncherSection
from engine.train.launch import ALLOCATOR, launch_command, world_size

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path("/mnt/tuneline")
SPEC = ROOT / "artifacts" / "sft_adapter" / ".run-0123abcd" / "spec.json"
CLUSTER = {"image": "registry.example/tuneline:0.1", "namespace": "ml", "gpus_per_pod": 8,
           "volume_claim": "tuneline-home", "node_selector": {"gpu": "h100"},
           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
           "env": {"NCCL_SOCKET_IFNAME": "eth0"}, "requests": {"cpu": "32", "memory": "400Gi"},
           "limits": {"memory": "480Gi"}, "shm_size": "64Gi"}


def launcher(nnodes: int, **kubernetes) -> LauncherSection:
    return LauncherSection(type="kubernetes", nnodes=nnodes, kubernetes={**CLUSTER, **kubernetes})


@pytest.mark.parametrize("nnodes", [1, 2])
def test_the_rendered_trainjob_matches_its_golden_file(nnodes):
    cluster = launcher(nnodes)
    body = trainjob("sft-adapter-0123abcd4567-a1b2c3", "ml", cluster,
                    launch_command(cluster, "sft_adapter", SPEC, TRAIN_PROCESS),
                    {"MALLOC_MMAP_MAX_": "0", "NCCL_SOCKET_IFNAME": "eth0"}, ROOT, "sft_adapter")
    rendered = yaml.safe_dump(body, sort_keys=False)
    golden = GOLDEN / f"trainjob-{nnodes}x8.yaml"
    if os.environ.get("TUNELINE_REGENERATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert rendered == golden.read_text()
    trainer = body["spec"]["trainer"]
    assert trainer["numNodes"] * trainer["numProcPerNode"] == world_size(cluster) == 8 * nnodes
    pod = body["spec"]["podTemplateOverrides"][0]["spec"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert {"name": "tuneline-home", "mountPath": str(ROOT)} in pod["containers"][0]["volumeMounts"]
    assert pod["tolerations"] == CLUSTER["tolerations"]


def test_two_nodes_of_eight_gpus_run_the_sixteen_processes_the_fingerprint_counts():
    cluster = launcher(2)
    command = launch_command(cluster, "sft_adapter", SPEC, TRAIN_PROCESS)
    # the processes torchrun starts in each pod are stated, never left to a default of one node
    assert command[:7] == ["python", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "8"]
    assert "--standalone" not in command
    assert world_size(cluster) == 16
    body = trainjob("x", "ml", cluster, command, {}, ROOT, "sft_adapter")
    assert body["spec"]["trainer"]["numNodes"] == 2 and body["spec"]["trainer"]["numProcPerNode"] == 8
    assert LauncherSection(type="kubernetes", nnodes=2, kubernetes=CLUSTER).rdzv_endpoint is None  # the runtime's


class FakeCustomObjects:
    """The TrainJob API: create, get (its status follows `states`, the last one repeating), delete."""

    def __init__(self, states: list[dict | None]):
        self.states, self.created, self.deleted, self.gets = states, [], [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.states[min(self.gets, len(self.states) - 1)]
        self.gets += 1
        return {"metadata": {"name": name}, **({"status": status} if status else {})}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        self.deleted.append((namespace, plural, name, kwargs))


class FakeCore:
    """Pods: node rank 0's, running; its log holds a Pipes message from rank 0 and a plain line."""

    def __init__(self):
        self.selectors, self.logs_read = [], []

    def list_namespaced_pod(self, namespace, label_selector=None, **kwargs):
        self.selectors.append(label_selector)
        pod = SimpleNamespace(metadata=SimpleNamespace(name="sft-job-node-0-0-abcde"),
                              status=SimpleNamespace(phase="Running"))
        return SimpleNamespace(items=[pod])

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        self.logs_read.append(name)
        message = json.dumps({"__dagster_pipes_version": "0.1", "method": "log",
                              "params": {"message": "sft_adapter: step 1/8 loss 1.25 (rank 0)", "level": "INFO"}})
        return iter([f"2026-12-04T21:00:00.000000Z {message}\n".encode(),
                     b"2026-12-04T21:00:01.000000Z step 1/8\n"])


def run_stage(states, tmp_path, clock=None, **kubernetes):
    custom, core = FakeCustomObjects(states), FakeCore()
    cluster = launcher(2, **kubernetes)
    client = PipesTrainJobClient(custom, core, poll_interval=0, **({"clock": clock} if clock else {}))

    @dg.asset
    def sft_adapter(context: dg.AssetExecutionContext):
        run_trainjob(context, cluster, "sft_adapter", tmp_path / "spec.json", tmp_path, "0123abcd4567ffff", client)
        return dg.MaterializeResult()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([sft_adapter], raise_on_error=False, instance=instance)
    result.log_lines = [record.user_message for record in instance.all_logs(result.run_id)]
    return result, custom, core


@pytest.fixture(autouse=True)
def no_allocator_settings(monkeypatch):
    for name in ALLOCATOR:  # the caller's own settings would win
        monkeypatch.delenv(name, raising=False)


def test_a_trainjob_is_submitted_streamed_waited_on_and_deleted(tmp_path):
    result, custom, core = run_stage([None, {"conditions": [{"type": "Created", "status": "True"}]},
                                      {"conditions": [{"type": "Complete", "status": "True"}]}], tmp_path)
    assert result.success
    ((group, version, namespace, plural, body),) = custom.created
    assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs")
    name = body["metadata"]["name"]
    assert name.startswith("sft-adapter-0123abcd4567-") and len(name) <= 63
    env = {e["name"]: e["value"] for e in body["spec"]["trainer"]["env"]}
    assert "DAGSTER_PIPES_CONTEXT" in env and env["NCCL_SOCKET_IFNAME"] == "eth0" and env["MALLOC_MMAP_MAX_"] == "0"
    assert custom.deleted == [("ml", "trainjobs", name, {"propagation_policy": "Foreground"})]
    assert core.selectors[0] == (f"jobset.sigs.k8s.io/jobset-name={name},"
                                 "batch.kubernetes.io/job-completion-index=0")
    assert core.logs_read == ["sft-job-node-0-0-abcde"]
    # rank 0's line came back through Pipes into the run's log
    assert any("step 1/8 loss 1.25 (rank 0)" in line for line in result.log_lines), result.log_lines


def test_a_failed_trainjob_fails_the_stage_with_its_message_and_is_deleted(tmp_path):
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "JobsFailed",
                              "message": "jobset failed: pod node-1 OOMKilled"}]}
    result, custom, _ = run_stage([None, failed], tmp_path)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "failed: jobset failed: pod node-1 OOMKilled" in failure.event_specific_data.error.cause.message
    name = custom.created[0][4]["metadata"]["name"]
    assert [d[2] for d in custom.deleted] == [name]


def test_a_trainjob_past_its_wait_timeout_fails_the_stage_and_is_deleted(tmp_path):
    ticks = iter(range(0, 10_000, 3))
    result, custom, _ = run_stage([None], tmp_path, clock=lambda: next(ticks), wait_timeout=10)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.cause.message
    assert "still running after launcher.kubernetes.wait_timeout 10 s" in message
    assert len(custom.deleted) == 1 and custom.gets < 10


def test_a_cluster_without_kubeflow_trainer_is_said_in_one_line(tmp_path):
    from kubernetes.client.exceptions import ApiException

    class NoTrainer(FakeCustomObjects):
        def create_namespaced_custom_object(self, *args, **kwargs):
            raise ApiException(status=404, reason="Not Found")

    client = PipesTrainJobClient(NoTrainer([None]), FakeCore(), poll_interval=0)

    @dg.asset
    def sft_adapter(context: dg.AssetExecutionContext):
        run_trainjob(context, launcher(2), "sft_adapter", tmp_path / "spec.json", tmp_path, "0123abcd", client)

    result = dg.materialize([sft_adapter], raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.event_specific_data.error.cause.message.strip() == (
        "assets.trainjob.TrainJobFailed: launcher.nnodes 2 on kubernetes: namespace ml has no "
        "trainjobs.trainer.kubeflow.org/v1alpha1 (404): install Kubeflow Trainer v2, or train with launcher.nnodes 1")
