#!/usr/bin/env bash
# Issue 4's open question on one GPU (about 6-8 minutes): which lever lifts the 125m preset toward 50% MFU?
# Same card, same call: the baseline (torch.compile default mode, PyTorch's own SDPA choice; 36.3% on an H200 on
# 2026-11-27), the same with cuDNN attention only, and max-autotune GEMMs; 65536-token micro-batches at seq 1024,
# bf16, synthetic tokens; then 100 compiled steps on real packed tokens (runs/$RUN/{tokenizer,tokens}, carried).
# Usage: RUN=gpu OUT=/some/dir bash bench/gpu_levers.sh   (OUT defaults to ./gpu_out)
set -uo pipefail
RUN=${RUN:-gpu}; OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
common="--device cuda --preset 125m --seqs 1024 --micro-tokens 65536 --accum 1 --steps 25 --warm 8"
timeout 240 python3 bench/train.py $common --modes default --attention auto cudnn --real "runs/$RUN" --real-steps 100 --real-mode default \
  --out "$OUT/levers.json" > "$OUT/levers.log" 2>&1; echo "levers exit $?" | tee -a "$OUT/gpu.txt"
grep -v 'it/s\]' "$OUT/levers.log" | tail -20
timeout 300 python3 bench/train.py $common --modes max-autotune-no-cudagraphs --out "$OUT/autotune.json" > "$OUT/autotune.log" 2>&1
echo "autotune exit $?" | tee -a "$OUT/gpu.txt"; grep -v 'it/s\]' "$OUT/autotune.log" | tail -12
