"""formatted_data: chat template applied, tokenized with the prompt masked, train/eval split."""

import dagster as dg

import engine.data.format
from assets.common import blocking_checks, emit
from engine.artifacts import Artifact, code_version
from engine.data.format import format_rows
from engine.models import load_tokenizer, model_dir
from engine.tables import QUARANTINE_COLUMNS, read_rows, write_rows
from pipelines.resources import Tuneline

CODE = code_version(engine.data.format)


def format_to(out, base: Artifact, clean: Artifact, data_cfg) -> dict:
    quarantine, report = format_rows(read_rows(clean.path / "rows.parquet"), load_tokenizer(model_dir(base.path)),
                                     data_cfg.cutoff_len, data_cfg.val_size, data_cfg.seed, out,
                                     data_cfg.decontamination_threshold)
    write_rows(quarantine, out / "quarantine.parquet", QUARANTINE_COLUMNS)
    return report


@dg.asset(group_name="data", code_version=CODE,
          check_specs=blocking_checks("formatted_data", "labels_not_empty", "lengths_within_cutoff"))
def formatted_data(tuneline: Tuneline, base_model: Artifact, clean_data: Artifact):
    """An SFT view (input_ids, labels) and a preference view (prompt, chosen, rejected), as HF datasets."""
    recipe = tuneline.recipe()
    config = recipe.data.model_dump(include={"cutoff_len", "val_size", "seed", "decontamination_threshold"})
    artifact = tuneline.build("formatted_data", [base_model, clean_data], config, CODE,
                              lambda out: format_to(out, base_model, clean_data, recipe.data))
    if not artifact.cache_hit:
        catalog = tuneline.catalog()
        catalog.replace_rows("split_rows", artifact.fingerprint, artifact.path / "splits.parquet")
        catalog.replace_rows("quarantine", artifact.fingerprint, artifact.path / "quarantine.parquet")
    m = artifact.metrics
    yield from emit(tuneline, artifact, f"sft {m['sft_train']}/{m['sft_eval']}, preference "
                    f"{m['preference_train']}/{m['preference_eval']} (train/eval)",
                    {**{k: m[k] for k in ("sft_train", "sft_eval", "preference_train", "preference_eval", "kto_train",
                                          "kto_eval", "max_tokens", "mean_tokens", "exceeds_cutoff_len",
                                          "contaminates_eval")},
                     "data_report": dg.MetadataValue.md(format_report(m))},
                    {"labels_not_empty": (m["sft_rows_without_labels"] == 0,
                                          f"{m['sft_rows_without_labels']} SFT rows with no assistant token"),
                     "lengths_within_cutoff": (m["max_tokens"] <= m["cutoff_len"],
                                               f"longest {m['max_tokens']} tokens, cutoff_len {m['cutoff_len']}")})


def format_report(m: dict) -> str:
    """Rows per source in and out, and the token-length distribution as a bar chart."""
    sources = "\n".join(f"| {s} | {n} | {m['rows_out_by_source'].get(s, 0)} |" for s, n in m["rows_in_by_source"].items())
    top = max((n for _, n in m["length_histogram"]), default=1) or 1
    bars = "\n".join(f"| {bucket} | {n} | {'█' * round(30 * n / top)} |" for bucket, n in m["length_histogram"])
    return (f"### Rows per source\n| source | in | in a split |\n|---|---|---|\n{sources}\n\n"
            f"### Token lengths (cutoff_len {m['cutoff_len']})\n| tokens | rows | |\n|---|---|---|\n{bars}\n")
