"""PPO on top of the SFT (and DPO) model, as LLaMA-Factory's stage ppo: a new LoRA and a value head trained against a
reward model's scores of the policy's own completions of the SFT view's prompts (engine/train/ppo_loop.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from engine.data.format import read_view
from engine.errors import RecipeError
from engine.evaluate.measure import answer_examples, reward_scores_of_ids
from engine.models.device import Precision, precision_metrics, train_dtype
from engine.models.load import load_reward_model, load_tokenizer, load_with_adapters, model_dir, trained_weights
from engine.train.adapters import is_adapter, prepare_model
from engine.train.arguments import optimizers, trainer_kwargs
from engine.train.ppo_loop import AdaptiveKLController, PolicyWithValueHead, PpoSettings, PpoTrainer
from engine.train.sharding import sharding_of
from engine.train.skeleton import TrainingStage, train_stage

if TYPE_CHECKING:
    from engine.recipe import PpoSection
    from engine.stage import StageRun

ROLLOUTS_FILE = "rollouts.parquet"
ROLLOUTS_PER_STEP = 8  # rows of each step's rollouts kept in the artifact's table


def rollout_batch(cfg: PpoSection) -> int:
    """Prompts generated per PPO iteration, as LLaMA-Factory sizes it: batch x accumulation x ppo_buffer_size."""
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * cfg.ppo_buffer_size


def generation_kwargs(cfg: PpoSection) -> dict:
    """LLaMA-Factory's generating arguments, as generate() takes them."""
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k} if cfg.do_sample else {}
    return {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample, **sampling}


def left_padded(pad_id: int):
    """The collator: prompts left-padded (generation continues from each row's last token)."""
    def collate(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        ids = [[pad_id] * (width - len(r["input_ids"])) + r["input_ids"] for r in rows]
        mask = [[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    return collate


def reward_scorer(reward_dir: Path, policy_tokenizer, dtype) -> Callable:
    """score(input_ids, attention_mask, start) -> one score per row: the reward model on the prompt and completion
    (its last token, as its sequence-classification head reads). A reward model with another tokenizer scores the
    text re-encoded with its own."""
    model = load_reward_model(reward_dir, dtype)
    tokenizer = load_tokenizer(reward_dir)
    same = tokenizer.get_vocab() == policy_tokenizer.get_vocab()

    def score(input_ids, attention_mask, start) -> torch.Tensor:
        sequences = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)]
        if not same:
            sequences = [tokenizer(policy_tokenizer.decode(s), add_special_tokens=False)["input_ids"] for s in sequences]
        return torch.tensor(reward_scores_of_ids(model, sequences, tokenizer.pad_token_id))
    return score


class RolloutTable:
    """The artifact's rollouts.parquet: for each step, up to ROLLOUTS_PER_STEP rows of prompt, completion, score
    and the row's KL to the reference (the sum over its completion tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.rows = tokenizer, []

    def add(self, step: int, rollouts, scores: torch.Tensor) -> None:
        kl = ((rollouts.logprobs - rollouts.ref_logprobs) * rollouts.mask).sum(1)
        for i in range(min(ROLLOUTS_PER_STEP, rollouts.input_ids.shape[0])):
            ids = rollouts.input_ids[i][rollouts.attention_mask[i].bool()].tolist()
            completion = int(rollouts.mask[i].sum())
            self.rows.append({"step": step, "prompt": self.tokenizer.decode(ids[:len(ids) - completion]),
                              "completion": self.tokenizer.decode(ids[len(ids) - completion:]),
                              "score": round(float(scores[i]), 4), "kl": round(float(kl[i]), 4)})

    def write(self, path: Path) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq
        columns = ("step", "prompt", "completion", "score", "kl")
        pq.write_table(pa.table({c: [r[c] for r in self.rows] for c in columns}), path)
        return len(self.rows)


def train_ppo(base_dir: Path, stages: list[Path], reward_dir: Path, formatted_dir: Path, cfg: PpoSection,
              out: Path, precision: Precision | None = None, say: Callable[[str], None] = print) -> dict:
    """Train and save the LoRA to `out/adapter`, the rollout table to out/rollouts.parquet. Returns the mean reward
    and KL per step, the prompts consumed."""
    if not is_adapter(cfg):  # the reference is the policy with its adapter disabled
        raise RecipeError(f"ppo.finetuning_type {cfg.finetuning_type}: ppo trains a LoRA (lora or dora) on the starting "
                          "model, whose reference is the adapter disabled; full and freeze are not supported")
    if cfg.quantization_bit is not None:
        raise RecipeError("ppo.quantization_bit: PPO trains on the starting model in its training dtype; QLoRA is not "
                          "supported for ppo (unset it)")
    tokenizer = load_tokenizer(base_dir)
    view = read_view(formatted_dir, "sft")
    examples = answer_examples(view["train"], tokenizer, len(view["train"]))
    from datasets import Dataset
    prompts = Dataset.from_dict({"input_ids": [e.prompt_ids for e in examples]})
    dtype = train_dtype(precision or Precision())
    table = RolloutTable(tokenizer)

    def set_up():
        from transformers import TrainingArguments
        policy = prepare_model(load_with_adapters(base_dir, *stages, dtype=dtype), cfg, "CAUSAL_LM", precision)
        model = PolicyWithValueHead(policy)
        batch = rollout_batch(cfg)
        args = TrainingArguments(**{**trainer_kwargs(cfg, out, precision), "per_device_train_batch_size": batch,
                                    "gradient_accumulation_steps": 1, "remove_unused_columns": False,
                                    "include_num_input_tokens_seen": "no", "logging_steps": 1})
        settings = PpoSettings(ppo_epochs=cfg.ppo_epochs,
                               mini_batch_size=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
                               gamma=cfg.gamma, lam=cfg.lam, cliprange=cfg.cliprange,
                               cliprange_value=cfg.cliprange_value, vf_coef=cfg.vf_coef,
                               whiten_rewards=cfg.ppo_whiten_rewards)
        return PpoTrainer(model=model, args=args, train_dataset=prompts, data_collator=left_padded(tokenizer.pad_token_id),
                          processing_class=tokenizer, optimizers=optimizers(model, cfg), settings=settings,
                          generation=generation_kwargs(cfg), score=reward_scorer(reward_dir, tokenizer, dtype),
                          kl=AdaptiveKLController(cfg.init_kl_coef, cfg.ppo_target, cfg.adap_kl_ctrl),
                          score_norm=cfg.ppo_score_norm, target_kl_steps=batch, on_rollouts=table.add)

    def measures(trainer) -> dict:
        history = trainer.ppo_history
        consumed = min(len(prompts), len(history) * rollout_batch(cfg))
        return {"reward_curve": [{"step": h["step"], "reward": round(h["score"], 4), "kl": round(h["kl"], 4),
                                  "value_loss": round(h["value_loss"], 4)} for h in history],
                "reward_first": round(history[0]["score"], 4) if history else None,
                "reward_last": round(history[-1]["score"], 4) if history else None,
                "kl_last": round(history[-1]["kl"], 4) if history else None,
                "train_prompts": consumed, "offered_prompts": len(prompts), "formatted_train_rows": len(view["train"]),
                "prompts_dropped": {unreached(cfg): len(prompts) - consumed} if consumed < len(prompts) else {},
                "rollout_rows": table.write(out / ROLLOUTS_FILE)}

    return train_stage(TrainingStage("ppo", cfg, out, tokenizer, set_up, after=measures,
                                     saved_model=lambda trainer: trainer.model.policy), say)


def unreached(cfg: PpoSection) -> str:
    """Why prompts offered to PPO were never rolled out: training stopped first."""
    if cfg.max_steps > 0:
        return f"not reached: training stopped at max_steps {cfg.max_steps}"
    return f"not reached within num_train_epochs {cfg.num_train_epochs}"


def reward_model_dir(run: "StageRun") -> Path:
    """The graph's reward_model where rm runs, else ppo.reward_model (a sequence-classification checkpoint)."""
    if "reward_model" in run.inputs:
        return run.inputs["reward_model"]
    path = Path(run.recipe.ppo.reward_model or "").expanduser()
    if not (path / "config.json").is_file():
        raise RecipeError(f"ppo.reward_model: {path} is not a checkpoint folder (expected a sequence-classification "
                          "model's config.json and weights)")
    return path


def train_ppo_adapter(run: "StageRun") -> dict:
    """ppo_adapter's entry point: on top of pt_model, the SFT stage's and DPO stage's weights where they ran."""
    precision = Precision.of(run.recipe.model)
    sharding_of(run.recipe, "ppo")  # refused in one line: ppo's own loop is not sharded
    stages = [trained_weights(run.inputs[s]) for s in ("sft_adapter", "dpo_adapter") if s in run.inputs]
    return {**train_ppo(model_dir(run.inputs["pt_model"]), stages, reward_model_dir(run), run.inputs["formatted_data"],
                        run.recipe.ppo, run.out, precision, run.log),
            **precision_metrics(train_dtype(precision))}
