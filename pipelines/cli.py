"""The `tuneline` command: materialize the graph through Dagster and report what it made."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

from engine.errors import TunelineError
from engine.runtime.startup import collector_paused


def parse_overrides(pairs: list[str]) -> dict:
    """`--set sft.learning_rate=1e-4` pairs; values are parsed as YAML scalars."""
    import yaml
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise TunelineError(f"--set {pair!r}: expected KEY=VALUE, e.g. sft.learning_rate=1e-4")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise TunelineError(f"--set {pair!r}: the value is not a YAML scalar, list or mapping "
                                f"({getattr(exc, 'problem', None) or exc})") from None
    return overrides


def quiet_libraries() -> None:
    """Progress bars and beta notices from the libraries drown the report a person reads."""
    import warnings
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")  # its "No accelerator available" on every import
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # is_fx_tracing's notice, per export
    progress_bars_off()


def progress_bars_off() -> None:
    """compressed-tensors and llm-compressor pass disable=False to tqdm themselves, so TQDM_DISABLE does not reach
    their bars: every tqdm made in this process is turned off instead (no library option does it)."""
    import tqdm
    if getattr(tqdm.tqdm.__init__, "tuneline_off", False):
        return
    original = tqdm.tqdm.__init__

    def off(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "disable": True})
    off.tuneline_off = True
    tqdm.tqdm.__init__ = off


def quiet_llmcompressor() -> None:
    """llm-compressor binds its log sink to stdout when imported: bind it to stderr, then silence it."""
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):
        import llmcompressor  # noqa: F401
    from loguru import logger
    for package in ("llmcompressor", "compressed_tensors"):
        logger.disable(package)


def dagster_home(root: str) -> Path:
    """The Dagster instance lives under the artifact root unless DAGSTER_HOME says otherwise. Two runs starting at
    once on a new home must not see half a dagster.yaml or create its sqlite schema twice: the config is written
    atomically and the instance is first opened under a lock."""
    import fcntl
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(root) / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".tuneline-init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "dagster.yaml").exists():
            partial = home / f".dagster.yaml.{os.getpid()}"
            shutil.copy(Path(__file__).with_name("dagster.yaml"), partial)
            os.replace(partial, home / "dagster.yaml")
        import dagster as dg
        with dg.DagsterInstance.get():  # creates the storage's schema once, while the other run waits
            pass
    return home


def materialize(args: argparse.Namespace, select: str | None):
    """Materialize `select` (None: everything) with the CLI's recipe, overrides and artifact root."""
    with collector_paused():
        if not args.verbose:
            quiet_libraries()
            quiet_llmcompressor()
        from assets.resource import validated_recipe
        import pipelines.definitions  # noqa: F401  (the asset modules: the rest of the heavy imports)
    overrides = parse_overrides(args.set)
    # a bad recipe, data path or model path stops here, before any work
    validated_recipe(args.recipe, json.dumps(overrides, sort_keys=True))

    import dagster as dg
    from engine.build import remove_stale_temporaries
    from engine.graph import STAGES
    from pipelines.definitions import ASSETS, resources
    root = str(Path(args.artifact_root).resolve())
    Path(root).mkdir(parents=True, exist_ok=True)  # an unusable --artifact-root is said before any work
    if not os.access(root, os.W_OK):
        raise TunelineError(f"--artifact-root {root}: not writable (expected a folder this user can write)")
    dagster_home(root)
    selection = selection_of(select, dg)
    tuneline = resources(args.recipe, root, overrides)["tuneline"]
    check_upstream_built(tuneline, selection, dg)
    remove_stale_temporaries(tuneline.home(), STAGES)
    started = time.time()
    with dg.DagsterInstance.get() as instance:
        reap_dead_runs(instance)
        log_level = "DEBUG" if args.verbose else "CRITICAL"  # a failed step is said in one line after the table
        result = dg.materialize(ASSETS, resources=resources(args.recipe, root, overrides), instance=instance,
                                selection=selection, raise_on_error=False, tags=RUN_TAGS,
                                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
    return result, time.time() - started


# which process runs a `tuneline run`: a later one marks the run failed if that process is gone
RUN_TAGS = {"tuneline/host": socket.gethostname(), "tuneline/pid": str(os.getpid())}


def reap_dead_runs(instance) -> list[str]:
    """Mark failed every run of this machine whose `tuneline` process is gone (kill -9, OOM), freeing whatever
    Dagster concurrency slots it held, and say so. Returns their ids."""
    import dagster as dg
    alive = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(alive),
                                                       tags={"tuneline/host": RUN_TAGS["tuneline/host"]})):
        pid = int(run.tags.get("tuneline/pid", "0"))
        if pid and not process_exists(pid):
            instance.report_run_failed(run, f"its process {pid} is gone (killed?); marked failed by a later run")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            print(f"tuneline: run {run.run_id} was left running by process {pid}, which is gone: marked failed",
                  file=sys.stderr)
            reaped.append(run.run_id)
    return reaped


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(args: argparse.Namespace) -> int:
    result, seconds = materialize(args, args.select)
    print(report(result, seconds))
    return outcome(result)


def outcome(result) -> int:
    """0 when the run succeeded; else one line per failed step on stderr (its own error, not Dagster's
    traceback, which --verbose shows) and 2 when every failure is one a user can fix (recipe, data, a failed
    check), 1 for anything else."""
    if result.success:
        return 0
    user_errors, names = True, user_error_names()
    failed_checks = failed_check_details(result)
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error.cause is not None:  # Dagster wraps the stage's own error
            error = error.cause
        user_errors &= error.cls_name in names
        message = " ".join(line.strip() for line in error.message.splitlines() if line.strip()) or error.cls_name
        message = re.sub(rf"^[\w.]*{error.cls_name}: ", "", message)  # the error's own words, not its module path
        if error.cls_name == "DagsterAssetCheckFailedError" and failed_checks.get(event.step_key):
            message = "; ".join(failed_checks[event.step_key])  # Dagster's message names the checks, not why
        print(f"tuneline: {event.step_key}: {message}", file=sys.stderr)
    return 2 if user_errors else 1


def failed_check_details(result) -> dict[str, list[str]]:
    """Per step, each failed check as "check <name> failed: <its detail>" (the numbers and the bound it missed)."""
    found: dict[str, list[str]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            evaluation = event.event_specific_data
            detail = evaluation.metadata.get("detail")
            found.setdefault(event.step_key, []).append(
                f"check {evaluation.check_name} failed: {detail.value if detail else 'no detail recorded'}")
    return found


def user_error_names() -> set[str]:
    """Class names of the errors a user causes and fixes: tuneline's own, and a blocking check that failed."""
    found, pending = set(), [TunelineError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending += cls.__subclasses__()
    return found | {"DagsterAssetCheckFailedError"}


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate every stage (building what is missing upstream) and, with --compare, print them side by side."""
    result, seconds = materialize(args, "*model_comparison")
    print(report(result, seconds))
    comparison = [e for e in result.get_asset_materialization_events()
                  if e.asset_key.to_user_string() == "model_comparison"]
    if not comparison:
        return outcome(result) or 1
    if args.compare:
        directory = Path(comparison[0].materialization.metadata["path"].value)
        from engine.store.artifacts import MANIFEST
        print("\n" + json.loads((directory / MANIFEST).read_text())["metrics"]["table"] + "\n")
        for check in result.get_asset_check_evaluations():
            if check.asset_key.to_user_string() == "model_comparison":
                print(f"{'pass' if check.passed else 'FAIL'}  {check.check_name}: {check.metadata['detail'].value}")
    return outcome(result)


def check_upstream_built(tuneline, selection, dg) -> None:
    """A selection whose upstream was never built for this recipe stops before any work, saying what to add."""
    if selection is None:
        return
    from engine.build import NotBuilt
    from pipelines.definitions import ASSETS
    selected = {key.to_user_string() for key in dg.AssetSelection.from_coercible(selection).resolve(ASSETS)}
    plan, store = tuneline.plan(), tuneline.home().store()
    for name in selected:
        for parent, fingerprint in plan[name].parents.items():
            if parent not in selected and store.lookup(parent, fingerprint) is None:
                raise NotBuilt(f"--select {','.join(sorted(selected))}: {name} needs {parent} {fingerprint}, which is "
                               f"not built for this recipe; select '*{name}' to build it and everything upstream")


def selection_of(select: str | None, dg):
    """`--select`: comma-separated asset names, or one Dagster selection string such as '*merged_model'."""
    if not select:
        return None
    names = [s.strip() for s in select.split(",") if s.strip()]
    selection = names if len(names) > 1 else names[0]
    try:
        from pipelines.definitions import ASSETS
        dg.AssetSelection.from_coercible(selection).resolve(ASSETS)
    except Exception as exc:
        raise TunelineError(f"--select {select!r}: {exc} (expected asset names separated by commas, or a Dagster "
                            "selection such as '*merged_model' for an asset and everything upstream)") from None
    return selection


def report(result, seconds: float) -> str:
    """A table of every asset: materialized or cached, its artifact path, key metrics, and its checks."""
    checks: dict[str, list[str]] = {}
    for evaluation in result.get_asset_check_evaluations():
        mark = "ok" if evaluation.passed else "FAILED"
        checks.setdefault(evaluation.asset_key.to_user_string(), []).append(f"{evaluation.check_name} {mark}")
    lines = [f"{'asset':<16} {'status':<8} {'summary':<58} checks", "-" * 120]
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        key = event.asset_key.to_user_string()
        status = "cached" if meta["cache_hit"].value else "built"
        lines.append(f"{key:<16} {status:<8} {meta['summary'].value[:58]:<58} {', '.join(checks.get(key, []))}")
        lines.append(f"{'':<16} {'':<8} {meta['path'].value}")
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    failed = [e.step_key for e in result.get_step_failure_events()]
    lines.append("-" * 120)
    lines.append(f"{len(built)} assets in {seconds:.1f}s" + (f"; FAILED steps: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def lineage(args: argparse.Namespace) -> int:
    from engine.store.home import Home
    from engine.store.lineage import lineage as lineage_of
    from engine.store.lineage import render, write_training_rows
    home = Home(args.artifact_root)
    if not home.artifacts.is_dir():
        raise TunelineError(f"no artifacts under {home.root}: run `tuneline run` first, or pass --artifact-root")
    catalog = home.catalog()
    catalog.heal_from(home.store().manifests())  # the catalog is derived: what it lacks, the artifacts tell
    record = lineage_of(catalog, args.artifact)
    print(json.dumps(record, indent=2, default=str) if args.json else render(record))
    if args.rows:
        count = write_training_rows(catalog, args.artifact, Path(args.rows))
        print(f"wrote {count} training rows (source, row_id, raw and clean content hash, view, split) "
              f"to {args.rows}", file=sys.stderr)
    return 0


def model_path(model: str, artifact_root: str) -> Path:
    """A model directory as given, or the artifact a fingerprint names in the catalog."""
    path = Path(model)
    if path.is_dir():
        return path
    from engine.store.home import Home
    from engine.models.load import model_dir
    found = Home(artifact_root).store().find(model)
    if found is None:
        raise TunelineError(f"{model!r} is neither a model directory nor the fingerprint (or a unique prefix of one) "
                            f"of an artifact under {Path(artifact_root).resolve()}")
    return model_dir(found.path)


def chat(args: argparse.Namespace) -> int:
    quiet_libraries()
    from engine.serve.chat import chat_loop, load_chat_model, reply
    from engine.models.device import Precision, check_precision, infer_dtype
    precision = Precision(infer_dtype=args.infer_dtype)
    check_precision(precision)
    model, tokenizer = load_chat_model(model_path(args.model, args.artifact_root), infer_dtype(precision))
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.prompt is not None:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        print(reply(model, tokenizer, messages + [{"role": "user", "content": args.prompt}], **generation))
        return 0
    print("Chat with the model; `clear` starts over, `exit` ends.", file=sys.stderr)
    prompts = (line for line in iter(lambda: input("User: "), None)) if sys.stdin.isatty() else sys.stdin
    try:
        chat_loop(model, tokenizer, prompts, print, system=args.system, **generation)
    except (EOFError, KeyboardInterrupt):
        pass
    return 0


def serve(args: argparse.Namespace) -> int:
    """Serve a deployment (or any full model) until Ctrl-C or SIGTERM, then stop the server cleanly."""
    quiet_libraries()
    import signal
    import tempfile
    from assets.resource import validated_recipe
    from engine.serve.server import Server, choose_backend, describe_commands, exposure_warning, read_serve_config
    from engine.serve.server import resolve_api_key
    overrides = parse_overrides(args.set)
    recipe = validated_recipe(args.recipe, json.dumps(overrides, sort_keys=True))
    api_key = resolve_api_key(recipe.serve, args.api_key)
    with tempfile.TemporaryDirectory(prefix="tuneline-serve-") as scratch:
        directory = serve_directory(args, recipe, overrides, Path(scratch))
        config = read_serve_config(directory)
        backend = choose_backend(args.backend or recipe.serve.infer_backend)
        host, port = args.host or config["host"], args.port or config["port"]
        if warning := exposure_warning(host, port, api_key, recipe.serve.api_key_env):
            print(f"tuneline: warning: {warning}", file=sys.stderr)
        if args.dry_run:
            print(json.dumps(config, indent=2))
            print("\n".join(describe_commands(config, directory, backend, host, port)))
            print(f"API key: {'required' if api_key else 'none'}")
            return 0
        server = Server(directory, backend, host, port, recipe.serve.startup_timeout_seconds, api_key=api_key)
        signal.signal(signal.SIGTERM, interrupt)
        try:  # an interrupt at any moment, even while starting or announcing, goes through the clean stop
            with server:
                print(f"serving {config['served_model_name']} ({backend}) at {server.base_url}; Ctrl-C stops it",
                      flush=True)
                while server.process.poll() is None:
                    time.sleep(1)
                print(f"tuneline: the server exited with code {server.process.returncode}:\n{server.log_tail()}",
                      file=sys.stderr)
                return 1
        except KeyboardInterrupt:
            print("the server is stopped", file=sys.stderr)
    return 0


def interrupt(*_) -> None:
    """SIGTERM stops `tuneline serve` as Ctrl-C does: through the server's clean shutdown."""
    raise KeyboardInterrupt


def serve_directory(args: argparse.Namespace, recipe, overrides: dict, scratch: Path) -> Path:
    """The deployment to serve: `deployment` (the one the recipe implies), a deployment directory, or a model to
    deploy ad hoc."""
    from engine.models.device import Precision
    from engine.serve.server import write_serve_config
    if args.model == "deployment":
        from pipelines.definitions import resources
        tuneline = resources(args.recipe, str(Path(args.artifact_root).resolve()), overrides)["tuneline"]
        fingerprint = tuneline.plan()["deployment"].fingerprint
        built = tuneline.home().store().lookup("deployment", fingerprint)
        if built is None:
            raise TunelineError(f"the deployment recipe {args.recipe!r} implies ({fingerprint}) is not built under "
                                f"{tuneline.home().root}: run `tuneline run` first (it gates and deploys), or name a "
                                "deployment or model directory")
        return built.path
    path = model_path(args.model, args.artifact_root)
    if (path / "serve.json").is_file():
        return path
    name = args.served_model_name or f"{recipe.name}-{path.name}"
    write_serve_config(path, name, recipe.serve, scratch, Precision.of(recipe.model))
    return scratch


def train(args: argparse.Namespace) -> int:
    from pipelines.train_process import main as train_main, pipes_reporter
    return train_main([args.stage, "--spec", args.spec, *(["--verbose"] if args.verbose else [])], pipes_reporter)


def plan(args: argparse.Namespace) -> int:
    """Every stage's fingerprint under the recipe, before any work, and whether its artifact is built."""
    quiet_libraries()
    quiet_llmcompressor()
    from assets.resource import validated_recipe
    from pipelines.definitions import resources
    overrides = parse_overrides(args.set)
    validated_recipe(args.recipe, json.dumps(overrides, sort_keys=True))
    tuneline = resources(args.recipe, str(Path(args.artifact_root).resolve()), overrides)["tuneline"]
    planned, store = tuneline.plan(), tuneline.home().store()
    rows = [{"stage": name, "fingerprint": p.fingerprint, "built": store.lookup(name, p.fingerprint) is not None,
             "parents": p.parents, "keys": list(p.keys), "code_version": p.code, "not_configured": p.off}
            for name, p in planned.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'stage':<17} {'fingerprint':<17} {'built':<6} reads")
    for row in rows:
        reads = ", ".join([*row["parents"], *row["keys"]]) or "-"
        reads += f" (not configured: {row['not_configured']})" if row["not_configured"] else ""
        print(f"{row['stage']:<17} {row['fingerprint']:<17} {'yes' if row['built'] else 'no':<6} {reads}")
    return 0


def import_llamafactory(args: argparse.Namespace) -> int:
    from engine.importers.llamafactory import import_configs
    names = [n.strip() for n in (args.eval_dataset or "").split(",") if n.strip()]
    text, unmapped = import_configs([Path(p) for p in args.configs], names)
    for line in unmapped:
        print(f"tuneline: warning: {line}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}; run it with `tuneline run --recipe {args.output}`", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def recipe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny", help="a recipe name in pipelines/recipes/ or a YAML path")
    parser.add_argument("--artifact-root", default=os.environ.get("TUNELINE_HOME", ".tuneline"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneline", description="Declarative fine-tuning pipeline on Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true", help="show tracebacks, and Dagster's step-by-step log")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[verbose], help=summary)
    run_p = command("run", "materialize the asset graph (all of it, or --select)")
    recipe_options(run_p)
    run_p.add_argument("--select", help="assets to materialize: 'raw_data,clean_data' or a Dagster selection such "
                                        "as '*merged_model' (an asset and everything upstream)")
    eval_p = command("eval", "evaluate base, SFT, DPO, merged, GPTQ and AWQ models and check the gates")
    recipe_options(eval_p)
    eval_p.add_argument("--compare", action="store_true", help="print the comparison table and each gate")
    serve_p = command("serve", "an OpenAI-compatible server: vLLM on a GPU, transformers serve on CPU")
    serve_p.add_argument("model", help="'deployment' (the latest), a deployment or model directory, or a fingerprint")
    recipe_options(serve_p)
    serve_p.add_argument("--host", help="default: serve.host of the recipe (127.0.0.1)")
    serve_p.add_argument("--port", type=int, help="default: serve.port of the recipe")
    serve_p.add_argument("--backend", choices=["auto", "vllm", "huggingface"], help="default: serve.infer_backend")
    serve_p.add_argument("--served-model-name", help="for a model directory (a deployment has its own)")
    serve_p.add_argument("--api-key", help="require `Authorization: Bearer KEY` (wins over the variable the recipe's "
                                           "serve.api_key_env names, TUNELINE_API_KEY; that variable keeps the key "
                                           "out of the process list)")
    serve_p.add_argument("--dry-run", action="store_true",
                         help="print the serve config and command lines, start nothing")
    train_p = command("train", "run one training stage from its spec.json, in this process (what the "
                               "orchestrator launches, alone or under torchrun / accelerate launch)")
    train_p.add_argument("stage", help="the stage the spec is for")
    train_p.add_argument("--spec", required=True, help="the spec.json the orchestrator wrote")
    plan_p = command("plan", "print the fingerprint of every stage the recipe implies, before any work")
    recipe_options(plan_p)
    plan_p.add_argument("--json", action="store_true", help="print the plan as JSON")
    import_p = command("import-llamafactory", "turn LLaMA-Factory training YAMLs into one tuneline recipe")
    import_p.add_argument("configs", nargs="+", help="LLaMA-Factory YAML files, one per stage (pt, sft, rm, dpo, kto) or export")
    import_p.add_argument("-o", "--output", help="write the recipe here (default: print it)")
    import_p.add_argument("--eval-dataset", metavar="NAME[,NAME]",
                          help="chat datasets (dataset_info.json names) to evaluate every export on, for configs that "
                               "name none (pre-training or an export alone)")
    lineage_p = command("lineage", "what made an artifact: ancestors, checks, data rows per source")
    lineage_p.add_argument("artifact", help="an artifact directory or fingerprint (a unique prefix is enough)")
    lineage_p.add_argument("--artifact-root", default=os.environ.get("TUNELINE_HOME", ".tuneline"))
    lineage_p.add_argument("--json", action="store_true", help="print the record as JSON")
    lineage_p.add_argument("--rows", metavar="FILE", help="write the training rows' ids and hashes to FILE (CSV)")
    chat_p = command("chat", "chat with a model through its chat template (like llamafactory-cli chat)")
    chat_p.add_argument("model", help="a model directory, or the fingerprint of a merged, quantized or base model")
    chat_p.add_argument("--prompt", help="answer this one prompt and exit (for scripts)")
    chat_p.add_argument("--system", help="a system message")
    chat_p.add_argument("--max-new-tokens", type=int, default=128)
    chat_p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    chat_p.add_argument("--infer-dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="LLaMA-Factory's infer_dtype; auto: float32 on a CPU, bf16 (else fp16) on a GPU")
    chat_p.add_argument("--artifact-root", default=os.environ.get("TUNELINE_HOME", ".tuneline"))
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_libraries()  # before anything imports llm-compressor or transformers (training children inherit it)
    try:
        commands = {"run": run, "eval": evaluate, "serve": serve, "import-llamafactory": import_llamafactory,
                    "lineage": lineage, "chat": chat, "plan": plan, "train": train}
        return commands[args.command](args)
    except TunelineError as exc:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"tuneline: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave that cannot be read or written
        if getattr(args, "verbose", False):
            traceback.print_exc()
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
        print(f"tuneline: {where}: {exc.strerror or exc} (check the path and its permissions)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
