"""deployment: the serve config for the recipe's chosen export, proven by serving one chat completion."""

from __future__ import annotations

import dagster as dg

import engine.export.vllm_compat
import engine.serve
from assets.common import blocking_checks, emit
from engine.artifacts import Artifact, code_version
from engine.export.vllm_compat import vllm_config_problems
from engine.serve import choose_backend, server_command, smoke_serve, write_serve_config
from pipelines.resources import Tuneline

CODE = code_version(engine.serve, engine.export.vllm_compat)
SMOKE_PROMPT = "Add the two numbers.\n120 + 345"


def deploy_to(out, export: Artifact, served_name: str, recipe) -> dict:
    config = write_serve_config(export.path, served_name, recipe.serve, out)
    vllm_line = server_command(config, out, "vllm", config["host"], config["port"])
    smoke = smoke_serve(out, recipe.serve.infer_backend, SMOKE_PROMPT, recipe.serve.startup_timeout_seconds)
    return {"serve_config": config, "vllm_command": " ".join(vllm_line), "smoke": smoke,
            "vllm_problems": vllm_config_problems(export.path)}


@dg.asset(group_name="deployment", code_version=CODE,
          check_specs=blocking_checks("deployment", "serves_chat_completions", "vllm_accepts_export"))
def deployment(tuneline: Tuneline, model_comparison: Artifact, merged_model: Artifact, gptq_model: Artifact,
               awq_model: Artifact):
    """Runs only when the comparison's gates pass. `tuneline serve deployment` starts the server it describes."""
    recipe = tuneline.recipe()
    export = {"merged": merged_model, "gptq": gptq_model, "awq": awq_model}[recipe.serve.model]
    served_name = recipe.serve.served_model_name or f"{recipe.name}-{recipe.serve.model}"
    config = {"serve": recipe.serve.model_dump(), "served_model_name": served_name}
    artifact = tuneline.build("deployment", [model_comparison, export], config, CODE,
                              lambda out: deploy_to(out, export, served_name, recipe))
    m = artifact.metrics
    smoke, problems = m["smoke"], m["vllm_problems"]
    backend = choose_backend(recipe.serve.infer_backend)
    yield from emit(tuneline, artifact, f"{served_name} ({recipe.serve.model}) on {backend} at "
                    f"http://{recipe.serve.host}:{recipe.serve.port}/v1",
                    {"served_model_name": served_name, "model_path": m["serve_config"]["model_path"],
                     "quantization": str(m["serve_config"]["quantization"]),
                     "max_model_len": m["serve_config"]["max_model_len"],
                     "backend_now": backend, "vllm_command": dg.MetadataValue.md(f"```\n{m['vllm_command']}\n```"),
                     "smoke_answer": smoke["answer"], "smoke_startup_seconds": smoke["startup_seconds"]},
                    {"serves_chat_completions": (isinstance(smoke["answer"], str) and smoke["stopped_cleanly"],
                                                 f"{smoke['backend']} answered {smoke['answer']!r} after "
                                                 f"{smoke['startup_seconds']} s start-up; stopped cleanly: "
                                                 f"{smoke['stopped_cleanly']}"),
                     "vllm_accepts_export": (not problems, "; ".join(problems) or
                                             f"quantization {m['serve_config']['quantization']} loads in vLLM")})
