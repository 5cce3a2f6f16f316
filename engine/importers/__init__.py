"""Importers: other tools' configurations (LLaMA-Factory training YAMLs) turned into one tuneline recipe."""
