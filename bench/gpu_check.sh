#!/usr/bin/env bash
# The device check of issues 4 and 5, as one script for one GPU (at most 8 minutes):
# training throughput/MFU/memory of the 125m preset at seq 1024 and 2048 (bf16, eager and compiled), a short real-data
# run on packed tokens carried from this machine (runs/$RUN/{tokenizer,tokens}), and generation latency/throughput.
# Usage: RUN=gpu OUT=/some/dir bash bench/gpu_check.sh   (OUT defaults to ./gpu_out)
set -uo pipefail
RUN=${RUN:-gpu}; OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
timeout 360 python3 bench/train.py --device cuda --preset 125m --seqs 1024 2048 --real "runs/$RUN" --real-steps 100 \
  --out "$OUT/bench_train.json" > "$OUT/train.log" 2>&1; echo "train bench exit $?" | tee -a "$OUT/gpu.txt"
grep -v 'it/s\]' "$OUT/train.log" | tail -45
timeout 100 python3 bench/generate.py --device cuda --preset 125m --vocab 32768 --batch 8 32 128 > "$OUT/generate.log" 2>&1
echo "generate bench exit $?" | tee -a "$OUT/gpu.txt"; tail -15 "$OUT/generate.log"
