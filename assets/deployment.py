"""deployment: the serve config for the recipe's chosen export, proven by serving one chat completion."""

from __future__ import annotations

import dagster as dg

from assets.stage_asset import stage_asset
from engine.graph import DEPLOYMENT
from engine.models.backends import vllm_usable
from engine.serve.server import choose_backend


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
            "smoke_answer": smoke["answer"], "smoke_startup_seconds": smoke["startup_seconds"]}


def serves_chat_completions(artifact, recipe) -> tuple[bool, str]:
    smoke = artifact.metrics["smoke"]
    return (isinstance(smoke["answer"], str) and smoke["stopped_cleanly"],
            f"{smoke['backend']} answered {smoke['answer']!r} to eval row {smoke['row_id']} after "
            f"{smoke['startup_seconds']} s start-up; stopped cleanly: {smoke['stopped_cleanly']}")


def config_compatible_with_vllm(artifact, recipe) -> tuple[bool, str]:
    """The export's config.json against the quantization formats vLLM loads: a reading, not a run of vLLM."""
    problems = artifact.metrics["vllm_config_problems"]
    quantization = artifact.metrics["serve_config"]["quantization"] or "none (unquantized)"
    ran = ("vLLM itself served it too (loads_in_vllm)" if artifact.metrics["vllm_load"] is not None
           else "vLLM was not run here (it needs its package and a CUDA GPU)")
    if problems:
        return False, f"config.json: {'; '.join(problems)}; {ran}"
    return True, f"config.json quantization {quantization} is a format vLLM loads; {ran}"


def loads_in_vllm(artifact, recipe) -> tuple[bool, str]:
    """vLLM served the export with the recorded command line and answered the smoke question (declared only where
    vLLM can run)."""
    load = artifact.metrics["vllm_load"]
    if load is None:
        return False, "vLLM was not run for this artifact (built where vLLM cannot run)"
    if load["error"]:
        return False, f"vllm serve failed: {load['error']}"
    return bool(load["answer"]), (f"vllm serve answered {load['answer']!r} after {load['startup_seconds']} s "
                                  "start-up" + ("" if load["answer"] else ": an empty answer"))


CHECKS = {"serves_chat_completions": serves_chat_completions,
          "config_compatible_with_vllm": config_compatible_with_vllm,
          **({"loads_in_vllm": loads_in_vllm} if vllm_usable() else {})}  # a check of vLLM only where it runs

deployment = stage_asset(
    DEPLOYMENT, group="deployment", summary=summary, metadata=metadata,
    description="Runs only when the comparison's gates pass. `tuneline serve deployment` starts the server it describes.",
    checks=CHECKS)
