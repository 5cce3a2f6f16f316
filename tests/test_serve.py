"""Serving: the serve config, the backend choice, vLLM's view of an export, and a real CPU server that
answers the openai client and shuts down cleanly."""

import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request

import pytest
import torch

from engine.errors import RecipeError, ServeError
from engine.serve.vllm_compat import vllm_config_problems
from engine.recipe import ServeSection, load_recipe
from engine.serve.server import (Server, backend_command, choose_backend, exposure_warning, free_port,
                                 read_serve_config, resolve_api_key, vllm_command)
from pipelines.cli import main
from tests.processes import run, started

KEY = "test-key-0123456789"

pytestmark = pytest.mark.slow


def test_the_serve_config_names_everything_a_server_needs(deployment_dir, tiny_model_dir):
    config = read_serve_config(deployment_dir)
    assert config["model_path"] == str(tiny_model_dir.resolve())
    assert config["served_model_name"] == "tiny-base" and config["quantization"] is None
    assert config["max_model_len"] == 512 and config["host"] == "127.0.0.1"
    if not torch.cuda.is_available():
        assert (config["device"], config["dtype"]) == ("cpu", "float32")  # the precision policy's CPU default
    assert (deployment_dir / "chat_template.jinja").read_text().startswith("{% if tools %}")
    assert (deployment_dir / "tiny-base").resolve() == tiny_model_dir.resolve()


def test_the_vllm_command_line_carries_the_config(deployment_dir):
    config = {**read_serve_config(deployment_dir), "quantization": "compressed-tensors"}
    command = vllm_command(config, deployment_dir, "127.0.0.1", 8123)
    assert command[:3] == ["vllm", "serve", config["model_path"]]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags == {"--served-model-name": "tiny-base", "--host": "127.0.0.1", "--port": "8123",
                     "--max-model-len": "512", "--chat-template": str(deployment_dir / "chat_template.jinja"),
                     "--generation-config": "auto", "--dtype": config["dtype"], "--tensor-parallel-size": str(max(1, torch.cuda.device_count())),
                     "--quantization": "compressed-tensors"}
    behind = backend_command(config, deployment_dir, "vllm", "/private/backend.sock")  # what Server runs
    flags = dict(zip(behind[3::2], behind[4::2], strict=True))
    assert flags["--uds"] == "/private/backend.sock" and "--host" not in flags and "--port" not in flags


@pytest.mark.cpu_only("vLLM cannot run without CUDA")
def test_vllm_is_chosen_only_where_it_can_run():
    assert choose_backend("auto") == "huggingface"
    with pytest.raises(ServeError, match="vLLM needs its package and a CUDA GPU"):
        choose_backend("vllm")


def test_vllm_config_problems_name_what_vllm_would_refuse(tmp_path):
    weights = {"num_bits": 4, "type": "int", "strategy": "group", "dynamic": False, "symmetric": False}
    quant = {"quant_method": "compressed-tensors", "format": "pack-quantized",
             "config_groups": {"group_0": {"weights": weights}}}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": quant}))
    assert vllm_config_problems(tmp_path) == []
    quant["format"], quant["config_groups"]["group_0"]["input_activations"] = "bitmask", {"num_bits": 8}
    weights["num_bits"] = 3
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": quant}))
    assert vllm_config_problems(tmp_path) == [
        "group_0: quantized activations, expected weight-only (W4A16 or W8A16)",
        "group_0: format 'bitmask', expected one of ['marlin-24', 'pack-quantized']",
        "group_0: weights int3, expected int4 or int8"]
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "quanto"}}))
    assert vllm_config_problems(tmp_path) == ["quant_method 'quanto' is not one of vLLM's quantization methods"]
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    assert vllm_config_problems(tmp_path) == []  # another method vLLM knows is its own loader's to judge


def test_a_taken_port_is_reported_not_fought_over(deployment_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ServeError, match=f"port {sock.getsockname()[1]} on 127.0.0.1 is already in use"):
            Server(deployment_dir, "huggingface", port=sock.getsockname()[1]).start()


def get(url: str, key: str | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET, without raising on 4xx."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.mark.cpu_only("auto picks the huggingface backend (vLLM where CUDA is)")
def test_the_cpu_server_answers_only_with_the_key_and_stops_cleanly(deployment_dir, tiny_model_dir):
    from openai import AuthenticationError, OpenAI
    from engine.serve.chat import load_chat_model, reply
    server = Server(deployment_dir, "auto", port=free_port(), timeout=120, api_key=KEY)
    try:
        server.start()
        assert server.backend == "huggingface" and "engine.serve.backend" in server.command
        assert server.socket_path in server.command  # the backend listens on a private socket, behind the key
        root = f"http://127.0.0.1:{server.port}"
        assert get(f"{root}/health")[0] == 200  # a load balancer's probe needs no key
        status, body, headers = get(f"{server.base_url}/models")
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
        assert headers.get("www-authenticate") == "Bearer"
        assert get(f"{server.base_url}/models", "wrong-key")[0] == 401
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=server.base_url, api_key="wrong-key", max_retries=0).chat.completions.create(
                model="tiny-base", max_tokens=8, messages=[{"role": "user", "content": "Add 1 + 2"}])
        assert get(f"{root}/load_model", KEY)[0] == 404  # transformers serve's own admin routes stay private
        client = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-base"]
        assert client.models.retrieve("tiny-base").id == "tiny-base"
        response = client.chat.completions.create(model="tiny-base", max_tokens=8, temperature=0,
                                                  messages=[{"role": "user", "content": "Add 1 + 2"}])
        text = response.choices[0].message.content
        stream = client.chat.completions.create(model="tiny-base", max_tokens=8, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "Add 1 + 2"}])
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    finally:
        server.stop()
    assert server.process.poll() is not None and server.stop_signal == signal.SIGINT and not server.killed
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0  # the proxy went with it
    model, tokenizer = load_chat_model(tiny_model_dir)
    expected = reply(model, tokenizer, [{"role": "user", "content": "Add 1 + 2"}], max_new_tokens=8)
    # max_tokens can cut the random model's answer inside a multi-byte character, whose bytes a decoder shows as
    # U+FFFD or holds back: the answers are compared without such a tail
    def whole(answer: str) -> str:
        return answer.strip().rstrip("\ufffd").strip()
    assert isinstance(text, str) and whole(text) == whole(expected)  # the server ran our model, greedily
    assert whole(streamed) == whole(expected)  # server-sent events pass through the proxy


def test_tuneline_serve_runs_until_sigterm_then_shuts_down(deployment_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("TUNELINE_API_KEY", None)  # no key: on loopback the server is open, and /v1/models answers
    command = [sys.executable, "-m", "pipelines.cli", "serve", str(deployment_dir), "--port", str(port)]
    with started(command, tmp_path, env=env) as server:  # output to files: the server's log cannot fill a pipe
        server.wait_for_output(f"serving tiny-base (huggingface) at http://127.0.0.1:{port}/v1", 600,
                               "the server's readiness line")
        status, body, _ = get(f"http://127.0.0.1:{port}/v1/models")
        assert status == 200 and [m["id"] for m in body["data"]] == ["tiny-base"]
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, server.err()[-3000:]
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # the server went with it


def test_serve_dry_run_prints_both_command_lines(deployment_dir):
    result = run([sys.executable, "-m", "pipelines.cli", "serve", str(deployment_dir), "--dry-run", "--port", "8555"],
                 timeout=300, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    assert "vllm: tuneline's proxy on 127.0.0.1:8555 -> vllm serve" in result.stdout
    assert "--uds <private dir>/backend.sock" in result.stdout and "--port" not in result.stdout
    assert "tuneline's proxy on 127.0.0.1:8555 -> " in result.stdout and "engine.serve.backend" in result.stdout
    if not torch.cuda.is_available():
        assert "huggingface (chosen):" in result.stdout


@pytest.mark.parametrize("host, key, expected", [
    ("127.0.0.1", None, None), ("localhost", None, None), ("::1", None, None),
    ("0.0.0.0", None, "without an API key (--insecure-no-key): anyone who can reach this port on the network"),
    ("0.0.0.0", KEY, "plain HTTP: the API key and every conversation cross the network unencrypted"),
])
def test_a_host_beyond_loopback_is_named_as_a_risk(host, key, expected):
    warning = exposure_warning(host, 8000, key)
    assert warning is None if expected is None else expected in warning


def test_serve_warns_before_exposing_a_model(deployment_dir, capsys, monkeypatch):
    monkeypatch.delenv("TUNELINE_API_KEY", raising=False)
    assert main(["serve", str(deployment_dir), "--dry-run", "--host", "0.0.0.0", "--port", "8555",
                 "--insecure-no-key"]) == 0
    out, err = capsys.readouterr()
    assert "tuneline: warning: serving on 0.0.0.0:8555 without an API key (--insecure-no-key): anyone who" in err
    assert "API key: none" in out
    monkeypatch.setenv("TUNELINE_API_KEY", KEY)
    assert main(["serve", str(deployment_dir), "--dry-run", "--host", "0.0.0.0", "--port", "8555"]) == 0
    out, err = capsys.readouterr()
    assert "without an API key" not in err and "over plain HTTP" in err and "API key: required" in out
    assert KEY not in out + err  # the key itself is never printed
    assert main(["serve", str(deployment_dir), "--dry-run", "--port", "8555"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_api_key_comes_from_the_flag_then_the_named_variable():
    cfg = ServeSection()
    assert cfg.api_key_env == "TUNELINE_API_KEY"
    assert resolve_api_key(cfg, None, {}) is None
    assert resolve_api_key(cfg, None, {"TUNELINE_API_KEY": "from-env"}) == "from-env"
    assert resolve_api_key(cfg, "from-flag", {"TUNELINE_API_KEY": "from-env"}) == "from-flag"
    assert resolve_api_key(ServeSection(api_key_env="TEAM_KEY"), None, {"TEAM_KEY": "team"}) == "team"
    assert resolve_api_key(ServeSection(api_key_env=None), None, {"TUNELINE_API_KEY": "from-env"}) is None
    with pytest.raises(ServeError, match="serve.api_key_env: TUNELINE_API_KEY is set but empty"):
        resolve_api_key(cfg, None, {"TUNELINE_API_KEY": " "})
    with pytest.raises(ServeError, match="--api-key is empty"):
        resolve_api_key(cfg, "", {})


def test_the_recipe_names_the_variable_never_the_key():
    with pytest.raises(RecipeError, match="serve.api_key: unknown key; did you mean 'serve.api_key_env'"):
        load_recipe("tiny", {"serve.api_key": KEY})
    with pytest.raises(RecipeError, match="serve.api_key_env"):
        load_recipe("tiny", {"serve.api_key_env": "not a variable"})
