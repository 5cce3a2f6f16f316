"""Data stages: ingest registered sources, clean and deduplicate, format for training."""
