"""Dagster assets: one thin module per stage, each calling one engine function."""
