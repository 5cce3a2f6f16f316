"""deployment: the serve config for the recipe's chosen export, proven by serving one chat completion."""

from __future__ import annotations

import dagster as dg

from assets.stage_asset import stage_asset
from engine.serve import build_deployment, choose_backend
from engine.device import PRECISION_KEYS, with_precision
from engine.stage import Stage


def reads(recipe):
    """Only the export it serves; the recipe's name only when it names the served model; the precision keys (its
    smoke test loads the model)."""
    keys = ("serve",) if recipe.serve.served_model_name else ("serve", "name")
    return ("model_comparison", f"{recipe.serve.model}_model"), (*keys, *PRECISION_KEYS)


STAGE = Stage("deployment", entry=build_deployment,
              parents=("model_comparison", "merged_model", "gptq_model", "awq_model"),
              keys=("serve", "name", *PRECISION_KEYS), select=reads, outside=with_precision())


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
            "smoke_answer": smoke["answer"], "smoke_startup_seconds": smoke["startup_seconds"]}


def serves_chat_completions(artifact, recipe) -> tuple[bool, str]:
    smoke = artifact.metrics["smoke"]
    return (isinstance(smoke["answer"], str) and smoke["stopped_cleanly"],
            f"{smoke['backend']} answered {smoke['answer']!r} after {smoke['startup_seconds']} s start-up; "
            f"stopped cleanly: {smoke['stopped_cleanly']}")


def vllm_accepts_export(artifact, recipe) -> tuple[bool, str]:
    problems, quantization = artifact.metrics["vllm_problems"], artifact.metrics["serve_config"]["quantization"]
    return not problems, "; ".join(problems) or f"quantization {quantization} loads in vLLM"


deployment = stage_asset(
    STAGE, group="deployment", summary=summary, metadata=metadata,
    description="Runs only when the comparison's gates pass. `tuneline serve deployment` starts the server it describes.",
    checks={"serves_chat_completions": serves_chat_completions, "vllm_accepts_export": vllm_accepts_export})
