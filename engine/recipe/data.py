"""The `data` section: where the datasets are, which of them a run reads, and how rows are rendered and split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.recipe.fields import Float, Int, Section, check_threshold, operational


class DataSection(Section):
    """The dataset registry and the chat-template rendering every training stage reads (LLaMA-Factory's data keys)."""
    dataset_dir: str = Field("data", description="LLaMA-Factory's key: the folder holding the registry "
                                                 "(dataset_info) and the data files it names")
    dataset_info: str = Field("datasets.yaml", description="the registry inside dataset_dir: a datasets.yaml or "
                                                           "LLaMA-Factory's dataset_info.json (found by itself where "
                                                           "no datasets.yaml is)")
    dataset: list[str] = Field(default_factory=list, description="LLaMA-Factory's key, as a list: the registry names "
                                                                 "a run reads; empty: every registered one")
    allowed_roots: list[str] = Field(default_factory=list, description="folders outside dataset_dir that a "
                                                                       "registry entry's file_name (or a link in its "
                                                                       "folder) may point into")
    cutoff_len: Int = Field(128, ge=8, description="LLaMA-Factory's key: the most tokens of one rendered row (prompt "
                                                   "and answer); longer rows follow overlength. LLaMA-Factory's "
                                                   "default: 2048")
    max_samples: Int | None = Field(None, ge=1, description="LLaMA-Factory's key: store only each dataset's first "
                                                            "max_samples records (the rest are counted, not stored); "
                                                            "unset: all")
    template: str | None = Field(
        None, description="LLaMA-Factory's template name: the checkpoint's own chat template renders every row, and "
        "formatted_data stops when it does not render turns as this LLaMA-Factory template does (unset: no such "
        "check). tuneline never swaps in another template: a model is served with the template it was trained with")
    default_system: str | None = Field(
        None, description="LLaMA-Factory's key: the system prompt of every rendered row that has none of its own "
        "(replacing the chat template's default, e.g. SmolLM2's \"You are a helpful AI assistant named "
        "SmolLM...\"); unset: the template's")
    overlength: Literal["truncate", "drop"] = Field(
        "truncate", description="rows over cutoff_len: truncate cuts them as LLaMA-Factory cuts; drop quarantines "
        "them")
    preprocessing_num_workers: Int | None = operational(
        None, ge=1, description="operational: LLaMA-Factory's key: the processes clean_data runs its row-local "
        "steps on and formatted_data renders and tokenizes rows on (the rows written are the same for any number); "
        "unset: every core for 20,000 rows or more, one process below (a worker's start-up costs more than it saves there). LLaMA-Factory's default: one process")
    val_size: Float = Field(0.1, gt=0, lt=1, description="LLaMA-Factory's key: the share of rows held out as the eval "
                                                         "split (every check, gate and evaluation reads it). "
                                                         "LLaMA-Factory's default: 0.0 (no eval split)")
    seed: Int = Field(42, description="seed of the train/eval split (LLaMA-Factory splits with its training seed, "
                                      "also 42)")
    decontamination_threshold: Float | None = Field(
        0.8, gt=0, le=1, description="a train row this close to an eval row (Jaccard similarity estimated by MinHash "
        "over the texts near_dedup judges) is quarantined as contaminates_eval; unset: off. LLaMA-Factory has no "
        "such step")
    min_eval_pairs: Int = check_threshold(
        32, ge=1, description="check: the fewest rows the eval split a preference stage is judged on may hold "
        "(preference pairs for rm and dpo, KTO rows for kto); below it the formatted_data check fails, since an "
        "accuracy from a handful of pairs means nothing")
    memory_gb: Float = operational(
        4.0, gt=0, description="operational: the memory clean_data's exact_dedup and near_dedup (and its "
        "no_exact_duplicates check), and formatted_data's decontamination, may hold; a corpus whose dedup would hold "
        "more goes through spilled partitions on disk (in the stage's work directory) with the same kept rows. "
        "LLaMA-Factory has no such key")
    engine: Literal["local", "ray"] = operational(
        "local", description="operational: where clean_data runs its steps: local (this machine's processes) or ray "
        "(Ray Data on the cluster at ray_address; needs `pip install -e '.[ray]'`). The rows, quarantine, clusters, "
        "rewrites and report are the same on either. LLaMA-Factory has no such key")
    ray_address: str | None = operational(
        None, description="operational: the Ray cluster data.engine ray runs on (e.g. ray://head:10001, or auto for "
        "the cluster this machine belongs to); unset: a local Ray started with this machine's cores. LLaMA-Factory "
        "has no such key")
