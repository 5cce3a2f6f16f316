"""Sharded training: DeepSpeed ZeRO-2/3 (with offload) or FSDP2, chosen by launcher.deepspeed / launcher.fsdp as a
shipped config's name (pipelines/launchers/) or a JSON file's path.

As LLaMA-Factory does for `deepspeed:`, the config goes into the trainer's arguments (TrainingArguments' deepspeed,
fsdp and fsdp_config) and torchrun starts the ranks: the arguments are built before the model loads, so that ZeRO-3
partitions the weights as they load (transformers' zero.Init), and a model whose weights are partitioned (ZeRO-3,
FSDP) loads without a device_map (LLaMA-Factory's rule: DeepSpeed or FSDP places the shards). Every rank then saves
through the trainer (engine/train/save.py), which gathers the weights first.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import RecipeError

LAUNCHERS_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "launchers"
DEEPSPEED_CONFIGS = ("ds_z2", "ds_z3", "ds_z3_offload")  # LLaMA-Factory's examples/deepspeed/ds_z*_config.json
FSDP_CONFIGS = ("fsdp2",)
# LLaMA-Factory's example paths (examples/deepspeed/<file>), by the shipped config that is the same file
LLAMAFACTORY_DEEPSPEED = {"ds_z2_config.json": "ds_z2", "ds_z3_config.json": "ds_z3",
                          "ds_z3_offload_config.json": "ds_z3_offload"}
NOT_SHARDED_STAGES = {"ppo": "ppo's own loop (engine/train/ppo_loop.py) generates from the policy unsharded"}


def config_path(key: str, value: str, shipped: tuple[str, ...]) -> Path:
    """A shipped config's file (by its name) or the JSON file `value` names; RecipeError naming the key otherwise."""
    if value in shipped:
        return LAUNCHERS_DIR / f"{value}.json"
    path = Path(value).expanduser()
    if not path.is_file():
        raise RecipeError(f"{key} {value!r}: neither a shipped config ({', '.join(shipped)}) nor a JSON file")
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{key} {value!r}: not a readable JSON file ({exc})") from None
    return path


@dataclass(frozen=True)
class Sharding:
    """How a training stage's weights, gradients and optimizer state are split over its ranks: not at all (each
    rank holds all of them, DDP), by DeepSpeed (`deepspeed`: its JSON) or by FSDP2 (`fsdp`: its fsdp_config JSON)."""
    deepspeed: Path | None = None
    fsdp: Path | None = None

    @classmethod
    def of(cls, launcher) -> "Sharding":
        """From the recipe's launcher section (reads launcher.deepspeed and launcher.fsdp only)."""
        if launcher.deepspeed and launcher.fsdp:
            raise RecipeError(f"launcher.deepspeed {launcher.deepspeed!r} and launcher.fsdp {launcher.fsdp!r}: choose "
                              "one way to shard")
        sharding = cls(deepspeed=config_path("launcher.deepspeed", launcher.deepspeed, DEEPSPEED_CONFIGS)
                       if launcher.deepspeed else None,
                       fsdp=config_path("launcher.fsdp", launcher.fsdp, FSDP_CONFIGS) if launcher.fsdp else None)
        sharding.check_saves_whole_weights()
        return sharding

    def check_saves_whole_weights(self) -> None:
        """A config whose save_model would write shards (or nothing) instead of the gathered weights: refused, as
        the artifact would be useless."""
        if self.zero_stage == 3:
            zero = json.loads(self.deepspeed.read_text())["zero_optimization"]
            if zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
                raise RecipeError(f"{self.key}: ZeRO-3 without zero_optimization.stage3_gather_16bit_weights_on_model_"
                                  "save true saves no usable weights; set it to true (as ds_z3 does)")
        if self.fsdp is not None:
            config = json.loads(self.fsdp.read_text())
            kind = config.get("state_dict_type", config.get("fsdp_state_dict_type", "FULL_STATE_DICT"))
            if kind != "FULL_STATE_DICT":
                raise RecipeError(f"{self.key}: state_dict_type {kind} saves shards; the artifact needs "
                                  "FULL_STATE_DICT (as fsdp2 has)")

    @property
    def zero_stage(self) -> int | None:
        if self.deepspeed is None:
            return None
        return int(json.loads(self.deepspeed.read_text()).get("zero_optimization", {}).get("stage", 0))

    @property
    def partitions_weights(self) -> bool:
        """Each rank holds a shard of the weights (ZeRO-3, FSDP): no device_map, and a save must gather them."""
        return self.fsdp is not None or self.zero_stage == 3

    @property
    def on(self) -> bool:
        return self.deepspeed is not None or self.fsdp is not None

    def trainer_kwargs(self) -> dict:
        """TrainingArguments' keywords for this sharding (none without)."""
        if self.deepspeed is not None:
            return {"deepspeed": str(self.deepspeed)}
        if self.fsdp is not None:
            return {"fsdp": True, "fsdp_config": str(self.fsdp)}
        return {}

    @property
    def key(self) -> str:
        """The recipe key and value: a shipped config by its name, another by its path."""
        path = self.deepspeed or self.fsdp
        return (f"launcher.{'deepspeed' if self.deepspeed else 'fsdp'} "
                f"{path.stem if path.parent == LAUNCHERS_DIR else path}")

    def check_stage(self, stage: str) -> None:
        """A stage whose training can be sharded, else one line naming the key."""
        if self.on and stage in NOT_SHARDED_STAGES:
            raise RecipeError(f"{self.key}: {stage} cannot train sharded ({NOT_SHARDED_STAGES[stage]}); remove the "
                              f"key or take {stage} out of the recipe's stages")

    def check_machine(self) -> None:
        """What this sharding needs here, in one line naming the key, before any work: DeepSpeed installed and CUDA
        GPUs (accelerate runs DeepSpeed and FSDP on GPUs only: on a CPU it drops the FSDP plugin without a word and
        trains as DDP)."""
        if not self.on:
            return
        key = self.key
        if self.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
            raise RecipeError(f"{key} needs the deepspeed package, which is not installed here (pip install "
                              "deepspeed), or use launcher.fsdp fsdp2")
        import torch
        if not torch.cuda.is_available():
            raise RecipeError(f"{key} shards over CUDA GPUs and this machine has none (accelerate runs DeepSpeed and "
                              "FSDP on GPUs only); remove the key to train with DDP")


def sharding_of(recipe, stage: str) -> Sharding:
    """The recipe's sharding for `stage`, checked on this machine."""
    sharding = Sharding.of(recipe.launcher)
    sharding.check_stage(stage)
    sharding.check_machine()
    return sharding


def check_sharding(recipe) -> None:
    """The recipe's launcher.deepspeed / launcher.fsdp before any work: the config it names, the stages it runs and,
    unless its stages train in pods (checked there), this machine."""
    sharding = Sharding.of(recipe.launcher)
    for stage in NOT_SHARDED_STAGES:
        if recipe.runs(stage):
            sharding.check_stage(stage)
    if recipe.launcher.type != "kubernetes":
        sharding.check_machine()
