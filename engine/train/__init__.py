"""Training stages: continued pre-training, TRL's SFT, reward and DPO/KTO/ORPO trainers with PEFT adapters or full weights,
run in a process of their own that resumes from its last complete checkpoint."""
