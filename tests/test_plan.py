"""Fingerprints cover exactly what a stage reads: each recipe key, data file, the pt corpus and each engine
module is changed in turn, and exactly the stages that read it (and what is made from them) get a new
fingerprint. Runs use the same plan, so a new fingerprint is a rebuild and an unchanged one a cache hit."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

import engine.store.codeversion
from engine.plan import make_plan
from engine.recipe import load_recipe
from engine.graph import STAGES

# the tiny recipe runs no ppo nor grpo: their stages are off and read only the stages list, so no recipe key or data
# upstream rebuilds them; their code version is still their entry point's closure (an edit there rewrites the off record)
RL_OFF = {"ppo_adapter", "eval_ppo", "grpo_adapter", "eval_grpo"}
ALL = {s.name for s in STAGES} - RL_OFF
EVALS = {"eval_base", "eval_sft", "eval_dpo", "eval_merged", "eval_gptq", "eval_awq"}
# every stage made from the named one, spelled out: the expectations do not come from the code under test
AFTER_SFT = {"sft_adapter", "dpo_adapter", "merged_model", "gptq_model", "awq_model", "eval_sft", "eval_dpo",
             "eval_merged", "eval_gptq", "eval_awq", "model_comparison", "deployment"}
AFTER_DPO = AFTER_SFT - {"sft_adapter", "eval_sft"}
AFTER_QUANTIZE = {"gptq_model", "awq_model", "eval_gptq", "eval_awq", "model_comparison", "deployment"}
AFTER_REWARD = {"reward_model", *EVALS, "model_comparison", "deployment"}
AFTER_FORMAT = ALL - {"base_model", "raw_data", "clean_data", "pt_model"}
AFTER_CLEAN = AFTER_FORMAT | {"clean_data"}
AFTER_RAW = AFTER_CLEAN | {"raw_data"}
AFTER_EVAL = EVALS | {"model_comparison", "deployment"}
# every stage that loads a model reads the precision keys (pt_model only when continued pre-training is on)
LOADS_A_MODEL = AFTER_FORMAT - {"formatted_data"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """The sample data in a temp folder, and a recipe on a local checkpoint (the tiny model, saved), so that a
    data file is read by the data stages only (the tiny preset also trains its tokenizer on the data)."""
    home = tmp_path_factory.mktemp("plan")
    shutil.copytree("data", home / "data")
    shutil.copytree(tiny_model_dir, home / "model")
    recipe = yaml.safe_load(Path("pipelines/recipes/tiny.yaml").read_text())
    recipe["data"]["dataset_dir"] = str(home / "data")
    recipe["model"] = {"model_name_or_path": str(home / "model")}
    (home / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return home


def plan_of(recipe: str, overrides: dict | None = None) -> dict[str, str]:
    return {name: p.fingerprint for name, p in make_plan(STAGES, load_recipe(recipe, overrides)[0]).items()}


def rebuilt(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before if before[name] != after[name]}


KEY_CHANGES = [  # (recipe key, new value, the stages whose artifact changes)
    ("sft.learning_rate", 2.0e-3, AFTER_SFT),
    ("sft.lora_rank", 8, AFTER_SFT),
    ("dpo.pref_beta", 0.2, AFTER_DPO),
    ("reward.learning_rate", 1.0e-3, AFTER_REWARD),
    ("quantize.group_size", 64, AFTER_QUANTIZE),
    ("evaluation.max_samples", 16, AFTER_EVAL),
    ("evaluation.infer_backend", "huggingface", AFTER_EVAL),
    ("data.cutoff_len", 256, AFTER_FORMAT),
    ("data.val_size", 0.2, AFTER_FORMAT),
    ("clean.steps", [{"step": "exact_dedup"}], AFTER_CLEAN),
    ("serve.port", 8123, {"deployment"}),
    ("model.infer_dtype", "bfloat16", LOADS_A_MODEL),
    ("model.bf16", True, LOADS_A_MODEL),
    ("model.pure_bf16", True, LOADS_A_MODEL),
    ("serve.model", "gptq", {"deployment"}),
    ("name", "renamed", {"deployment"}),  # the served model's default name
    # thresholds of checks and gates: the check runs again, nothing is rebuilt
    ("dpo.min_reward_gain", 5.0, set()),
    ("reward.min_accuracy", 0.9, set()),
    ("merge.logits_atol", 0.5, set()),
    ("quantize.max_ppl_ratio", 3.0, set()),
    ("quantize.max_accuracy_drop", 0.5, set()),
    ("clean.max_quarantine_ratio", 0.9, set()),
    ("clean.max_source_loss_ratio", 0.1, set()),
    ("data.min_eval_pairs", 64, set()),
    # keys no stage reads
    ("retention.keep_last", 2, set()),
    ("schedule.cron", "0 4 * * *", set()),
    ("pt.learning_rate", 1.0e-3, set()),  # continued pre-training is off: its keys are not read
]


@pytest.mark.parametrize(("key", "value", "expected"), KEY_CHANGES, ids=[k for k, _, _ in KEY_CHANGES])
def test_a_recipe_key_rebuilds_exactly_the_stages_that_read_it(project, key, value, expected):
    recipe = str(project / "recipe.yaml")
    assert rebuilt(plan_of(recipe), plan_of(recipe, {key: value})) == expected


OFF = {"reward_model", "dpo_adapter", "eval_dpo"}  # not configured under `stages: [sft]`
SFT_ONLY = {"stages": ["sft"]}
SFT_ONLY_KEY_CHANGES = [  # (recipe key, new value, the stages whose artifact changes) under `stages: [sft]`
    ("dpo.pref_beta", 0.2, set()),
    ("dpo.learning_rate", 1.0e-4, set()),
    ("dpo.finetuning_type", "full", set()),
    ("reward.learning_rate", 1.0e-3, set()),
    ("reward.lora_rank", 8, set()),
    ("sft.learning_rate", 2.0e-3, AFTER_SFT - OFF),
    ("data.cutoff_len", 256, AFTER_FORMAT - OFF),
    ("model.bf16", True, LOADS_A_MODEL - OFF),
    ("evaluation.max_samples", 16, AFTER_EVAL - OFF),
]


@pytest.mark.parametrize(("key", "value", "expected"), SFT_ONLY_KEY_CHANGES, ids=[k for k, _, _ in SFT_ONLY_KEY_CHANGES])
def test_with_only_sft_the_off_stages_sections_rebuild_nothing(project, key, value, expected):
    recipe = str(project / "recipe.yaml")
    assert rebuilt(plan_of(recipe, SFT_ONLY), plan_of(recipe, {**SFT_ONLY, key: value})) == expected


def test_an_off_stage_reads_only_the_stages_list(project):
    plan = make_plan(STAGES, load_recipe(str(project / "recipe.yaml"), SFT_ONLY)[0])
    for name in OFF:
        assert (plan[name].parents, plan[name].keys, plan[name].outside) == ({}, ("stages",), {})
        assert plan[name].off
    assert "dpo_adapter" not in plan["merged_model"].parents
    assert not any("reward_model" in plan[f"eval_{s}"].parents for s in ("base", "sft", "merged", "gptq", "awq"))


def test_turning_rm_and_dpo_off_keeps_the_data_and_sft(project):
    recipe = str(project / "recipe.yaml")
    everything = plan_of(recipe)
    assert rebuilt(everything, plan_of(recipe, SFT_ONLY)) == \
        ALL - {"base_model", "raw_data", "clean_data", "formatted_data", "pt_model", "sft_adapter"} | RL_OFF
    # without rm, DPO and the exports made from it stay; only what the reward model scored changes
    assert rebuilt(everything, plan_of(recipe, {"stages": ["sft", "dpo"]})) == \
        {"reward_model", *EVALS, "model_comparison", "deployment"} | RL_OFF  # the off RL stages read the list


def test_on_the_tiny_preset_the_model_shape_rebuilds_all_but_the_data(tmp_path):
    before, after = plan_of("tiny"), plan_of("tiny", {"model.tiny.hidden_size": 64})
    assert rebuilt(before, after) == ALL - {"raw_data", "clean_data"}


def test_a_data_file_rebuilds_from_raw_data_on(project):
    recipe = str(project / "recipe.yaml")
    before = plan_of(recipe)
    path = project / "data" / "alpaca_tasks.json"
    original = path.read_text()
    rows = json.loads(original)
    rows[0]["output"] += " (edited)"
    path.write_text(json.dumps(rows))
    try:
        assert rebuilt(before, plan_of(recipe)) == AFTER_RAW
    finally:
        path.write_text(original)
    assert plan_of(recipe) == before


def test_moving_the_data_folder_rebuilds_nothing(project, tmp_path):
    recipe = str(project / "recipe.yaml")
    shutil.copytree(project / "data", tmp_path / "moved")
    assert plan_of(recipe, {"data.dataset_dir": str(tmp_path / "moved")}) == plan_of(recipe)


def test_the_pt_corpus_rebuilds_from_pt_model_on(project):
    recipe = str(project / "recipe.yaml")
    on = {"pt.dataset": ["pt_corpus"]}
    before = plan_of(recipe, on)
    assert rebuilt(plan_of(recipe), before) == ALL - {"base_model", "raw_data", "clean_data", "formatted_data"}
    corpus = project / "data" / "pt_corpus.jsonl"
    original = corpus.read_text()
    corpus.write_text(original + json.dumps({"text": "one more line of raw text to learn"}) + "\n")
    try:
        assert rebuilt(before, plan_of(recipe, on)) == ALL - {"base_model", "raw_data", "clean_data",
                                                             "formatted_data"}
        assert rebuilt(before, plan_of(recipe, {**on, "pt.learning_rate": 1e-4})) == \
            ALL - {"base_model", "raw_data", "clean_data", "formatted_data"}
    finally:
        corpus.write_text(original)


def test_with_pt_on_the_precision_keys_rebuild_pt_model_too(project):
    recipe, on = str(project / "recipe.yaml"), {"pt.dataset": ["pt_corpus"]}
    assert rebuilt(plan_of(recipe, on), plan_of(recipe, {**on, "model.bf16": True})) == \
        ALL - {"base_model", "raw_data", "clean_data", "formatted_data"}


def test_the_local_checkpoint_s_weights_rebuild_everything_that_reads_the_model(project):
    recipe = str(project / "recipe.yaml")
    before = plan_of(recipe)
    weights = project / "model" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        assert rebuilt(before, plan_of(recipe)) == ALL - {"raw_data", "clean_data"}
    finally:
        weights.write_bytes(original)


MODULE_CHANGES = [  # (engine module edited, the stages whose artifact changes)
    # the pt stage reads its corpus through the same readers (its entry runs them when pt.dataset is set)
    ("engine/data/readers.py", AFTER_RAW | {"pt_model"} | RL_OFF),
    ("engine/data/ingest.py", AFTER_RAW | {"pt_model"} | RL_OFF),
    ("engine/data/clean.py", AFTER_CLEAN | RL_OFF),
    ("engine/data/format.py", AFTER_FORMAT | RL_OFF),
    ("engine/train/sft.py", AFTER_SFT),
    ("engine/train/dpo.py", AFTER_DPO),
    ("engine/train/reward.py", AFTER_REWARD),
    ("engine/export/quantize.py", AFTER_QUANTIZE),
    ("engine/evaluate/compare.py", AFTER_EVAL | {"eval_ppo", "eval_grpo"}),
    ("engine/serve/server.py", {"deployment"}),
    ("engine/recipe/__init__.py", set()),  # read for its types only: values enter fingerprints through the keys
    ("engine/store/lineage.py", {"merged_model", "gptq_model", "awq_model", "eval_merged", "eval_gptq", "eval_awq",
                                 "model_comparison", "deployment"}),  # exports write lineage.json
    ("engine/store/digests.py", {"merged_model", "gptq_model", "awq_model", "eval_merged", "eval_gptq", "eval_awq",
                                 "model_comparison", "deployment"}),  # lineage.json's digests; serve config's check
]


@pytest.mark.parametrize(("module", "expected"), MODULE_CHANGES, ids=[m for m, _ in MODULE_CHANGES])
def test_an_engine_module_rebuilds_the_stages_that_run_it(project, monkeypatch, module, expected):
    recipe = str(project / "recipe.yaml")
    before = plan_of(recipe)
    edited = (Path(engine.store.codeversion.PROJECT_ROOT) / module).resolve()
    real = engine.store.codeversion.read_source
    monkeypatch.setattr(engine.store.codeversion, "read_source",
                        lambda path: real(path) + ("\n# edited\n" if Path(path).resolve() == edited else ""))
    assert rebuilt(before, plan_of(recipe)) == expected


def test_the_closure_follows_imports_inside_functions_but_not_type_checking_ones():
    from engine.store.codeversion import module_closure
    closure = module_closure("engine.data.clean")
    assert "engine.models.load" in closure  # token counting imports it inside a function
    assert "engine.recipe" not in closure and "engine.stage" not in closure  # annotations only
    assert {"engine.data.dedup", "engine.store.tables", "engine"} <= set(closure)
