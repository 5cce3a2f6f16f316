"""Exports: adapters merged into full weights, then 4-bit quantized checkpoints vLLM loads."""
