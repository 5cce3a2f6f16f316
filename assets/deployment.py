"""deployment: the serve config for the recipe's chosen export, proven by serving one chat completion."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from assets.stage_asset import stage_asset
from engine.graph import DEPLOYMENT
from engine.models.backends import vllm_usable
from engine.serve.server import choose_backend
from engine.serve.vllm_compat import vllm_config_problems


def summary(artifact, recipe) -> str:
    config = artifact.metrics["serve_config"]
    return (f"{config['served_model_name']} ({recipe.serve.model}) on {choose_backend(recipe.serve.infer_backend)} at "
            f"http://{config['host']}:{config['port']}/v1")


def metadata(artifact, recipe) -> dict:
    m = artifact.metrics
    config, smoke = m["serve_config"], m["smoke"]
    return {"served_model_name": config["served_model_name"], "model_path": config["model_path"],
            "quantization": str(config["quantization"]), "max_model_len": config["max_model_len"],
            "backend_now": choose_backend(recipe.serve.infer_backend), "device": m["device"], "dtype": m["dtype"],
            "vllm_command": dg.MetadataValue.md(f"```\n{m['vllm_command']}\n```"),
            "smoke_row_id": smoke["row_id"], "smoke_question": smoke["messages"][-1]["content"],
            "smoke_answer": smoke["answer"], "smoke_finish_reason": smoke["finish_reason"],
            "smoke_startup_seconds": smoke["startup_seconds"]}


def answer_verdict(served: dict, requires_eos: bool) -> tuple[bool, list[str]]:
    """(passed, remarks) of a served answer: it fails empty, or not ended by the model's eos within the token limit
    (the server's finish_reason "stop", and no more tokens than were allowed); a cut answer is accepted, and said to
    be, when the recipe does not require eos (serve.smoke_requires_eos)."""
    problems = [] if (served["answer"] or "").strip() else ["an empty answer"]
    if served["completion_tokens"] is None or served["completion_tokens"] > served["max_tokens"]:
        problems.append(f"{served['completion_tokens']} tokens, expected at most {served['max_tokens']}")
    if served["finish_reason"] == "stop":
        return not problems, problems
    cut = f"finish_reason {served['finish_reason']!r} (expected 'stop': the model's eos)"
    if requires_eos:
        return False, [*problems, cut]
    return not problems, [*problems, f"{cut}: accepted, serve.smoke_requires_eos is false"]


def served_line(served: dict) -> str:
    return (f"answered {served['answer']!r} ({served['completion_tokens']} of at most {served['max_tokens']} tokens, "
            f"finish_reason {served['finish_reason']!r}) after {served['startup_seconds']} s start-up")


def serves_chat_completions(artifact, recipe) -> tuple[bool, str]:
    """The deployment's server answered the smoke question through its door with a non-empty answer the model
    ended itself within the token limit, and stopped when asked."""
    smoke = artifact.metrics["smoke"]
    passed, remarks = answer_verdict(smoke, recipe.serve.smoke_requires_eos)
    if not smoke["stopped_cleanly"]:
        passed, remarks = False, [*remarks, "the server had to be killed"]
    return passed, (f"{smoke['backend']} {served_line(smoke)} to eval row {smoke['row_id']}"
                    + (f": {'; '.join(remarks)}" if remarks else "; stopped cleanly"))


def config_compatible_with_vllm(artifact, recipe) -> tuple[bool, str]:
    """The config.json of the export the recorded `vllm serve` command loads (serve.json's model_path) read
    against the rules of vLLM's loader (engine/serve/vllm_compat.py): a reading, not a run of vLLM."""
    model = Path(artifact.metrics["serve_config"]["model_path"])
    problems = vllm_config_problems(model)
    quant = json.loads((model / "config.json").read_text()).get("quantization_config") or {}
    quantization = quant.get("quant_method", "none (unquantized)")
    ran = ("vLLM itself served it too (loads_in_vllm)" if artifact.metrics["vllm_load"] is not None
           else "vLLM was not run here (it needs its package and a CUDA GPU)")
    if problems:
        return False, f"config.json read, vLLM's loader would refuse it: {'; '.join(problems)}; {ran}"
    return True, f"config.json read: quantization {quantization} is one vLLM's loader accepts; {ran}"


def loads_in_vllm(artifact, recipe) -> tuple[bool, str]:
    """vLLM served the export with the recorded command line and answered the smoke question as
    serves_chat_completions requires (declared only where vLLM can run)."""
    load = artifact.metrics["vllm_load"]
    if load is None:
        return False, "vLLM was not run for this artifact (built where vLLM cannot run)"
    if load["error"]:
        return False, f"vllm serve failed: {load['error']}"
    passed, remarks = answer_verdict(load, recipe.serve.smoke_requires_eos)
    return passed, f"vllm serve {served_line(load)}" + (f": {'; '.join(remarks)}" if remarks else "")


VLLM_CHECKS = {"loads_in_vllm": loads_in_vllm}  # a check of vLLM, declared only where it runs
CHECKS = {"serves_chat_completions": serves_chat_completions,
          "config_compatible_with_vllm": config_compatible_with_vllm, **(VLLM_CHECKS if vllm_usable() else {})}

deployment = stage_asset(
    DEPLOYMENT, group="deployment", summary=summary, metadata=metadata,
    description="Runs only when the comparison's gates pass. `tuneline serve deployment` starts the server it describes.",
    checks=CHECKS, elsewhere={} if vllm_usable() else VLLM_CHECKS)
