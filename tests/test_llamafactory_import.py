"""`tuneline import-llamafactory`: LLaMA-Factory training YAMLs become one valid recipe; nothing is dropped
without a word."""

import sys

import pytest
import yaml

from engine.errors import RecipeError
from engine.importers.llamafactory import import_configs
from engine.recipe import Recipe, load_recipe
from tests.processes import run

SFT = """\
model_name_or_path: {model}
stage: sft
do_train: true
finetuning_type: lora
use_dora: true
lora_rank: 8
lora_target: q_proj,v_proj
loraplus_lr_ratio: 16.0
dataset: identity,alpaca_en_demo
template: qwen
cutoff_len: 1024
output_dir: saves/qwen/lora/sft
per_device_train_batch_size: 2
learning_rate: 1.0e-4
num_train_epochs: 3.0
packing: true
report_to: all
mask_history: true
bf16: true
"""
KTO = "stage: kto\nfinetuning_type: freeze\nfreeze_trainable_layers: 1\npref_beta: 0.2\ndataset: kto_en_demo\n"
RM = "stage: rm\ndataset: dpo_en_demo\nlearning_rate: 2.0e-5\nquantization_bit: 4\nbf16: true\ninfer_dtype: bfloat16\n"
PT = "stage: pt\ndataset: c4_demo\nfinetuning_type: full\n"


@pytest.fixture
def configs(tmp_path, tiny_model_dir):
    files = {"sft.yaml": SFT.format(model=tiny_model_dir), "kto.yaml": KTO, "rm.yaml": RM, "pt.yaml": PT}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [tmp_path / name for name in files]


def test_known_keys_land_in_their_sections(configs, tiny_model_dir):
    text, _ = import_configs(configs)
    recipe = yaml.safe_load(text)
    assert recipe["model"] == {"model_name_or_path": str(tiny_model_dir), "bf16": True, "infer_dtype": "bfloat16"}
    assert recipe["data"] == {"dataset_dir": "data", "dataset_info": "dataset_info.json", "cutoff_len": 1024,
                              "template": "qwen", "dataset": ["identity", "alpaca_en_demo", "kto_en_demo", "dpo_en_demo"]}
    assert recipe["sft"] == {"finetuning_type": "dora", "lora_rank": 8, "lora_target": "q_proj,v_proj",
                             "loraplus_lr_ratio": 16.0, "per_device_train_batch_size": 2, "learning_rate": 1e-4,
                             "num_train_epochs": 3.0, "packing": True, "report_to": "none",
                             "lora_alpha": 16}  # LLaMA-Factory's default: twice the rank
    assert recipe["dpo"] == {"pref_loss": "kto", "finetuning_type": "freeze", "freeze_trainable_layers": 1,
                             "pref_beta": 0.2}
    assert recipe["reward"] == {"learning_rate": 2e-5, "quantization_bit": 4, "lora_rank": 8, "lora_alpha": 16}
    assert recipe["pt"] == {"dataset": ["c4_demo"], "finetuning_type": "full"}


def test_every_key_not_imported_is_named_with_its_reason(configs):
    text, notes = import_configs(configs)
    joined = "\n".join(notes)
    for key in ("do_train", "output_dir", "mask_history", "report_to 'all'"):
        assert key in joined
    assert "unknown key mask_history = True" in joined
    assert all(f"# {note}" in text for note in notes)  # the recipe file carries them too


def test_the_imported_recipe_loads(configs, tmp_path):
    text, _ = import_configs(configs)
    (tmp_path / "imported.yaml").write_text(text)
    recipe, _ = load_recipe(str(tmp_path / "imported.yaml"))
    assert recipe.sft.finetuning_type == "dora" and recipe.dpo.pref_loss == "kto"


def test_a_value_tuneline_cannot_take_is_an_error_naming_it(tmp_path):
    (tmp_path / "bad.yaml").write_text("stage: sft\nfinetuning_type: adalora\ndataset: identity\n")
    with pytest.raises(RecipeError, match="finetuning_type"):
        import_configs([tmp_path / "bad.yaml"])


def test_an_unsupported_stage_is_reported(tmp_path):
    (tmp_path / "orpo.yaml").write_text("stage: orpo\nlearning_rate: 1.0e-5\n")  # LLaMA-Factory's orpo is a pref_loss
    _, notes = import_configs([tmp_path / "orpo.yaml"], ["identity"])
    assert notes == [f"{tmp_path / 'orpo.yaml'}: stage 'orpo' is not imported (tuneline imports pt, sft, rm, dpo, kto, "
                     "ppo); its keys are ignored"]


def test_a_ppo_config_without_a_reward_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "ppo.yaml").write_text("stage: ppo\nlearning_rate: 1.0e-5\n")
    with pytest.raises(RecipeError, match="names ppo but no reward model: add rm to stages, or set ppo.reward_model"):
        import_configs([tmp_path / "ppo.yaml"], ["identity"])


def test_a_ppo_lora_gets_llamafactorys_alpha_twice_the_rank(tmp_path):
    (tmp_path / "rm.yaml").write_text("stage: rm\ndataset: dpo_en_demo\n")
    (tmp_path / "ppo.yaml").write_text("stage: ppo\nfinetuning_type: lora\nlora_rank: 4\ndataset: identity\n")
    text, _ = import_configs([tmp_path / "rm.yaml", tmp_path / "ppo.yaml"])
    assert yaml.safe_load(text)["ppo"]["lora_alpha"] == 8  # not tuneline's default 32: a 4x larger update


def test_the_cli_writes_the_recipe_and_warns_on_stderr(configs, tmp_path):
    out = tmp_path / "recipe.yaml"
    result = run([sys.executable, "-m", "pipelines.cli", "import-llamafactory", *map(str, configs), "-o", str(out)],
                 timeout=300, text=True)
    assert result.returncode == 0, result.stderr
    assert "tuneline: warning:" in result.stderr and "mask_history" in result.stderr
    assert yaml.safe_load(out.read_text())["sft"]["finetuning_type"] == "dora"


def test_a_key_set_twice_in_a_llamafactory_config_is_named(tmp_path):
    (tmp_path / "sft.yaml").write_text("stage: sft\nlora_rank: 8\nlearning_rate: 1.0e-4\nlora_rank: 16\n")
    with pytest.raises(RecipeError, match=f"LLaMA-Factory config {tmp_path / 'sft.yaml'}: key 'lora_rank' appears "
                                          "twice, at line 2 and line 4"):
        import_configs([tmp_path / "sft.yaml"])


def test_an_imported_value_of_the_wrong_kind_is_one_line(tmp_path):
    (tmp_path / "sft.yaml").write_text("stage: sft\nlora_rank: true\nlr_scheduler_type: cosine_annealing\n")
    with pytest.raises(RecipeError) as err:
        import_configs([tmp_path / "sft.yaml"])
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("the imported recipe is not valid: sft.") for line in lines)
    assert "sft.lora_rank: Input should be a valid integer" in lines[0]
    assert "sft.lr_scheduler_type: expected one of transformers' schedulers" in lines[1]


def test_precision_keys_are_one_for_every_stage(tmp_path):
    (tmp_path / "sft.yaml").write_text("stage: sft\nbf16: true\ndataset: identity\n")
    (tmp_path / "dpo.yaml").write_text("stage: dpo\nbf16: false\npure_bf16: true\n")
    text, notes = import_configs([tmp_path / "sft.yaml", tmp_path / "dpo.yaml"])
    assert yaml.safe_load(text)["model"] == {"bf16": False, "pure_bf16": True}
    assert notes == [f"{tmp_path / 'dpo.yaml'}: bf16 False differs from an earlier file's; the last one is kept"]


def test_stages_follow_the_imported_files(tmp_path):
    (tmp_path / "sft.yaml").write_text("stage: sft\nlora_rank: 8\ndataset: identity\n")
    (tmp_path / "kto.yaml").write_text(KTO)
    (tmp_path / "rm.yaml").write_text(RM)
    text, _ = import_configs([tmp_path / "sft.yaml"])
    assert yaml.safe_load(text)["stages"] == ["sft"]
    text, notes = import_configs([tmp_path / "kto.yaml", tmp_path / "rm.yaml"])
    assert yaml.safe_load(text)["stages"] == ["rm", "kto"]  # as LLaMA-Factory runs them: no sft stage added
    recipe = Recipe.model_validate(yaml.safe_load(text))
    assert recipe.stages == ["rm", "dpo"] and recipe.dpo.pref_loss == "kto"  # kto is dpo with the KTO loss


MERGE = """\
model_name_or_path: {model}
adapter_name_or_path: saves/qwen/lora/sft
template: qwen
finetuning_type: lora
export_dir: output/qwen_lora_sft
export_size: 5
export_device: cpu
export_quantization_bit: 4
"""


def test_an_export_config_maps_to_the_quantize_section_not_to_an_sft_stage(tmp_path, tiny_model_dir):
    (tmp_path / "sft.yaml").write_text("stage: sft\ndataset: identity\nlora_rank: 16\n")
    (tmp_path / "merge.yaml").write_text(MERGE.format(model=tiny_model_dir))
    text, notes = import_configs([tmp_path / "sft.yaml", tmp_path / "merge.yaml"])
    recipe = yaml.safe_load(text)
    assert recipe["stages"] == ["sft"] and recipe["quantize"] == {"export_quantization_bit": 4}
    assert recipe["sft"] == {"lora_rank": 16, "lora_alpha": 32}
    joined = "\n".join(notes)
    assert "export_dir not imported: the merged and quantized exports are artifacts" in joined
    assert "adapter_name_or_path not imported: the adapters merged are the recipe's own" in joined
    Recipe.model_validate(recipe)


def test_a_multimodal_config_is_refused_naming_its_keys(tmp_path):
    (tmp_path / "vl.yaml").write_text("stage: sft\nimage_max_pixels: 262144\nfreeze_vision_tower: true\n")
    with pytest.raises(RecipeError, match="is a multimodal config \\(image_max_pixels, freeze_vision_tower\\)"):
        import_configs([tmp_path / "vl.yaml"])


def test_speed_keys_map_to_tuneline_levers(tmp_path):
    (tmp_path / "sft.yaml").write_text("stage: sft\ndataset: identity\nflash_attn: disabled\ndisable_gradient_checkpointing: false\n"
                                       "enable_liger_kernel: false\nneat_packing: true\n")
    (tmp_path / "dpo.yaml").write_text("stage: dpo\nflash_attn: fa3\ndisable_gradient_checkpointing: true\n"
                                       "pref_ftx: 0.5\n")
    text, notes = import_configs([tmp_path / "sft.yaml", tmp_path / "dpo.yaml"])
    recipe = yaml.safe_load(text)
    assert recipe["sft"] | {"attn_implementation": "eager", "gradient_checkpointing": True,
                            "enable_liger_kernel": False, "packing": True} == recipe["sft"]
    assert recipe["dpo"]["attn_implementation"] == "sdpa" and recipe["dpo"]["gradient_checkpointing"] is False
    assert recipe["dpo"]["pref_ftx"] == 0.5  # LLaMA-Factory's SFT-loss weight in DPO
    assert any("flash_attn 'fa3' has no equivalent" in n for n in notes)
    assert Recipe.model_validate(recipe).sft.attn_implementation == "eager"


def test_a_lever_that_cannot_work_here_is_refused_before_any_work():
    import torch
    from assets.resource import validated_recipe
    if torch.cuda.is_available():
        pytest.skip("these levers work on a GPU")
    for key, value, reason in (("sft.attn_implementation", "flex_attention", "no backward pass on a CPU"),
                               ("dpo.attn_implementation", "flash_attention_2", "needs the flash-attn package"),
                               ("reward.enable_liger_kernel", "true", "needs the liger-kernel package")):
        with pytest.raises(RecipeError, match=reason):
            validated_recipe("tiny", f'{{"{key}": "{value}"}}' if value != "true" else f'{{"{key}": true}}')


@pytest.mark.parametrize("config, named", [
    ("stage: sft\ntemplate: qwen2_vl\ndataset: identity\n", "template 'qwen2_vl' is a multimodal"),
    ("stage: sft\nmodel_name_or_path: Qwen/Qwen2.5-VL-7B-Instruct\ndataset: identity\n", "names a multimodal"),
    ("model_name_or_path: llava-hf/llava-1.5-7b-hf\nexport_dir: out\n", "names a multimodal"),
])
def test_a_multimodal_template_or_model_is_refused_without_image_keys(tmp_path, config, named):
    (tmp_path / "vl.yaml").write_text(config)
    with pytest.raises(RecipeError, match=named):
        import_configs([tmp_path / "vl.yaml"], ["identity"])


def test_hub_ids_are_said_for_every_kind_of_config(tmp_path):
    (tmp_path / "dpo.yaml").write_text("stage: dpo\nmodel_name_or_path: org/model\nadapter_name_or_path: org/sft-lora\n"
                                       "dataset: dpo_en_demo\n")
    (tmp_path / "export.yaml").write_text("model_name_or_path: org/model\nexport_dir: out\n")
    for path in (tmp_path / "dpo.yaml", tmp_path / "export.yaml"):
        _, notes = import_configs([path], ["identity"])
        assert any("'org/model' is imported but is not a local path" in n for n in notes)
    _, notes = import_configs([tmp_path / "dpo.yaml"])
    assert any("'org/sft-lora' is imported but is not a local path" in n for n in notes)


def test_a_preference_stage_without_sft_starts_from_its_adapter(tmp_path):
    (tmp_path / "dpo.yaml").write_text("stage: dpo\nadapter_name_or_path: saves/sft\ndataset: dpo_en_demo\n")
    recipe = yaml.safe_load(import_configs([tmp_path / "dpo.yaml"])[0])
    assert recipe["stages"] == ["dpo"] and recipe["model"]["adapter_name_or_path"] == "saves/sft"
    (tmp_path / "sft.yaml").write_text("stage: sft\ndataset: identity\n")  # beside an sft stage: that stage's output
    text, notes = import_configs([tmp_path / "sft.yaml", tmp_path / "dpo.yaml"])
    assert "adapter_name_or_path" not in yaml.safe_load(text).get("model", {})
    assert any("starts from the recipe's own sft stage" in n for n in notes)


def test_configs_that_name_no_chat_data_need_an_eval_dataset(tmp_path):
    (tmp_path / "pt.yaml").write_text("stage: pt\ndataset: c4_demo\n")
    with pytest.raises(RecipeError, match="pass --eval-dataset"):
        import_configs([tmp_path / "pt.yaml"])
    recipe = yaml.safe_load(import_configs([tmp_path / "pt.yaml"], ["identity"])[0])
    assert recipe["stages"] == ["pt"] and recipe["pt"]["dataset"] == ["c4_demo"]
    assert recipe["data"]["dataset"] == ["identity"]


def test_template_max_samples_are_imported_and_an_unknown_template_is_said(tmp_path):
    (tmp_path / "sft.yaml").write_text("stage: sft\ndataset: identity\ntemplate: llama3\nmax_samples: 50\n")
    recipe = yaml.safe_load(import_configs([tmp_path / "sft.yaml"])[0])
    assert recipe["data"]["template"] == "llama3" and recipe["data"]["max_samples"] == 50
    (tmp_path / "sft.yaml").write_text("stage: sft\ndataset: identity\ntemplate: my_own\n")
    text, notes = import_configs([tmp_path / "sft.yaml"])
    assert "template" not in yaml.safe_load(text)["data"]
    assert any("template 'my_own' not imported" in n for n in notes)


def test_the_checkpoint_template_is_checked_against_the_named_one(tiny_model_dir):
    from engine.data.templates import check_template
    from engine.models.load import load_tokenizer
    tokenizer = load_tokenizer(tiny_model_dir)  # ChatML, as LLaMA-Factory's qwen template
    for name in ("qwen", "chatml", "smollm2", None):
        check_template(tokenizer, name)
    with pytest.raises(RecipeError, match="starts a user turn with '<\\|im_start\\|>user\\\\n', LLaMA-Factory's "
                                          "llama3 template with '<\\|start_header_id\\|>user"):
        check_template(tokenizer, "llama3")
    with pytest.raises(RecipeError, match="multimodal"):
        check_template(tokenizer, "qwen2_vl")


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard", "mlflow", "none"])
def test_report_to_a_tracker_tuneline_runs_is_kept(tmp_path, tiny_model_dir, tracker):
    (tmp_path / "sft.yaml").write_text(SFT.format(model=tiny_model_dir).replace("report_to: all", f"report_to: {tracker}"))
    text, notes = import_configs([tmp_path / "sft.yaml"])
    assert yaml.safe_load(text)["sft"]["report_to"] == tracker
    assert not [note for note in notes if "report_to '" in note]
