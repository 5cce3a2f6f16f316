"""What a trainer actually trains on, counted from its own dataset after its own filtering and tokenization.

TRL's trainers filter and cut rows on their own terms: RewardTrainer drops every pair longer than max_length,
DPOTrainer and KTOTrainer drop rows whose prompt alone fills it and cut the rest at batch time, ORPO cuts answers
while tokenizing. A stage reports the examples its trainer kept and the ones it cut, beside the count the formatted
view handed it, so that a check can fail when they differ (formatted_data cuts rows to fit, so none should be).
"""

from __future__ import annotations

# the trainer's tokenized columns that make up one training sequence, per answer, by trainer
SEQUENCES = (
    (("prompt_ids", "chosen_ids"), ("prompt_ids", "rejected_ids")),  # DPO: prompt + each answer, cut by the collator
    (("prompt_ids", "completion_ids"),),  # KTO
    (("chosen_ids",), ("rejected_ids",)),  # reward model: prompt and answer in one rendering
    (("input_ids",),),  # SFT, pre-tokenized
)


def sequence_lengths(row: dict, columns: tuple[tuple[str, ...], ...]) -> list[int]:
    return [sum(len(row[c]) for c in sequence) for sequence in columns]


def cut_by_trainer(dataset, max_length: int | None, eos_token_id: int | None = None) -> int:
    """Rows of a trainer's tokenized dataset that its max_length cuts (or, for ORPO, that it has cut already: each
    of its answers ends with eos unless cut)."""
    names = set(dataset.column_names)
    if {"chosen_input_ids", "rejected_input_ids"} <= names:  # ORPO cuts while tokenizing and appends eos otherwise
        return sum(any(ids[-1:] != [eos_token_id] for ids in (r["chosen_input_ids"], r["rejected_input_ids"]))
                   for r in dataset)
    if max_length is None:
        return 0
    columns = next((c for c in SEQUENCES if {n for seq in c for n in seq} <= names), None)
    if columns is None:
        raise ValueError(f"cannot tell the sequences of a trainer dataset with columns {sorted(names)}")
    return sum(max(sequence_lengths(r, columns)) > max_length for r in dataset)


def trained_examples(trainer, formatted: int, unit: str) -> dict:
    """{train_<unit>: examples the trainer trains on, formatted_train_<unit>: what formatted_data gave it,
    <unit>_cut_by_trainer: of those trained, how many its max_length cuts}. With packing, the rows inside the
    packed sequences are counted."""
    dataset = trainer.train_dataset
    if "seq_lengths" in dataset.column_names:  # TRL's packed SFT sequences list their rows' lengths
        trained = sum(len(lengths) for lengths in dataset["seq_lengths"])
        cut = 0  # packing fits whole rows into max_length (formatted rows are at most cutoff_len)
    else:
        trained = len(dataset)
        cut = cut_by_trainer(dataset, getattr(trainer.args, "max_length", None),
                             getattr(trainer.processing_class, "eos_token_id", None))
    return {f"train_{unit}": trained, f"formatted_train_{unit}": formatted, f"{unit}_cut_by_trainer": cut}


def all_trained(metrics: dict, unit: str) -> tuple[bool, str]:
    """The check: the trainer trained on every formatted example, none cut."""
    trained, formatted = metrics.get(f"train_{unit}"), metrics.get(f"formatted_train_{unit}")
    cut = metrics.get(f"{unit}_cut_by_trainer")
    if trained is None or formatted is None or cut is None:
        return False, f"the stage recorded no trained-{unit} count (built before the count existed: rebuild it)"
    lost = formatted - trained
    ok = lost == 0 and cut == 0
    detail = f"trained on {trained} of {formatted} formatted {unit}"
    if lost:
        detail += f"; the trainer dropped {lost}"
    if cut:
        detail += f"; the trainer's max_length cut {cut} of them"
    return ok, detail


def all_prompts_offered(metrics: dict) -> tuple[bool, str]:
    """The check of an online RL stage: every prompt of the SFT view's train split was given to the trainer (how many
    it reached is the recipe's max_steps or num_train_epochs, recorded apart)."""
    offered, formatted = metrics.get("offered_prompts"), metrics.get("formatted_train_rows")
    if offered is None or formatted is None:
        return False, "the stage recorded no offered-prompt count (built before the count existed: rebuild it)"
    return offered == formatted, f"{offered} prompts of {formatted} formatted train rows offered to the trainer"
