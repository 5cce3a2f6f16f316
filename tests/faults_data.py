"""Faults of the data checks (see tests/faults.py)."""

FAULTS = {}
