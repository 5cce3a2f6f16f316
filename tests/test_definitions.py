from pathlib import Path

import dagster as dg

from pipelines.definitions import ASSETS, build_definitions

EXPECTED = {"base_model": "model", "raw_data": "data", "clean_data": "data", "formatted_data": "data",
            "sft_adapter": "training", "reward_model": "training", "dpo_adapter": "training", "ppo_adapter": "training",
            "grpo_adapter": "training",
            "merged_model": "export", "gptq_model": "export", "awq_model": "export", "pt_model": "training",
            **{f"eval_{s}": "evaluation" for s in ("base", "sft", "dpo", "ppo", "grpo", "merged", "gptq", "awq")},
            "model_comparison": "evaluation", "deployment": "deployment"}


def test_definitions_load_with_every_asset_in_its_group(tmp_path):
    graph = build_definitions(artifact_root=str(tmp_path)).resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == EXPECTED


def test_quality_checks_block_downstream():
    specs = {(spec.asset_key.to_user_string(), spec.name): spec.blocking
             for asset in ASSETS for spec in asset.check_specs}
    assert specs[("sft_adapter", "eval_loss_below_base")]
    assert specs[("reward_model", "accuracy_above_bound")]
    assert specs[("dpo_adapter", "reward_margin_above_bound")]
    assert specs[("merged_model", "logits_match_adapters")]
    assert specs[("gptq_model", "perplexity_within_bound")] and specs[("awq_model", "reloads_and_generates")]
    assert specs[("model_comparison", "dpo_not_worse_than_sft")] and specs[("model_comparison", "awq_within_budget")]
    assert all(specs.values())


def test_deployment_waits_for_the_gates(tmp_path):
    graph = build_definitions(artifact_root=str(tmp_path)).resolve_asset_graph()
    assert dg.AssetKey("model_comparison") in graph.get(dg.AssetKey("deployment")).parent_keys
    assert {f"eval_{s}" for s in ("base", "sft", "dpo", "ppo", "grpo", "merged", "gptq", "awq")} == {
        key.to_user_string() for key in graph.get(dg.AssetKey("model_comparison")).parent_keys}
    assert dg.AssetKey("pt_model") in graph.get(dg.AssetKey("sft_adapter")).parent_keys


def test_merge_comes_before_quantization(tmp_path):
    graph = build_definitions(artifact_root=str(tmp_path)).resolve_asset_graph()
    assert dg.AssetKey("merged_model") in graph.get(dg.AssetKey("gptq_model")).parent_keys
    assert dg.AssetKey("dpo_adapter") in graph.get(dg.AssetKey("merged_model")).parent_keys


def test_training_stages_run_out_of_process_and_no_step_waits_in_a_dagster_pool(tmp_path, monkeypatch):
    from engine.graph import STAGES
    assert {s.name for s in STAGES if s.training} == {"pt_model", "sft_adapter", "reward_model", "dpo_adapter",
                                                           "ppo_adapter", "grpo_adapter"}
    assert all(asset.node_def.pool is None for asset in ASSETS)  # the training slot is a lock a dead run frees
    (tmp_path / "dagster.yaml").write_text(Path("pipelines/dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled


def test_the_engine_never_imports_dagster():
    """engine/ is plain Python: no module of it imports dagster or a dagster_* package (Pipes included)."""
    import ast
    offenders = []
    for path in sorted(Path("engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0].startswith("dagster")]
    assert offenders == []
    assert list(Path("engine").rglob("*.py"))  # the walk saw the engine


def test_one_asset_per_declared_stage_in_graph_order_with_its_declaration():
    """The assets are the stages of engine/graph.py, in its order, each with the parents and code version of its
    declaration: the Dagster layer declares no stage of its own."""
    from engine.graph import STAGES
    from engine.store.codeversion import code_version
    from engine.plan import topological
    assert [s.name for s in topological(STAGES)] == [s.name for s in STAGES]  # declared parents first
    assert [asset.key.to_user_string() for asset in ASSETS] == [stage.name for stage in STAGES]
    for asset, stage in zip(ASSETS, STAGES):
        assert {k.to_user_string() for k in asset.dependency_keys} == set(stage.parents), stage.name
        assert asset.code_versions_by_key[asset.key] == code_version(stage.entry), stage.name


def test_importing_the_definitions_loads_no_recipe(monkeypatch):
    """`defs` is built when Dagster loads it: importing the module (as `tuneline run` does for ASSETS) validates no
    recipe, so a run's recipe is validated once, by the run."""
    import importlib
    import pipelines.definitions
    from engine.recipe import Recipe
    calls = []
    original = Recipe.model_validate.__func__
    monkeypatch.setattr(Recipe, "model_validate", classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))
    importlib.reload(pipelines.definitions)
    assert calls == []


def test_a_run_validates_its_recipe_once(tmp_path, monkeypatch, capsys):
    """`tuneline run --set sft.learning_rate=...` of two stages validates the recipe once, where the run starts
    (engine/preflight.py); the Dagster resource, each asset and the plan read the recipe that check returned. (A
    training stage's process validates the spec.json it reads once more: a file another process wrote.)"""
    from engine import preflight
    from engine.recipe import Recipe
    from pipelines.cli import main
    preflight._checked.cache_clear()  # this process may have checked the tiny recipe for an earlier test
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    calls = []
    original = Recipe.model_validate.__func__
    monkeypatch.setattr(Recipe, "model_validate", classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))
    assert main(["run", "--select", "raw_data,clean_data", "--set", "sft.learning_rate=2e-4",
                 "--artifact-root", str(tmp_path / "home")]) == 0
    assert "clean_data" in capsys.readouterr().out
    assert len(calls) == 1
