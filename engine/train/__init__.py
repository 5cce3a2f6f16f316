"""Training stages: TRL's SFT, reward and DPO trainers with PEFT LoRA adapters."""
