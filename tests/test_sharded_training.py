"""Sharded training (DeepSpeed ZeRO-2/3, FSDP2; engine/train/sharding.py): the shipped configs, the trainer's
arguments built before the model loads, no device_map where the weights are partitioned, every rank entering the
trainer's save_model (the collective that gathers the shards), and the one-line refusals before any work.

On this CPU machine accelerate does not shard (it drops the FSDP plugin and trains as DDP; DeepSpeed is not
installed): the multi-process test is a 2-rank gloo DDP run through the same save path."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

import engine.train.sft
from engine.errors import RecipeError
from engine.importers.llamafactory import import_configs
from engine.models.device import PRECISION_KEYS
from engine.recipe import LauncherSection, RewardSection, SftSection, load_recipe
from engine.train.adapters import placed, quantized_load_kwargs
from engine.train.child import spec_of, write_spec
from engine.train.launch import launch_command
from engine.train.sharding import LAUNCHERS_DIR, Sharding, check_sharding, sharding_of
from tests.processes import stop_process_group

FSDP2 = Sharding(fsdp=LAUNCHERS_DIR / "fsdp2.json")
ZERO3, ZERO2 = Sharding(deepspeed=LAUNCHERS_DIR / "ds_z3.json"), Sharding(deepspeed=LAUNCHERS_DIR / "ds_z2.json")


def test_the_shipped_configs_load_and_the_partitioned_ones_gather_on_save():
    for name in ("ds_z2", "ds_z3", "ds_z3_offload"):
        sharding = Sharding.of(LauncherSection(deepspeed=name))
        config = json.loads(sharding.deepspeed.read_text())
        assert config["train_micro_batch_size_per_gpu"] == "auto"  # the trainer's arguments fill them in
        stage = config["zero_optimization"]["stage"]
        assert sharding.zero_stage == stage and sharding.partitions_weights == (stage == 3)
        if stage == 3:  # save_model writes 16-bit weights gathered from every rank, not empty shards
            assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert json.loads((LAUNCHERS_DIR / "ds_z3_offload.json").read_text())["zero_optimization"]["offload_param"] == {
        "device": "cpu", "pin_memory": True}
    from transformers import TrainingArguments
    fsdp = Sharding.of(LauncherSection(fsdp="fsdp2"))
    assert fsdp.partitions_weights and fsdp.trainer_kwargs() == {"fsdp": True, "fsdp_config": str(fsdp.fsdp)}
    plugin = TrainingArguments(output_dir="unused", report_to="none", **fsdp.trainer_kwargs()).fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["state_dict_type"] == "FULL_STATE_DICT"  # save_model gathers all
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and plugin["reshard_after_forward"] is True


def test_a_config_path_works_and_a_wrong_name_or_two_ways_are_refused(tmp_path):
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}))
    assert Sharding.of(LauncherSection(deepspeed=str(own))).partitions_weights
    with pytest.raises(RecipeError, match="launcher.deepspeed 'ds_z4': neither a shipped config \\(ds_z2, ds_z3, "
                                          "ds_z3_offload\\) nor a JSON file"):
        Sharding.of(LauncherSection(deepspeed="ds_z4"))
    own.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}}))
    with pytest.raises(RecipeError, match=f"launcher.deepspeed {own}: ZeRO-3 without zero_optimization.stage3_gather_"
                                          "16bit_weights_on_model_save true saves no usable weights"):
        Sharding.of(LauncherSection(deepspeed=str(own)))
    own.write_text(json.dumps({"version": 2, "state_dict_type": "SHARDED_STATE_DICT"}))
    with pytest.raises(RecipeError, match="state_dict_type SHARDED_STATE_DICT saves shards"):
        Sharding.of(LauncherSection(fsdp=str(own)))
    with pytest.raises(RecipeError, match="choose one way to shard"):
        Sharding.of(LauncherSection(deepspeed="ds_z3", fsdp="fsdp2"))
    with pytest.raises(ValueError, match="with type accelerate the accelerate_config says how to shard"):
        LauncherSection(type="accelerate", accelerate_config="a.yaml", deepspeed="ds_z3")
    # the ranks start as without sharding (torchrun for several processes): the config goes to the trainer
    assert launch_command(LauncherSection(type="torchrun", nproc_per_node=2, fsdp="fsdp2"), "sft_adapter",
                          Path("s.json"))[1:3] == ["-m", "torch.distributed.run"]


def test_llamafactory_deepspeed_examples_import_as_the_shipped_configs(tmp_path):
    (tmp_path / "sft.yaml").write_text("stage: sft\ndeepspeed: examples/deepspeed/ds_z3_config.json\ndataset: identity\n")
    text, notes = import_configs([tmp_path / "sft.yaml"])
    assert yaml.safe_load(text)["launcher"] == {"deepspeed": "ds_z3"}
    assert any("launcher.deepspeed ds_z3, the shipped copy of LLaMA-Factory's example" in n for n in notes)
    (tmp_path / "fsdp.yaml").write_text("stage: sft\nfsdp: full_shard auto_wrap\ndataset: identity\n")
    assert yaml.safe_load(import_configs([tmp_path / "fsdp.yaml"])[0])["launcher"] == {"fsdp": "fsdp2"}
    (tmp_path / "own.yaml").write_text("stage: sft\nfsdp_config: fsdp.json\nfsdp: full_shard\ndataset: identity\n")
    assert yaml.safe_load(import_configs([tmp_path / "own.yaml"])[0])["launcher"] == {"fsdp": "fsdp.json"}
    (tmp_path / "rm.yaml").write_text("stage: rm\ndeepspeed: /opt/cluster/ds_tuned.json\ndataset: identity\n")
    assert yaml.safe_load(import_configs([tmp_path / "rm.yaml"])[0])["launcher"] == {
        "deepspeed": "/opt/cluster/ds_tuned.json"}


@pytest.mark.cpu_only("a CUDA machine may have DeepSpeed installed and shards over its GPUs")
def test_sharding_this_machine_cannot_run_is_refused_in_one_line_before_any_work():
    with pytest.raises(RecipeError, match="^launcher.deepspeed ds_z3 needs the deepspeed package, which is not "
                                          "installed here") as refused:
        check_sharding(load_recipe("tiny", {"launcher.deepspeed": "ds_z3"})[0])
    assert "\n" not in str(refused.value)
    with pytest.raises(RecipeError, match="^launcher.fsdp fsdp2 shards over CUDA GPUs and this machine has none"):
        check_sharding(load_recipe("tiny", {"launcher.fsdp": "fsdp2"})[0])
    with pytest.raises(RecipeError, match="^launcher.fsdp fsdp2: ppo cannot train sharded"):
        FSDP2.check_stage("ppo")
    # pods check their own machine; the orchestrator only what the recipe names
    check_sharding(load_recipe("tiny", {"launcher.fsdp": "fsdp2", "launcher.type": "kubernetes",
                                        "launcher.kubernetes.image": "i", "launcher.kubernetes.volume_claim": "v"})[0])
    check_sharding(load_recipe("tiny")[0])  # no sharding: nothing to refuse


def test_partitioned_weights_load_without_a_device_map(monkeypatch):
    """LLaMA-Factory's rule: under ZeRO-3 or FSDP DeepSpeed/FSDP place the shards; a device_map would put a whole
    copy on every GPU first (QLoRA's too, whose 4-bit weights are then stored in the compute dtype to shard)."""
    import engine.models.device as device_policy
    monkeypatch.setattr(device_policy, "device_type", lambda: "cuda")  # as on a GPU machine
    monkeypatch.setattr(device_policy, "device", lambda: torch.device("cuda", 0))
    assert placed(torch.bfloat16, Sharding())["device_map"] == {"": torch.device("cuda", 0)}
    assert placed(torch.bfloat16, ZERO2)["device_map"] == {"": torch.device("cuda", 0)}  # weights whole per rank
    assert placed(torch.bfloat16, ZERO3) == placed(torch.bfloat16, FSDP2) == {"dtype": torch.bfloat16}
    qlora = SftSection(quantization_bit=4)
    whole = quantized_load_kwargs(qlora)
    assert "device_map" in whole and whole["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    sharded = quantized_load_kwargs(qlora, sharding=FSDP2)
    assert "device_map" not in sharded
    stored = sharded["quantization_config"]
    assert stored.bnb_4bit_quant_storage == stored.bnb_4bit_compute_dtype != torch.uint8  # stored as it computes


class Loaded(Exception):
    """Raised by the load spy: the model loaded, the test has seen what it needs."""


@pytest.mark.parametrize("sharding", [Sharding(), FSDP2], ids=["unsharded", "fsdp2"])
@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_the_trainers_arguments_exist_before_the_model_loads(stage, sharding, tiny_model_dir, formatted_dir,
                                                            tmp_path, monkeypatch):
    """ZeRO-3 partitions weights as they load only if the trainer's arguments (its DeepSpeed config) already exist
    (transformers' zero.Init): every stage builds them first."""
    from transformers import PreTrainedModel, TrainingArguments
    events = []
    post_init, from_pretrained = TrainingArguments.__post_init__, PreTrainedModel.from_pretrained.__func__

    def arguments_built(self):
        post_init(self)
        events.append(("arguments", self.fsdp_plugin_args))

    def loaded(cls, *args, **kwargs):
        events.append(("load", kwargs))
        raise Loaded

    monkeypatch.setattr(TrainingArguments, "__post_init__", arguments_built)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(loaded))
    with pytest.raises(Loaded):
        if stage == "sft":
            engine.train.sft.train_sft(tiny_model_dir, formatted_dir, SftSection(max_steps=1), 128, tmp_path,
                                       say=lambda line: None, sharding=sharding)
        else:
            from engine.train.reward import train_reward
            train_reward(tiny_model_dir, formatted_dir, RewardSection(max_steps=1), 128, tmp_path,
                         say=lambda line: None, sharding=sharding)
    assert [kind for kind, _ in events] == ["arguments", "load"]
    assert (events[0][1] is not None) == sharding.on  # the FSDP2 config is in the arguments
    assert "device_map" not in events[1][1]


@pytest.mark.slow
@pytest.mark.cpu_only("two ranks share the CPU through gloo; on CUDA each rank takes a GPU of its own")
def test_every_rank_enters_save_model_and_rank_0_writes_the_artifact(tmp_path, tiny_model_dir, formatted_dir):
    """Two torchrun ranks (gloo DDP): both call the trainer's save_model, the call in which ZeRO-3 and FSDP gather
    the shards (a rank that skipped it would leave the others waiting in the collective); rank 0 writes."""
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') is not None:\n"
        "    import transformers\n"
        "    original = transformers.Trainer.save_model\n"
        "    def save_model(self, output_dir=None, _internal_call=False):\n"
        "        with open(os.path.join(os.environ['SAVE_SPY'], 'rank' + os.environ['RANK']), 'w') as f:\n"
        "            f.write(str(output_dir))\n"
        "        return original(self, output_dir, _internal_call)\n"
        "    transformers.Trainer.save_model = save_model\n")
    recipe = load_recipe("tiny", {"sft.max_steps": 2, "sft.finetuning_type": "lora", "sft.per_device_train_batch_size": 8,
                                  "model.bf16": False, "launcher.type": "torchrun", "launcher.nproc_per_node": 2})[0]
    out = tmp_path / "work"
    out.mkdir()
    spec = write_spec(spec_of("sft_adapter", "fp", engine.train.sft.train_sft_adapter,
                              ("sft", "data.cutoff_len", "launcher", *PRECISION_KEYS), recipe,
                              {"pt_model": tiny_model_dir, "formatted_data": formatted_dir}, out, tmp_path / "home"),
                      tmp_path / "run")
    process = subprocess.Popen(launch_command(recipe.launcher, "sft_adapter", spec), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env=os.environ | {"PYTHONPATH": f"{spy}:{os.getcwd()}", "OMP_NUM_THREADS": "1",
                                                 "SAVE_SPY": str(spy)})
    try:
        log, _ = process.communicate(timeout=600)
    finally:
        stop_process_group(process)
    assert process.returncode == 0, log[-4000:]
    assert {p.name: p.read_text() for p in spy.glob("rank*")} == {"rank0": str(out / "adapter"),
                                                                 "rank1": str(out / "adapter")}
    files = sorted(p.name for p in (out / "adapter").iterdir())
    assert "adapter_model.safetensors" in files and "tokenizer_config.json" in files
    assert "training_args.bin" not in files  # the trainer's pickle is not part of the artifact
    assert sorted(p.name for p in out.iterdir()) == ["adapter"]


def test_a_stage_reads_its_sharding_through_the_launcher_keys():
    recipe = load_recipe("tiny", {"launcher.deepspeed": "ds_z2"})[0]
    assert Sharding.of(recipe.launcher) == ZERO2
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match="launcher.deepspeed ds_z2"):
            sharding_of(recipe, "sft")


def test_a_sharded_lora_is_merged_by_rank_0_from_the_adapter_it_saved(tiny_model_dir, formatted_dir, tmp_path,
                                                                      monkeypatch):
    """reward_model (a LoRA merged, its new one-label score head included) trained as sharded saves through the
    trainer and merges from the saved adapter on the CPU: the same model as the in-place merge of an unsharded run.
    (DeepSpeed's arguments are taken out here, so that one process on this CPU trains as the unsharded run does.)"""
    from safetensors.torch import load_file
    from engine.train.reward import train_reward
    cfg = RewardSection(max_steps=2, per_device_train_batch_size=8, finetuning_type="lora")
    plain = train_reward(tiny_model_dir, formatted_dir, cfg, 128, tmp_path / "plain", say=lambda line: None)
    monkeypatch.setattr(Sharding, "trainer_kwargs", lambda self: {})
    sharded = train_reward(tiny_model_dir, formatted_dir, cfg, 128, tmp_path / "sharded", say=lambda line: None,
                           sharding=ZERO2)
    assert sharded["eval_accuracy"] == plain["eval_accuracy"]
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir())  # no scratch, no gathered adapter, no training_args.bin
    weights = [load_file(str(tmp_path / run / "model.safetensors")) for run in ("plain", "sharded")]
    assert set(weights[0]) == set(weights[1]) and "score.weight" in weights[0]
    for name, weight in weights[0].items():
        assert torch.allclose(weights[1][name], weight, atol=1e-6), name
