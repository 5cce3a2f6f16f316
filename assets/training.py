"""What every training stage reads beyond its own keys: how many processes train together (the launcher)."""

from engine.models.device import with_precision
from engine.stage import Stage
from engine.train.launch import world_size

# the launcher section says how processes start; only their number changes what is learned (the global batch)
LAUNCHER = ("launcher",)


def processes(recipe) -> dict:
    return {"processes": world_size(recipe.launcher)}


# the training stages a recipe's `stages` turns off, by the asset each makes
SWITCHED = {"sft_adapter": "sft", "reward_model": "rm", "dpo_adapter": "dpo"}


def parents_run(parents: tuple[str, ...], recipe) -> tuple[str, ...]:
    """`parents` without the training stages the recipe does not run: without sft a stage starts from pt_model (the
    base model, with model.adapter_name_or_path merged in), without rm nothing scores, without dpo nothing is
    merged on top."""
    return tuple(p for p in parents if p not in SWITCHED or recipe.runs(SWITCHED[p]))


def switchable_training_stage(name: str, entry, parents: tuple[str, ...], keys: tuple[str, ...], switch: str,
                              off_reason: str) -> Stage:
    """A training stage the recipe's `stages` list turns on or off (sft, rm, dpo): off, it reads only that list,
    since its own section cannot change what it records. On, it starts from the SFT model only where sft runs."""
    return Stage(name, entry=entry, parents=parents, keys=keys, locate=LAUNCHER, training=True,
                 select=lambda recipe: (parents_run(parents, recipe), keys) if recipe.runs(switch) else ((), ("stages",)),
                 off=lambda recipe: None if recipe.runs(switch) else off_reason,
                 outside=with_precision(lambda recipe, hasher: processes(recipe)))
