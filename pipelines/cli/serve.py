"""`tuneline serve`: a deployment (or any full model) behind an OpenAI-compatible server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.errors import TunelineError
from pipelines.cli.model_path import model_path, verified_deployment
from pipelines.cli.options import recipe_options
from pipelines.cli.quiet import quiet_libraries
from pipelines.cli.recipe import checked_recipe, tuneline_resource


def register(command) -> None:
    parser = command("serve", "an OpenAI-compatible server: vLLM on a GPU, transformers serve on CPU", serve)
    parser.add_argument("model", help="'deployment' (the recipe's), a model asset (an adapter, sft_adapter, dpo_adapter, "
                                      "ppo_adapter or grpo_adapter, is merged into its base first), a deployment or "
                                      "model directory, or a fingerprint")
    recipe_options(parser)
    parser.add_argument("--host", help="default: serve.host of the recipe (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: serve.port of the recipe")
    parser.add_argument("--backend", choices=["auto", "vllm", "huggingface"], help="default: serve.infer_backend")
    parser.add_argument("--served-model-name", help="for a model directory (a deployment has its own)")
    parser.add_argument("--api-key", help="require `Authorization: Bearer KEY` (wins over the variable the recipe's "
                                          "serve.api_key_env names, TUNELINE_API_KEY; that variable keeps the key "
                                          "out of the process list)")
    parser.add_argument("--insecure-no-key", action="store_true",
                        help="serve on a non-loopback --host without an API key (refused otherwise; also "
                             "serve.insecure_no_key)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the serve config and command lines, start nothing")


def serve(args: argparse.Namespace) -> int:
    """Serve a deployment (or any full model) until Ctrl-C or SIGTERM, then stop the server cleanly."""
    quiet_libraries()
    import signal
    import tempfile
    from engine.serve.server import Server, check_exposure, choose_backend, describe_commands, exposure_warning
    from engine.serve.server import read_serve_config, resolve_api_key
    recipe, overrides = checked_recipe(args)
    api_key = resolve_api_key(recipe.serve, args.api_key)
    with tempfile.TemporaryDirectory(prefix="tuneline-serve-") as scratch:
        directory = serve_directory(args, recipe, overrides, Path(scratch))
        config = read_serve_config(directory)
        backend = choose_backend(args.backend or recipe.serve.infer_backend)
        host, port = args.host or config["host"], args.port or config["port"]
        insecure_no_key = args.insecure_no_key or recipe.serve.insecure_no_key
        check_exposure(host, port, api_key, insecure_no_key, recipe.serve.api_key_env)
        if warning := exposure_warning(host, port, api_key):
            print(f"tuneline: warning: {warning}", file=sys.stderr)
        if args.dry_run:
            print(json.dumps(config, indent=2))
            print("\n".join(describe_commands(config, directory, backend, host, port)))
            print(f"API key: {'required' if api_key else 'none'}")
            return 0
        server = Server(directory, backend, host, port, recipe.serve.startup_timeout_seconds, api_key=api_key,
                        insecure_no_key=insecure_no_key, max_request_bytes=recipe.serve.max_request_bytes,
                        request_timeout=recipe.serve.request_timeout_seconds)
        signal.signal(signal.SIGTERM, interrupt)
        try:  # an interrupt at any moment, even while starting or announcing, goes through the clean stop
            with server:
                print(f"serving {config['served_model_name']} ({backend}) at {server.base_url}; Ctrl-C stops it",
                      flush=True)
                print(f"chat in a browser: {chat_url(server)}", flush=True)
                while server.process.poll() is None:
                    time.sleep(1)
                print(f"tuneline: the server exited with code {server.process.returncode}:\n{server.log_tail()}",
                      file=sys.stderr)
                return 1
        except KeyboardInterrupt:
            print("the server is stopped", file=sys.stderr)
    return 0


def chat_url(server) -> str:
    """The web chat page's address (engine/serve/page.py); a wildcard host is reached at loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(server.host, server.host)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{server.port}/chat"


def interrupt(*_) -> None:
    """SIGTERM stops `tuneline serve` as Ctrl-C does: through the server's clean shutdown."""
    raise KeyboardInterrupt


def serve_directory(args: argparse.Namespace, recipe, overrides: dict, scratch: Path) -> Path:
    """The deployment to serve: `deployment` (the one the recipe implies), a deployment directory, or a model to
    deploy ad hoc."""
    from engine.models.device import Precision
    from engine.serve.server import write_serve_config
    if args.model == "deployment":
        tuneline = tuneline_resource(args.recipe, args.artifact_root, overrides)
        fingerprint = tuneline.plan()["deployment"].fingerprint
        built = tuneline.home().store().lookup("deployment", fingerprint)
        if built is None:
            raise TunelineError(f"the deployment recipe {args.recipe!r} implies ({fingerprint}) is not built under "
                                f"{tuneline.home().root}: run `tuneline run` first (it gates and deploys), or name a "
                                "deployment or model directory")
        return verified_deployment(built.path)
    path = model_to_serve(args, scratch)
    if (path / "serve.json").is_file():
        return verified_deployment(path)
    name = args.served_model_name or f"{recipe.name}-{path.name}"
    write_serve_config(path, name, recipe.serve, scratch, Precision.of(recipe.model))
    return scratch


def model_to_serve(args: argparse.Namespace, scratch: Path) -> Path:
    """The model directory args.model names: a model asset through the recipe's plan, an artifact or a model
    directory; an adapter (SFT, DPO, PPO, GRPO) is first merged into its base in `scratch`, as `tuneline export` writes it."""
    from engine.export.standalone import EXPORTABLE, MERGED, export
    from engine.store.digests import MANIFEST
    from engine.store.home import Home
    from pipelines.cli.built import built_artifact
    home, given = Home(args.artifact_root), Path(args.model)
    artifact = None
    if args.model in EXPORTABLE:
        artifact = built_artifact(args, args.model, EXPORTABLE)
    elif home.artifacts.is_dir() and ((given / MANIFEST).is_file() or not given.is_dir()):
        artifact = home.store().find(args.model)
    if artifact is not None and artifact.asset in MERGED:
        print(f"merging {artifact.asset} {artifact.fingerprint} into its base model to serve it", file=sys.stderr)
        return export(home.store(), home.catalog(), artifact, scratch / artifact.asset)
    return model_path(artifact.fingerprint if artifact is not None else args.model, args.artifact_root)
