"""formatted_data: chat template applied, tokenized with the prompt masked, train/eval split."""

import functools
from pathlib import Path

import dagster as dg

from assets.stage_asset import NOT_CONFIGURED, stage_asset
from engine.data.format import sft_view_source
from engine.data.written_views import (answers_by_row, decoded_row_ids, eval_rows, label_problems,
                                       pair_lengths_sampled, parent_dir, sft_lengths, view_splits)
from engine.graph import FORMATTED_DATA
from engine.models.load import load_tokenizer, model_dir

VIEW_COUNTS = ("sft_train", "sft_eval", "preference_train", "preference_eval", "kto_train", "kto_eval", "max_tokens",
               "mean_tokens", "truncated", "exceeds_cutoff_len", "contaminates_eval", "tools_dropped_by_template")


def format_report(m: dict) -> str:
    """Rows per source in and out (the token-length histogram is a picture: token_lengths)."""
    sources = "\n".join(f"| {s} | {n} | {m['rows_out_by_source'].get(s, 0)} |" for s, n in m["rows_in_by_source"].items())
    return (f"### Rows per source\n| source | in | in a split |\n|---|---|---|\n{sources}\n\n"
            f"cutoff_len {m['cutoff_len']}: {m['truncated']} rows truncated, longest {m['max_tokens']} tokens\n"
            + (f"\n**{m['tools_dropped_by_template']} rows have tools the chat template does not render**: the model "
               "would learn to call functions it is never shown; use a template that renders `tools`.\n"
               if m.get("tools_dropped_by_template") else ""))


# what one row of an eval split is called, and what to add when there are too few
EVAL_UNITS = {"preference": ("pairs", "pairs"), "kto": ("rows", "KTO rows")}


def judged_eval_splits(recipe) -> dict[str, list[str]]:
    """The eval splits the recipe's preference stages are judged on (reward_model's pairwise accuracy,
    dpo_adapter's reward margin): view -> those stages."""
    splits: dict[str, list[str]] = {}
    if recipe.runs("rm"):
        splits.setdefault("preference", []).append("reward_model")
    if recipe.runs("dpo"):
        splits.setdefault("kto" if recipe.dpo.pref_loss == "kto" else "preference", []).append("dpo_adapter")
    return splits


def enough_eval_pairs(artifact, recipe) -> tuple[bool, str]:
    """Each eval split a preference stage is judged on holds at least data.min_eval_pairs rows, counted in the
    written split."""
    need, splits = recipe.data.min_eval_pairs, judged_eval_splits(recipe)
    if not splits:
        return NOT_CONFIGURED, "not configured: neither rm nor dpo (or kto) is in the recipe's stages"
    verdicts = [eval_split_verdict(view, eval_rows(artifact.path, view), need, stages)
                for view, stages in splits.items()]
    return all(ok for ok, _ in verdicts), "; ".join(detail for _, detail in verdicts)


def eval_split_verdict(view: str, count: int, need: int, stages: list[str]) -> tuple[bool, str]:
    unit, more = EVAL_UNITS[view]
    if count < need:
        return False, (f"too few eval {unit}: {count} in the {view} eval split, need >= {need}, short by "
                       f"{need - count} (raise data.val_size or add {more})")
    return True, f"{count} eval {unit} in the {view} eval split ({', '.join(stages)}), need >= {need}"


@functools.lru_cache(maxsize=2)
def base_tokenizer(formatted_dir: Path):
    """The tokenizer of the base model this artifact was formatted with (its base_model parent)."""
    return load_tokenizer(model_dir(parent_dir(formatted_dir, "base_model")))


def labels_are_the_answers(artifact, recipe) -> tuple[bool, str]:
    """The written SFT view, read back: every row has label tokens, each equal to its input token, and its runs of
    label tokens decode to the assistant answers of the clean_data row it was made from (a sample of rows per
    split; a cut row's to a beginning of its answer)."""
    source, splits = sft_view_source(artifact.path), view_splits(artifact.path, "sft")
    answers = answers_by_row(parent_dir(artifact.path, "clean_data"), source, decoded_row_ids(splits))
    rows, decoded, problems = label_problems(splits, answers, base_tokenizer(artifact.path), recipe.data.cutoff_len,
                                             answers_cut_as_text=source != "sft")
    if problems:
        return False, (f"{len(problems)} of {rows} written SFT rows do not train on their answers: "
                       f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}")
    return True, (f"{rows} written SFT rows have label tokens equal to their input tokens; {decoded} decoded, each to "
                  f"its {'answers' if source == 'sft' else source + ' chosen answer'}")


PAIR_ANSWERS = {"preference": ("chosen", "rejected"), "kto": ("completion",)}


def lengths_within_cutoff(artifact, recipe) -> tuple[bool, str]:
    """The written rows' lengths against data.cutoff_len: every SFT row's input_ids; preference and KTO rows (a
    sample per split) as the trainers tokenize them, each prompt with each answer."""
    cutoff = recipe.data.cutoff_len
    rows, longest, over = sft_lengths(view_splits(artifact.path, "sft"), cutoff)
    parts = [(over == 0, f"sft: {rows} rows, longest {longest}, {over} over")]
    for view, columns in PAIR_ANSWERS.items():
        splits = view_splits(artifact.path, view)
        if not splits:
            continue
        rows, measured, pair = pair_lengths_sampled(splits, columns, base_tokenizer(artifact.path))
        over = sum(n > cutoff for n in pair)
        parts.append((over == 0, f"{view}: {measured} of {rows} rows measured, longest {max(pair, default=0)}, "
                                 f"{over} answers over"))
    return all(ok for ok, _ in parts), f"{'; '.join(detail for _, detail in parts)} (cutoff_len {cutoff})"


formatted_data = stage_asset(
    FORMATTED_DATA, group="data",
    description="An SFT view (input_ids, labels) and a preference view (prompt, chosen, rejected), as HF datasets.",
    summary=lambda a, r: (f"sft {a.metrics['sft_train']}/{a.metrics['sft_eval']}, preference "
                          f"{a.metrics['preference_train']}/{a.metrics['preference_eval']} (train/eval)"),
    metadata=lambda a, r: {**{k: a.metrics[k] for k in VIEW_COUNTS},
                           "data_report": dg.MetadataValue.md(format_report(a.metrics))},
    checks={"labels_are_the_answers": labels_are_the_answers, "lengths_within_cutoff": lengths_within_cutoff,
            "enough_eval_pairs": enough_eval_pairs})
