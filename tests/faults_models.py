"""Faults of the models checks (see tests/faults.py)."""

FAULTS = {}
