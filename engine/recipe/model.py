"""The `model` section: which checkpoint, its adapters, the tiny preset, and LLaMA-Factory's precision keys."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.recipe.fields import Float, Int, Section


class TinyModel(Section):
    """The built-in `tiny` preset: a random-init Qwen2-architecture model and a BPE tokenizer."""
    hidden_size: Int = Field(128, ge=32, le=1024, description="width of every hidden state (Qwen2's hidden_size)")
    intermediate_size: Int = Field(384, description="width of each MLP's inner layer")
    num_hidden_layers: Int = Field(2, ge=1, le=12, description="decoder layers")
    num_attention_heads: Int = Field(4, description="query heads per attention layer; must divide hidden_size")
    num_key_value_heads: Int = Field(2, description="key/value heads (grouped-query attention); must divide "
                                                    "num_attention_heads")
    vocab_size: Int = Field(1024, ge=300, le=32000, description="tokens in the BPE tokenizer trained on the cleaned "
                                                                "rows, and rows of the embedding matrix")
    max_position_embeddings: Int = Field(512, description="the longest sequence, in tokens, the model's rotary "
                                                          "positions cover")
    initializer_range: Float = Field(0.1, gt=0, description="standard deviation of the random initial weights; "
                                                            "wider than Qwen2's 0.02: random logits must be able "
                                                            "to sharpen")
    seed: Int = Field(0, description="seed of the random initial weights: one seed, one model")


class ModelSection(Section):
    """The model, and LLaMA-Factory's precision keys (engine/models/device.py holds the whole policy): every stage that
    loads a model reads them. None set: float32 weights on a CPU (training under bf16 autocast where the CPU computes
    bf16 natively, as TRL does), bf16 frozen weights on a GPU that has it (else fp16)."""
    model_name_or_path: str = Field(
        "tiny", description='"tiny" (the built-in preset), a local Hugging Face checkpoint directory, or a GGUF file '
        '(dequantized into a safetensors folder by base_model); "package:<module>/<file>" names a file inside an '
        "installed Python package (the smol recipe's GGUF). Nothing is downloaded: the path must exist. "
        "LLaMA-Factory has no default (the key is required there)")
    eos_source: Literal["tokenizer", "generation_config"] | None = Field(
        None, description="which eos wins when the tokenizer's eos_token is not one the generation config stops on: "
        "tokenizer or generation_config; unset: such a checkpoint is refused (generation would run past the end of "
        "a turn)")
    adapter_name_or_path: str | None = Field(
        None, description="LLaMA-Factory's key: local PEFT adapter directories (comma-separated) merged into the "
        "base, in order, before any stage trains (pt_model is then base + adapters): a preference stage without sft "
        "starts from an SFT adapter made elsewhere, and a recipe without training stages exports base + adapters. "
        "LLaMA-Factory goes on training the last adapter; tuneline trains a new one on the merged model "
        "(LLaMA-Factory's create_new_adapter: true)")
    tiny: TinyModel = Field(TinyModel(), description='the built-in preset\'s architecture, read when '
                                                     'model_name_or_path is "tiny"')
    bf16: bool | None = Field(
        None, description="true: bfloat16 weights, bf16 mixed-precision training (a CPU runs it too); false: "
        "neither, not even the CPU's default autocast; unset: the device decides (LLaMA-Factory's, i.e. "
        "transformers', default: false)")
    fp16: bool = Field(False, description="float16 weights, fp16 mixed-precision training (a GPU only)")
    pure_bf16: bool = Field(False, description="bfloat16 everywhere, trainable weights too, no mixed precision")
    infer_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="LLaMA-Factory's key: the dtype of inference loads (evaluation, reward scoring, chat, "
        "serving) and of the merged export; auto: the device policy decides (float32 on a CPU, bf16, else fp16, on "
        "a GPU) and the merge writes the base checkpoint's dtype")

    @model_validator(mode="after")
    def one_half_precision(self):
        if self.fp16 and (self.bf16 or self.pure_bf16):
            raise ValueError(f"fp16 and {'bf16' if self.bf16 else 'pure_bf16'} are both set; choose one half precision")
        return self

    def adapters(self) -> list[str]:
        """adapter_name_or_path as a list of directories, in the order they are merged."""
        return [a.strip() for a in (self.adapter_name_or_path or "").split(",") if a.strip()]
