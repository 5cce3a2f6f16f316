"""Training speed: plain TRL with its defaults against tuneline's own training setup, in one process.

Same model, same data, same LoRA (r16 on every linear layer), same learning rate and tokens per optimizer step:
  (a) plain TRL: SFTTrainer / DPOTrainer with their defaults (gradient checkpointing on, every batch padded to its
      longest row, the DPO reference recomputed at every step of every epoch; bf16 autocast, on a CPU too);
  (b) tuneline: the trainer arguments the sft and dpo stages build from the recipe's defaults (engine/train/sft.py
      `sft_arguments`, engine/train/dpo.py `dpo_arguments`: gradient checkpointing off, padding-free SFT batches
      (the same rows per step, no padding), DPO reference log-probs computed once; the device policy's bf16
      autocast on a CPU with native bf16), and the attention the stages train with (engine/models/attention.py: each row
      of a padding-free batch attends within itself, in float32 on a CPU), with TRL's fused LM head projecting
      only the labelled positions on a CPU too, as the stages train (engine/train/lm_head.py). `--packing` adds sft.packing (rows packed into cutoff_len sequences).
DPO trains --dpo-epochs (3, as LLaMA-Factory's DPO examples) over --dpo-pairs pairs.
Prints non-padding tokens per second, peak memory, the ratio (b)/(a), and the held-out loss after the same number
of training tokens (it must agree within the stated tolerance: speed may not change what is learned).

On a CPU the model is a Qwen2 shape a few times larger than `tiny` (with the default data's rows, compute
dominates; about 12 minutes); with a CUDA GPU, the Qwen2.5-0.5B shape in bf16. Goals: CPU SFT >= 2x and DPO >= 1.5x; GPU SFT >= 3x.

Both setups run under the allocator settings tuneline's training processes get (engine/train/launch.py; the
bench starts itself again with them), plain TRL too: the comparison is between training setups, in one process.

Usage: .venv/bin/python bench/train_throughput.py [--steps 30] [--stage sft|dpo|both] [--packing]
                                                  [--data llamafactory|sample] [--cutoff-len 512]
                                                  [--system-allocator]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.models.attention import training_attention  # noqa: E402
from engine.data.format import read_view  # noqa: E402
from engine.recipe import DpoSection, SftSection, load_recipe  # noqa: E402
from engine.train.adapters import lora_config  # noqa: E402
from engine.train.dpo import dpo_arguments, dpo_trainer  # noqa: E402
from engine.train.launch import training_environment  # noqa: E402
from engine.train.lm_head import labelled_positions_only  # noqa: E402
from engine.train.sft import padding_free, sft_arguments  # noqa: E402

# DPO's learning rate: at 5e-4 this bench's held-out DPO loss is chaotic (plain TRL's own moves 9% when only its
# attention runs in float32 instead of bf16), so it could not tell a lever's effect from rounding; at 1e-4 it moves
# under 0.1%, and the comparison means something
DPO_LR = 1e-4
LOSS_TOLERANCE = 0.05  # relative: held-out loss of (b) within 5% of (a) after the same tokens
CPU_SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2)  # about 8x the tiny preset's compute per token
GPU_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2)  # Qwen2.5-0.5B


DATA = {  # (registry folder, registry file, datasets): what the bench trains on
    # LLaMA-Factory's own demo files, unchanged (real alpaca answers, identity, DPO pairs): rows of real lengths
    "llamafactory": ("tests/fixtures/llamafactory/data", "dataset_info.json",
                     ["alpaca_en_demo", "identity", "dpo_en_demo"]),
    # tuneline's sample task: one-word answers, rows of ~30 tokens (little padding for any setup to save)
    "sample": ("data", "datasets.yaml", None),
}


def prepare(work: Path, cutoff_len: int, data: str) -> tuple[Path, Path]:
    """The bench's data through tuneline's own ingest and format steps, and a random-init Qwen2 model of the
    bench's shape with a tokenizer trained on that data: (model dir, formatted dir)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from engine.models.base import message_texts
    from engine.data.format import format_rows
    from engine.data.ingest import ingest
    from engine.data.registry import resolve_sources
    from engine.models.load import train_tokenizer
    folder, registry, names = DATA[data]
    rows = ingest(resolve_sources(folder, registry, names or load_recipe("tiny")[0].data.dataset))[0]
    tokenizer = train_tokenizer(message_texts(rows), 4096)
    shape = GPU_SHAPE if torch.cuda.is_available() else CPU_SHAPE
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **shape)
    torch.manual_seed(0)
    model_dir = work / "model"
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    format_rows(rows, tokenizer, cutoff_len, 0.1, 42, work / "formatted")
    return model_dir, work / "formatted"


def load(model_dir: Path, tuneline: bool):
    """The model with a LoRA: plain TRL's with transformers' default attention (sdpa), tuneline's with the attention
    the stages train with for the recipe's default attn_implementation (engine/models/attention.py)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    attention = training_attention(SftSection().attn_implementation) if tuneline else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention)
    torch.manual_seed(0)
    return get_peft_model(model, lora_config(SftSection(lora_rank=16, lora_alpha=32), "CAUSAL_LM"))


def heldout_loss(model, rows, batch: int = 16) -> float:
    """Mean token loss over the labelled tokens of the held-out rows, however the trainer batched them."""
    from engine.models.device import to_device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in chunk])
            labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in chunk])
            mask = (torch.arange(width)[None] < torch.tensor([len(r["input_ids"]) for r in chunk])[:, None]).long()
            logits = model(**to_device({"input_ids": ids, "attention_mask": mask}, model)).logits.float()
            shifted = labels[:, 1:].to(logits.device)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, ignore_index=-100,
                                                     reduction="sum")
            total, count = total + float(loss), count + int((shifted != -100).sum())
    return total / count


def as_trained(tuneline: bool):
    """What the sft and dpo stages train under: TRL's fused LM head projecting only the labelled positions
    (engine/train/lm_head.py); nothing for plain TRL."""
    return labelled_positions_only() if tuneline else contextlib.nullcontext()


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def timed(trainer, started: float) -> tuple[float, float]:
    """(seconds, peak GB) from `started` (before the trainer was built: whatever it computes up front, such as
    precomputed reference log-probs, counts) to the end of trainer.train()."""
    trainer.train()
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    return seconds, peak


class TokenBudget:
    """Stops training once it has seen `budget` non-padding tokens: both setups learn from the same amount."""

    def __init__(self, budget: int):
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                control.should_training_stop = state.num_input_tokens_seen >= budget
                return control
        self.callback = Stop()


def sft_run(model_dir: Path, formatted: Path, out: Path, steps: int, batch: int, tuneline: bool, cutoff_len: int,
            budget: int | None = None, packing: bool = False):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    data = read_view(formatted, "sft")  # as the stages read it: no cache a later run could reuse
    train = data["train"].remove_columns(["row_id"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tuneline:  # the trainer arguments the sft stage builds from the recipe's defaults
        cfg = SftSection(max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                         lr_scheduler_type="constant", warmup_ratio=0.0, logging_steps=steps, save_steps=10**6,
                         packing=packing)
        hidden = json.loads((model_dir / "config.json").read_text())["hidden_size"]
        args = sft_arguments(cfg, cutoff_len, out, flat=padding_free(cfg, [len(i) for i in train["input_ids"]], hidden))
    else:  # plain TRL: its defaults, with only what any run must say
        args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                         lr_scheduler_type="constant", report_to="none", logging_steps=steps, save_strategy="no",
                         max_length=cutoff_len, include_num_input_tokens_seen="non_padding", seed=42,
                         use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    model = load(model_dir, tuneline)
    reset_peak_memory()
    with as_trained(tuneline):
        started = time.perf_counter()
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        if budget:
            trainer.add_callback(TokenBudget(budget).callback)
        seconds, peak = timed(trainer, started)
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "peak_gb": peak,
            "heldout_loss": heldout_loss(trainer.model, list(data["eval"])),
            "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
            "padding_free": args.padding_free, "packing": args.packing}


def dpo_run(model_dir: Path, formatted: Path, out: Path, pairs: int, epochs: int, batch: int, tuneline: bool,
            cutoff_len: int):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    data = read_view(formatted, "preference")  # each run tokenizes its pairs itself
    train = data["train"].remove_columns(["row_id"]).select(range(pairs))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tuneline:
        cfg = DpoSection(num_train_epochs=epochs, per_device_train_batch_size=batch, learning_rate=DPO_LR,
                         lr_scheduler_type="constant", warmup_ratio=0.0, logging_steps=10**6, save_steps=10**6)
        args = dpo_arguments(cfg, cutoff_len, out)
    else:
        args = DPOConfig(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=batch,
                         learning_rate=DPO_LR, lr_scheduler_type="constant", report_to="none", logging_steps=10**6,
                         save_strategy="no", max_length=cutoff_len, seed=42, use_cpu=not torch.cuda.is_available(),
                         disable_tqdm=True)
    model = load(model_dir, tuneline)
    reset_peak_memory()
    evaluation = data["eval"].remove_columns(["row_id"])
    with as_trained(tuneline):
        started = time.perf_counter()
        trainer = (dpo_trainer(model, None, tokenizer, train, evaluation, args) if tuneline else  # as the dpo stage
                   DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                              eval_dataset=evaluation))
        trainer.remove_callback(PrinterCallback)
        seconds, peak = timed(trainer, started)
    # non-padding tokens of the pairs trained on (prompt + chosen, prompt + rejected), as TRL tokenized them
    tokenized = trainer.train_dataset
    pair_tokens = [2 * len(p) + len(c) + len(r) for p, c, r in zip(
        tokenized["prompt_ids"], tokenized["chosen_ids"], tokenized["rejected_ids"], strict=True)]
    tokens = sum(pair_tokens) * epochs
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "peak_gb": peak,
            "heldout_loss": trainer.evaluate()["eval_loss"], "gradient_checkpointing": args.gradient_checkpointing,
            "bf16": args.bf16, "precompute_ref_log_probs": args.precompute_ref_log_probs}


def compare(name: str, plain: dict, ours: dict, goal: float) -> bool:
    ratio = ours["tokens_per_second"] / plain["tokens_per_second"]
    drift = abs(ours["heldout_loss"] - plain["heldout_loss"]) / plain["heldout_loss"]
    print(f"\n{name}: {'':<10} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'peak GB':>8} {'loss':>7}  settings")
    for label, r in (("plain TRL", plain), ("tuneline", ours)):
        settings = ", ".join(f"{k}={r[k]}" for k in r if k not in ("tokens", "seconds", "tokens_per_second",
                                                                   "peak_gb", "heldout_loss"))
        print(f"{'':<{len(name) + 2}}{label:<10} {r['tokens']:>8,} {r['seconds']:>8.1f} "
              f"{r['tokens_per_second']:>9,.0f} {r['peak_gb']:>8.2f} {r['heldout_loss']:>7.4f}  {settings}")
    met = ratio >= goal and drift <= LOSS_TOLERANCE
    print(f"{name} ratio tuneline/plain TRL: {ratio:.2f}x (goal >= {goal}x); loss differs by {drift:.1%} "
          f"(tolerance {LOSS_TOLERANCE:.0%})  {'met' if met else 'MISSED'}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="plain TRL's SFT steps (16 rows each)")
    parser.add_argument("--stage", choices=["sft", "dpo", "both"], default="both")
    parser.add_argument("--cutoff-len", type=int, default=512)
    parser.add_argument("--data", choices=sorted(DATA), default="llamafactory",
                        help="LLaMA-Factory's demo files (default: rows of real lengths, ~220 tokens, where compute "
                             "dominates; about 12 minutes), or tuneline's sample task (rows of ~30 tokens, where "
                             "per-step overhead both setups share dominates; about 2 minutes)")
    parser.add_argument("--packing", action="store_true", help="tuneline side with sft.packing on")
    parser.add_argument("--dpo-pairs", type=int, default=160, help="preference pairs DPO trains on")
    parser.add_argument("--dpo-epochs", type=int, default=3, help="epochs over them (LLaMA-Factory's examples: 3)")
    parser.add_argument("--system-allocator", action="store_true",
                        help="keep the environment's allocator settings (default: both setups run under the ones "
                             "tuneline's training processes get, engine/train/launch.py)")
    args = parser.parse_args()
    allocator = {} if args.system_allocator else training_environment()
    if allocator:  # glibc reads them at start-up: start again with them
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **allocator})
    os.environ.setdefault("TQDM_DISABLE", "1")
    gpu = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if gpu else f'CPU, {torch.get_num_threads()} threads'}; "
          f"shape: {GPU_SHAPE if gpu else CPU_SHAPE}; allocator: "
          f"{'as the environment set it' if args.system_allocator else 'as for tuneline training processes'}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, formatted = prepare(work, args.cutoff_len, args.data)
        if args.stage in ("sft", "both"):
            lengths = [len(ids) for ids in read_view(formatted, "sft")["train"]["input_ids"]]
            rows_per_step, packing = 16, args.packing or SftSection().packing
            # the same tokens per optimizer step: (b)'s packed sequences hold about cutoff_len tokens each
            batch = (max(1, round(rows_per_step * (sum(lengths) / len(lengths)) / args.cutoff_len)) if packing
                     else rows_per_step)
            print(f"SFT rows: {len(lengths)}, mean {sum(lengths) / len(lengths):.0f} tokens; plain TRL batch "
                  f"{rows_per_step} rows, tuneline batch {batch} {'packed sequences' if packing else 'rows'}")
            plain = sft_run(model_dir, formatted, work / "a", args.steps, rows_per_step, False, args.cutoff_len)
            ours = sft_run(model_dir, formatted, work / "b", 10 * args.steps, batch, True, args.cutoff_len,
                           budget=plain["tokens"], packing=packing)
            compare("SFT", plain, ours, 3.0 if gpu else 2.0)
        if args.stage in ("dpo", "both"):
            plain = dpo_run(model_dir, formatted, work / "c", args.dpo_pairs, args.dpo_epochs, 8, False, args.cutoff_len)
            ours = dpo_run(model_dir, formatted, work / "d", args.dpo_pairs, args.dpo_epochs, 8, True, args.cutoff_len)
            compare("DPO", plain, ours, 1.5)


if __name__ == "__main__":
    main()
