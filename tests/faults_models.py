"""Faults of the model checks (see tests/faults.py).

Every model check judges what its stage measured when it was built (a model's answer, its losses, the trainer's
own dataset, the merge's logit difference), so each fault is the measurement that stage records when the thing
the check guards against happens. Damaging the copy's weight files instead would fail files_intact as well: a
changed file after the build is that check's fault, not these.
"""

from __future__ import annotations

from engine.models.sample import SAMPLE_MAX_NEW_TOKENS as LIMIT
from engine.train.dpo import unit_of
from tests.faults import Fault, with_metrics


def sample_of(answer: str, tokens: int, stopped: bool, question: str) -> dict:
    """A recorded sample answer (engine/models/sample.py's sample_answer) under the stages' token limit."""
    return {"question": question, "answer": answer, "tokens": tokens, "stopped_on_eos": stopped,
            "max_new_tokens": LIMIT}


def answered(answer: str, tokens: int, stopped: bool):
    """The stage's sample answer replaced by another answer to the same question."""
    def plant(artifact, recipe):
        question = artifact.metrics["sample"]["question"]
        artifact.metrics["sample"] = sample_of(answer, tokens, stopped, question)
        return artifact, recipe
    return plant


def worse_eval_loss(artifact, recipe):
    """Training that made the held-out loss worse than the model it started from."""
    artifact.metrics["eval_loss_after"] = round(artifact.metrics["eval_loss_before"] + 0.15, 4)
    return artifact, recipe


def dropped(unit: str | None, count: int):
    """A trainer whose own dataset lost `count` of the formatted examples (TRL's filters drop rows silently)."""
    def plant(artifact, recipe):
        name = unit or unit_of(artifact.metrics["pref_loss"])
        artifact.metrics[f"train_{name}"] -= count
        return artifact, recipe
    return plant


def worse_perplexity(artifact, recipe):
    """A quantization that broke the model: its held-out perplexity 2.3 times the merged model's."""
    merged = artifact.metrics["merged_eval_perplexity"]
    artifact.metrics.update(eval_perplexity=round(merged * 2.3, 4), ppl_ratio=2.3)
    return artifact, recipe


def continued_pretraining(artifact, recipe):
    """The tiny recipe runs no pt: a pt_model artifact's metrics as a run on a corpus records them (its files are
    the base model's, as a pt run that merged its LoRA leaves a full model)."""
    artifact.metrics.update(continued_pretraining=True, eval_loss_before=7.4512, eval_loss_after=5.9821,
                            train_texts=180, eval_texts=20, quarantined=0, steps=12, device="cpu", dtype="float32")
    return artifact, recipe


PPO_STEP = {"step": 1, "reward": 0.12, "kl": 0.01, "value_loss": 0.3}
# what a PPO run that is good for the other check records: a finite step, every prompt offered
PPO_RAN = {"reward_curve": [PPO_STEP]}
PPO_OFFERED = {"offered_prompts": 12, "formatted_train_rows": 12}

FAULTS = {
    # a checkpoint whose logits are NaN (a broken conversion): greedy decoding picks the pad token every step
    ("base_model", "loads_and_generates"): Fault(answered("", LIMIT, False),
                                                 rf"^answered '' \({LIMIT} of at most {LIMIT} tokens, no eos\) .*: "
                                                 r"the answer is empty$"),
    ("pt_model", "eval_loss_below_base"): Fault(with_metrics(eval_loss_after=7.6034),
                                                r"held-out loss 7\.6034 vs base 7\.4512", good=continued_pretraining),
    ("sft_adapter", "eval_loss_below_base"): Fault(worse_eval_loss, r"^eval loss [\d.]+ vs base [\d.]+$"),
    ("sft_adapter", "every_row_trained"): Fault(dropped("rows", 7), r"^trained on \d+ of \d+ formatted rows; "
                                                                   r"the trainer dropped 7$"),
    # a reward model at chance: as many held-out pairs won as lost
    ("reward_model", "accuracy_above_bound"): Fault(with_metrics(eval_accuracy=0.5),
                                                    r"^accuracy 0\.5000 \(95% CI [\d.]+\.\.[\d.]+, n=\d+ pairs\), "
                                                    r"needs > 0\.6, short by 0\.1000$"),
    ("reward_model", "every_pair_trained"): Fault(dropped("pairs", 5), r"the trainer dropped 5$"),
    # a DPO that moved the policy toward the rejected answers
    ("dpo_adapter", "reward_margin_above_bound"): Fault(with_metrics(eval_reward_margin=-0.4127),
                                                        r"^mean chosen-minus-rejected reward -0\.4127, needs > 0\.0$"),
    ("dpo_adapter", "every_example_trained"): Fault(dropped(None, 3), r"the trainer dropped 3$"),
    # a GRPO trainer given fewer prompts than the SFT view's train split holds (good: the tiny graph runs no grpo)
    ("grpo_adapter", "every_prompt_offered"): Fault(with_metrics(offered_prompts=1480, formatted_train_rows=1483),
                                                    r"^1480 prompts of 1483 formatted",
                                                    good=with_metrics(offered_prompts=1483, formatted_train_rows=1483)),
    # a PPO trainer given fewer prompts than the SFT view's train split holds (good: the tiny graph runs no ppo)
    ("ppo_adapter", "every_prompt_offered"): Fault(with_metrics(**{**PPO_OFFERED, "offered_prompts": 9}, **PPO_RAN),
                                                   r"^9 prompts of 12 formatted train rows offered to the trainer$",
                                                   good=with_metrics(**PPO_OFFERED, **PPO_RAN)),
    # a PPO step whose value loss diverged (good: the tiny graph runs no ppo, so its curve is planted)
    ("ppo_adapter", "finite_losses"): Fault(with_metrics(reward_curve=[PPO_STEP, {**PPO_STEP, "step": 2,
                                                                                  "value_loss": float("nan")}],
                                                         **PPO_OFFERED),
                                            r"^2 PPO steps; non-finite at steps \[2\]$",
                                            good=with_metrics(**PPO_RAN, **PPO_OFFERED)),
    # merged weights that are not base + adapters (a merge that skipped a layer's LoRA delta)
    ("merged_model", "logits_match_adapters"): Fault(with_metrics(max_logit_diff=0.3125),
                                                     r"^max \|logit difference\| 3\.12e-01, tolerance 0\.001"),
    # a quantization that broke the model: garbage that never stops (GPTQ's answer on SmolLM2-135M-Instruct
    # dequantized from its Q4_1 GGUF, measured while perplexity stayed x1.17 of the unquantized model's)
    ("gptq_model", "reloads_and_generates"): Fault(answered("Theresia-Alec-Alec-Alec-Alec-Alec-Alec-", LIMIT, False),
                                                   rf"\({LIMIT} of at most {LIMIT} tokens, no eos\) .*: it ran to the "
                                                   rf"{LIMIT}-token limit without eos; merged_model answered '.+' "
                                                   r"\(the first 8 characters differ\)$"),
    ("gptq_model", "perplexity_within_bound"): Fault(worse_perplexity, r"= x2\.3 merged, bound x1\.5$"),
    # an export that answers nothing: eos first
    ("awq_model", "reloads_and_generates"): Fault(answered("", 1, True),
                                                  rf"^answered '' \(1 of at most {LIMIT} tokens, stopped on eos\) .*: "
                                                  r"the answer is empty; merged_model answered '.+' \(the first 8 "
                                                  r"characters differ\)$"),
    ("awq_model", "perplexity_within_bound"): Fault(worse_perplexity, r"= x2\.3 merged, bound x1\.5$"),
}
