#!/usr/bin/env bash
# The whole graph on a GPU with a Qwen2.5-0.5B-shaped random model (hidden 896, 24 layers, 14 heads, 2 KV heads,
# MLP 4864; the vocabulary is our BPE tokenizer's 32,000, not Qwen's 151,936), in bf16, served by vLLM when it is
# installed: the full stack (Dagster too; bench/gpu_engine_smoke.py needs only the engine's). Prints per-stage time,
# peak GPU memory and dtype. Usage: bash bench/gpu_smoke.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/tuneline-gpu-smoke}}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
"$PY" - "$OUT" <<'PYTHON'
import sys
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from engine.models.base import message_texts
from engine.data.ingest import ingest
from engine.data.registry import resolve_sources
from engine.models.load import train_tokenizer

if not torch.cuda.is_available():
    sys.exit("gpu_smoke: no CUDA GPU here; run it on a GPU machine")
out = Path(sys.argv[1]) / "qwen2.5-0.5b-shape"
if not (out / "config.json").is_file():
    rows = ingest(resolve_sources("data", "datasets.yaml", []))[0]
    tokenizer = train_tokenizer(message_texts(rows), 32000)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
print(out)
PYTHON
cat > "$OUT/recipe.yaml" <<YAML
name: gpu-smoke
model: {model_name_or_path: $OUT/qwen2.5-0.5b-shape}
data: {dataset_dir: $(pwd)/data, dataset_info: datasets.yaml, dataset: [alpaca_tasks, sharegpt_tasks, openai_tasks, preference_tasks], cutoff_len: 512}
sft: {lora_rank: 16, lora_alpha: 32, learning_rate: 2.0e-4, num_train_epochs: 1, per_device_train_batch_size: 16}
reward: {lora_rank: 16, learning_rate: 2.0e-4, num_train_epochs: 1, per_device_train_batch_size: 16, min_accuracy: 0.0}
dpo: {learning_rate: 5.0e-5, num_train_epochs: 1, per_device_train_batch_size: 8, min_reward_gain: -1000}
quantize: {group_size: 128, max_ppl_ratio: 3.0, max_accuracy_drop: 1.0}
serve: {model: awq, infer_backend: auto}
YAML
START=$(date +%s)
TUNELINE_HOME="$OUT/home" DAGSTER_HOME="$OUT/home/dagster" "$PY" -m pipelines.cli run --recipe "$OUT/recipe.yaml" \
  --artifact-root "$OUT/home" || true
echo "whole graph: $(( $(date +%s) - START )) s"
"$PY" - "$OUT/home" <<'PYTHON'
import json
import sys
from pathlib import Path

print(f"{'stage':<17} {'seconds':>8} {'peak GPU GB':>12}  device/dtype")
for manifest in sorted(Path(sys.argv[1], "artifacts").glob("*/*/manifest.json"), key=lambda p: p.stat().st_mtime):
    m = json.loads(manifest.read_text())
    metrics = m["metrics"]
    print(f"{m['asset']:<17} {m['seconds']:>8} {str(metrics.get('peak_gpu_memory_gb', '-')):>12}  "
          f"{metrics.get('device', '-')}/{metrics.get('dtype', '-')}")
PYTHON
