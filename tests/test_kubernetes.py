"""The cluster path: a training stage's spec (and an export or evaluation stage's, where the recipe says) runs as a
pod through dagster-k8s' PipesK8sClient. The pod is built and submitted against a fake Kubernetes client (no cluster
here): image, command, GPUs, the declared accelerator's node label, the artifact root's volume at the same path, and
the Pipes bootstrap environment. One fake pod runs its command's stage process in this process: the merge, from its
spec, end to end but for Kubernetes itself."""

import contextlib
import json
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
        self.runs = None  # pod body -> exit code: what the pod's container does (None: nothing)

    def wait_for_pod(self, name, namespace, **kwargs):
        self.waited.append((namespace, name))
        self.wait_timeouts.append(kwargs.get("wait_timeout"))
        if self.runs and (code := self.runs(self.core_api.created[-1][1])):
            raise RuntimeError(f"pod {name}: container exited with {code}")  # as dagster-k8s reports a failed pod


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


H100 = {"type": "nvidia-h100-80gb", "count": 2, "bf16": True}


def pods(**kubernetes) -> LauncherSection:
    return LauncherSection(type="kubernetes", kubernetes={"image": "registry.example/tuneline:0.1",
                                                          "volume_claim": "tuneline-home", **kubernetes})


def pod_of(fake_cluster, tmp_path, launcher, stage: str, training: bool = True):
    """The pod run_in_pod submits for `stage`."""
    spec = tmp_path / "artifacts" / stage / ".run-abc" / "spec.json"

    @dg.asset(name=stage)
    def the_stage(context: dg.AssetExecutionContext):
        run_in_pod(context, launcher, stage, spec, tmp_path, training=training)
        return dg.MaterializeResult()

    assert dg.materialize([the_stage]).success
    (_, pod), = fake_cluster.core_api.created[-1:]
    return pod, spec


def test_a_declared_accelerator_gives_the_pod_its_gpus_and_its_nodes(fake_cluster, tmp_path):
    pod, spec = pod_of(fake_cluster, tmp_path, pods(accelerator=H100, node_selector={"pool": "training"}),
                       "sft_adapter")
    (container,) = pod.spec.containers
    assert container.resources.limits == {"nvidia.com/gpu": "2"}  # accelerator.count replaces gpus_per_pod
    assert container.command[:6] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert pod.spec.node_selector == {"pool": "training", "nvidia.com/gpu.product": "nvidia-h100-80gb"}
    gke = pods(accelerator={**H100, "label": "cloud.google.com/gke-accelerator"})
    pod, _ = pod_of(fake_cluster, tmp_path, gke, "dpo_adapter")
    assert pod.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    cpu_pods = pods(accelerator={"type": "none", "count": 0, "bf16": False})
    pod, _ = pod_of(fake_cluster, tmp_path, cpu_pods, "reward_model")
    assert pod.spec.containers[0].resources.limits in (None, {}) and not pod.spec.node_selector


def test_one_gpu_count_per_pod_and_no_served_model_as_a_pod():
    with pytest.raises(RecipeError, match=r"gpus_per_pod 2 and accelerator\.count 1 disagree; accelerator\.count "
                                          "replaces gpus_per_pod"):
        load_recipe("tiny", {"launcher.kubernetes.gpus_per_pod": 2,
                             "launcher.kubernetes.accelerator": {**H100, "count": 1}})
    assert load_recipe("tiny", {"launcher.kubernetes.gpus_per_pod": 2,
                                "launcher.kubernetes.accelerator": H100})[0].launcher.kubernetes.gpus() == 2
    with pytest.raises(RecipeError, match=r"also_in_pods: deployment cannot run as a pod \(a served model is a "
                                          r"Deployment and a Service"):
        load_recipe("tiny", {"launcher.kubernetes.also_in_pods": ["export", "deployment"]})


def test_export_and_evaluation_stages_become_pods_only_where_the_recipe_says(fake_cluster, tmp_path):
    from engine.graph import DEPLOYMENT, EVALUATIONS, MERGED_MODEL, GPTQ_MODEL, SFT_ADAPTER
    recipe = lambda **k: load_recipe("tiny", {f"launcher.{key}": v for key, v in  # noqa: E731
                                              pods(accelerator=H100, **k).model_dump().items()})[0]
    today = recipe()
    assert SFT_ADAPTER.runs_out_of_process(today)
    assert not any(s.runs_out_of_process(today) for s in (MERGED_MODEL, GPTQ_MODEL, EVALUATIONS["sft"], DEPLOYMENT))
    exports = recipe(also_in_pods=["export"])
    assert MERGED_MODEL.runs_out_of_process(exports) and GPTQ_MODEL.runs_out_of_process(exports)
    assert not EVALUATIONS["sft"].runs_out_of_process(exports)
    both = recipe(also_in_pods=["export", "evaluation"])
    assert all(e.runs_out_of_process(both) for e in EVALUATIONS.values()) and not DEPLOYMENT.runs_out_of_process(both)
    local = load_recipe("tiny", {"launcher.kubernetes.also_in_pods": ["export"]})[0]  # launcher.type local
    assert not MERGED_MODEL.runs_out_of_process(local)
    # an export or evaluation pod is one process over every GPU (device_map auto; vLLM's tensor parallel), no torchrun
    pod, spec = pod_of(fake_cluster, tmp_path, pods(accelerator=H100, also_in_pods=["export"]), "merged_model",
                       training=False)
    (container,) = pod.spec.containers
    assert container.command == ["python", "-m", "pipelines.train_process", "merged_model", "--spec", str(spec)]
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert pod.spec.node_selector == {"nvidia.com/gpu.product": "nvidia-h100-80gb"}


def this_machine_type() -> str:
    from engine.models.device import here
    return here().type


def this_machine() -> dict:
    """An accelerator declaration this machine matches: its GPU, or CPU pods."""
    from engine.models.device import here
    on = here()
    return {"type": "this-gpu", "count": 1, "bf16": on.bf16} if on.type == "cuda" else \
        {"type": "none", "count": 0, "bf16": on.bf16}


def test_merge_and_evaluation_run_as_pods_from_their_specs_and_a_pod_on_other_hardware_refuses(
        fake_cluster, tmp_path, monkeypatch):
    """merged_model and eval_merged under also_in_pods [export, evaluation]: each spec written, each pod submitted,
    and each pod's command (the stage process, run here in place of the pod) merges, then evaluates, the tiny model;
    the orchestrator publishes the artifacts and checks them. Declared hardware the pod does not have stops it in
    one line."""
    from assets.evaluation import EVAL_ASSETS
    from assets.merged_model import merged_model
    from assets.resource import Tuneline
    from engine.build import build_stage
    from engine.plan import ancestors
    from engine.train import child
    monkeypatch.setattr(child, "die_with_parent", lambda: None)  # the "pod" is this test's process
    fake_cluster.runs = lambda pod: child.main(pod.spec.containers[0].command[3:])

    def materialize(accelerator: dict):
        overrides = {"stages": [], "launcher.type": "kubernetes", "launcher.kubernetes.image": "tuneline:test",
                     "launcher.kubernetes.volume_claim": "home", "launcher.kubernetes.accelerator": accelerator,
                     "launcher.kubernetes.also_in_pods": ["export", "evaluation"]}
        tuneline = Tuneline(recipe_name="tiny", overrides=overrides, artifact_root=str(tmp_path / "home"))
        plan, recipe = tuneline.plan(), tuneline.recipe()
        for parent in ancestors(plan, "merged_model"):  # raw_data .. formatted_data, pt_model (off: the base)
            build_stage(tuneline.home(), plan, parent, recipe, log=lambda line: None)
        evaluation = next(a for a in EVAL_ASSETS if a.key == dg.AssetKey("eval_merged"))
        return plan, dg.materialize([merged_model, evaluation], resources={"tuneline": tuneline},
                                    raise_on_error=False)

    plan, result = materialize(this_machine())
    assert result.success
    assert [pod.spec.containers[0].command[3] for _, pod in fake_cluster.core_api.created] == ["merged_model",
                                                                                               "eval_merged"]
    planned = plan["merged_model"]
    artifact = tmp_path / "home" / "artifacts" / "merged_model" / planned.fingerprint
    assert (artifact / "model.safetensors").is_file() and (artifact / "lineage.json").is_file()
    (checked,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "logits_match_adapters"]
    assert checked.passed
    evaluated = json.loads((tmp_path / "home" / "artifacts" / "eval_merged" / plan["eval_merged"].fingerprint
                            / "manifest.json").read_text())["metrics"]
    assert evaluated["perplexity"] > 1 and evaluated["device"] == this_machine_type()
    assert not list(artifact.parent.glob(".run-*"))  # the spec folder goes once the result is read

    elsewhere = {**this_machine(), "bf16": not this_machine()["bf16"]}  # a pod that computes bf16 otherwise
    plan_elsewhere, result = materialize(elsewhere)
    assert not result.success and plan_elsewhere["merged_model"].fingerprint != planned.fingerprint
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error, messages = failure.step_failure_data.error, []
    while error is not None:  # Dagster's step error, then the stage's TrainingFailed with the pod's own line
        messages, error = messages + [error.message], error.cause
    message = "\n".join(messages)
    assert "launcher.kubernetes.accelerator declares" in message and "but this pod has" in message, message
