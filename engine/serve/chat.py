"""Chatting with a model through its own chat template, as `llamafactory-cli chat` does."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch

from engine.errors import TunelineError
from engine.store.digests import check_directory
from engine.models.sample import decoded_answer
from engine.models.load import load_causal_lm, load_tokenizer

RESET, QUIT = {"clear", "/clear"}, {"exit", "quit", "/exit", "/quit"}


def load_chat_model(path: Path, dtype: torch.dtype | None = None):
    """(model, tokenizer) of a full model directory: a base, merged or quantized model, on the policy's device in
    `dtype` (None: the policy's default, engine/models/device.py)."""
    if (path / "adapter_config.json").is_file() or (path / "adapter" / "adapter_config.json").is_file():
        raise TunelineError(f"{path} is a LoRA adapter; chat needs a full model (merged_model, gptq_model or awq_model)")
    if not (path / "config.json").is_file():
        raise TunelineError(f"{path} is not a model directory (expected config.json and safetensors weights)")
    check_directory(path)  # an artifact or export is loaded only as it was published (remembered in this process)
    return load_causal_lm(path, dtype).eval(), load_tokenizer(path)


@torch.no_grad()
def reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.0) -> str:
    """The model's answer to the conversation so far (greedy unless temperature > 0)."""
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **sampling)
    return decoded_answer(tokenizer, out[0, inputs["input_ids"].shape[1]:])


def chat_loop(model, tokenizer, lines: Iterable[str], say: Callable[[str], None], system: str | None = None,
              **generation) -> int:
    """An interactive chat over `lines` of user input; `clear` starts over, `exit` ends. Returns turns answered."""
    start = [{"role": "system", "content": system}] if system else []
    history, turns = list(start), 0
    for line in lines:
        text = line.strip()
        if text in QUIT:
            break
        if text in RESET:
            history = list(start)
            say("(history cleared)")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        answer = reply(model, tokenizer, history, **generation)
        history.append({"role": "assistant", "content": answer})
        say(f"Assistant: {answer}")
        turns += 1
    return turns
