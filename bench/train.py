"""Training throughput and quality of codecomplete.train's loop: tokens/s, MFU and peak memory for a list of *levers*
(named settings: compile mode, preset, attention kernel, chunked loss, optimizer) at each sequence length on synthetic
tokens, validation bits per byte of the same levers on real packed tokens, and (on CPU) the same model, data and batch
under transformers' Trainer. Prints markdown tables and writes a JSON summary.

A lever is `NAME:key=value,key=value`: `mode` is eager or a torch.compile mode (default, max-autotune-no-cudagraphs,
max-autotune, reduce-overhead); every other key is a TrainConfig setting (preset, attention, loss_chunk_tokens, optimizer,
lr, ...), over the base `--preset`.

GPU levers at two lengths:  python bench/train.py --device cuda --preset 125m --seqs 1024 2048 --micro-tokens 65536 --accum 1 \\
                              --levers hd64:preset=125m-hd64,loss_chunk_tokens=0 hd128:loss_chunk_tokens=0 hd128-cudnn:attention=cudnn
CPU check of every path:     python bench/train.py --device cpu --preset tiny --seqs 64 --micro-tokens 512 --steps 6 --warm 2 --real runs/NAME
CPU optimizer comparison:    python bench/train.py --device cpu --preset tiny --seqs 128 --micro-tokens 2048 --accum 1 --steps 0 --real runs/NAME \\
                              --real-seq 128 --real-steps 300 --real-levers adamw:lr=3e-3 muon:optimizer=muon,lr=3e-3
CPU comparison with Trainer: python bench/train.py --device cpu --preset cpu-small --seqs 256 --micro-tokens 2048 --steps 20 --compare-trainer --levers eager:mode=eager
The GPU path imports only torch, numpy, transformers, accelerate, tokenizers, pyarrow, yaml and tqdm (no datasets)."""

import argparse, json, os, platform, resource, statistics, sys, tempfile, time
from pathlib import Path

def lever(text: str) -> tuple[str, dict]:
    "`NAME:key=value,...` -> (NAME, {key: value})."
    name, _, spec = text.partition(":")
    return name, dict(kv.split("=", 1) for kv in spec.split(",") if kv)

def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--preset", default="125m", help="base preset of every lever")
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--micro-tokens", type=int, default=32768, help="tokens per micro-batch (micro_batch = this / seq)")
    p.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per lever and length (the first --warm are not timed); 0 = no synthetic runs")
    p.add_argument("--warm", type=int, default=10)
    p.add_argument("--vocab", type=int, default=32768, help="vocabulary of the synthetic runs")
    p.add_argument("--levers", type=lever, nargs="+", default=[lever("eager:mode=eager"), lever("compiled:mode=default")],
                   help="NAME:key=value,... (see above); each is timed at every --seqs")
    p.add_argument("--real", help="run folder with tokenizer/ and tokens/ (packed) for real-data runs")
    p.add_argument("--real-steps", type=int, default=150)
    p.add_argument("--real-seq", type=int, default=1024)
    p.add_argument("--real-levers", type=lever, nargs="+", default=[lever("real:mode=eager")], help="levers of the real-data runs (same tokens, same steps)")
    p.add_argument("--compare-trainer", action="store_true", help="also time transformers.Trainer on the same model, data and batch (CPU)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak of one device for MFU when the card is not known (e.g. a CPU)")
    p.add_argument("--out", default="bench_train.json")
    return p.parse_args()

args = parse()
if args.device == "cpu": os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np, torch
from codecomplete.model import model_config, build_model, count_params, flops_per_token
from codecomplete.pack import read_meta
from codecomplete.tokenizer import SPECIAL_TOKENS
from codecomplete.train import TrainConfig, train, read_log

cuda = args.device == "cuda"
if cuda:
    assert torch.cuda.is_available(), "no CUDA device; use --device cpu"
    torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))

def synthetic_run(vocab: int, n_tokens: int) -> Path:
    "A run folder with a word-level tokenizer of exactly `vocab` ids and random train/validation tokens."
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    run = tmp / f"synthetic-{vocab}-{n_tokens}"
    if run.exists(): return run
    words = {t: i for i, t in enumerate(SPECIAL_TOKENS)} | {f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab)}
    tk = Tokenizer(models.WordLevel(words, unk_token="<|pad|>")); tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>",
                            additional_special_tokens=SPECIAL_TOKENS[2:]).save_pretrained(run / "tokenizer")
    rng = np.random.default_rng(0)
    (run / "tokens").mkdir(parents=True)
    for split, n in (("train", n_tokens), ("validation", n_tokens // 8 + 4096)):
        rng.integers(len(SPECIAL_TOKENS), vocab, n, dtype=np.uint16).tofile(run / "tokens" / f"{split}.bin")
        np.zeros(1, dtype=np.int64).tofile(run / "tokens" / f"{split}.idx")
        (run / "tokens" / f"{split}.json").write_text(json.dumps({"split": split, "dtype": "uint16", "count": int(n), "docs": 1, "bytes": int(n) * 4,
            "vocab_size": vocab, "eot_id": 0, "seed": 0, "fim": {"rate": 0.0, "spm_rate": 0.5, "plain": 1, "psm": 0, "spm": 0}, "index": f"{split}.idx"}))
    return run

def peak_memory_gib() -> float:
    if cuda: return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (never reset)

def our_loop(run: Path, name: str, seq: int, steps: int, settings: dict, log_every: int, **kw) -> dict:
    "Train with codecomplete.train on `run` with one lever's `settings` and summarize the timed log intervals."
    settings = dict(settings)
    mode = settings.pop("mode", "eager")
    compile = mode != "eager"
    if compile:
        os.environ["ACCELERATE_DYNAMO_MODE"] = mode  # accelerate's TorchDynamoPlugin takes the torch.compile mode from here
        torch._dynamo.reset()
    micro = max(1, args.micro_tokens // seq)
    out_run = tmp / name
    out_run.mkdir()
    for sub in ("tokenizer", "tokens"): (out_run / sub).symlink_to((run / sub).resolve())
    base = dict(preset=args.preset, seq_len=seq, micro_batch=micro, batch_tokens=micro * seq * args.accum, max_steps=steps, compile=compile,
                log_every=log_every, save_every=10**9, eval_every=10**9, tensorboard=False, peak_tflops=args.peak_tflops)
    base.update(kw)
    cfg = TrainConfig.from_dict({**base, **settings}, run_dir=str(out_run))
    if cuda: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    log = read_log(out_run)
    timed = [r for r in log if "tokens_per_s" in r and r["step"] > args.warm]
    tps = statistics.median(r["tokens_per_s"] for r in timed) if timed else None
    mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return {"name": name, "loop": "codecomplete", "preset": cfg.preset, "seq_len": seq, "micro_batch": micro, "accum": args.accum,
            "batch_tokens": cfg.batch_tokens, "compile": mode, "attention": cfg.attention, "loss_chunk_tokens": cfg.loss_chunk_tokens,
            "optimizer": cfg.optimizer, "lr": cfg.lr, "muon_lr": cfg.muon_lr, "precision": "bf16" if cuda else "fp32", "steps": steps,
            "tokens_per_s": tps, "mfu": statistics.median(mfus) if mfus else None, "peak_mem_gib": round(peak_memory_gib(), 2),
            "flops_per_token": flops_per_token(model_config(cfg.preset, args.vocab), seq), "wall_s": round(wall, 1), "log": log}

def trainer_loop(run: Path, seq: int, steps: int) -> dict:
    "The same model, data and batch under transformers.Trainer (CPU comparison); per-step wall times after warmup."
    from transformers import Trainer, TrainingArguments, TrainerCallback
    from codecomplete.pack import TokenLoader, load_run_tokenizer
    micro = max(1, args.micro_tokens // seq)
    tok = load_run_tokenizer(run)
    loader = TokenLoader(run / "tokens", "train", seq, micro, 1, seed=0)
    rows = torch.cat([loader.next_step()[0] for _ in range(steps * args.accum)])
    class Windows(torch.utils.data.Dataset):
        def __len__(self): return len(rows)
        def __getitem__(self, i): return {"input_ids": rows[i, :-1], "labels": rows[i, :-1]}
    class Clock(TrainerCallback):
        times = []
        def on_step_end(self, *a, **k): self.times.append(time.perf_counter())
    torch.manual_seed(0)
    model = build_model(model_config(args.preset, tok))
    targs = TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=micro, gradient_accumulation_steps=args.accum,
                              max_steps=steps, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.1,
                              adam_beta2=0.95, max_grad_norm=1.0, optim="adamw_torch_fused", save_strategy="no", report_to="none",
                              logging_steps=10**9, use_cpu=not cuda, bf16=cuda, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    t0 = time.perf_counter()
    Trainer(model=model, args=targs, train_dataset=Windows(), callbacks=[Clock()]).train()
    wall = time.perf_counter() - t0
    dts = np.diff(Clock.times)[args.warm - 1:]
    return {"name": f"trainer-seq{seq}", "loop": "transformers.Trainer", "preset": args.preset, "seq_len": seq, "micro_batch": micro,
            "accum": args.accum, "batch_tokens": micro * seq * args.accum, "compile": "eager", "attention": "auto", "precision": "bf16" if cuda else "fp32",
            "steps": steps, "tokens_per_s": micro * seq * args.accum / float(np.median(dts)), "mfu": None, "wall_s": round(wall, 1)}

results, started = [], time.strftime("%Y-%m-%d %H:%M:%S")
if args.steps or args.compare_trainer:
    n_tokens = max(args.seqs) * (args.micro_tokens // min(args.seqs) + 1) * args.accum * (args.steps + 2)
    synthetic = synthetic_run(args.vocab, max(n_tokens, 200_000))
for seq in args.seqs if args.steps else []:
    for name, settings in args.levers:
        label = f"{name}-seq{seq}"
        try: r = our_loop(synthetic, label, seq, args.steps, settings, log_every=5, lr=1e-3, warmup_steps=2)
        except Exception as e:  # one lever that does not run on this card must not lose the others' figures
            print(f"# {label}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True); continue
        results.append(r); print(f"# {label}: {r['tokens_per_s'] or 0:,.0f} tokens/s, MFU {r['mfu']}, peak {r['peak_mem_gib']} GiB, {r['wall_s']} s", flush=True)
if args.compare_trainer:
    for seq in args.seqs:
        results.append(our_loop(synthetic, f"ours-seq{seq}-per-step", seq, args.steps, {}, log_every=1, lr=1e-3, warmup_steps=2))
        print(f"# ours per-step: {results[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
        results.append(trainer_loop(synthetic, seq, args.steps)); print(f"# Trainer: {results[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
if args.real:
    real = Path(args.real)
    read_meta(real / "tokens", "train"); read_meta(real / "tokens", "validation")
    for name, settings in args.real_levers:
        label = f"real-{name}"
        try: r = our_loop(real, label, args.real_seq, args.real_steps, settings, log_every=10, eval_every=max(1, args.real_steps // 3),
                          lr=1e-3, warmup_steps=min(20, args.real_steps // 5))
        except Exception as e:
            print(f"# {label}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True); continue
        r["losses"] = [(x["step"], round(x["loss"], 4)) for x in r["log"] if "loss" in x]
        r["val"] = [(x["step"], round(x["val_loss"], 4), round(x["val_bpb"], 4)) for x in r["log"] if "val_loss" in x]
        results.append(r); print(f"# {label}: losses {r['losses'][::5]}, val {r['val']}, {r['wall_s']} s", flush=True)

device = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
summary = {"device": device, "torch": torch.__version__, "date": started, "load": os.getloadavg(), "argv": sys.argv,
           "params": count_params(model_config(args.preset, args.vocab)),
           "results": [{k: v for k, v in r.items() if k != "log"} for r in results]}
Path(args.out).write_text(json.dumps(summary, indent=1))
print(f"\n{device}, torch {torch.__version__}, {started}, load {os.getloadavg()[0]:.1f}, base preset {args.preset} "
      f"({summary['params']['total'] / 1e6:.1f}M params)\n")
print("| run | loop | preset | seq | micro x accum | compile | attention | loss chunk | optimizer | tokens/s | MFU | peak mem GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in summary["results"]:
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "n/a"
    print(f"| {r['name']} | {r['loop']} | {r['preset']} | {r['seq_len']} | {r['micro_batch']} x {r['accum']} | {r['compile']} | {r['attention']} | "
          f"{r.get('loss_chunk_tokens', 'n/a')} | {r.get('optimizer', 'adamw')} | {r['tokens_per_s'] or 0:,.0f} | {mfu} | {r.get('peak_mem_gib', 'n/a')} |")
real_runs = [r for r in summary["results"] if "val" in r]
if real_runs:
    print(f"\nreal-data runs ({args.real_steps} steps of {real_runs[0]['batch_tokens']:,} tokens each)\n\n| run | optimizer | lr | train loss first -> last | validation bits/byte (step: value) |\n|---|---|---|---|---|")
    for r in real_runs:
        print(f"| {r['name']} | {r['optimizer']} | {r['lr']:g} | {r['losses'][0][1]} -> {r['losses'][-1][1]} | {', '.join(f'{s}: {b}' for s, _, b in r['val'])} |")
print(f"\nJSON: {args.out}")
