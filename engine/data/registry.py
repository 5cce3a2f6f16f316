"""The dataset registry: data/datasets.yaml, or a LLaMA-Factory dataset_info.json, unchanged."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from engine.data.readers import SUPPORTED_SUFFIXES, check_links, source_records
from engine.errors import DataError, RecipeError

COLUMN_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                   "history": "history", "messages": "conversations", "tools": "tools", "chosen": "chosen",
                   "rejected": "rejected", "kto_tag": "kto_tag"}
TAG_DEFAULTS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
MULTIMODAL_COLUMNS = ("images", "videos", "audios")
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")  # LLaMA-Factory's precedence
FORMAT_COLUMNS = {  # the columns each formatting reads (LLaMA-Factory's converters)
    "alpaca": ("prompt", "query", "response", "system", "history", "tools", "chosen", "rejected", "kto_tag"),
    "sharegpt": ("messages", "system", "tools", "chosen", "rejected", "kto_tag"),
}
FORMAT_COLUMNS["openai"] = FORMAT_COLUMNS["sharegpt"]
CHECKED_RECORDS = 200  # check_columns looks at this many first records of a source


class DatasetEntry(BaseModel):
    """One registry entry, with LLaMA-Factory's dataset_info.json schema (src/llamafactory/data/parser.py).

    Where the data comes from, in LLaMA-Factory's order: `hf_hub_url` (loaded with datasets.load_dataset:
    a hub id, or a local dataset directory), `ms_hub_url`, `om_hub_url`, `script_url`, `cloud_file_name`, else
    `file_name` (relative to dataset_dir). tuneline reads file_name and hf_hub_url; the others are accepted
    in the registry and refused only when the recipe selects them. `subset`, `folder`, `split` and `revision`
    go to load_dataset as name, data_dir, split and revision; `split` also picks a split of a save_to_disk
    DatasetDict folder. `num_samples` reads the first N records (LLaMA-Factory samples N at random).
    `load_from` is LLaMA-Factory's internal attribute; accepted and ignored (the keys above decide).
    """
    model_config = ConfigDict(extra="forbid")
    file_name: str | None = None
    hf_hub_url: str | None = None
    ms_hub_url: str | None = None
    om_hub_url: str | None = None
    script_url: str | None = None
    cloud_file_name: str | None = None
    load_from: Literal["hf_hub", "ms_hub", "om_hub", "script", "file", "cloud_file"] | None = None
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: bool = False
    subset: str | None = None
    folder: str | None = None
    split: str = "train"
    revision: str | None = None
    num_samples: int | None = Field(None, ge=1)  # read only the first N records of the source
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
            if key not in COLUMN_DEFAULTS and key not in MULTIMODAL_COLUMNS:
                raise ValueError(f"unknown column key {key!r} (expected one of "
                                 f"{sorted([*COLUMN_DEFAULTS, *MULTIMODAL_COLUMNS])})")
        return columns

    @field_validator("tags")
    @classmethod
    def known_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(tags) - set(TAG_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown tag keys {unknown} (expected some of {sorted(TAG_DEFAULTS)})")
        return tags

    @model_validator(mode="after")
    def has_a_source(self):
        if self.file_name is None and self.hub_key is None:
            raise ValueError(f"no data: set file_name (or one of {', '.join(HUB_KEYS)})")
        return self

    @property
    def hub_key(self) -> str | None:
        """The key that names where the data is when it is not file_name; None for a file_name entry."""
        return next((k for k in HUB_KEYS if getattr(self, k)), None)

    @property
    def multimodal(self) -> list[str]:
        return [c for c in MULTIMODAL_COLUMNS if c in self.columns]

    def column(self, name: str) -> str:
        return self.columns.get(name, COLUMN_DEFAULTS[name])

    def tag(self, name: str) -> str:
        return self.tags.get(name, TAG_DEFAULTS[name])


@dataclass
class Selection:
    """What a recipe's data.dataset selects: sources {name: (entry, path)} and the registered entries it does
    not use, [{"name", "reason"}] (hub or multimodal entries not selected, entries not named): for reports."""
    sources: dict[str, tuple[DatasetEntry, Path]]
    not_used: list[dict[str, str]] = field(default_factory=list)


DEFAULT_REGISTRY, LLAMAFACTORY_REGISTRY = "datasets.yaml", "dataset_info.json"


def registry_file(dataset_dir: str | Path, info_file: str) -> Path:
    """The registry a recipe names; with the default name, a folder that has only LLaMA-Factory's dataset_info.json
    uses it, as LLaMA-Factory would."""
    path = Path(dataset_dir) / info_file
    if info_file == DEFAULT_REGISTRY and not path.exists() and (Path(dataset_dir) / LLAMAFACTORY_REGISTRY).is_file():
        return Path(dataset_dir) / LLAMAFACTORY_REGISTRY
    return path


def read_registry(dataset_dir: str | Path, info_file: str) -> dict[str, object]:
    """The registry file as a mapping of dataset name to raw entry; RecipeError when the file is unusable."""
    path = registry_file(dataset_dir, info_file)
    if not path.is_file():
        raise RecipeError(f"data.dataset_info: registry {path} does not exist (expected {DEFAULT_REGISTRY} or "
                          f"{LLAMAFACTORY_REGISTRY})")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise RecipeError(f"{path}: the registry is not valid {kind}: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of dataset name to entry")
    return raw


def parse_entry(registry: Path, name: str, body: object) -> DatasetEntry:
    try:
        return DatasetEntry.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise RecipeError(f"{registry}: dataset {name!r}: {problems}") from None


def load_registry(dataset_dir: str | Path, info_file: str, names: list[str] | None = None) -> dict[str, DatasetEntry]:
    """The registry's entries, parsed: those in `names`, or every entry when `names` is None. An entry that is
    not asked for is never validated, so a registry with entries tuneline cannot use still serves the rest."""
    raw = read_registry(dataset_dir, info_file)
    path = registry_file(dataset_dir, info_file)
    return {name: parse_entry(path, name, body) for name, body in raw.items() if names is None or name in names}


def select_sources(dataset_dir: str | Path, info_file: str, names: list[str],
                   allowed_roots: list[str] | None = None, check: bool = True) -> Selection:
    """The recipe's datasets, each with its checked location, and the entries it does not use.

    `names` empty selects every registered entry tuneline can read from this machine: file_name entries and
    hf_hub_url entries that are local directories; the rest (hub, script, cloud or multimodal entries, entries
    that do not validate) are listed in `not_used` with the reason. A named entry is validated and refused
    with a RecipeError naming it when tuneline cannot use it (multimodal columns, ms_hub_url, om_hub_url,
    script_url, cloud_file_name; hf_hub_url while HF_HUB_OFFLINE=1 unless it is a local directory).

    A file_name (or local hf_hub_url directory) may not leave the data root (no `..`, no absolute path
    elsewhere) unless it stays inside one of `allowed_roots`; symbolic links under a folder must resolve inside
    them too (DataError naming the link). With `check`, every selected source's named columns are checked
    against its first records (check_columns) before any work.
    """
    root = Path(dataset_dir).resolve()
    roots = [root, *(Path(r).resolve() for r in allowed_roots or [])]
    registry_path = registry_file(root, info_file)
    raw = read_registry(root, info_file)
    for name in names:
        if name not in raw:
            raise RecipeError(f"data.dataset: {name!r} is not in {registry_path} (registered: {sorted(raw)})")
    selection = Selection({}, [{"name": name, "reason": "; ".join(filter(None, (
        "not in data.dataset", unusable_reason(registry_path, name, raw[name], root))))}  # and why it could not be
        for name in raw if name not in names] if names else [])
    for name in dict.fromkeys(names or raw):  # the recipe's order: the first-listed source wins a duplicate group
        body = raw[name]
        if not names:
            reason = unusable_reason(registry_path, name, body, root)
            if reason:
                selection.not_used.append({"name": name, "reason": reason})
                continue
        entry = parse_entry(registry_path, name, body).model_copy()
        entry._allowed_roots = roots
        path = locate(registry_path, name, entry, root, roots)
        if check:
            check_columns(name, entry, path)
        selection.sources[name] = (entry, path)
    return selection


def unusable_reason(registry: Path, name: str, body: object, root: Path) -> str | None:
    """Why an entry that the recipe did not name is left out of "every registered dataset", or None."""
    try:
        entry = parse_entry(registry, name, body)
    except RecipeError as exc:
        return f"invalid: {str(exc).split(': ', 2)[-1]}"
    if entry.multimodal:
        return f"multimodal ({', '.join(entry.multimodal)} columns)"
    if entry.hub_key == "hf_hub_url" and local_hub_dir(entry, root) is None:
        return "hf_hub_url (a hub dataset is loaded only when data.dataset names it)"
    if entry.hub_key and entry.hub_key != "hf_hub_url":
        return f"{entry.hub_key} (tuneline reads file_name and hf_hub_url)"
    return None


def local_hub_dir(entry: DatasetEntry, root: Path) -> Path | None:
    """An hf_hub_url that names a local directory (relative to dataset_dir, or absolute), else None."""
    for candidate in (root / entry.hf_hub_url, Path(entry.hf_hub_url).expanduser()):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def locate(registry: Path, name: str, entry: DatasetEntry, root: Path, roots: list[Path]) -> Path:
    """Where a selected entry's data is: a checked local path, or for a hub dataset its id as a Path."""
    if entry.multimodal:
        raise RecipeError(f"dataset {name!r}: columns {', '.join(entry.multimodal)}: tuneline trains text-only "
                          f"models (remove {name!r} from data.dataset)")
    if entry.hub_key and entry.hub_key != "hf_hub_url":
        raise RecipeError(f"dataset {name!r}: {entry.hub_key} is not supported; tuneline reads file_name and "
                          "hf_hub_url (download it and set file_name)")
    if entry.hub_key == "hf_hub_url":
        local = local_hub_dir(entry, root)
        if local is None:
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
                raise RecipeError(f"dataset {name!r}: hf_hub_url {entry.hf_hub_url!r} is a hub dataset and "
                                  "HF_HUB_OFFLINE=1 is set (download it, or unset HF_HUB_OFFLINE)")
            return Path(entry.hf_hub_url)
        path, key = local, "hf_hub_url"
    else:
        path, key = (root / entry.file_name).resolve(), "file_name"
    value = getattr(entry, key)
    if not any(path.is_relative_to(r) for r in roots):
        raise RecipeError(f"dataset {name!r}: {key} {value!r} escapes the data root {root} "
                          "(add its folder to data.allowed_roots to allow it)")
    if not path.exists():
        raise RecipeError(f"dataset {name!r}: data file {path} does not exist")
    if key == "file_name" and path.is_file() and path.suffix not in SUPPORTED_SUFFIXES:
        raise RecipeError(f"dataset {name!r}: {path.name} has an unsupported type "
                          f"(expected {', '.join(SUPPORTED_SUFFIXES)}, a save_to_disk folder or a folder of these)")
    if path.is_dir():
        check_links(path, roots)  # DataError naming a link that leaves the roots or points nowhere
    return path


def check_columns(name: str, entry: DatasetEntry, path: Path, records: int = CHECKED_RECORDS) -> None:
    """A column the registry names (`columns`) that none of the source's first `records` records has stops the
    run: RecipeError naming the dataset, the column and the columns the file has. Only the columns the entry's
    formatting reads are checked; records that are not objects are skipped (ingest quarantines them).
    Called by select_sources (so by resolve_sources and recipe_sources) for every selected source."""
    named = {key: column for key, column in entry.columns.items() if key in FORMAT_COLUMNS[entry.formatting]}
    if not named:
        return
    seen, looked = set(), 0
    try:
        for _, record in source_records(name, entry, path, limit=records):
            if isinstance(record, dict):
                seen.update(record)
                looked += 1
                if all(column in seen for column in named.values()):
                    return
    except DataError:
        return  # a file that cannot be read at all is reported by the reader, with its position
    if not looked:
        return
    for key, column in named.items():
        if column not in seen:
            raise RecipeError(f"dataset {name!r}: columns.{key} is {column!r}, but {path.name} has no such column "
                              f"(its first {looked} records have {sorted(map(str, seen))})")


def resolve_sources(dataset_dir: str | Path, info_file: str, names: list[str],
                    allowed_roots: list[str] | None = None) -> dict[str, tuple[DatasetEntry, Path]]:
    """select_sources(...).sources: the recipe's datasets (all usable registered ones when `names` is empty),
    each with its checked file, folder or hub id; columns checked against the first records."""
    return select_sources(dataset_dir, info_file, names, allowed_roots).sources


def recipe_sources(data) -> dict[str, tuple[DatasetEntry, Path]]:
    """resolve_sources for a recipe's `data` section."""
    return resolve_sources(data.dataset_dir, data.dataset_info, data.dataset, data.allowed_roots)


def recipe_selection(data) -> Selection:
    """select_sources for a recipe's `data` section: sources and the registered entries not used."""
    return select_sources(data.dataset_dir, data.dataset_info, data.dataset, data.allowed_roots)
