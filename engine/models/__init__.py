"""Models: loading checkpoints (Hugging Face folders, GGUF files, the built-in tiny preset), the base_model stage, the
one device and dtype policy, attention for training, and which engine runs inference."""
