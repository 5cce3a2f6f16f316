"""The `tuneline` command: one module per command (each registers its own subparser; a new command is a new module
and its name in COMMANDS), wired here with the option every command shares and the one-line error a user reads."""

from __future__ import annotations

import argparse
import sys
import traceback

from engine.runtime import progress
from engine.errors import TunelineError
from pipelines.cli import chat, data, evaluate, export, import_llamafactory, lineage, plan, run, serve, train, verify
from pipelines.cli.quiet import quiet_libraries
from pipelines.cli.stopped import say_stopped, stop_on_sigterm

COMMANDS = (run, evaluate, serve, train, plan, import_llamafactory, lineage, verify, chat, data, export)  # the order --help lists them in


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneline", description="Declarative fine-tuning pipeline on Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true", help="show tracebacks, and Dagster's step-by-step log")

    def command(name: str, summary: str, handler) -> argparse.ArgumentParser:
        """What each command module's `register` calls: its subparser, with --verbose and the function it runs."""
        subparser = sub.add_parser(name, parents=[verbose], help=summary)
        subparser.set_defaults(handler=handler)
        return subparser
    for module in COMMANDS:
        module.register(command)
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_libraries()  # before anything imports llm-compressor or transformers (training children inherit it)
    stop_on_sigterm()
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside a step (a step's stop is in its run's result)
        if getattr(args, "verbose", False):
            traceback.print_exc()
        return say_stopped(progress.current())
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
