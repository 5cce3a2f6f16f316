"""base_model's entry point: the model every stage starts from."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from engine.models.checkpoint import convert_gguf, copy_settled, gguf_dtype, is_gguf
from engine.models.load import (make_tiny_model, check_local_model, is_tiny, load_causal_lm, load_tokenizer, model_dir,
                                 point_at)
from engine.models.sample import BASE_QUESTION, chat_prompt, sample_answer
from engine.store.tables import table_dicts

if TYPE_CHECKING:
    from engine.stage import StageRun


def message_texts(rows: list[dict]) -> list[str]:
    """Every text of normalized rows (messages, chosen, rejected): what a tokenizer is trained on."""
    texts = []
    for row in rows:
        texts += [m["content"] for m in json.loads(row["messages"])]
        texts += [t for t in (row["chosen"], row["rejected"]) if t]
    return texts


def make_base_model(run: "StageRun") -> dict:
    """base_model's entry point: the tiny preset built from a seed, its tokenizer trained on the cleaned rows
    (never on rows the cleaning removed); a GGUF file dequantized into a safetensors folder; or the recipe's local
    checkpoint, named in place (copied when model.eos_source settles a tokenizer/generation-config eos conflict)."""
    model = run.recipe.model
    if not is_tiny(model):
        checkpoint = check_local_model(model.model_name_or_path)
        if is_gguf(checkpoint):  # its digest in the metrics too: lineage.json carries an artifact's metrics
            made = {**convert_gguf(checkpoint, run.out, gguf_dtype(model.infer_dtype), model.eos_source),
                    "gguf_sha256": run.home.hasher().file(checkpoint)}
        else:
            made = copy_settled(checkpoint, run.out, model.eos_source) or point_at(run.out, checkpoint)
    else:
        made = make_tiny_model(model.tiny, message_texts(table_dicts(run.inputs["clean_data"], "rows")), run.out)
    return {**made, **loaded_sample(model_dir(run.out))}


def loaded_sample(directory) -> dict:
    """What base_model's check judges, measured once the model is written: the checkpoint's weights that did not
    load into the model (transformers initializes those at random, with a warning only) and its greedy answer to
    one question (the policy's inference dtype and device, as evaluation loads it)."""
    loaded, info = load_causal_lm(directory, output_loading_info=True)
    tokenizer = load_tokenizer(directory)
    not_loaded = [*info["missing_keys"], *(k if isinstance(k, str) else k[0] for k in info["mismatched_keys"])]
    return {"weights_not_loaded": sorted(not_loaded),
            "sample": sample_answer(loaded, tokenizer, chat_prompt(tokenizer, BASE_QUESTION), BASE_QUESTION)}
