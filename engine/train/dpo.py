"""Direct preference optimisation: TRL DPOTrainer, a new LoRA on top of the SFT-merged model."""

from __future__ import annotations

from pathlib import Path

from datasets import load_from_disk
from peft import PeftModel
from trl import DPOConfig, DPOTrainer

from engine.evaluate import greedy_answers, reward_scores
from engine.models import load_causal_lm, load_reward_model, load_tokenizer
from engine.recipe import DpoSection
from engine.train.common import finish, lora_config, trainer_kwargs, without_row_ids


def sft_model(base_dir: Path, sft_adapter: Path):
    """The base model with the SFT adapter merged in: DPO's starting point and its reference."""
    return PeftModel.from_pretrained(load_causal_lm(base_dir), sft_adapter).merge_and_unload()


def train_dpo(base_dir: Path, sft_adapter: Path, reward_dir: Path, formatted_dir: Path, cfg: DpoSection,
              cutoff_len: int, out: Path, judge_prompts: int = 64) -> dict:
    """Train and save the DPO adapter to `out/adapter`. Returns eval reward margin/accuracy and judged scores."""
    tokenizer = load_tokenizer(base_dir)
    data = load_from_disk(formatted_dir / "preference")
    args = DPOConfig(**trainer_kwargs(cfg, out / "_trainer"), beta=cfg.pref_beta, loss_type=[cfg.pref_loss],
                     max_length=cutoff_len)
    trainer = DPOTrainer(model=sft_model(base_dir, sft_adapter), args=args,
                         train_dataset=without_row_ids(data["train"]), eval_dataset=without_row_ids(data["eval"]),
                         processing_class=tokenizer, peft_config=lora_config(cfg, "CAUSAL_LM"))
    result = trainer.train()
    evaluation = trainer.evaluate()
    trainer.model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    judged = judge(trainer.model, base_dir, sft_adapter, reward_dir, tokenizer, data["eval"], judge_prompts)
    return {**finish(trainer, out / "_trainer"), "train_loss": round(result.training_loss, 4),
            "eval_reward_margin": round(evaluation["eval_rewards/margins"], 4),
            "eval_reward_accuracy": round(evaluation["eval_rewards/accuracies"], 4), **judged}


def judge(dpo_model, base_dir: Path, sft_adapter: Path, reward_dir: Path, tokenizer, eval_rows, limit: int) -> dict:
    """Mean reward-model score of greedy answers to held-out prompts, from the SFT and the DPO model."""
    prompts = [row["prompt"] for row in eval_rows.select(range(min(limit, len(eval_rows))))]
    reward = load_reward_model(reward_dir)
    scores = {}
    for name, model in (("sft", sft_model(base_dir, sft_adapter)), ("dpo", dpo_model)):
        answers = greedy_answers(model, tokenizer, prompts)
        conversations = [p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)]
        values = reward_scores(reward, tokenizer, conversations)
        scores[f"reward_score_{name}"] = round(sum(values) / max(len(values), 1), 4)
    return scores
