"""The dataset registry: data/datasets.yaml, or a LLaMA-Factory dataset_info.json, unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator

from engine.data.readers import SUPPORTED_SUFFIXES, check_links
from engine.errors import RecipeError

COLUMN_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                   "history": "history", "messages": "conversations", "tools": "tools", "chosen": "chosen",
                   "rejected": "rejected", "kto_tag": "kto_tag"}
TAG_DEFAULTS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
MULTIMODAL_COLUMNS = ("images", "videos", "audios")


class DatasetEntry(BaseModel):
    """One registry entry, with LLaMA-Factory's dataset_info.json field names."""
    model_config = ConfigDict(extra="forbid")
    file_name: str
    formatting: Literal["alpaca", "sharegpt"] = "alpaca"
    ranking: bool = False
    split: str = "train"  # for a save_to_disk DatasetDict folder
    num_samples: int | None = None  # read only the first N records of the source
    columns: dict[str, str] = {}
    tags: dict[str, str] = {}
    _allowed_roots: list[Path] | None = PrivateAttr(default=None)  # set by resolve_sources

    @property
    def allowed_roots(self) -> list[Path] | None:
        """Where symbolic links under this source's folder may point (the data root and data.allowed_roots)."""
        return self._allowed_roots

    @field_validator("columns")
    @classmethod
    def known_columns(cls, columns: dict[str, str]) -> dict[str, str]:
        for key in columns:
            if key in MULTIMODAL_COLUMNS:
                raise ValueError(f"column {key!r}: tuneline trains text-only models")
            if key not in COLUMN_DEFAULTS:
                raise ValueError(f"unknown column key {key!r} (expected one of {sorted(COLUMN_DEFAULTS)})")
        return columns

    @field_validator("tags")
    @classmethod
    def known_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(tags) - set(TAG_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown tag keys {unknown} (expected some of {sorted(TAG_DEFAULTS)})")
        return tags

    def column(self, name: str) -> str:
        return self.columns.get(name, COLUMN_DEFAULTS[name])

    def tag(self, name: str) -> str:
        return self.tags.get(name, TAG_DEFAULTS[name])


def load_registry(dataset_dir: str | Path, info_file: str) -> dict[str, DatasetEntry]:
    """Parse the registry; raise RecipeError naming the file and entry when it is not usable."""
    path = Path(dataset_dir) / info_file
    if not path.is_file():
        raise RecipeError(f"data.dataset_info: registry {path} does not exist (expected datasets.yaml or dataset_info.json)")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise RecipeError(f"{path}: the registry is not valid {kind}: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of dataset name to entry")
    entries = {}
    for name, body in raw.items():
        if isinstance(body, dict) and "file_name" not in body:
            hub = next((k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
                        if k in body), None)
            if hub:
                raise RecipeError(f"{path}: dataset {name!r} uses {hub}; tuneline reads local files only "
                                  "(download it and set file_name)")
        try:
            entries[name] = DatasetEntry.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise RecipeError(f"{path}: dataset {name!r}: {problems}") from None
    return entries


def resolve_sources(dataset_dir: str | Path, info_file: str, names: list[str],
                    allowed_roots: list[str] | None = None) -> dict[str, tuple[DatasetEntry, Path]]:
    """The recipe's datasets (all registered ones when `names` is empty), each with its checked file or folder.

    A file_name may not leave the data root (no `..`, no absolute path elsewhere) unless it stays inside
    one of `allowed_roots` (the recipe's data.allowed_roots).
    """
    root = Path(dataset_dir).resolve()
    roots = [root, *(Path(r).resolve() for r in allowed_roots or [])]
    registry = load_registry(root, info_file)
    resolved = {}
    for name in names or list(registry):
        if name not in registry:
            raise RecipeError(f"data.dataset: {name!r} is not in {root / info_file} (registered: {sorted(registry)})")
        entry = registry[name].model_copy()
        entry._allowed_roots = roots
        path = (root / entry.file_name).resolve()
        if not any(path.is_relative_to(r) for r in roots):
            raise RecipeError(f"dataset {name!r}: file_name {entry.file_name!r} escapes the data root {root} "
                              "(add its folder to data.allowed_roots to allow it)")
        if not path.exists():
            raise RecipeError(f"dataset {name!r}: data file {path} does not exist")
        if path.is_file() and path.suffix not in SUPPORTED_SUFFIXES:
            raise RecipeError(f"dataset {name!r}: {path.name} has an unsupported type "
                              f"(expected {', '.join(SUPPORTED_SUFFIXES)}, a save_to_disk folder or a folder of these)")
        if path.is_dir():
            check_links(path, roots)  # DataError naming a link that leaves the roots or points nowhere
        resolved[name] = (entry, path)
    return resolved


def recipe_sources(data) -> dict[str, tuple[DatasetEntry, Path]]:
    """resolve_sources for a recipe's `data` section."""
    return resolve_sources(data.dataset_dir, data.dataset_info, data.dataset, data.allowed_roots)
