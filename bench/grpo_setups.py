"""GRPO's setups for bench/train_throughput.py (`--stage grpo`): stock TRL's GRPOTrainer at its defaults and at its
best, and tuneline's grpo stage (engine/train/grpo.py), on the same prompts (the SFT view's), the same exact-match
reward, the same completions per step. Reports completions per second, each setup's peak memory (its own process)
and the mean reward of its last logged step. Each setup's seconds are its trainer's train() runtime (TRL's
train_runtime): loading, setting up and saving are left out on both sides."""

from __future__ import annotations

from pathlib import Path

import torch

GRPO_SHAPE = dict(per_device_train_batch_size=16, num_generations=4, max_completion_length=32, learning_rate=5e-5,
                  lr_scheduler_type="constant", warmup_ratio=0.0, logging_steps=1, save_steps=10**6,
                  finetuning_type="lora", lora_rank=16, lora_alpha=32)


def grpo_section(steps: int):
    from engine.recipe.grpo import GrpoReward, GrpoSection
    return GrpoSection(max_steps=steps, rewards=[GrpoReward(type="exact_match")], **GRPO_SHAPE)


def trl_grpo_run(model_dir: Path, formatted: Path, out: Path, steps: int, setup: str, load) -> dict:
    """Stock TRL: its GRPOConfig defaults (gradient checkpointing on), or at its best (off, bf16 where it runs)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer
    from engine.data.format import read_view
    from engine.train.grpo import prompt_rows
    from engine.train.rewards import RolloutLog, reward_functions
    cfg = grpo_section(steps)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    train = prompt_rows(read_view(formatted, "sft")["train"], tokenizer)
    funcs, _ = reward_functions(cfg, None, tokenizer, RolloutLog(["exact_match"]), lambda: 0)
    best = {"gradient_checkpointing": False} if setup == "trl_best" else {}
    args = GRPOConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
                      num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                      learning_rate=cfg.learning_rate, lr_scheduler_type="constant", report_to="none",
                      logging_steps=1, save_strategy="no", seed=42, use_cpu=not torch.cuda.is_available(),
                      disable_tqdm=True, remove_unused_columns=False, **best)
    trainer = GRPOTrainer(model=load(model_dir, setup), reward_funcs=funcs, args=args,
                          train_dataset=Dataset.from_list(train), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    seconds = trainer.train().metrics["train_runtime"]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return finish(seconds, steps, cfg, rewards[-1], {"gradient_checkpointing": args.gradient_checkpointing,
                                                     "bf16": args.bf16})


def tuneline_grpo_run(model_dir: Path, formatted: Path, out: Path, steps: int) -> dict:
    """The grpo stage's own training function, as the stage calls it (no reward model, no earlier stages)."""
    from engine.train.grpo import train_grpo
    cfg = grpo_section(steps)
    metrics = train_grpo(model_dir, [], formatted, None, cfg, out, say=lambda line: None)
    return finish(metrics["seconds_this_run"], steps, cfg, metrics["reward_last"],
                  {"gradient_checkpointing": cfg.gradient_checkpointing})


def finish(seconds: float, steps: int, cfg, reward: float, settings: dict) -> dict:
    import resource
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    completions = steps * cfg.per_device_train_batch_size
    return {"completions": completions, "seconds": seconds, "completions_per_second": completions / seconds,
            "peak_gb": peak, "reward_last": reward, **settings}


def compare_grpo(results: dict[str, dict], labels: dict[str, str], goal: float | None) -> None:
    print(f"\nGRPO: {'':<13} {'completions':>11} {'seconds':>8} {'compl./s':>9} {'peak GB':>8} {'reward':>7}  settings")
    for setup, r in results.items():
        settings = ", ".join(f"{k}={r[k]}" for k in r if k not in ("completions", "seconds", "completions_per_second",
                                                                   "peak_gb", "reward_last"))
        print(f"      {labels[setup]:<13} {r['completions']:>11,} {r['seconds']:>8.1f} "
              f"{r['completions_per_second']:>9.2f} {r['peak_gb']:>8.2f} {r['reward_last']:>7.4f}  {settings}")
    for baseline in ("trl_defaults", "trl_best"):
        ratio = results["tuneline"]["completions_per_second"] / results[baseline]["completions_per_second"]
        verdict = "" if goal is None or baseline != "trl_best" else \
            f" (goal >= {goal}x) " + ("met" if ratio >= goal else "MISSED")
        print(f"GRPO tuneline / {labels[baseline]}: {ratio:.2f}x{verdict}")
