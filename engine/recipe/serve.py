"""The `serve` section: the deployment asset and `tuneline serve`, an OpenAI-compatible server for one export."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.recipe.fields import Int, Section, check_threshold


class ServeSection(Section):
    """The `deployment` asset and `tuneline serve`: an OpenAI-compatible server for one export."""
    model: Literal["merged", "gptq", "awq"] = Field("awq", description="which export the deployment serves: merged, "
                                                                       "gptq or awq")
    served_model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                          description="the model name clients send in requests; unset: "
                                                      "<recipe name>-<serve.model>")
    infer_backend: Literal["auto", "vllm", "huggingface"] = Field(
        "auto", description="LLaMA-Factory's key: auto: vLLM when importable with a GPU, else transformers serve "
        "(huggingface). LLaMA-Factory's default: huggingface")
    host: str = Field("127.0.0.1", description="the address the server listens on; another one exposes the model to "
                                               "the network: set an API key (api_key_env). LLaMA-Factory's API "
                                               "listens on 0.0.0.0 (API_HOST)")
    port: Int = Field(8000, ge=1, le=65535, description="the port the server listens on (LLaMA-Factory's API_PORT "
                                                        "default too)")
    api_key_env: str | None = Field(
        "TUNELINE_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="the environment variable holding the API key (never the key itself in YAML); when it is set, "
        "every request but /health needs `Authorization: Bearer <key>`. `tuneline serve --api-key` wins over it. "
        "null: no key (LLaMA-Factory reads API_KEY)")
    max_model_len: Int | None = Field(None, ge=8, description="the longest sequence (prompt and answer, in tokens) the "
                                                              "server accepts; unset: the model's "
                                                              "max_position_embeddings. LLaMA-Factory's vllm_maxlen: "
                                                              "4096")
    tensor_parallel_size: Int | None = Field(None, ge=1, description="the GPUs `vllm serve` splits the model over "
                                                                    "(--tensor-parallel-size); unset: every GPU "
                                                                    "visible where it is served. LLaMA-Factory "
                                                                    "passes its visible GPU count too")
    smoke_requires_eos: bool = check_threshold(
        True, description="check: the deployment's smoke answer must end with the model's eos within the smoke "
        "test's token limit (serves_chat_completions, loads_in_vllm); false: an answer cut at the limit passes, and "
        "the check's detail says so (a run that proves the data path on a model trained a few steps)")
    startup_timeout_seconds: Int = Field(300, ge=5, description="seconds the health check waits for the server to "
                                                                "start before giving up")
    insecure_no_key: bool = Field(False, description="serve on a non-loopback host without an API key anyway (as "
                                                     "`tuneline serve --insecure-no-key`); false: such a start is "
                                                     "refused. LLaMA-Factory's API serves without a key when API_KEY "
                                                     "is unset")
    max_request_bytes: Int = Field(1 << 20, ge=1024, description="the largest request body the server reads, in "
                                                                 "bytes; a larger one gets 413 before it is read "
                                                                 "whole (1 MiB)")
    request_timeout_seconds: Int = Field(30, ge=1, description="seconds a request may take to arrive whole (headers "
                                                               "and body); a slower client gets 408 and is "
                                                               "disconnected")
