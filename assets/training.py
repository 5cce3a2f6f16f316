"""What every training stage reads beyond its own keys: how many processes train together (the launcher)."""

from engine.train.launch import world_size

# the launcher section says how processes start; only their number changes what is learned (the global batch)
LAUNCHER = ("launcher",)


def processes(recipe) -> dict:
    return {"processes": world_size(recipe.launcher)}
