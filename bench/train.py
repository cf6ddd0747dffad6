"""Training throughput: tokens/s, MFU and peak memory of codecomplete.train's loop, and (on CPU) the same model, data
and batch under transformers' Trainer. Prints a markdown table and writes a JSON summary.

GPU (one H200/H100; ~4-5 minutes): python bench/train.py --device cuda --preset 125m --seqs 1024 2048 --real runs/NAME --out bench_train.json
CPU check of every path: python bench/train.py --device cpu --preset tiny --seqs 64 128 --micro-tokens 512 --steps 6 --real runs/NAME
CPU comparison:        python bench/train.py --device cpu --preset cpu-small --seqs 256 --micro-tokens 2048 --steps 20 --compare-trainer --modes eager
GPU levers (MFU sweep): python bench/train.py --device cuda --preset 125m --seqs 1024 --micro-tokens 65536 --accum 1 --modes default max-autotune-no-cudagraphs --attention auto cudnn
The GPU path imports only torch, numpy, transformers, accelerate, tokenizers, pyarrow, yaml and tqdm (no datasets)."""
import argparse, json, os, platform, resource, statistics, sys, tempfile, time
from contextlib import nullcontext
from pathlib import Path

def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--preset", default="125m")
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--micro-tokens", type=int, default=32768, help="tokens per micro-batch (micro_batch = this / seq)")
    p.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per configuration (the first --warm are not timed)")
    p.add_argument("--warm", type=int, default=10)
    p.add_argument("--vocab", type=int, default=32768, help="vocabulary of the synthetic runs")
    p.add_argument("--modes", nargs="+", default=["eager", "default"],
                   help="'eager' and/or torch.compile modes (default, max-autotune-no-cudagraphs, max-autotune, reduce-overhead) to time")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "flash", "cudnn", "efficient", "math"],
                   help="SDPA backends to time: auto = PyTorch's own choice, else only that kernel")
    p.add_argument("--real", help="run folder with tokenizer/ and tokens/ (packed) for a short real-data run")
    p.add_argument("--real-steps", type=int, default=150)
    p.add_argument("--real-seq", type=int, default=1024)
    p.add_argument("--real-mode", default="eager", help="'eager' or the torch.compile mode of the real-data run")
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

def attention_kernel(name: str):
    "A context that restricts SDPA to one backend (`auto`: leave PyTorch's choice)."
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return nullcontext() if name == "auto" else sdpa_kernel(backends[name])

def our_loop(run: Path, name: str, seq: int, steps: int, mode: str, log_every: int, attention: str = "auto", **kw) -> dict:
    "Train with codecomplete.train on `run` (`mode`: eager or a torch.compile mode) and summarize the timed log intervals."
    compile = mode != "eager"
    if compile:
        os.environ["ACCELERATE_DYNAMO_MODE"] = mode  # accelerate's TorchDynamoPlugin takes the torch.compile mode from here
        torch._dynamo.reset()
    micro = max(1, args.micro_tokens // seq)
    out_run = tmp / name
    out_run.mkdir()
    for sub in ("tokenizer", "tokens"): (out_run / sub).symlink_to((run / sub).resolve())
    cfg = TrainConfig(run_dir=str(out_run), preset=args.preset, seq_len=seq, micro_batch=micro, batch_tokens=micro * seq * args.accum,
                      max_steps=steps, compile=compile, log_every=log_every, save_every=10**9, eval_every=kw.pop("eval_every", 10**9),
                      tensorboard=False, peak_tflops=args.peak_tflops, **kw)
    if cuda: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with attention_kernel(attention): train(cfg)
    wall = time.perf_counter() - t0
    log = read_log(out_run)
    timed = [r for r in log if "tokens_per_s" in r and r["step"] > args.warm]
    tps = statistics.median(r["tokens_per_s"] for r in timed) if timed else None
    config = model_config(args.preset, args.vocab)
    mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return {"name": name, "loop": "codecomplete", "preset": args.preset, "seq_len": seq, "micro_batch": micro, "accum": args.accum,
            "batch_tokens": cfg.batch_tokens, "compile": mode, "attention": attention, "precision": "bf16" if cuda else "fp32", "steps": steps,
            "tokens_per_s": tps, "mfu": statistics.median(mfus) if mfus else None, "peak_mem_gib": round(peak_memory_gib(), 2),
            "flops_per_token": flops_per_token(config, seq), "wall_s": round(wall, 1), "log": log}

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

def ours_per_step(run: Path, seq: int, steps: int) -> dict:
    "Our loop with a log line (one timing) every step, to compare with the Trainer's per-step times."
    return our_loop(run, f"ours-seq{seq}-per-step", seq, steps, "eager", log_every=1, lr=1e-3, warmup_steps=2)

results, started = [], time.strftime("%Y-%m-%d %H:%M:%S")
n_tokens = max(args.seqs) * (args.micro_tokens // min(args.seqs) + 1) * args.accum * (args.steps + 2)
synthetic = synthetic_run(args.vocab, max(n_tokens, 200_000))
for seq in args.seqs:
    for mode in args.modes:
        for attention in args.attention:
            name = f"synthetic-seq{seq}-{mode}" + ("" if attention == "auto" else f"-{attention}")
            try: r = our_loop(synthetic, name, seq, args.steps, mode, log_every=5, attention=attention, lr=1e-3, warmup_steps=2)
            except Exception as e:  # one lever that does not run on this card must not lose the others' figures
                print(f"# {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True); continue
            results.append(r); print(f"# {name}: {r['tokens_per_s'] or 0:,.0f} tokens/s, MFU {r['mfu']}, peak {r['peak_mem_gib']} GiB, {r['wall_s']} s", flush=True)
if args.compare_trainer:
    for seq in args.seqs:
        results.append(ours_per_step(synthetic, seq, args.steps)); print(f"# ours per-step: {results[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
        results.append(trainer_loop(synthetic, seq, args.steps)); print(f"# Trainer: {results[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
if args.real:
    real = Path(args.real)
    read_meta(real / "tokens", "train"); read_meta(real / "tokens", "validation")
    r = our_loop(real, f"real-seq{args.real_seq}", args.real_seq, args.real_steps, args.real_mode, log_every=10,
                 eval_every=max(1, args.real_steps // 3), lr=1e-3, warmup_steps=min(20, args.real_steps // 5))
    r["losses"] = [(x["step"], round(x["loss"], 4)) for x in r["log"] if "loss" in x]
    r["val"] = [(x["step"], round(x["val_loss"], 4), round(x["val_bpb"], 4)) for x in r["log"] if "val_loss" in x]
    results.append(r); print(f"# real: losses {r['losses']}, val {r['val']}", flush=True)

device = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
summary = {"device": device, "torch": torch.__version__, "date": started, "load": os.getloadavg(), "argv": sys.argv,
           "params": count_params(model_config(args.preset, args.vocab)),
           "results": [{k: v for k, v in r.items() if k != "log"} for r in results]}
Path(args.out).write_text(json.dumps(summary, indent=1))
print(f"\n{device}, torch {torch.__version__}, {started}, load {os.getloadavg()[0]:.1f}, preset {args.preset} "
      f"({summary['params']['total'] / 1e6:.1f}M params)\n")
print("| run | loop | seq | micro x accum | compile | attention | tokens/s | MFU | peak mem GiB |\n|---|---|---|---|---|---|---|---|---|")
for r in summary["results"]:
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "n/a"
    print(f"| {r['name']} | {r['loop']} | {r['seq_len']} | {r['micro_batch']} x {r['accum']} | {r['compile']} | {r['attention']} | {r['tokens_per_s'] or 0:,.0f} | {mfu} | {r.get('peak_mem_gib', 'n/a')} |")
for r in summary["results"]:
    if "losses" in r: print(f"\nreal-data run: train loss {r['losses'][0][1]} -> {r['losses'][-1][1]}; validation (step, loss, bits/byte) {r['val']}")
print(f"\nJSON: {args.out}")
