"""Serving one export behind an OpenAI-compatible API: `vllm serve` when vLLM is importable and a GPU is
present, otherwise `transformers serve` on the CPU. Bound to 127.0.0.1 unless the recipe says otherwise.

The serve config (serve.json) names everything a server needs: model path, served model name, chat
template, max model length, quantization format, and the command line of each backend.

Either backend listens only on a Unix socket in a private (0700) directory; the one door is the proxy
(engine/serve/proxy.py) on the public host:port, which refuses paths that could mean another route, forwards only
the allow-listed routes, checks the API key and bounds each request's size and arrival time. Binding beyond
loopback without a key is refused unless the operator says so (serve.insecure_no_key, --insecure-no-key).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from engine.models.backends import choose_backend, vllm_usable
from engine.models.device import Precision, device_type, infer_dtype, name, tensor_parallel_size
from engine.errors import ServeError
from engine.models.load import load_tokenizer
from engine.runtime.processes import stop_process_group
from engine.serve.proxy import AuthProxy

if TYPE_CHECKING:
    from engine.recipe import ServeSection
    from engine.stage import StageRun

CONFIG_FILE = "serve.json"
BACKEND_SOCKET = "backend.sock"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # ServeSection's defaults, for a Server built without a recipe
DEFAULT_REQUEST_TIMEOUT = 30


def write_serve_config(model_dir: Path, served_model_name: str, cfg: ServeSection, out: Path,
                       precision: Precision | None = None) -> dict:
    """serve.json and chat_template.jinja in `out`, plus `out/<served_model_name>`, a link to the model:
    transformers serve answers to the name it loaded, so the link gives the server the served name. The dtype is
    the policy's inference dtype on this machine (engine/models/device.py), which both servers get as --dtype."""
    model_dir = model_dir.resolve()
    if not (model_dir / "config.json").is_file():
        raise ServeError(f"{model_dir} is not a model directory (expected config.json): "
                         "serve a merged or quantized export")
    template = out / "chat_template.jinja"
    template.write_text(load_tokenizer(model_dir).chat_template)
    (out / served_model_name).symlink_to(model_dir, target_is_directory=True)
    model_config = json.loads((model_dir / "config.json").read_text())
    quantization = (model_config.get("quantization_config") or {}).get("quant_method")  # as vLLM reads it
    config = {"model_path": str(model_dir), "served_model_name": served_model_name, "chat_template": template.name,
              "max_model_len": cfg.max_model_len or model_config.get("max_position_embeddings"),
              "tensor_parallel_size": cfg.tensor_parallel_size,  # None: every GPU visible where it is served
              "quantization": quantization, "host": cfg.host,
              "port": cfg.port, "infer_backend": cfg.infer_backend,
              "dtype": name(infer_dtype(precision or Precision())), "device": device_type()}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return config


def read_serve_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ServeError(f"{directory} has no {CONFIG_FILE}: expected a deployment artifact")
    return json.loads(path.read_text())


def vllm_command(config: dict, directory: Path, host: str, port: int, uds: str | None = None) -> list[str]:
    """`vllm serve` on `host`:`port` (the line an operator may run by hand), or on the Unix socket `uds` (vLLM's
    --uds, which ignores host and port: how Server runs it, behind the proxy)."""
    where = ["--uds", uds] if uds is not None else ["--host", host, "--port", str(port)]
    command = ["vllm", "serve", config["model_path"], "--served-model-name", config["served_model_name"],
               *where, "--max-model-len", str(config["max_model_len"]),
               "--chat-template", str(directory / config["chat_template"]), "--generation-config", "auto",
               "--dtype", config.get("dtype", "auto"),
               "--tensor-parallel-size", str(tensor_parallel_size(config.get("tensor_parallel_size")))]
    return command + (["--quantization", config["quantization"]] if config["quantization"] else [])


def resolve_api_key(cfg: ServeSection, flag: str | None = None, environ: dict | None = None) -> str | None:
    """The server's API key: `--api-key` wins over the variable the recipe's serve.api_key_env names.
    None: no key, and anyone who reaches the port may use the model."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        if not flag.strip():
            raise ServeError("--api-key is empty: pass a key, or leave the flag out")
        return flag
    if cfg.api_key_env is None or cfg.api_key_env not in environ:
        return None
    if not environ[cfg.api_key_env].strip():
        raise ServeError(f"serve.api_key_env: {cfg.api_key_env} is set but empty; export a key in it, or unset it "
                         "to serve without one")
    return environ[cfg.api_key_env]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def exposure_warning(host: str, port: int, api_key: str | None) -> str | None:
    """What serving on a non-loopback address risks (None on loopback)."""
    if is_loopback(host):
        return None
    if api_key is None:
        return (f"serving on {host}:{port} without an API key (--insecure-no-key): anyone who can reach this port "
                "on the network can use the model")
    return (f"serving on {host}:{port} over plain HTTP: the API key and every conversation cross the network "
            "unencrypted; put a TLS-terminating proxy in front of it")


def check_exposure(host: str, port: int, api_key: str | None, insecure_no_key: bool,
                   key_env: str | None = "TUNELINE_API_KEY") -> None:
    """A ServeError for a non-loopback address without an API key, unless the operator chose it (insecure_no_key)."""
    if api_key is None and not insecure_no_key and not is_loopback(host):
        how = f"export {key_env} (serve.api_key_env) or pass --api-key" if key_env else "pass --api-key"
        raise ServeError(f"serving on {host}:{port} without an API key is refused: anyone who can reach the port "
                         f"could use the model; {how}, bind serve.host to 127.0.0.1, or accept it with "
                         "--insecure-no-key (serve.insecure_no_key: true)")


def transformers_command(config: dict, host: str, port: int) -> list[str]:
    """`transformers serve` on `host`:`port`, as an operator would run it by hand."""
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", *transformers_options(config),
            "--host", host, "--port", str(port)]


def transformers_options(config: dict) -> list[str]:
    return [config["served_model_name"], "--device", device_type(), "--dtype", config.get("dtype", "auto"),
            "--log-level", "warning"]


def server_command(config: dict, directory: Path, backend: str, host: str, port: int) -> list[str]:
    """The backend's command line on `host`:`port`, as run by hand (recorded by the deployment). Server runs neither
    on a port: see backend_command."""
    if backend == "vllm":
        return vllm_command(config, directory, host, port)
    return transformers_command(config, host, port)


def backend_command(config: dict, directory: Path, backend: str, socket_path: str) -> list[str]:
    """What Server runs: the backend listening only on `socket_path` (a Unix socket in a private directory)."""
    if backend == "vllm":
        return vllm_command(config, directory, "", 0, uds=socket_path)
    from engine.serve import backend as on_socket  # imported, not only named: the deployment's code version covers it
    # transformers serve has no socket option: engine/serve/backend.py gives it one
    return [sys.executable, "-m", on_socket.__name__, socket_path, *transformers_options(config)]


def describe_commands(config: dict, directory: Path, chosen: str, host: str, port: int) -> list[str]:
    """One line per backend: what Server would run for `host`:`port` (for `tuneline serve --dry-run`)."""
    lines = []
    for backend in ("vllm", "huggingface"):
        mark = " (chosen)" if backend == chosen else ""
        command = " ".join(backend_command(config, directory, backend, "<private dir>/" + BACKEND_SOCKET))
        lines.append(f"{backend}{mark}: tuneline's proxy on {host}:{port} -> {command}")
    return lines


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Server:
    """A model server as a child process on a Unix socket in a private directory, behind the proxy on
    `host`:`port`: started, health-checked before it counts as ready, stopped cleanly.

    `api_key`: every request but /health must carry `Authorization: Bearer <api_key>` (None: no key, refused
    beyond loopback unless `insecure_no_key`). `max_request_bytes`: a larger body gets 413. `request_timeout`:
    seconds a request may take to arrive whole (headers and body)."""

    def __init__(self, directory: Path, backend: str = "auto", host: str | None = None, port: int | None = None,
                 timeout: float = 300, api_key: str | None = None, insecure_no_key: bool = False,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT):
        self.directory = directory.resolve()
        self.config = read_serve_config(self.directory)
        self.backend = choose_backend(backend)
        self.host = host or self.config["host"]
        self.port = self.config["port"] if port is None else port
        check_exposure(self.host, self.port, api_key, insecure_no_key)
        self.timeout = timeout
        self.api_key = api_key
        self.max_request_bytes, self.request_timeout = max_request_bytes, request_timeout
        self.private_dir: Path | None = None  # made at start: the backend's socket lives there
        self.socket_path: str | None = None
        self.command: list[str] | None = None
        self.proxy: AuthProxy | None = None
        self.log_path = self.directory / f"server-{self.port}.log" if os.access(self.directory, os.W_OK) else None
        self.process: subprocess.Popen | None = None
        self.stop_signal = None  # the signal that ended the server (SIGINT when it stopped as asked)
        self.killed = False  # True when the server ignored SIGINT and SIGTERM and had to be killed

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "Server":
        try:
            self.private_dir = Path(tempfile.mkdtemp(prefix="tuneline-serve-"))  # mode 0700: this user only
            self.socket_path = str(self.private_dir / BACKEND_SOCKET)
            if len(self.socket_path.encode()) > MAX_SOCKET_PATH:
                raise ServeError(f"the backend socket path {self.socket_path} is over {MAX_SOCKET_PATH} bytes, the "
                                 "Unix socket limit: set TMPDIR to a shorter directory")
            self.command = backend_command(self.config, self.directory, self.backend, self.socket_path)
            self.proxy = AuthProxy(self.host, self.port, self.socket_path, self.api_key,
                                   self.config["served_model_name"], self.max_request_bytes, self.request_timeout)
            self.proxy.bind()  # the public port is ours before anything starts, or the start stops here
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
            env.pop("VLLM_API_KEY", None)  # the proxy checks the key; the private socket needs none
            with open(self.log_path or os.devnull, "w") as log:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(self.command, cwd=self.directory, stdout=log,
                                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.proxy.start()
            self.wait_healthy()
        except BaseException:  # Ctrl-C or SIGTERM while waiting, too: the child has its own session, so stop it
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"{self.backend} server exited with code {self.process.returncode} before it was "
                                 f"healthy:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise ServeError(f"{self.backend} server was not healthy within {self.timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 15) -> int | None:
        """The proxy, then the server's whole process group: SIGINT, then SIGTERM, then SIGKILL, each after `grace`
        seconds in which it did not end, then the private directory. Returns the server's exit code."""
        if self.proxy is not None:
            self.proxy.stop()
        if self.process is not None:
            stopped_by = stop_process_group(self.process, grace)
            if stopped_by is not None:
                self.stop_signal = stopped_by
                self.killed = stopped_by == signal.SIGKILL
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        return None if self.process is None else self.process.returncode

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# the smoke question's token limit: its answer must end (the model's eos) within it. 64 holds a chat model's
# one-paragraph reply (identity's "I am ..., an AI assistant developed by ..." is ~25 tokens); a model that
# never stops reaches it (tuneline's tiny model answers in 2)
SMOKE_MAX_TOKENS = 64


def chat_completion(base_url: str, model: str, messages: list[dict], max_tokens: int = SMOKE_MAX_TOKENS,
                    api_key: str = "unused") -> dict:
    """One chat completion through the OpenAI client, what any user's application would send: {"answer",
    "finish_reason" ("stop": the model ended it with its eos; "length": cut at `max_tokens`), "completion_tokens"
    (as the server counted them), "max_tokens"}."""
    from openai import OpenAI
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    choice = response.choices[0]
    return {"answer": choice.message.content, "finish_reason": choice.finish_reason,
            "completion_tokens": response.usage.completion_tokens if response.usage else None,
            "max_tokens": max_tokens}


def smoke_serve(directory: Path, backend: str, messages: list[dict], timeout: float) -> dict:
    """Start the server on a free port, send one conversation, stop it: proof the deployment serves."""
    key = secrets.token_urlsafe(24)  # a key of its own: the smoke test goes through the same door as users
    server = Server(directory, backend=backend, port=free_port(), timeout=timeout, api_key=key)
    started = time.monotonic()
    with server:
        ready = time.monotonic() - started
        completion = chat_completion(server.base_url, server.config["served_model_name"], messages, api_key=key)
    return {"backend": server.backend, "startup_seconds": round(ready, 1), **completion,
            "stopped_cleanly": not server.killed}


def vllm_load(deployment_dir: Path, smoke: dict, messages: list[dict], timeout: float) -> dict | None:
    """The deployment served by `vllm serve` (its recorded command line) and asked `messages`, where vLLM can run;
    None where it cannot (nothing was run). The smoke test's own record when vLLM is what served it. A server that
    does not start or answer is recorded as {"error": ...}, for the check to fail with."""
    if not vllm_usable():
        return None
    if smoke["backend"] == "vllm":
        return {**smoke, "error": None}
    from openai import OpenAIError
    try:
        served = smoke_serve(deployment_dir, "vllm", messages, timeout)
    except (ServeError, OpenAIError) as exc:  # it did not start, or did not answer
        return {"answer": None, "startup_seconds": None, "error": " ".join(str(exc).split())}
    return {**served, "error": None}


CHAT_ROLES = ("system", "user", "assistant")  # what any OpenAI-compatible client sends; tool turns are not


def smoke_question(formatted_dir: Path, clean_dir: Path, scan: int = 64) -> dict:
    """The deployment's smoke question, from the recipe's own data: the first row of formatted_data's SFT eval split
    (the held-out questions evaluation answers first) whose turns are plain chat, as the messages before its last
    answer (from clean_data's rows: the SFT view keeps only token ids); without an SFT view, the first plain-chat
    prompt of the preference (else KTO) eval split. {"row_id", "messages"}."""
    for row_id, messages in eval_conversations(formatted_dir, clean_dir, scan):
        if messages and all(m["role"] in CHAT_ROLES and isinstance(m["content"], str) for m in messages):
            return {"row_id": row_id, "messages": messages}
    raise ServeError(f"{formatted_dir}: none of the first {scan} eval rows is a plain chat question (system, user "
                     "and assistant turns) to ask the deployment's smoke question with")


def eval_conversations(formatted_dir: Path, clean_dir: Path, scan: int) -> Iterator[tuple[str, list[dict]]]:
    """(row_id, the conversation before its answer) of the first `scan` rows of the first eval split there is."""
    from engine.data.format import read_view
    from engine.store.tables import rows_with_ids
    if (formatted_dir / "sft").is_dir():
        evaluation = read_view(formatted_dir, "sft")["eval"]
        eval_ids = evaluation.select(range(min(scan, len(evaluation))))["row_id"]
        rows = {r["row_id"]: json.loads(r["messages"])
                for r in rows_with_ids(clean_dir, "rows", eval_ids, ["row_id", "messages"])}
        for row_id in eval_ids:
            messages = rows.get(row_id, [])
            # a preference row's messages are its prompt (an SFT view made of chosen answers: engine/data/format.py)
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            yield row_id, messages[:last]
        return
    for view in ("preference", "kto"):
        if (formatted_dir / view).is_dir():
            evaluation = read_view(formatted_dir, view)["eval"]
            for row in evaluation.select(range(min(scan, len(evaluation)))):
                yield row["row_id"], row["prompt"]
            return


def served_name(recipe) -> str:
    """The name clients ask for: serve.served_model_name, else <recipe name>-<export>."""
    return recipe.serve.served_model_name or f"{recipe.name}-{recipe.serve.model}"


def write_deployment_card(run: "StageRun", export: Path) -> None:
    """README.md: the served export's model card with its evaluation and the deployment gates in its model-index
    (the gates as the catalog recorded them for this comparison: they passed, or this stage would not run)."""
    from engine.export.docs import deployment_card
    comparison = run.inputs["model_comparison"]
    evaluation = json.loads((comparison / "comparison.json").read_text())[run.recipe.serve.model]
    gates = {name: (passed, detail) for name, passed, detail in run.home.catalog().query(
        "SELECT check_name, passed, detail FROM check_results WHERE artifact = ? ORDER BY check_name",
        [comparison.name])}
    (run.out / "README.md").write_text(deployment_card(export, evaluation, gates))


def deploy(run: "StageRun") -> dict:
    """deployment's entry point: serve.json for the recipe's export, proven by serving the first plain-chat question
    of the recipe's eval split; where vLLM can run, by vLLM too. The recorded command names the published
    directory (the work directory is renamed at publish)."""
    cfg = run.recipe.serve
    export = run.inputs[f"{cfg.model}_model"]
    config = write_serve_config(export, served_name(run.recipe), cfg, run.out, Precision.of(run.recipe.model))
    vllm_line = server_command(config, run.published, "vllm", config["host"], config["port"])
    write_deployment_card(run, export)
    question = smoke_question(run.inputs["formatted_data"], run.inputs["clean_data"])
    smoke = smoke_serve(run.out, cfg.infer_backend, question["messages"], cfg.startup_timeout_seconds)
    return {"serve_config": config, "vllm_command": " ".join(vllm_line),
            "smoke": {**smoke, "row_id": question["row_id"], "messages": question["messages"]},
            "vllm_load": vllm_load(run.out, smoke, question["messages"], cfg.startup_timeout_seconds),
            "device": config["device"], "dtype": config["dtype"]}
