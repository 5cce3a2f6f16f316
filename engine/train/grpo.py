"""GRPO: online RL with TRL's GRPOTrainer from the SFT model (and DPO's, where dpo runs), on the SFT view's prompts.

Each prompt's num_generations completions are sampled (vLLM colocated with training where vLLM runs, else
transformers' generate), scored by the recipe's rewards (engine/train/rewards.py), and each is pushed up or down by
its reward against its group's. The reference model (beta > 0) is the starting model: for a LoRA the adapter
disabled, as TRL does. Every scored rollout goes to the artifact's rollouts.parquet (bounded by grpo.rollout_rows).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.data.format import read_view
from engine.evaluate.measure import answer_examples
from engine.models.backends import vllm_usable
from engine.models.device import Device, Precision, precision_metrics, train_dtype
from engine.models.load import load_tokenizer, load_with_adapters, model_dir, trained_weights
from engine.train.adapters import prepare_model
from engine.train.arguments import SCRATCH_DIR, optimizers, trainer_kwargs
from engine.train.rewards import RolloutLog, reward_functions, reward_name
from engine.train.sharding import Sharding, sharding_of
from engine.train.skeleton import TrainingStage, train_stage

if TYPE_CHECKING:
    from engine.recipe import GrpoSection
    from engine.stage import StageRun

ROLLOUTS = "rollouts.parquet"
POLICY_CHAIN = ("sft_adapter", "dpo_adapter")  # applied in order on pt_model where the recipe runs them


def rollout_backend(on: Device | None = None) -> str:
    """What samples the rollouts: vLLM colocated with training where it runs on `on` (default: here; the device
    policy's one decision, engine/models/backends.py), else transformers' generate."""
    return "vllm" if vllm_usable(on) else "transformers"


def prompt_rows(dataset, tokenizer) -> list[dict]:
    """The SFT view's rows as GRPO prompts: the conversation up to its last answer, as the chat template renders it,
    and that answer as the reference."""
    return [{"prompt": tokenizer.decode(e.prompt_ids), "reference": e.reference}
            for e in answer_examples(dataset, tokenizer, len(dataset))]


def grpo_arguments(cfg: GrpoSection, out: Path, precision: Precision | None = None, sharding: Sharding = Sharding()):
    from trl import GRPOConfig
    vllm = rollout_backend() == "vllm"
    # the reference column reaches the reward functions only if the trainer keeps the dataset's other columns
    return GRPOConfig(**{**trainer_kwargs(cfg, out, precision, sharding), "include_num_input_tokens_seen": "no",
                         "remove_unused_columns": False},
                      num_generations=cfg.num_generations, beta=cfg.beta,
                      max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                      loss_type=cfg.loss_type, use_vllm=vllm, **({"vllm_mode": "colocate"} if vllm else {}))


class RolloutFile(RolloutLog):
    """The rollout log kept in the trainer's scratch as JSON lines, so that a resumed run keeps the steps trained
    before it stopped; each attempt's rows are tagged, and a step keeps only the last attempt's rows."""

    def __init__(self, names: list[str], path: Path):
        super().__init__(names)
        self.path, self.attempt = path, os.getpid()

    def record(self, step, name, prompts, completions, values) -> None:
        super().record(step, name, prompts, completions, values)
        if name == self.names[-1]:  # the batch is whole
            self.flush()

    def flush(self) -> None:
        with self.path.open("a") as f:
            for row in self.rows:
                f.write(json.dumps({**row, "attempt": self.attempt}) + "\n")
        self.rows = []

    def all_rows(self) -> list[dict]:
        self.flush()
        rows = [json.loads(line) for line in self.path.read_text().splitlines()]
        last = {}
        for row in rows:
            last[row["step"]] = row["attempt"]
        return [{k: v for k, v in r.items() if k != "attempt"} for r in rows if last[r["step"]] == r["attempt"]]


def train_grpo(base_dir: Path, chain: list[Path], formatted_dir: Path, reward_dir: Path | None, cfg: GrpoSection,
               out: Path, precision: Precision | None = None, say: Callable[[str], None] = print,
               sharding: Sharding = Sharding()) -> dict:
    """Train and save to `out/adapter` (or `out/model`), with out/rollouts.parquet. Returns the mean reward curve,
    the first and last logged mean rewards and what was consumed."""
    tokenizer = load_tokenizer(base_dir)
    data = read_view(formatted_dir, "sft", "grpo_adapter")
    train = prompt_rows(data["train"], tokenizer)
    names = [reward_name(r, i) for i, r in enumerate(cfg.rewards)]
    (out / SCRATCH_DIR).mkdir(parents=True, exist_ok=True)
    log = RolloutFile(names, out / SCRATCH_DIR / "rollouts.jsonl")

    def set_up():
        from datasets import Dataset
        from trl import GRPOTrainer
        # merged before the arguments exist, on the CPU where sharded (as dpo's starting_model)
        model = prepare_model(load_with_adapters(base_dir, *chain, dtype=train_dtype(precision or Precision()),
                                                 cpu=sharding.partitions_weights), cfg, "CAUSAL_LM", precision)
        sampler = load_tokenizer(base_dir)
        sampler.padding_side = "left"  # TRL generates from left-padded prompts
        args = grpo_arguments(cfg, out, precision, sharding)
        trainer = None
        funcs, weights = reward_functions(cfg, reward_dir, tokenizer, log, lambda: trainer.state.global_step)
        args.reward_weights = weights
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(train),
                              processing_class=sampler, optimizers=optimizers(model, cfg))
        return trainer

    def measures(trainer) -> dict:
        curve = [{"step": h["step"], "reward": round(h["reward"], 4)} for h in trainer.state.log_history
                 if "reward" in h]
        table = RolloutLog(names, log.all_rows()).table([r.weight for r in cfg.rewards], cfg.rollout_rows)
        table.to_parquet(out / ROLLOUTS, index=False)
        return {"train_prompts": len(trainer.train_dataset), "offered_prompts": len(trainer.train_dataset),
                "formatted_train_rows": len(data["train"]),
                "num_generations": cfg.num_generations, "rewards": names, "reward_curve": curve,
                "reward_first": curve[0]["reward"] if curve else None,
                "reward_last": curve[-1]["reward"] if curve else None,
                "rollout_backend": rollout_backend(), "rollouts_kept": len(table),
                "rollouts_sample": table.head(5).to_dict("records")}

    return train_stage(TrainingStage("grpo", cfg, out, tokenizer, set_up, after=measures, sharding=sharding), say)


def train_grpo_adapter(run: "StageRun") -> dict:
    """grpo_adapter's entry point: on pt_model with sft_adapter and dpo_adapter applied where they ran."""
    precision = Precision.of(run.recipe.model)
    chain = [trained_weights(run.inputs[name]) for name in POLICY_CHAIN if name in run.inputs]
    reward_dir = run.inputs.get("reward_model") if run.recipe.grpo.uses_reward_model() else None
    return {**train_grpo(model_dir(run.inputs["pt_model"]), chain, run.inputs["formatted_data"], reward_dir,
                         run.recipe.grpo, run.out, precision, run.log, sharding_of(run.recipe, "grpo")),
            **precision_metrics(train_dtype(precision))}
