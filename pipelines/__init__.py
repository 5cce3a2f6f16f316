"""Dagster wiring: definitions, resources, recipes, and the `tuneline` CLI."""
