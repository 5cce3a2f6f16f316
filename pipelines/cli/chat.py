"""`tuneline chat`: chat with a model through its chat template (like llamafactory-cli chat)."""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.model_path import model_path
from pipelines.cli.options import recipe_options
from pipelines.cli.quiet import quiet_libraries


def register(command) -> None:
    parser = command("chat", "chat with a model through its chat template (like llamafactory-cli chat)", chat)
    parser.add_argument("model", help="a model directory, or the fingerprint of a merged, quantized or base model; "
                                      "with --web also 'deployment' or a model asset (as `tuneline serve` takes)")
    parser.add_argument("--web", action="store_true",
                        help="chat in a browser instead: starts `tuneline serve` for the model and prints the page's "
                             "address (streaming, system prompt, temperature, top-p, max tokens)")
    parser.add_argument("--port", type=int, help="with --web: default serve.port of the recipe")
    parser.add_argument("--prompt", help="answer this one prompt and exit (for scripts)")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--infer-dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="LLaMA-Factory's infer_dtype; auto: float32 on a CPU, bf16 (else fp16) on a GPU")
    recipe_options(parser)  # --recipe and --set: the serve settings --web uses; --artifact-root


def chat(args: argparse.Namespace) -> int:
    quiet_libraries()
    if args.web:
        from pipelines.cli.serve import serve
        return serve(argparse.Namespace(**vars(args), host=None, backend=None, served_model_name=None, api_key=None,
                                        insecure_no_key=False, dry_run=False))
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
