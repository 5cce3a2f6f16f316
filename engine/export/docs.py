"""What every export carries: lineage.json and a Hugging Face model card naming what made it.

The card's YAML front matter is the Hub's model card metadata, written by huggingface_hub's ModelCardData:
base_model and base_model_relation (the Hub's model tree), datasets, pipeline_tag, library_name, tags and a
model-index of the results known when the card is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

# the Hub's base_model_relation of each export to the base model. A LoRA merged into the base is a fine-tune of it:
# the Hub's "merge" means a merge of several models (mergekit) and would list the export under the base's Merges
RELATIONS = {"merged_model": "finetune", "gptq_model": "quantized", "awq_model": "quantized"}
# a recorded check: passed, failed, or None, not evaluated (the recipe turns off what it judges)
VERDICTS = {True: "passed", False: "failed", None: "not configured"}
MARKS = {True: "\u2713", False: "\u2717", None: "not configured"}
HUB_CACHE_PREFIX = "models--"  # a Hub cache snapshot: .../models--<org>--<name>/snapshots/<revision>


def write_export_docs(out: Path, title: str, lineage: dict, metrics: dict, export: str) -> None:
    """lineage.json and README.md in `out` for `export` (merged_model, gptq_model or awq_model). The export's own
    checks are not written: their thresholds are not part of its fingerprint, so `tuneline lineage` reports them as
    last evaluated."""
    from engine.store.digests import LINEAGE, file_digests
    # the export's own files as written (size, sha256): `tuneline verify <a copy of it>` checks them anywhere
    record = {**lineage, "export": {"title": title, "asset": export, "metrics": metrics},
              "files": file_digests(out, skip=(LINEAGE, "README.md"))}
    (out / "lineage.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "README.md").write_text(model_card(record, export_results(record)))


def hub_model_id(name_or_path: str | None) -> str | None:
    """The base model's Hub id, or None where it has none: the tiny preset (random weights made here), a local
    checkpoint that is not a Hub cache snapshot."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not name_or_path or name_or_path == "tiny":
        return None
    path = Path(name_or_path).expanduser()
    cached = [p for p in path.parts if p.startswith(HUB_CACHE_PREFIX)]
    if cached:
        return cached[-1].removeprefix(HUB_CACHE_PREFIX).replace("--", "/")
    if path.exists() or "/" not in name_or_path:
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def held_out(record: dict) -> dict:
    """The eval split results are measured on: formatted_data's held-out SFT split, by fingerprint."""
    formatted, sources = record["artifacts"].get("formatted_data", {}), ", ".join(sorted(record["data"]))
    return {"dataset_type": "tuneline/formatted_data", "dataset_name": f"held-out SFT split of {sources}",
            "dataset_split": "eval", "dataset_revision": formatted.get("fingerprint")}


def export_results(record: dict) -> list:
    """What the export measured when it was made: perplexity on the held-out split (the gates come later, with
    evaluation: the deployment's card carries them)."""
    from huggingface_hub import EvalResult
    perplexity = record["export"]["metrics"].get("eval_perplexity")
    if perplexity is None:
        return []
    return [EvalResult(task_type="text-generation", metric_type="perplexity", metric_value=perplexity,
                       metric_name="perplexity on the held-out split, measured at export", **held_out(record))]


def card_data(record: dict, results: list):
    """The Hub's model card metadata for the export `record` describes."""
    from huggingface_hub import ModelCardData
    base, relation = hub_model_id(record.get("base_model")), RELATIONS[record["export"]["asset"]]
    lineage = {"base_model": base, "base_model_relation": relation} if base else {}
    trained = [s.split("_")[0] for s in ("pt_model", "sft_adapter", "dpo_adapter", "ppo_adapter", "grpo_adapter")
               if s in record["artifacts"]]
    quantized = ["compressed-tensors", "4-bit"] if relation == "quantized" else []
    return ModelCardData(**lineage, datasets=sorted(record["data"]), pipeline_tag="text-generation",
                         library_name="transformers", model_name=record["export"]["title"],
                         tags=["tuneline", *trained, *quantized], eval_results=results or None)


def model_card(record: dict, results: list, evaluation: str = "") -> str:
    """README.md: the front matter (card_data), then the lineage in words and tables; `evaluation`, Markdown
    inserted before the lineage tables (the deployment's card: the served export's evaluation and gates)."""
    sources = "\n".join(f"| {s} | {c.get('raw_rows', 0)} | {c.get('train_rows', 0)} | {c.get('eval_rows', 0)} | "
                        f"{sum(c.get('quarantined', {}).values())} |" for s, c in sorted(record["data"].items()))
    artifacts = "\n".join(f"| {asset} | `{a['fingerprint']}` | "
                          f"{', '.join(f'{k} {MARKS[v]}' for k, v in a['checks'].items())} |"
                          for asset, a in record["artifacts"].items())
    export = record["export"]
    metrics = "\n".join(f"| {k} | {v} |" for k, v in export["metrics"].items() if not isinstance(v, (list, dict)))
    settings = {asset: a["config"] for asset, a in record["artifacts"].items() if a.get("config")}
    base, hub = record.get("base_model"), hub_model_id(record.get("base_model"))
    no_hub = "" if hub else (" It is not a Hugging Face Hub model, so the metadata names no `base_model`; add the "
                             "Hub id of the checkpoint it came from before pushing.")
    return f"""---
{card_data(record, results).to_yaml()}
---
# {export['title']}

Made by tuneline from base model `{base}`: SFT, then preference optimisation, merged into full
weights (and, for a quantized export, quantized after the merge).{no_hub} The chat template travels with the
tokenizer (`chat_template.jinja`). The whole record is in `lineage.json`; `tuneline lineage <this directory>`
prints it with this export's own checks. The data sources are named in `datasets` by their registry names.
{evaluation}
## Data sources
| source | raw rows | train rows | eval rows | quarantined |
|---|---|---|---|---|
{sources}

## Metrics
| metric | value |
|---|---|
{metrics}

## Made from (checks as recorded when this export was made)
| asset | fingerprint | checks |
|---|---|---|
{artifacts}

## Recipe keys each stage read
```yaml
{yaml.safe_dump(settings, sort_keys=False)}```
"""


def deployment_card(export_dir: Path, evaluation: dict, gates: dict[str, tuple[bool, str]]) -> str:
    """The served export's card with its evaluation (accuracy, perplexity, similarity and reward score on the
    held-out split) and the deployment gates, as recorded when the deployment was made, in its model-index."""
    from huggingface_hub import EvalResult
    record = json.loads((export_dir / "lineage.json").read_text())
    split = held_out(record)
    measured = [EvalResult(task_type="text-generation", metric_type=k, metric_value=evaluation[k],
                           metric_name=f"{k} (n={evaluation.get('samples')})", **split)
                for k in ("accuracy", "perplexity", "similarity", "reward_score") if evaluation.get(k) is not None]
    verdicts = [EvalResult(task_type="text-generation", metric_type=name,
                           metric_value=VERDICTS[passed], metric_name=detail, **split)
                for name, (passed, detail) in gates.items()]
    table = "\n".join(f"| {name} | {VERDICTS[passed].replace('failed', 'FAILED')} | {detail} |"
                      for name, (passed, detail) in gates.items())
    evaluation_md = (f"\n## Deployment gates (as recorded when this deployment was made)\n| gate | verdict | detail |\n"
                     f"|---|---|---|\n{table}\n")
    return model_card(record, measured + verdicts, evaluation_md)
