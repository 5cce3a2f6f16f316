"""Evaluation: one model measured on the held-out split, and every stage compared, with the deployment gates.

Each stage (base, SFT, DPO, merged, GPTQ, AWQ) gets the same numbers: perplexity on the whole SFT eval
split, task accuracy of greedy answers to the first `max_samples` eval questions (scored by the recipe's
scorer against the known answer), their character similarity to it (partial credit, always shown), and
the reward model's mean score of those answers.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from engine.models.backends import choose_backend
from engine.data.format import read_view
from engine.models.device import (Device, Precision, device_type, infer_dtype, name, precision_metrics, release,
                                  tensor_parallel_size)
from engine.errors import RecipeError
from engine.models.sample import decoded_answer
from engine.evaluate.measure import (answer_examples, answered_sequences, greedy_from_ids, perplexity,
                                     reward_scores_of_ids)
from engine.models.load import load_reward_model, load_tokenizer, load_with_adapters, model_dir
from engine.evaluate.scorers import char_similarity, resolve_scorer, score, scores
from engine.evaluate.stats import mean_interval, paired_difference, score_interval

if TYPE_CHECKING:
    from engine.recipe import EvaluationSection, Recipe
    from engine.stage import StageRun

EVALUATED = ("base", "sft", "dpo", "ppo", "grpo", "merged", "gptq", "awq")
# the model each stage means: a base model plus training stages (applied in order), or an export directory
STAGE_MODELS = {"base": ("base_model",), "sft": ("pt_model", "sft_adapter"),
                "dpo": ("pt_model", "sft_adapter", "dpo_adapter"),
                "ppo": ("pt_model", "sft_adapter", "dpo_adapter", "ppo_adapter"),
                "grpo": ("pt_model", "sft_adapter", "dpo_adapter", "grpo_adapter"), "merged": ("merged_model",),
                "gptq": ("gptq_model",), "awq": ("awq_model",)}


def generation_backend(cfg: EvaluationSection, on: Device | None = None) -> str:
    """"vllm" or "huggingface": what generates the greedy answers under evaluation.infer_backend on the device the
    evaluation runs on (default: this machine)."""
    return choose_backend(cfg.infer_backend, "evaluation.infer_backend", RecipeError, on)


def check_generation_backend(cfg: EvaluationSection, on: Device | None = None) -> None:
    """evaluation.infer_backend vllm needs vLLM and a CUDA GPU: say so before any work starts."""
    generation_backend(cfg, on)


def vllm_answers(model_dir: Path, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                 dtype: torch.dtype | None, tensor_parallel: int | None = None) -> list[str]:
    """Greedy completions by vLLM of the model in `model_dir`, in order, decoded as transformers' are; the model
    split over `tensor_parallel` GPUs (None: every visible one)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    # vLLM asks for a fraction of the whole GPU and refuses to start when that much is not free: ask for most of
    # what is free now (the evaluated model is freed before vLLM starts, but CUDA's context stays)
    free, total = torch.cuda.mem_get_info()
    llm = LLM(model=str(model_dir), dtype=name(dtype) if dtype else "auto", seed=0,
              gpu_memory_utilization=0.8 * free / total, tensor_parallel_size=tensor_parallel_size(tensor_parallel))
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts],
                           SamplingParams(temperature=0, max_tokens=max_new_tokens), use_tqdm=False)
    del llm
    release()  # let the engine and its GPU memory go before the reward model loads
    return [decoded_answer(tokenizer, output.outputs[0].token_ids) for output in outputs]


def evaluate_model(load_policy: Callable[[], Any], tokenizer_dir: Path, formatted_dir: Path, reward_dir: Path | None,
                   cfg: EvaluationSection, dtype: torch.dtype | None = None, vllm_source: Path | None = None) -> dict:
    """Perplexity, task accuracy and mean reward score of the model `load_policy()` loads, with a few answers to
    read; the reward model is loaded in `dtype` (None: the policy's default). No reward model (rm is not in the
    recipe's stages): the reward score is None. Under evaluation.infer_backend vllm here, vLLM generates the answers
    from `vllm_source` (the same model as a directory; None: the loaded model saved to a temporary one), else the
    policy does. One model-sized copy alive at a time: the policy is freed before vLLM or the reward model loads."""
    tokenizer = load_tokenizer(tokenizer_dir)
    evaluation = read_view(formatted_dir, "sft")["eval"]
    examples = answer_examples(evaluation, tokenizer, cfg.max_samples)
    prompts = [e.prompt_ids for e in examples]
    vllm = generation_backend(cfg) == "vllm"
    with tempfile.TemporaryDirectory(prefix="tuneline-vllm-") as tmp:
        model = load_policy()
        policy_perplexity = perplexity(model, evaluation, tokenizer.pad_token_id)
        answers = None if vllm else greedy_from_ids(model, tokenizer, prompts, cfg.max_new_tokens)
        if vllm and vllm_source is None:  # base + adapters, merged in memory: vLLM loads a directory
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            vllm_source = Path(tmp)
        del model
        release()
        if vllm:
            answers = vllm_answers(vllm_source, tokenizer, prompts, cfg.max_new_tokens, dtype,
                                   cfg.tensor_parallel_size)
    references = [e.reference for e in examples]
    rewards = None if reward_dir is None else reward_scores(reward_dir, dtype, tokenizer, examples, answers)
    task_scores = scores(resolve_scorer(cfg.scorer), answers, references)
    accuracy, reward = score_interval(task_scores), None if rewards is None else mean_interval(rewards)
    return {"perplexity": round(policy_perplexity, 4),
            "accuracy": round(accuracy.estimate, 4), "accuracy_ci": accuracy.bounds(),
            "similarity": round(score(char_similarity, answers, references), 4),
            "reward_score": None if reward is None else round(reward.estimate, 4),
            "reward_score_ci": None if reward is None else reward.bounds(),
            "samples": len(examples),
            "scorer": cfg.scorer,
            "generation_backend": "vllm" if vllm else "huggingface",
            # per question, in order: the gates compare two stages on the same questions (paired intervals)
            "example_scores": [round(s, 4) for s in task_scores],
            "example_rewards": None if rewards is None else [round(r, 4) for r in rewards],
            "examples": [{"reference": r, "answer": a} for r, a in zip(references[:5], answers[:5], strict=True)]}


def reward_scores(reward_dir: Path, dtype: torch.dtype | None, tokenizer, examples, answers: list[str]) -> list[float]:
    """The reward model's score of each answer, the reward model loaded for this and freed after it."""
    model = load_reward_model(reward_dir, dtype, spread=True)
    rewards = reward_scores_of_ids(model, answered_sequences(tokenizer, examples, answers), tokenizer.pad_token_id)
    del model
    release()
    return rewards


def measure_model(model_path: Path, adapters: list[Path], formatted_dir: Path, reward_dir: Path | None,
                  cfg: EvaluationSection, precision: Precision | None = None) -> dict:
    """A stage's model (a directory, plus adapters merged in order) evaluated in the policy's inference dtype, spread
    over the GPUs, then CPU RAM, the reward model too; its answers generated as evaluation.infer_backend picks here;
    lm-eval runs on full models only (after the others are freed)."""
    dtype = infer_dtype(precision or Precision())
    metrics = evaluate_model(lambda: load_with_adapters(model_path, *adapters, dtype=dtype, spread=True), model_path,
                             formatted_dir, reward_dir, cfg, dtype, None if adapters else model_path)
    return metrics | ({} if adapters else lm_eval_scores(model_path, cfg, dtype)) | precision_metrics(dtype)


def check_lm_eval(cfg: EvaluationSection) -> None:
    """A recipe naming lm-eval tasks needs lm-eval installed: say so before any work starts."""
    if cfg.lm_eval_tasks and importlib.util.find_spec("lm_eval") is None:
        raise RecipeError(f"evaluation.lm_eval_tasks names {cfg.lm_eval_tasks}, but lm-eval is not installed: "
                          "`pip install lm-eval` (then its tasks need their datasets locally), or set it to []")


def lm_eval_scores(model_dir: Path, cfg: EvaluationSection, dtype: torch.dtype | None = None) -> dict[str, float]:
    """The recipe's lm-eval tasks on a model directory, in `dtype` on the policy's device (None: float32):
    {"lm_eval/<task>/<metric>": value}."""
    if not cfg.lm_eval_tasks:
        return {}
    check_lm_eval(cfg)
    import lm_eval
    model_args = {"pretrained": str(model_dir), "dtype": name(dtype or torch.float32), "device": device_type()}
    results = lm_eval.simple_evaluate(model="hf", model_args=model_args,
                                      tasks=list(cfg.lm_eval_tasks), limit=cfg.lm_eval_limit, batch_size=8)
    return {f"lm_eval/{task}/{metric.split(',')[0]}": round(float(value), 4)
            for task, metrics in results["results"].items() for metric, value in metrics.items()
            if isinstance(value, (int, float)) and "stderr" not in metric}


def comparison_markdown(results: dict[str, dict]) -> str:
    """One row per stage: the numbers a person compares before promoting a model."""
    extra = sorted({k for m in results.values() for k in m if k.startswith("lm_eval/")})
    header = ["model", "perplexity", "accuracy", "similarity", "reward score", *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage in (s for s in EVALUATED if s in results):
        m = results[stage]
        cells = [stage, *(m.get(k) for k in ("perplexity", "accuracy", "similarity", "reward_score", *extra))]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")  # -: not measured
    return "\n".join(lines)


def dpo_gate(sft: dict, dpo: dict, min_gain: float, before: str = "SFT", name: str = "DPO") -> tuple[bool | None, str]:
    """DPO's mean reward score minus that of the model it started from (`before`: SFT, or the base model where the
    recipe runs no sft) against `min_gain`, with the paired interval of that gain over the same questions (the
    verdict is the point estimate's; the interval says how much n = samples can tell). None: not evaluated, DPO or
    the reward model that judges it is off (not a pass)."""
    if dpo.get("configured") is False:
        return None, f"not configured: {dpo['reason']}"
    if dpo["reward_score"] is None or sft["reward_score"] is None:  # nothing to judge DPO by
        return None, f"not configured: rm is not in the recipe's stages, so no reward model scores {name} against {before}"
    gain = dpo["reward_score"] - sft["reward_score"]
    spread = paired_difference(dpo["example_rewards"], sft["example_rewards"])
    moved = [a - b for a, b in zip(dpo["example_rewards"], sft["example_rewards"], strict=True)]
    up, down = sum(d > 0 for d in moved), sum(d < 0 for d in moved)
    tolerance = f" (a tolerance: {name} may score {-min_gain:.4f} below {before})" if min_gain < 0 else ""
    verdict = "" if gain >= min_gain else f", short by {min_gain - gain:.4f}"
    return gain >= min_gain, (f"{name} mean reward score {dpo['reward_score']} vs {before} {sft['reward_score']}: gain "
                              f"{gain:+.4f} ({spread.describe(signed=True)}; {up} answers scored higher, {down} lower, "
                              f"{len(moved) - up - down} the same), required >= {min_gain:+.4f}{tolerance}{verdict}"
                              + (accuracy_change(sft, dpo, before) if name == "PPO" else ""))


def accuracy_change(before: dict, after: dict, label: str) -> str:
    """The exact-match accuracy beside a reward gate's verdict: its change over the same n questions, with its
    paired interval."""
    if "example_scores" not in before or "example_scores" not in after:
        return ""
    spread = paired_difference(after["example_scores"], before["example_scores"])
    return (f"; accuracy {after['accuracy']} vs {label} {before['accuracy']} "
            f"({spread.describe(signed=True)})")


# a comparison made before the grpo stage existed has no grpo evaluation: its gate is not evaluated
NO_GRPO = {"configured": False, "reason": "this comparison holds no grpo evaluation"}


def grpo_gate(sft: dict, grpo: dict, min_accuracy_gain: float, min_reward_gain: float,
              before: str = "SFT") -> tuple[bool | None, str]:
    """GRPO's held-out task accuracy (and, where a reward model exists, its mean reward score) against the model it
    started from, each gain with its paired interval over the same questions; the verdict is the point estimates'.
    None: not evaluated (grpo is off)."""
    if grpo.get("configured") is False:
        return None, f"not configured: {grpo['reason']}"
    gain = grpo["accuracy"] - sft["accuracy"]
    spread = paired_difference(grpo["example_scores"], sft["example_scores"])
    passed = gain >= min_accuracy_gain
    detail = (f"GRPO accuracy {grpo['accuracy']} vs {before} {sft['accuracy']}: gain {gain:+.4f} "
              f"({spread.describe(signed=True)}), required >= {min_accuracy_gain:+.4f}"
              + ("" if passed else f", short by {min_accuracy_gain - gain:.4f}"))
    if grpo.get("reward_score") is not None and sft.get("reward_score") is not None:
        reward = grpo["reward_score"] - sft["reward_score"]
        rewards = paired_difference(grpo["example_rewards"], sft["example_rewards"])
        passed = passed and reward >= min_reward_gain
        detail += (f"; mean reward score {grpo['reward_score']} vs {sft['reward_score']}: gain {reward:+.4f} "
                   f"({rewards.describe(signed=True)}), required >= {min_reward_gain:+.4f}")
    return passed, detail


def quantized_gate(name: str, merged: dict, quantized: dict, max_drop: float, max_ratio: float) -> tuple[bool, str]:
    """A quantized export's accuracy drop below merged (with its paired interval over the same questions) and its
    perplexity ratio, each against its bound."""
    drop = merged["accuracy"] - quantized["accuracy"]
    spread = paired_difference(merged["example_scores"], quantized["example_scores"])
    ratio = quantized["perplexity"] / merged["perplexity"]
    accuracy = (f"accuracy {quantized['accuracy']} vs merged {merged['accuracy']}: dropped {drop:.4f} "
                f"({spread.describe(signed=True)}), allowed {max_drop}"
                + (f" (over by {drop - max_drop:.4f})" if drop > max_drop else ""))
    ppl = (f"perplexity {quantized['perplexity']} = x{ratio:.4f} merged, allowed x{max_ratio}"
           + (f" (over by {ratio - max_ratio:.4f})" if ratio > max_ratio else ""))
    return drop <= max_drop and ratio <= max_ratio, f"{name}: {accuracy}; {ppl}"


def dpo_started_from(results: dict[str, dict]) -> str:
    """The evaluation DPO is judged against: sft's, or base's where the recipe runs no sft."""
    return "sft" if results["sft"].get("configured") is not False else "base"


def gates(results: dict[str, dict], recipe: Recipe) -> dict[str, tuple[bool | None, str]]:
    """The deployment gates, each (passed, which number against which bound and by how much); passed None: not
    evaluated (what the gate judges is off under this recipe)."""
    q = recipe.quantize
    before = dpo_started_from(results)
    return {"dpo_not_worse_than_sft": dpo_gate(results[before], results["dpo"], recipe.dpo.min_reward_gain,
                                               "SFT" if before == "sft" else "the base model"),
            "ppo_not_worse_than_sft": dpo_gate(results[before], results["ppo"], recipe.ppo.min_reward_gain,
                                               "SFT" if before == "sft" else "the base model", "PPO"),
            "grpo_not_worse_than_sft": grpo_gate(results[before], results.get("grpo", NO_GRPO),
                                                 recipe.grpo.min_exact_match_gain, recipe.grpo.min_reward_gain,
                                                 "SFT" if before == "sft" else "the base model"),
            **{f"{name}_within_budget": quantized_gate(name, results["merged"], results[name], q.max_accuracy_drop,
                                                       q.max_ppl_ratio) for name in ("gptq", "awq")}}


def comparison_summary(results: dict[str, dict]) -> str:
    """One line: DPO's reward gain over SFT, and each quantized export's accuracy and perplexity against merged."""
    merged = results["merged"]
    quantized = ", ".join(f"{q} acc {results[q]['accuracy'] - merged['accuracy']:+.2f} ppl "
                          f"x{results[q]['perplexity'] / merged['perplexity']:.3f}" for q in ("gptq", "awq"))
    before = dpo_started_from(results)
    sft, dpo = results[before].get("reward_score"), results["dpo"].get("reward_score")
    gain = "not configured" if sft is None or dpo is None else f"{dpo - sft:+.2f} vs {before}"
    grpo = results.get("grpo", {})
    online = "" if grpo.get("configured") is False or "accuracy" not in grpo else \
        f"grpo accuracy {grpo['accuracy'] - results[before]['accuracy']:+.2f} vs {before}; "
    return f"dpo reward {gain}; {online}{quantized} vs merged"


def write_comparison(out: Path, results: dict[str, dict]) -> dict:
    """comparison.md (the table) and comparison.json (every number) in `out`. The gates are not in the artifact:
    they are checks, evaluated with the recipe's thresholds each time (a new threshold rebuilds nothing)."""
    table = comparison_markdown(results)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(results, indent=2))
    return {"table": table, "results": results}


def evaluate_stage(run: "StageRun") -> dict:
    """eval_<stage>'s entry point: that stage's model measured on the held-out split."""
    from engine.models.load import trained_weights
    stage = run.stage.removeprefix("eval_")
    first, *later = (run.inputs[name] for name in STAGE_MODELS[stage] if name in run.inputs)  # sft may be off
    if stage in ("base", "sft", "dpo", "ppo", "grpo"):
        model_path, adapters = model_dir(first), [trained_weights(path) for path in later]
    else:
        model_path, adapters = first, []
    return measure_model(model_path, adapters, run.inputs["formatted_data"], run.inputs.get("reward_model"),
                          run.recipe.evaluation, Precision.of(run.recipe.model))


def compare_stages(run: "StageRun") -> dict:
    """model_comparison's entry point: every stage's evaluation in one table."""
    results = {name.removeprefix("eval_"): json.loads((path / "manifest.json").read_text())["metrics"]
               for name, path in run.inputs.items()}
    return write_comparison(run.out, results)
