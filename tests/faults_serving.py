"""Faults of the serving checks (see tests/faults.py)."""

FAULTS = {}
