"""`tuneline export`: a built model artifact as a standalone Hugging Face folder anywhere the user chooses, written
atomically (a temporary folder beside it, renamed into place) from an artifact verified against its digests.

A merged, GPTQ or AWQ export is already such a folder (weights, tokenizer, chat template, generation config,
README.md model card, lineage.json): it is copied whole. An SFT, DPO, PPO or GRPO adapter is merged into its base, as
`llamafactory-cli export` does: the base (pt_model) with each training stage applied in order, saved in the base
checkpoint's dtype, with the base's tokenizer, chat template and generation config, then lineage.json and a card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import TunelineError
from engine.store.digests import LINEAGE, MANIFEST, check_directory

COPIED = ("merged_model", "gptq_model", "awq_model")  # artifacts that are Hugging Face folders already
# training stages merged into their base for export, in the order merged_model applies them (engine/export/merge.py)
MERGED = ("sft_adapter", "dpo_adapter", "ppo_adapter", "grpo_adapter")
EXPORTABLE = (*MERGED, *COPIED)


class ExportError(TunelineError):
    """An export that cannot be written where asked, or from what was named."""


def check_destination(out: Path, force: bool, store_root: Path) -> None:
    """A destination that is missing or empty, or any folder with `force`; never a file, nor a folder that holds
    or lies in the artifact store (a --force there would replace artifacts)."""
    if out.is_relative_to(store_root) or store_root.is_relative_to(out):
        raise ExportError(f"export destination {out} holds or lies in the artifact store {store_root}: choose a "
                          "folder outside it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"export destination {out} is a file, expected a folder (missing or empty)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"export destination {out} is not empty: choose another folder, or pass --force to "
                          "replace what is in it")


def stage_chain(store, artifact) -> tuple[Path, list]:
    """(the base model directory, the training artifacts applied to it in order: SFT, DPO, then PPO or GRPO) that
    make an adapter artifact: the artifact and the training stages before it that its manifest names as parents,
    each artifact on the way verified against its digests."""
    from engine.models.load import model_dir
    parents = json.loads((artifact.path / MANIFEST).read_text()).get("parents") or {}
    earlier = MERGED[:MERGED.index(artifact.asset)]
    chain = [store.lookup(asset, parents[asset]) or missing(asset, parents[asset], store)
             for asset in earlier if asset in parents]  # a stage the recipe left out is not a parent
    chain.append(artifact)
    pt_model = store.lookup("pt_model", parents.get("pt_model", "")) or missing("pt_model", parents.get("pt_model"),
                                                                                  store)
    base = model_dir(pt_model.path)
    for directory in (pt_model.path, base, *(a.path for a in chain)):
        check_directory(directory)
    return base, chain


def missing(asset: str, fingerprint: str | None, store):
    raise ExportError(f"{asset} {fingerprint}, which this export is made from, is not under {store.root}: it was "
                      "pruned or moved; rebuild it with `tuneline run`")


def write_merged(store, catalog, artifact, work: Path) -> dict:
    """The adapter artifact merged into its base in `work`, with lineage.json and a model card."""
    from engine.export.docs import write_export_docs
    from engine.export.merge import dir_size
    from engine.models.load import merge_adapters, trained_weights
    from engine.store.lineage import export_lineage
    base, chain = stage_chain(store, artifact)
    merge_adapters(base, [trained_weights(a.path) for a in chain], work)
    metrics = {"merged": ", ".join(f"{a.asset} {a.fingerprint}" for a in chain), "size_bytes": dir_size(work)}
    # the card is a merged export's (the Hub relation is the same, finetune), then lineage.json names the adapter:
    # docs.py stays as it is, since any edit to it changes merged_model's code version and rebuilds every export
    write_export_docs(work, f"{artifact.asset} {artifact.fingerprint} merged into {base.name}",
                      export_lineage(catalog, [artifact.fingerprint]), metrics, "merged_model")
    record = json.loads((work / LINEAGE).read_text())
    record["export"]["asset"] = artifact.asset
    (work / LINEAGE).write_text(json.dumps(record, indent=2, default=str))
    return metrics


def export(store, catalog, artifact, out: Path, force: bool = False) -> Path:
    """`artifact` (one of EXPORTABLE) as a standalone folder at `out`: built beside it, checked against the digests
    its lineage.json lists, then renamed into place (a replaced folder is removed only after)."""
    if artifact.asset not in EXPORTABLE:
        raise ExportError(f"export {artifact.fingerprint}: a {artifact.asset} artifact is not a model to export "
                          f"(expected one of {', '.join(EXPORTABLE)})")
    out = out.expanduser().resolve()
    check_destination(out, force, store.root)
    check_directory(artifact.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))  # same file system: rename is atomic
    try:
        if artifact.asset in COPIED:
            shutil.copytree(artifact.path, work, dirs_exist_ok=True,  # all but the store's own manifest.json
                            ignore=lambda folder, names: [MANIFEST] if Path(folder) == artifact.path else [])
        else:
            write_merged(store, catalog, artifact, work)
        check_directory(work)  # what lineage.json lists arrived whole
        os.chmod(work, 0o755)  # mkdtemp's 0700 was for the folder while it was half written
        replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def replace(work: Path, out: Path) -> None:
    """`work` renamed to `out`: an empty `out` is replaced in one rename; a full one (--force) is moved aside
    first and removed once the new folder is in place."""
    if out.is_dir() and any(out.iterdir()):
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        os.replace(out, aside / out.name)
        os.replace(work, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(work, out)  # rename(2) replaces an empty directory
