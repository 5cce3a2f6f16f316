"""Faults of the serving checks: the deployment gates of model_comparison and the deployment's own checks (see
tests/faults.py). The deployment's faults start from its artifact with a successful vLLM load recorded (what a
machine with vLLM records), so that loads_in_vllm, declared only there, is judged on every machine too."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from tests.faults import Fault


def reward_below_sft(stage: str):
    """The stage's answers (dpo, ppo) scored 0.1 below SFT's on every question, beyond its min_reward_gain."""
    def plant(artifact, recipe):
        results = artifact.metrics["results"]
        gain = getattr(recipe, stage).min_reward_gain
        rewards = [round(r - abs(gain) - 0.1, 4) for r in results["sft"]["example_rewards"]]
        results[stage].update(example_rewards=rewards, reward_score=round(statistics.fmean(rewards), 4))
        return artifact, recipe
    return plant


def evaluated_as_sft(stage: str):
    """The good state for an online RL stage's gate (ppo, grpo): the stage on, its evaluation the same as SFT's
    (the tiny graph runs neither)."""
    def good(artifact, recipe):
        results = artifact.metrics["results"]
        results[stage] = json.loads(json.dumps(results["sft"]))
        return artifact, recipe.model_copy(update={"stages": [*recipe.stages, stage]})
    return good


def grpo_worse_than_sft(artifact, recipe):
    """GRPO answering every held-out question wrong."""
    grpo = artifact.metrics["results"]["grpo"]
    grpo.update(example_scores=[0.0] * len(grpo["example_scores"]), accuracy=0.0)
    return artifact, recipe


def gptq_perplexity_over_budget(artifact, recipe):
    """The GPTQ export's perplexity 0.5 over what quantize.max_ppl_ratio allows of merged."""
    results = artifact.metrics["results"]
    results["gptq"]["perplexity"] = round(results["merged"]["perplexity"] * (recipe.quantize.max_ppl_ratio + 0.5), 4)
    return artifact, recipe


def awq_accuracy_over_budget(artifact, recipe):
    """The AWQ export answering every question wrong (accuracy 0), more than quantize.max_accuracy_drop below
    merged."""
    awq = artifact.metrics["results"]["awq"]
    awq.update(accuracy=0.0, example_scores=[0.0] * len(awq["example_scores"]))
    return artifact, recipe


def vllm_served(artifact, recipe):
    """The deployment as a machine with vLLM records it: vLLM served the export and answered as the smoke test."""
    artifact.metrics["vllm_load"] = {**artifact.metrics["smoke"], "backend": "vllm", "error": None}
    return artifact, recipe


def served(record: str, **changes):
    """A fault in the recorded served answer ("smoke": the deployment's server; "vllm_load": vLLM's)."""
    def plant(artifact, recipe):
        artifact.metrics[record].update(changes)
        return artifact, recipe
    return plant


def cut_at_the_limit(record: str):
    """An answer the model did not end: the server stopped it at the token limit (finish_reason "length")."""
    def plant(artifact, recipe):
        answer = artifact.metrics[record]
        answer.update(answer=answer["answer"] + " and so on" * 4, finish_reason="length",
                      completion_tokens=answer["max_tokens"])
        return artifact, recipe
    return plant


def quantization_vllm_refuses(artifact, recipe):
    """The export the deployment serves with a config.json saying a quantization vLLM has no loader for
    (optimum-quanto's, which transformers writes for a QuantoConfig model): a copy of the export, damaged, named by
    the deployment's serve config (the real export is shared by the other faults' copies)."""
    export = Path(artifact.metrics["serve_config"]["model_path"])
    damaged = artifact.path.parent / f"export-{export.name}"
    shutil.copytree(export, damaged)
    config = json.loads((damaged / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "quanto", "weights": "int4", "activations": None}
    (damaged / "config.json").write_text(json.dumps(config))
    artifact.metrics["serve_config"]["model_path"] = str(damaged)
    return artifact, recipe


FAULTS = {
    ("model_comparison", "dpo_not_worse_than_sft"): Fault(
        reward_below_sft("dpo"), r"DPO mean reward score -?[\d.]+ vs SFT -?[\d.]+: gain -0\.\d+ .*required >= [-+][\d.]+"
                            r"( \(a tolerance: DPO may score [\d.]+ below SFT\))?, short by 0\.\d+"),
    ("model_comparison", "ppo_not_worse_than_sft"): Fault(
        reward_below_sft("ppo"), r"^PPO mean reward score -?[\d.]+ vs SFT -?[\d.]+: gain -0\.\d+ .*required >= [-+][\d.]+",
        good=evaluated_as_sft("ppo")),
    ("model_comparison", "grpo_not_worse_than_sft"): Fault(
        grpo_worse_than_sft, r"^GRPO accuracy 0\.0 vs SFT [\d.]+: gain -0\.\d+ .*required >= \+0\.0000, short by",
        good=evaluated_as_sft("grpo")),
    ("model_comparison", "gptq_within_budget"): Fault(
        gptq_perplexity_over_budget,
        r"^gptq: .*; perplexity [\d.]+ = x[\d.]+ merged, allowed x1\.5 \(over by 0\.\d+\)$"),
    ("model_comparison", "awq_within_budget"): Fault(
        awq_accuracy_over_budget, r"^awq: accuracy 0\.0 vs merged [\d.]+: dropped [\d.]+ .*allowed 0\.05 \(over by"),
    ("deployment", "serves_chat_completions"): (
        Fault(served("smoke", answer=""), r"answered '' .*to eval row \S+: an empty answer$", good=vllm_served),
        Fault(cut_at_the_limit("smoke"), r"\((\d+) of at most \1 tokens, finish_reason 'length'\).*: finish_reason "
                                         r"'length' \(expected 'stop': the model's eos\)$", good=vllm_served)),
    ("deployment", "config_compatible_with_vllm"): Fault(
        quantization_vllm_refuses, r"^config\.json read, vLLM's loader would refuse it: quant_method 'quanto' is not "
                                   r"one of vLLM's quantization methods; vLLM itself served it too", good=vllm_served),
    ("deployment", "loads_in_vllm"): (
        Fault(served("vllm_load", answer=None, startup_seconds=None,
                     error="vllm server exited with code 1 before it was healthy: torch.OutOfMemoryError: CUDA out of "
                           "memory"), r"^vllm serve failed: vllm server exited with code 1 .*CUDA out of memory$",
              good=vllm_served),
        Fault(cut_at_the_limit("vllm_load"), r"^vllm serve answered .*: finish_reason 'length'", good=vllm_served)),
}
