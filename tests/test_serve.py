"""Serving: the serve config, the backend choice, vLLM's view of an export, and a real CPU server that
answers the openai client and shuts down cleanly."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from engine.errors import ServeError
from engine.export.vllm_compat import vllm_config_problems
from engine.recipe import ServeSection
from engine.serve import Server, choose_backend, free_port, read_serve_config, vllm_command, write_serve_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployment_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("deployment")
    write_serve_config(tiny_model_dir, "tiny-base", ServeSection(port=free_port()), out)
    return out


def test_the_serve_config_names_everything_a_server_needs(deployment_dir, tiny_model_dir):
    config = read_serve_config(deployment_dir)
    assert config["model_path"] == str(tiny_model_dir.resolve())
    assert config["served_model_name"] == "tiny-base" and config["quantization"] is None
    assert config["max_model_len"] == 512 and config["host"] == "127.0.0.1"
    assert (deployment_dir / "chat_template.jinja").read_text().startswith("{% for message in messages %}")
    assert (deployment_dir / "tiny-base").resolve() == tiny_model_dir.resolve()


def test_the_vllm_command_line_carries_the_config(deployment_dir):
    config = {**read_serve_config(deployment_dir), "quantization": "compressed-tensors"}
    command = vllm_command(config, deployment_dir, "127.0.0.1", 8123)
    assert command[:3] == ["vllm", "serve", config["model_path"]]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags == {"--served-model-name": "tiny-base", "--host": "127.0.0.1", "--port": "8123",
                     "--max-model-len": "512", "--chat-template": str(deployment_dir / "chat_template.jinja"),
                     "--generation-config": "auto", "--quantization": "compressed-tensors"}


def test_vllm_is_chosen_only_where_it_can_run():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert choose_backend("auto") == "huggingface"
    with pytest.raises(ServeError, match="vLLM needs its package and a CUDA GPU"):
        choose_backend("vllm")


def test_vllm_config_problems_name_what_vllm_would_refuse(tmp_path):
    quant = {"quant_method": "compressed-tensors", "format": "pack-quantized",
             "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int"}}}}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": quant}))
    assert vllm_config_problems(tmp_path) == []
    quant["format"], quant["config_groups"]["group_0"]["input_activations"] = "bitmask", {"num_bits": 8}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": quant}))
    problems = vllm_config_problems(tmp_path)
    assert any("format 'bitmask'" in p for p in problems) and any("weight-only" in p for p in problems)


def test_a_taken_port_is_reported_not_fought_over(deployment_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ServeError, match=f"port {sock.getsockname()[1]} on 127.0.0.1 is already in use"):
            Server(deployment_dir, "huggingface", port=sock.getsockname()[1]).start()


def test_the_cpu_server_answers_the_openai_client_and_stops_cleanly(deployment_dir, tiny_model_dir):
    from openai import OpenAI
    from engine.chat import load_chat_model, reply
    server = Server(deployment_dir, "auto", port=free_port(), timeout=120)
    with server:
        assert server.backend == "huggingface" and "transformers.cli.transformers" in server.command
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        response = client.chat.completions.create(model="tiny-base", max_tokens=8, temperature=0,
                                                  messages=[{"role": "user", "content": "Add 1 + 2"}])
        text = response.choices[0].message.content
    assert server.process.poll() is not None and not server.killed
    model, tokenizer = load_chat_model(tiny_model_dir)
    expected = reply(model, tokenizer, [{"role": "user", "content": "Add 1 + 2"}], max_new_tokens=8)
    assert isinstance(text, str) and text.strip() == expected.strip()  # the server ran our model, greedily


def test_tuneline_serve_runs_until_sigterm_then_shuts_down(deployment_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", str(deployment_dir), "--port",
                                str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        ready = process.stdout.readline()
        assert f"serving tiny-base (huggingface) at http://127.0.0.1:{port}/v1" in ready
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.stderr.read()[-3000:]
    finally:
        process.kill()
    time.sleep(0.5)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # the server went with it


def test_serve_dry_run_prints_both_command_lines(deployment_dir):
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", str(deployment_dir), "--dry-run",
                             "--port", "8555"], capture_output=True, text=True, env={**os.environ,
                                                                                   "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    assert "vllm: vllm serve" in result.stdout and "--port 8555" in result.stdout
    if not torch.cuda.is_available():
        assert "huggingface (chosen):" in result.stdout
