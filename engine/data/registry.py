"""The dataset registry: data/datasets.yaml, or a LLaMA-Factory dataset_info.json, unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.errors import RecipeError

SUPPORTED_SUFFIXES = (".json", ".jsonl")


class DatasetEntry(BaseModel):
    """One registry entry, with LLaMA-Factory's dataset_info.json field names."""
    model_config = ConfigDict(extra="forbid")
    file_name: str
    formatting: Literal["alpaca", "sharegpt"] = "alpaca"
    ranking: bool = False
    columns: dict[str, str] = {}
    tags: dict[str, str] = {}

    def column(self, name: str) -> str:
        defaults = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                    "history": "history", "messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
        return self.columns.get(name, defaults[name])

    def tag(self, name: str) -> str:
        defaults = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                    "system_tag": "system"}
        return self.tags.get(name, defaults[name])


def load_registry(dataset_dir: str | Path, info_file: str) -> dict[str, DatasetEntry]:
    """Parse the registry; raise RecipeError naming the file and entry when it is not usable."""
    path = Path(dataset_dir) / info_file
    if not path.is_file():
        raise RecipeError(f"data.dataset_info: registry {path} does not exist (expected datasets.yaml or dataset_info.json)")
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of dataset name to entry")
    entries = {}
    for name, body in raw.items():
        if isinstance(body, dict) and "file_name" not in body:
            hub = next((k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url") if k in body), None)
            if hub:
                raise RecipeError(f"{path}: dataset {name!r} uses {hub}; tuneline reads local files only "
                                  "(download it and set file_name)")
        try:
            entries[name] = DatasetEntry.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise RecipeError(f"{path}: dataset {name!r}: {problems}") from None
    return entries


def resolve_sources(dataset_dir: str | Path, info_file: str, names: list[str]) -> dict[str, tuple[DatasetEntry, Path]]:
    """The recipe's datasets (all registered ones when `names` is empty), each with its checked file or folder."""
    root = Path(dataset_dir).resolve()
    registry = load_registry(root, info_file)
    chosen = names or list(registry)
    resolved = {}
    for name in chosen:
        if name not in registry:
            raise RecipeError(f"data.dataset: {name!r} is not in {root / info_file} (registered: {sorted(registry)})")
        entry = registry[name]
        file = (root / entry.file_name).resolve()
        if not file.is_relative_to(root):
            raise RecipeError(f"dataset {name!r}: file_name {entry.file_name!r} escapes the data root {root}")
        if file.is_dir():  # a folder source: every supported file in it, e.g. an incoming-data drop folder
            resolved[name] = (entry, file)
            continue
        if not file.is_file():
            raise RecipeError(f"dataset {name!r}: data file {file} does not exist")
        if file.suffix not in SUPPORTED_SUFFIXES:
            raise RecipeError(f"dataset {name!r}: {file.name} has an unsupported type (expected {SUPPORTED_SUFFIXES})")
        resolved[name] = (entry, file)
    return resolved


def source_files(path: Path) -> list[Path]:
    """The data files of a source: the file itself, or a folder's supported files in name order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
    return [path]
