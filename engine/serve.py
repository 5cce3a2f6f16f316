"""Serving one export behind an OpenAI-compatible API: `vllm serve` when vLLM is importable and a GPU is
present, otherwise `transformers serve` on the CPU. Bound to 127.0.0.1 unless the recipe says otherwise.

The serve config (serve.json) names everything a server needs: model path, served model name, chat
template, max model length, quantization format, and the command line of each backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.errors import ServeError
from engine.models import load_tokenizer

if TYPE_CHECKING:
    from engine.recipe import ServeSection
    from engine.stage import StageRun

CONFIG_FILE = "serve.json"


def write_serve_config(model_dir: Path, served_model_name: str, cfg: ServeSection, out: Path) -> dict:
    """serve.json and chat_template.jinja in `out`, plus `out/<served_model_name>`, a link to the model:
    transformers serve answers to the name it loaded, so the link gives the server the served name."""
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
              "quantization": quantization, "host": cfg.host,
              "port": cfg.port, "infer_backend": cfg.infer_backend}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return config


def read_serve_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ServeError(f"{directory} has no {CONFIG_FILE}: expected a deployment artifact")
    return json.loads(path.read_text())


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def choose_backend(preference: str) -> str:
    """"vllm" or "huggingface" for the recipe's infer_backend; asking for vLLM where it cannot run is an error."""
    if preference == "vllm" and not vllm_usable():
        raise ServeError("serve.infer_backend is vllm, but vLLM needs its package and a CUDA GPU "
                         f"(vllm importable: {importlib.util.find_spec('vllm') is not None}, "
                         f"GPU: {torch.cuda.is_available()}); use infer_backend auto or huggingface")
    if preference == "auto":
        return "vllm" if vllm_usable() else "huggingface"
    return preference


def vllm_command(config: dict, directory: Path, host: str, port: int) -> list[str]:
    command = ["vllm", "serve", config["model_path"], "--served-model-name", config["served_model_name"],
               "--host", host, "--port", str(port), "--max-model-len", str(config["max_model_len"]),
               "--chat-template", str(directory / config["chat_template"]), "--generation-config", "auto"]
    return command + (["--quantization", config["quantization"]] if config["quantization"] else [])


def transformers_command(config: dict, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", config["served_model_name"],
            "--host", host, "--port", str(port), "--device", "cuda" if torch.cuda.is_available() else "cpu",
            "--log-level", "warning"]


def server_command(config: dict, directory: Path, backend: str, host: str, port: int) -> list[str]:
    if backend == "vllm":
        return vllm_command(config, directory, host, port)
    return transformers_command(config, host, port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Server:
    """A model server as a child process: started, health-checked before it counts as ready, stopped cleanly."""

    def __init__(self, directory: Path, backend: str = "auto", host: str | None = None, port: int | None = None,
                 timeout: float = 300):
        self.directory = directory.resolve()
        self.config = read_serve_config(self.directory)
        self.backend = choose_backend(backend)
        self.host = host or self.config["host"]
        self.port = self.config["port"] if port is None else port
        self.timeout = timeout
        self.command = server_command(self.config, self.directory, self.backend, self.host, self.port)
        self.log_path = self.directory / f"server-{self.port}.log" if os.access(self.directory, os.W_OK) else None
        self.process: subprocess.Popen | None = None
        self.killed = False  # True when the server ignored SIGTERM and had to be killed

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "Server":
        with socket.socket() as sock:
            if sock.connect_ex((self.host, self.port)) == 0:
                raise ServeError(f"port {self.port} on {self.host} is already in use: set serve.port or pass --port")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        with open(self.log_path or os.devnull, "w") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        try:
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
            time.sleep(0.5)
        raise ServeError(f"{self.backend} server was not healthy within {self.timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 15) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after `grace` seconds; returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.killed = True
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def chat_completion(base_url: str, model: str, prompt: str, max_tokens: int = 16) -> str:
    """One chat completion through the OpenAI client: what any user's application would send."""
    from openai import OpenAI
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                              max_tokens=max_tokens, temperature=0)
    return response.choices[0].message.content


def smoke_serve(directory: Path, backend: str, prompt: str, timeout: float) -> dict:
    """Start the server on a free port, ask one question, stop it: proof the deployment serves."""
    server = Server(directory, backend=backend, port=free_port(), timeout=timeout)
    started = time.monotonic()
    with server:
        ready = time.monotonic() - started
        answer = chat_completion(server.base_url, server.config["served_model_name"], prompt)
    return {"backend": server.backend, "startup_seconds": round(ready, 1), "answer": answer,
            "stopped_cleanly": not server.killed}


SMOKE_PROMPT = "Add the two numbers.\n120 + 345"


def served_name(recipe) -> str:
    """The name clients ask for: serve.served_model_name, else <recipe name>-<export>."""
    return recipe.serve.served_model_name or f"{recipe.name}-{recipe.serve.model}"


def build_deployment(run: "StageRun") -> dict:
    """deployment's entry point: serve.json for the recipe's export, proven by serving one chat completion."""
    from engine.export.vllm_compat import vllm_config_problems
    cfg = run.recipe.serve
    export = run.inputs[f"{cfg.model}_model"]
    config = write_serve_config(export, served_name(run.recipe), cfg, run.out)
    vllm_line = server_command(config, run.out, "vllm", config["host"], config["port"])
    smoke = smoke_serve(run.out, cfg.infer_backend, SMOKE_PROMPT, cfg.startup_timeout_seconds)
    return {"serve_config": config, "vllm_command": " ".join(vllm_line), "smoke": smoke,
            "vllm_problems": vllm_config_problems(export)}
