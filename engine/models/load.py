"""Base models: the built-in `tiny` preset, or a local Hugging Face checkpoint directory.

Loading is safetensors-only with trust_remote_code off: a checkpoint never runs code of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

from engine.models.device import Precision, infer_dtype, load_kwargs, spread_kwargs
from engine.models.footprint import LOCAL_MODEL
from engine.errors import RecipeError

if TYPE_CHECKING:
    from engine.recipe import ModelSection, TinyModel


# Qwen2's ChatML template: the same one the model is trained with, served with and exported with.
# Qwen2's ChatML template, with Qwen2.5's tools block: the functions a row may call, as a system turn.
TOOLS_BLOCK = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>"
)
TOOLS_END = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n"
)
CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% endif %}{{ '" + TOOLS_BLOCK + "' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}{{ '" + TOOLS_END + "' }}{% endif %}"
    "{% for message in messages %}{% if not (tools and loop.first and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def is_tiny(cfg: ModelSection) -> bool:
    return cfg.model_name_or_path == "tiny"


def check_local_model(path: str) -> Path:
    """The checkpoint directory or GGUF file model.model_name_or_path names, or RecipeError naming what is missing."""
    from engine.models.checkpoint import is_gguf, resolve_model_path
    model_dir = resolve_model_path(path)
    if is_gguf(model_dir):
        return model_dir
    if not model_dir.is_dir():
        raise RecipeError(f"model.model_name_or_path: {model_dir} is not a directory or a GGUF file "
                          "(expected 'tiny', a local Hugging Face checkpoint directory or a .gguf file)")
    if not (model_dir / "config.json").is_file():
        raise RecipeError(f"model.model_name_or_path: {model_dir} has no config.json")
    if not list(model_dir.glob("*.safetensors")):
        raise RecipeError(f"model.model_name_or_path: {model_dir} has no *.safetensors weights (only safetensors load)")
    return model_dir


def hf_source(path: str) -> tuple[Path, dict]:
    """(folder, from_pretrained keywords) that load the recipe's checkpoint: a GGUF file is its folder + gguf_file."""
    from engine.models.checkpoint import is_gguf
    checkpoint = check_local_model(path)
    return (checkpoint.parent, {"gguf_file": checkpoint.name}) if is_gguf(checkpoint) else (checkpoint, {})


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with ChatML special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=4096)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(cfg: TinyModel, vocab_size: int, **token_ids) -> Qwen2Config:
    """The tiny preset's Qwen2 shape."""
    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True, initializer_range=cfg.initializer_range, bos_token_id=None, **token_ids)


def module_names(model_cfg: ModelSection) -> dict[str, str] | None:
    """Every module of the recipe's model, {name: class name}, read from its config on the meta device (no weights
    are loaded); None when transformers cannot build the architecture from its config alone."""
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        if is_tiny(model_cfg):
            config = tiny_config(model_cfg.tiny, 64)
        else:
            folder, source = hf_source(model_cfg.model_name_or_path)
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False, **source)
            if hasattr(config, "quantization_config"):  # a GGUF's: base_model dequantizes it
                del config.quantization_config
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, KeyError, OSError, ImportError):  # an architecture this transformers does not know
        return None
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def make_tiny_model(cfg: TinyModel, texts: list[str], out: Path) -> dict:
    """Build the tiny preset into `out`: tokenizer trained on `texts`, random-init Qwen2 weights."""
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    config = tiny_config(cfg, len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}


def model_dir(base_artifact_path: Path) -> Path:
    """The directory holding the base model's weights: the artifact itself, or the local checkpoint it names."""
    pointer = base_artifact_path / LOCAL_MODEL
    # a relative path is inside the artifact itself (it was written in a work directory, then published)
    return base_artifact_path / json.loads(pointer.read_text())["path"] if pointer.is_file() else base_artifact_path


def point_at(out: Path, directory: Path, **facts) -> dict:
    """An artifact that names a model directory (a local checkpoint is not copied; one inside the artifact is named
    relative to it); returns its metrics."""
    directory = Path(directory).resolve()
    inside = directory.is_relative_to(Path(out).resolve())
    record = {"path": str(directory.relative_to(Path(out).resolve()) if inside else directory), **facts}
    (out / LOCAL_MODEL).write_text(json.dumps(record))
    return record


def default_dtype() -> torch.dtype:
    """The inference dtype of a recipe that sets no precision key, on this machine."""
    return infer_dtype(Precision())


def load_tokenizer(path: Path):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise RecipeError(f"model at {path} has no chat template; tuneline renders every conversation with one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def placement(dtype: torch.dtype | None, spread: bool, cpu: bool = False) -> dict:
    """from_pretrained's dtype and device keywords: spread over GPUs, then CPU RAM (exports, evaluation), on the
    policy's one device (engine/models/device.py), or (cpu) in CPU RAM, for DeepSpeed or FSDP to shard."""
    if cpu:
        return {"dtype": dtype or default_dtype()}
    return (spread_kwargs if spread else load_kwargs)(dtype or default_dtype())


def load_causal_lm(path: Path, dtype: torch.dtype | None = None, spread: bool = False, cpu: bool = False, **kwargs):
    """A causal LM on the policy's device (engine/models/device.py) in `dtype` (None: the policy's default);
    spread: over every GPU, then CPU RAM (a model larger than one GPU: merge, quantization, evaluation); cpu: in CPU
    RAM (a training start that DeepSpeed or FSDP shard)."""
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, **placement(dtype, spread, cpu),
                                                **kwargs)


def load_with_adapters(base_dir: Path, *stages: Path, dtype: torch.dtype | None = None, spread: bool = False,
                       cpu: bool = False):
    """The base model with each training stage applied in order (SFT, then DPO): a LoRA/DoRA adapter
    directory is merged in; a full-weights directory (full or freeze fine-tuning) replaces the model.
    Loaded in `dtype` (None: the policy's default) on the policy's device (spread, cpu: as load_causal_lm's)."""
    from peft import PeftModel
    start, adapters = base_dir, list(stages)
    for i, stage in enumerate(stages):
        if not (stage / "adapter_config.json").is_file():  # full weights: what came before is not loaded at all
            start, adapters = stage, list(stages[i + 1:])
    model = load_causal_lm(start, dtype, spread, cpu)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def check_adapter(path: str) -> Path:
    """A local PEFT adapter directory (model.adapter_name_or_path), or RecipeError naming what is missing."""
    adapter = Path(path).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise RecipeError(f"model.adapter_name_or_path: {adapter} is not a PEFT adapter directory (expected "
                          "adapter_config.json and adapter weights, as save_pretrained writes them)")
    if not list(adapter.glob("adapter_model.safetensors")):
        raise RecipeError(f"model.adapter_name_or_path: {adapter} has no adapter_model.safetensors (only safetensors "
                          "load)")
    return adapter


def merge_adapters(base_dir: Path, adapters: list[Path], out: Path, dtype: torch.dtype | None = None) -> Path:
    """The base with the adapters merged in order, saved to `out` as a full checkpoint in the base's own dtype
    (a later stage starts from it as from any checkpoint)."""
    from engine.models.device import checkpoint_dtype
    model = load_with_adapters(base_dir, *adapters, dtype=dtype)
    model.to(checkpoint_dtype(base_dir)).save_pretrained(out, safe_serialization=True)
    load_tokenizer(base_dir).save_pretrained(out)
    return out


def load_reward_model(path: Path, dtype: torch.dtype | None = None, spread: bool = False):
    """A sequence-classification reward model on the policy's device in `dtype` (None: the policy's default;
    spread: as load_causal_lm's)."""
    return AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False,
                                                              **placement(dtype, spread))


def smoke_generate(model, tokenizer, prompt: str = "Add the two numbers.\n120 + 345", max_new_tokens: int = 8) -> str:
    """Greedy answer to one chat prompt: proves a model loads and generates."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True).to(model.device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


ADAPTER_DIR, FULL_DIR = "adapter", "model"  # a training stage's artifact holds a PEFT adapter, or full weights

def trained_weights(artifact_path: Path) -> Path:
    """What a training stage left: its adapter directory, or its full model directory."""
    for name in (ADAPTER_DIR, FULL_DIR):
        if (artifact_path / name).is_dir():
            return artifact_path / name
    raise FileNotFoundError(f"{artifact_path} holds neither {ADAPTER_DIR}/ nor {FULL_DIR}/")
