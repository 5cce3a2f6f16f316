"""Supervised fine-tuning: TRL SFTTrainer, loss on assistant tokens only (LoRA, DoRA, full or freeze)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from trl import SFTConfig, SFTTrainer

from engine.data.format import read_view, sft_view_source
from engine.errors import DataError
from engine.models.device import Precision, precision_metrics, train_dtype
from engine.models.load import load_tokenizer, model_dir
from engine.train.accounting import trained_examples
from engine.train.adapters import load_trainable, prepare_model
from engine.train.arguments import optimizers, trainer_kwargs
from engine.train.lm_head import trains_on_labelled_positions
from engine.train.sharding import Sharding, sharding_of
from engine.train.skeleton import TrainingStage, eval_loss_after, eval_loss_before, train_stage, without_row_ids

if TYPE_CHECKING:
    from engine.recipe import SftSection
    from engine.stage import StageRun


def padding_free(cfg: SftSection, lengths: list[int], hidden_size: int) -> bool:
    """sft.padding_free, or where unset what is faster. sdpa (trained as tuneline's row attention,
    engine/models/attention.py), flash_attention_2 (varlen) and flex_attention (a block-sparse mask) attend within each
    row at each row's own cost: on. eager attends over the whole flattened batch of L tokens under a block mask:
    ~4·L²·d FLOPs a layer, against the ~24·d² a layer each padding token costs in the linear layers (d: hidden
    size) that padding-free saves; on only where that is less."""
    if cfg.padding_free is not None or cfg.packing:
        return bool(cfg.padding_free) or cfg.packing
    if cfg.attn_implementation != "eager":
        return True
    batch = cfg.per_device_train_batch_size
    batches = [lengths[i:i + batch] for i in range(0, len(lengths), batch)]
    flat_attention = sum(4 * sum(b) ** 2 * hidden_size for b in batches)
    padded_linear = sum(24 * hidden_size ** 2 * (len(b) * max(b) - sum(b)) for b in batches)
    return flat_attention < padded_linear


def sft_arguments(cfg: SftSection, cutoff_len: int, out: Path, precision: Precision | None = None,
                  flat: bool = False, sharding: Sharding = Sharding()) -> SFTConfig:
    """The SFT trainer's arguments from the recipe's keys; `flat`: padding-free batches (`padding_free` decides).
    The SFT view is pre-tokenized, truncated to cutoff_len and labelled: TRL uses it as it is (packs it if asked; a
    padding-free batch needs no max_length of its own)."""
    # a flat batch has no padding and no attention mask: its every token is trained (non_padding would guess the
    # padding from the pad token id, and miss a row's own pad-valued tokens)
    counted = "all" if flat else "non_padding"
    return SFTConfig(**{**trainer_kwargs(cfg, out, precision, sharding), "include_num_input_tokens_seen": counted},
                     max_length=None if flat and not cfg.packing else cutoff_len, packing=cfg.packing,
                     padding_free=flat, eval_packing=False)


def train_sft(base_dir: Path, formatted_dir: Path, cfg: SftSection, cutoff_len: int, out: Path,
              precision: Precision | None = None, say: Callable[[str], None] = print,
              sharding: Sharding = Sharding()) -> dict:
    """Train and save to `out/adapter` (or `out/model`). Returns eval loss before/after, loss curve, tokens/s."""
    source = sft_view_source(formatted_dir)
    if source != "sft":  # as LLaMA-Factory, which refuses ranking data for stage sft
        raise DataError(f"sft: the selected datasets hold no SFT rows, only {source} rows (its SFT view is their "
                        "chosen answers, for evaluation): register instruction data in data.dataset, or take sft out "
                        "of the recipe's stages")
    tokenizer = load_tokenizer(base_dir)
    data = read_view(formatted_dir, "sft")
    train, evaluation = without_row_ids(data["train"]), without_row_ids(data["eval"])

    def set_up():
        from transformers import AutoConfig
        hidden_size = AutoConfig.from_pretrained(base_dir).get_text_config().hidden_size
        flat = padding_free(cfg, [len(ids) for ids in train["input_ids"]], hidden_size)
        args = sft_arguments(cfg, cutoff_len, out, precision, flat, sharding)  # before the load (ZeRO-3's zero.Init)
        model = prepare_model(load_trainable(base_dir, cfg, precision=precision, sharding=sharding), cfg, "CAUSAL_LM",
                              precision)
        return SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                          processing_class=tokenizer, optimizers=optimizers(model, cfg))

    def counts(trainer) -> dict:
        return {**trained_examples(trainer, len(train), "rows"), "eval_rows": len(evaluation),
                "train_sequences": len(trainer.train_dataset), "packing": cfg.packing,
                "padding_free": trainer.args.padding_free}

    return train_stage(TrainingStage("sft", cfg, out, tokenizer, set_up, before=eval_loss_before,
                                     after=lambda t: {**eval_loss_after(t), **counts(t)}, sharding=sharding), say)


@trains_on_labelled_positions
def train_sft_adapter(run: "StageRun") -> dict:
    """sft_adapter's entry point."""
    precision, sharding = Precision.of(run.recipe.model), sharding_of(run.recipe, "sft")
    return {**train_sft(model_dir(run.inputs["pt_model"]), run.inputs["formatted_data"], run.recipe.sft,
                        run.recipe.data.cutoff_len, run.out, precision, run.log, sharding),
            **precision_metrics(train_dtype(precision))}
