"""formatted_data: chat template applied, tokenized with the prompt masked, train/eval split."""

import dagster as dg

from assets.stage_asset import NOT_CONFIGURED, stage_asset
from engine.graph import FORMATTED_DATA

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
    """Each eval split a preference stage is judged on holds at least data.min_eval_pairs rows."""
    need, splits = recipe.data.min_eval_pairs, judged_eval_splits(recipe)
    if not splits:
        return NOT_CONFIGURED, "not configured: neither rm nor dpo (or kto) is in the recipe's stages"
    verdicts = [eval_split_verdict(view, artifact.metrics[f"{view}_eval"], need, stages)
                for view, stages in splits.items()]
    return all(ok for ok, _ in verdicts), "; ".join(detail for _, detail in verdicts)


def eval_split_verdict(view: str, count: int, need: int, stages: list[str]) -> tuple[bool, str]:
    unit, more = EVAL_UNITS[view]
    if count < need:
        return False, (f"too few eval {unit}: {count} in the {view} eval split, need >= {need}, short by "
                       f"{need - count} (raise data.val_size or add {more})")
    return True, f"{count} eval {unit} in the {view} eval split ({', '.join(stages)}), need >= {need}"


formatted_data = stage_asset(
    FORMATTED_DATA, group="data",
    description="An SFT view (input_ids, labels) and a preference view (prompt, chosen, rejected), as HF datasets.",
    summary=lambda a, r: (f"sft {a.metrics['sft_train']}/{a.metrics['sft_eval']}, preference "
                          f"{a.metrics['preference_train']}/{a.metrics['preference_eval']} (train/eval)"),
    metadata=lambda a, r: {**{k: a.metrics[k] for k in VIEW_COUNTS},
                           "data_report": dg.MetadataValue.md(format_report(a.metrics))},
    checks={"labels_not_empty": lambda a, r: (a.metrics["sft_rows_without_labels"] == 0,
                                              f"{a.metrics['sft_rows_without_labels']} SFT rows with no assistant token"),
            "lengths_within_cutoff": lambda a, r: (a.metrics["max_tokens"] <= a.metrics["cutoff_len"],
                                                   f"longest {a.metrics['max_tokens']} tokens, cutoff_len "
                                                   f"{a.metrics['cutoff_len']}"),
            "enough_eval_pairs": enough_eval_pairs})
