"""Training speed: tuneline's training setup against stock TRL, at its defaults and at its best, each setup in a
process of its own (peak memory is that setup's alone).

Same model, same data, same LoRA (r16 on every linear layer), same learning rate and tokens per optimizer step:
  (a) TRL defaults: SFTTrainer / DPOTrainer with their defaults (gradient checkpointing on, every batch padded to
      its longest row, the DPO reference recomputed at every step of every epoch);
  (b) TRL at its best: what a user who tunes stock TRL sets: gradient checkpointing off, `padding_free=True` for
      SFT (rows concatenated, position ids restart per row: transformers' attention masks each row off), and
      `precompute_ref_log_probs=True` for DPO; the attention a user would pick (flash_attention_2 where flash-attn
      and a CUDA GPU are present, else sdpa);
  (c) tuneline: the trainer arguments the sft and dpo stages build from the recipe's defaults (engine/train/sft.py
      `sft_arguments`, engine/train/dpo.py `dpo_arguments`: gradient checkpointing off, padding-free SFT batches,
      DPO reference log-probs computed once; the device policy's bf16 autocast on a CPU with native bf16), the
      attention and LM head the device policy chooses (engine/models/device.py training_kernels): on a CPU the row
      attention (engine/models/attention.py) and TRL's fused LM head projecting only the labelled positions through
      CpuLogProbs (engine/train/lm_head.py, cpu_log_probs.py); on a GPU transformers' sdpa and TRL's own head, as
      (b). `--packing` adds sft.packing.
(b) and (c) train on as many non-padding tokens as (a) did. DPO trains --dpo-epochs (3, as LLaMA-Factory's DPO
examples) over --dpo-pairs pairs. Prints non-padding tokens per second, each setup's peak memory, the ratios
(c)/(a) and (c)/(b), and the held-out loss after the same tokens (within LOSS_TOLERANCE of the baseline's: speed
may not change what is learned).

On a CPU the model is a Qwen2 shape a few times larger than `tiny`; with a CUDA GPU, the Qwen2.5-0.5B shape in
bf16; `--model DIR` trains a local checkpoint instead (a real vocabulary: its LM head dominates a small model's
cost). Goals: against TRL at its best, SFT >= 2.5x and DPO >= 1.5x on the CPU.

Every setup runs under the allocator settings tuneline's training processes get (engine/train/launch.py; the
bench starts itself again with them): the comparison is between training setups.

Usage: .venv/bin/python bench/train_throughput.py [--steps 30] [--stage sft|dpo|both] [--packing]
                                                  [--data llamafactory|sample] [--cutoff-len 512]
                                                  [--model DIR] [--system-allocator]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
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
LOSS_TOLERANCE = 0.01  # relative: held-out loss of (b) and (c) within 1% of (a) after the same tokens (issue 27)
LABELS = {"trl_defaults": "TRL defaults", "trl_best": "TRL at best", "tuneline": "tuneline"}
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


def prepare(work: Path, cutoff_len: int, data: str, checkpoint: Path | None = None) -> tuple[Path, Path]:
    """The bench's data through tuneline's own ingest and format steps, with `checkpoint` (a local model folder) and
    its tokenizer, or a random-init Qwen2 model of the bench's shape with a tokenizer trained on that data:
    (model dir, formatted dir)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from engine.models.base import message_texts
    from engine.data.format import format_rows
    from engine.data.ingest import ingest
    from engine.data.registry import resolve_sources
    from engine.models.load import train_tokenizer
    folder, registry, names = DATA[data]
    rows = ingest(resolve_sources(folder, registry, names or load_recipe("tiny")[0].data.dataset))[0]
    if checkpoint is not None:
        model_dir, tokenizer = checkpoint, AutoTokenizer.from_pretrained(checkpoint)
    else:
        tokenizer = train_tokenizer(message_texts(rows), 4096)
        shape = GPU_SHAPE if torch.cuda.is_available() else CPU_SHAPE
        config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                             bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **shape)
        torch.manual_seed(0)
        model_dir = work / "model"
        Qwen2ForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    format_rows(rows, tokenizer, cutoff_len, 0.1, 42, work / "formatted")
    return model_dir, work / "formatted"


def user_attention() -> str:
    """The attention a user tuning stock TRL picks: flash_attention_2 where it can run, else sdpa."""
    import importlib.util
    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def load(model_dir: Path, setup: str):
    """The model with a LoRA: TRL's defaults with transformers' default attention (sdpa), TRL at its best with the
    attention a user would pick, tuneline's with the attention the stages train with for the recipe's default
    attn_implementation (engine/models/attention.py)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    attention = {"trl_defaults": "sdpa", "trl_best": user_attention(),
                 "tuneline": training_attention(SftSection().attn_implementation)}[setup]
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


def as_trained(setup: str):
    """What the sft and dpo stages train under: TRL's fused LM head projecting only the labelled positions
    (engine/train/lm_head.py); nothing for stock TRL."""
    return labelled_positions_only() if setup == "tuneline" else contextlib.nullcontext()


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


def sft_run(model_dir: Path, formatted: Path, out: Path, steps: int, batch: int, setup: str, cutoff_len: int,
            budget: int | None = None, packing: bool = False):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    data = read_view(formatted, "sft")  # as the stages read it: no cache a later run could reuse
    train = data["train"].remove_columns(["row_id"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if setup == "tuneline":  # the trainer arguments the sft stage builds from the recipe's defaults
        cfg = SftSection(max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                         lr_scheduler_type="constant", warmup_ratio=0.0, logging_steps=steps, save_steps=10**6,
                         packing=packing)
        hidden = json.loads((model_dir / "config.json").read_text())["hidden_size"]
        args = sft_arguments(cfg, cutoff_len, out, flat=padding_free(cfg, [len(i) for i in train["input_ids"]], hidden))
    else:  # stock TRL: its defaults with only what any run must say, or with the speed settings a user would set
        settings = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                        lr_scheduler_type="constant", report_to="none", logging_steps=steps, save_strategy="no",
                        max_length=cutoff_len, include_num_input_tokens_seen="non_padding", seed=42,
                        use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
        if setup == "trl_best":  # the rows are cut at cutoff_len already: TRL asks for no max_length when padding-free
            settings.update(gradient_checkpointing=False, padding_free=True, max_length=None)
        args = SFTConfig(**settings)
    model = load(model_dir, setup)
    reset_peak_memory()
    with as_trained(setup):
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
            "padding_free": args.padding_free, "packing": args.packing,
            "attention": model.config._attn_implementation}


def dpo_run(model_dir: Path, formatted: Path, out: Path, pairs: int, epochs: int, batch: int, setup: str,
            cutoff_len: int):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    data = read_view(formatted, "preference")  # each run tokenizes its pairs itself
    train = data["train"].remove_columns(["row_id"]).select(range(pairs))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if setup == "tuneline":
        cfg = DpoSection(num_train_epochs=epochs, per_device_train_batch_size=batch, learning_rate=DPO_LR,
                         lr_scheduler_type="constant", warmup_ratio=0.0, logging_steps=10**6, save_steps=10**6)
        args = dpo_arguments(cfg, cutoff_len, out)
    else:
        best = {"gradient_checkpointing": False, "precompute_ref_log_probs": True} if setup == "trl_best" else {}
        args = DPOConfig(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=batch,
                         learning_rate=DPO_LR, lr_scheduler_type="constant", report_to="none", logging_steps=10**6,
                         save_strategy="no", max_length=cutoff_len, seed=42, use_cpu=not torch.cuda.is_available(),
                         disable_tqdm=True, **best)
    model = load(model_dir, setup)
    reset_peak_memory()
    evaluation = data["eval"].remove_columns(["row_id"])
    with as_trained(setup):
        started = time.perf_counter()
        trainer = (dpo_trainer(model, None, tokenizer, train, evaluation, args) if setup == "tuneline" else  # as the dpo stage
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
            "bf16": args.bf16, "precompute_ref_log_probs": args.precompute_ref_log_probs,
            "attention": trainer.model.config._attn_implementation}


def compare(name: str, results: dict[str, dict], goals: dict[str, float]) -> bool:
    """The three setups side by side; tuneline's ratio against each baseline, with the goal against each."""
    base = results["trl_defaults"]
    print(f"\n{name}: {'':<13} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'peak GB':>8} {'loss':>7}  settings")
    for setup, r in results.items():
        settings = ", ".join(f"{k}={r[k]}" for k in r if k not in ("tokens", "seconds", "tokens_per_second",
                                                                   "peak_gb", "heldout_loss"))
        print(f"{'':<{len(name) + 2}}{LABELS[setup]:<13} {r['tokens']:>8,} {r['seconds']:>8.1f} "
              f"{r['tokens_per_second']:>9,.0f} {r['peak_gb']:>8.2f} {r['heldout_loss']:>7.4f}  {settings}")
    ours, met = results["tuneline"], True
    for baseline in ("trl_defaults", "trl_best"):
        ratio = ours["tokens_per_second"] / results[baseline]["tokens_per_second"]
        drift = abs(ours["heldout_loss"] - base["heldout_loss"]) / base["heldout_loss"]
        goal = goals.get(baseline)
        verdict = "" if goal is None else (f" (goal >= {goal}x) " + ("met" if ratio >= goal and drift <= LOSS_TOLERANCE
                                                                      else "MISSED"))
        met &= goal is None or (ratio >= goal and drift <= LOSS_TOLERANCE)
        print(f"{name} tuneline / {LABELS[baseline]}: {ratio:.2f}x{verdict}")
    drift = {s: abs(r["heldout_loss"] - base["heldout_loss"]) / base["heldout_loss"] for s, r in results.items()}
    print(f"{name} held-out loss vs TRL defaults: " + ", ".join(f"{LABELS[s]} {d:.1%}" for s, d in drift.items())
          + f" (tolerance {LOSS_TOLERANCE:.0%})")
    return met


def run_setup(argv: list[str]) -> dict:
    """One setup in a process of its own: its result is the JSON on the child's last output line."""
    done = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="TRL defaults' SFT steps (16 rows each)")
    parser.add_argument("--stage", choices=["sft", "dpo", "grpo", "both", "all"], default="both",
                        help="both: sft and dpo; all: also grpo (bench/grpo_setups.py)")
    parser.add_argument("--cutoff-len", type=int, default=512)
    parser.add_argument("--data", choices=sorted(DATA), default="llamafactory",
                        help="LLaMA-Factory's demo files (default: rows of real lengths, ~220 tokens, where compute "
                             "dominates), or tuneline's sample task (rows of ~30 tokens, where per-step overhead "
                             "every setup shares dominates)")
    parser.add_argument("--model", type=Path, help="a local model folder (Hugging Face layout) to train instead of "
                                                   "the random-init shape")
    parser.add_argument("--packing", action="store_true", help="tuneline side with sft.packing on")
    parser.add_argument("--dpo-pairs", type=int, default=160, help="preference pairs DPO trains on")
    parser.add_argument("--dpo-epochs", type=int, default=3, help="epochs over them (LLaMA-Factory's examples: 3)")
    parser.add_argument("--grpo-steps", type=int, default=8, help="GRPO steps (16 completions each) every setup runs")
    parser.add_argument("--system-allocator", action="store_true",
                        help="keep the environment's allocator settings (default: every setup runs under the ones "
                             "tuneline's training processes get, engine/train/launch.py)")
    parser.add_argument("--one", nargs=3, metavar=("STAGE", "SETUP", "WORK"), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        stage, setup, work = args.one
        print(json.dumps(one_setup(stage, setup, Path(work), args)))
        return
    allocator = {} if args.system_allocator else training_environment()
    if allocator and any(os.environ.get(k) != v for k, v in allocator.items()):  # glibc reads them at start-up
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **allocator})
    os.environ.setdefault("TQDM_DISABLE", "1")
    gpu = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if gpu else f'CPU, {torch.get_num_threads()} threads'}; model: "
          f"{args.model or (GPU_SHAPE if gpu else CPU_SHAPE)}; allocator: "
          f"{'as the environment set it' if args.system_allocator else 'as for tuneline training processes'}; "
          "each setup in its own process", flush=True)
    shared = [a for a in sys.argv[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, formatted = prepare(work, args.cutoff_len, args.data, args.model)
        (work / "model_dir").write_text(str(model_dir))
        for stage in [s for s in ("sft", "dpo") if args.stage in (s, "both", "all")]:
            results = {"trl_defaults": run_setup([*shared, "--one", stage, "trl_defaults", str(work)])}
            budget = ["--budget", str(results["trl_defaults"]["tokens"])]  # the same tokens for every setup
            for setup in ("trl_best", "tuneline"):
                results[setup] = run_setup([*shared, "--one", stage, setup, str(work), *budget])
            goals = ({"trl_best": 2.5} if stage == "sft" else {"trl_best": 1.5}) if not gpu else {}
            compare(stage.upper(), results, goals)
        if args.stage in ("grpo", "all"):  # the same steps for every setup: completions per second, equal work
            from bench.grpo_setups import compare_grpo
            compare_grpo({setup: run_setup([*shared, "--one", "grpo", setup, str(work)])
                          for setup in ("trl_defaults", "trl_best", "tuneline")}, LABELS, None if gpu else 1.3)


def one_setup(stage: str, setup: str, work: Path, args) -> dict:
    """The child's work: one stage under one setup, on the data and model the parent prepared in `work`."""
    model_dir, formatted = Path((work / "model_dir").read_text()), work / "formatted"
    out = work / f"{stage}-{setup}"
    if stage == "grpo":
        from bench.grpo_setups import trl_grpo_run, tuneline_grpo_run
        return (tuneline_grpo_run(model_dir, formatted, out, args.grpo_steps) if setup == "tuneline" else
                trl_grpo_run(model_dir, formatted, out, args.grpo_steps, setup, load))
    if stage == "dpo":
        return dpo_run(model_dir, formatted, out, args.dpo_pairs, args.dpo_epochs, 8, setup, args.cutoff_len)
    lengths = [len(ids) for ids in read_view(formatted, "sft")["train"]["input_ids"]]
    rows_per_step = 16
    packing = setup == "tuneline" and (args.packing or SftSection().packing)
    # the same tokens per optimizer step: packed sequences hold about cutoff_len tokens each
    batch = (max(1, round(rows_per_step * (sum(lengths) / len(lengths)) / args.cutoff_len)) if packing
             else rows_per_step)
    steps = args.steps if setup == "trl_defaults" else 10 * args.steps  # the others stop at the token budget
    return sft_run(model_dir, formatted, out, steps, batch, setup, args.cutoff_len, budget=args.budget,
                   packing=packing)


if __name__ == "__main__":
    main()
