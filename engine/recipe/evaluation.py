"""The `evaluation` section: what every eval_* stage measures, and with which backend and scorer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.recipe.fields import Int, Section


class EvaluationSection(Section):
    """Held-out perplexity (whole eval split), task accuracy by generation, the reward model's mean score."""
    max_samples: Int = Field(128, ge=1, description="eval rows answered by greedy generation and scored (perplexity "
                                                    "covers the whole eval split); not LLaMA-Factory's max_samples, "
                                                    "which is data.max_samples here")
    max_new_tokens: Int = Field(32, ge=1, description="the most tokens generated per answer. LLaMA-Factory's "
                                                      "generation default: 1024")
    infer_backend: Literal["auto", "vllm", "huggingface"] = Field(
        "auto", description="LLaMA-Factory's key: what generates the greedy answers; auto: vLLM when importable with "
        "a CUDA GPU, else transformers (huggingface); vllm where it cannot run stops the recipe before any work. "
        "LLaMA-Factory's default: huggingface")
    tensor_parallel_size: Int | None = Field(None, ge=1, description="the GPUs vLLM splits the evaluated model over "
                                                                    "(vLLM's tensor_parallel_size); unset: every "
                                                                    "visible GPU (CUDA_VISIBLE_DEVICES). "
                                                                    "LLaMA-Factory passes its visible GPU count too")
    scorer: str = Field("exact_match", description='how an answer is scored against the reference: exact_match, '
                                                   'char_similarity, or "module:function" taking (prediction, '
                                                   'reference) and returning a score in [0, 1]')
    lm_eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks run on every full "
                                                                       "model (lm-eval must be installed); empty: "
                                                                       "none")
    lm_eval_limit: Int | None = Field(None, ge=1, description="examples per lm-eval task; unset: all")
