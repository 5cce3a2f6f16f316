"""What every export carries: lineage.json and a Hugging Face model card naming what made it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_export_docs(out: Path, title: str, lineage: dict, metrics: dict) -> None:
    """lineage.json and README.md in `out`. The export's own checks are not written: their thresholds are not part
    of its fingerprint, so `tuneline lineage` reports them as last evaluated."""
    record = {**lineage, "export": {"title": title, "metrics": metrics}}
    (out / "lineage.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "README.md").write_text(model_card(title, record))


def model_card(title: str, record: dict) -> str:
    sources = "\n".join(f"| {s} | {c.get('raw_rows', 0)} | {c.get('train_rows', 0)} | {c.get('eval_rows', 0)} | "
                        f"{sum(c.get('quarantined', {}).values())} |" for s, c in sorted(record["data"].items()))
    artifacts = "\n".join(f"| {asset} | `{a['fingerprint']}` | "
                          f"{', '.join(f'{k} {chr(10003) if v else chr(10007)}' for k, v in a['checks'].items())} |"
                          for asset, a in record["artifacts"].items())
    export = record["export"]
    metrics = "\n".join(f"| {k} | {v} |" for k, v in export["metrics"].items() if not isinstance(v, (list, dict)))
    settings = {asset: a["config"] for asset, a in record["artifacts"].items() if a.get("config")}
    return f"""---
library_name: transformers
tags: [tuneline, sft, dpo, lora]
---
# {title}

Made by tuneline from base model `{record['base_model']}`: SFT, then preference optimisation, merged into full
weights (and, for a quantized export, quantized after the merge). The chat template travels with the tokenizer
(`chat_template.jinja`). The whole record is in `lineage.json`; `tuneline lineage <this directory>` prints it
with this export's own checks.

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
