"""The cluster path: a training stage's spec runs as a pod through dagster-k8s' PipesK8sClient. The pod is built
and submitted against a fake Kubernetes client (no cluster here): image, command, GPUs, the artifact root's
volume at the same path, and the Pipes bootstrap environment."""

import contextlib
from pathlib import Path

import dagster as dg
import pytest

from assets.kubernetes import run_in_pod
from engine.errors import RecipeError
from engine.recipe import LauncherSection, load_recipe
from engine.train.launch import ALLOCATOR


class FakeCoreApi:
    def __init__(self):
        self.created, self.deleted = [], []

    def create_namespaced_pod(self, namespace, body):
        self.created.append((namespace, body))

    def delete_namespaced_pod(self, name, namespace):
        self.deleted.append((namespace, name))


class FakeKubernetes:
    def __init__(self):
        self.core_api = FakeCoreApi()
        self.waited, self.wait_timeouts = [], []

    def wait_for_pod(self, name, namespace, **kwargs):
        self.waited.append((namespace, name))
        self.wait_timeouts.append(kwargs.get("wait_timeout"))


@pytest.fixture
def fake_cluster(monkeypatch):
    for name in ALLOCATOR:  # the caller's own settings would win
        monkeypatch.delenv(name, raising=False)
    from dagster_k8s import PipesK8sClient, client
    fake = FakeKubernetes()
    monkeypatch.setattr(client.DagsterKubernetesClient, "production_client", staticmethod(lambda *a, **k: fake))
    monkeypatch.setattr(PipesK8sClient, "_load_k8s_config", lambda self: None)
    monkeypatch.setattr(PipesK8sClient, "consume_pod_logs", lambda self, **kwargs: contextlib.nullcontext())
    return fake


def test_a_training_stage_becomes_a_pod_with_its_gpus_and_the_shared_artifact_root(fake_cluster, tmp_path):
    launcher = LauncherSection(type="kubernetes", kubernetes={
        "image": "registry.example/tuneline:0.1", "namespace": "ml", "gpus_per_pod": 2,
        "volume_claim": "tuneline-home", "node_selector": {"gpu": "h100"}})
    spec = tmp_path / "artifacts" / "sft_adapter" / ".run-abc" / "spec.json"

    @dg.asset
    def sft_adapter(context: dg.AssetExecutionContext):
        run_in_pod(context, launcher, "sft_adapter", spec, tmp_path)
        return dg.MaterializeResult()

    assert dg.materialize([sft_adapter]).success
    ((namespace, pod),) = fake_cluster.core_api.created
    assert namespace == "ml" and fake_cluster.waited and fake_cluster.core_api.deleted
    (container,) = pod.spec.containers
    assert container.image == "registry.example/tuneline:0.1"
    assert container.command == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 "-m", "pipelines.train_process", "sft_adapter", "--spec", str(spec)]
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("tuneline-home", str(tmp_path)),
                                                                         ("dshm", "/dev/shm")]
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "tuneline-home"
    assert (pod.spec.volumes[1].empty_dir.medium, pod.spec.volumes[1].empty_dir.size_limit) == ("Memory", "16Gi")
    assert fake_cluster.wait_timeouts == [0]  # no limit unless the recipe sets one (dagster-k8s' default: 24 h)
    assert pod.spec.node_selector == {"gpu": "h100"} and pod.spec.restart_policy == "Never"
    env = {e.name: e.value for e in container.env}
    assert "DAGSTER_PIPES_CONTEXT" in env
    assert env["MALLOC_MMAP_MAX_"] == "0"  # the allocator settings of every training process (engine/train/launch)


def test_a_kubernetes_launcher_needs_an_image_and_a_shared_volume():
    with pytest.raises(RecipeError, match="kubernetes.image"):
        load_recipe("tiny", {"launcher.type": "kubernetes"})
    one_gpu = LauncherSection(type="kubernetes", kubernetes={"image": "i", "volume_claim": "v"})
    from engine.train.launch import launch_command
    assert launch_command(one_gpu, "dpo_adapter", Path("s.json")) == ["python", "-m", "engine.train", "dpo_adapter",
                                                                      "--spec", "s.json"]


def test_a_pod_gets_the_recipes_tolerations_environment_resources_and_wait_timeout(fake_cluster, tmp_path):
    launcher = LauncherSection(type="kubernetes", kubernetes={
        "image": "i", "volume_claim": "v", "gpus_per_pod": 1, "env": {"NCCL_DEBUG": "INFO"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "80Gi"}, "shm_size": None,
        "wait_timeout": 7200})

    @dg.asset
    def dpo_adapter(context: dg.AssetExecutionContext):
        run_in_pod(context, launcher, "dpo_adapter", tmp_path / "spec.json", tmp_path)
        return dg.MaterializeResult()

    assert dg.materialize([dpo_adapter]).success
    ((_, pod),) = fake_cluster.core_api.created
    (container,) = pod.spec.containers
    assert container.resources.requests == {"cpu": "8", "memory": "64Gi"}
    assert container.resources.limits == {"memory": "80Gi", "nvidia.com/gpu": "1"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists",
                                                                              "NoSchedule")]
    assert {e.name: e.value for e in container.env}["NCCL_DEBUG"] == "INFO"
    assert [v.name for v in pod.spec.volumes] == ["tuneline-home"]  # shm_size null: no /dev/shm volume
    assert fake_cluster.wait_timeouts == [7200]
