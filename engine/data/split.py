"""The train/eval split, shared by the formatted data and the pt corpus."""

import random


def split_of(content_hash: str, val_size: float, seed: int) -> str:
    """Deterministic per row: the same row lands in the same split whatever else is in the data."""
    return "eval" if random.Random(f"{seed}:{content_hash}").random() < val_size else "train"
