"""Planner vs a real GPU: peak memory (torch.cuda.max_memory_allocated) and throughput of the train stage's step.

Runs the train stage's own step (codecomplete.train.lm_loss, its fused AdamW, bf16 autocast, 2 micro-batches of
gradient accumulation, clipping) on synthetic tokens for each configuration, and prints predicted vs measured memory
and tokens/s with MFU. Usage: python bench/plan_gpu.py [--preset 125m] [--out results.json]
"""
import argparse, json, time
import torch
from codecomplete.model import build_model, model_config
from codecomplete.plan import GPUS, ModelShape, max_micro_batch, memory_per_gpu, needed_bytes, profiled_peak_bytes
from codecomplete.train import TrainConfig, lm_loss, make_optimizer

GiB = 2**30

def step_loop(preset, vocab, seq, micro_batch, checkpointing, steps, accum=2, device="cuda"):
    "Build the model and run `steps` optimizer steps; returns seconds per step of the last steps and the model."
    torch.manual_seed(0)
    model = build_model(model_config(preset, vocab), device=device)
    if checkpointing: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = TrainConfig(preset=preset, seq_len=seq, micro_batch=micro_batch, batch_tokens=seq * micro_batch * accum)
    optimizer = make_optimizer(model, cfg) if device == "cuda" else torch.optim.AdamW(model.parameters())
    batch = torch.randint(0, vocab, (micro_batch, seq + 1), device=device)
    times = []
    for _ in range(steps):
        if device == "cuda": torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(accum):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = lm_loss(model, batch) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(); optimizer.zero_grad(set_to_none=True)
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times

def measure(preset, vocab, seq, micro_batch, checkpointing, steps, device):
    "Peak allocated bytes (and reserved on CUDA) and tokens/s of one configuration."
    if device == "cuda":
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = step_loop(preset, vocab, seq, micro_batch, checkpointing, steps)
        peak, reserved = torch.cuda.max_memory_allocated() - base, torch.cuda.max_memory_reserved()
    else:
        box = {}
        peak = profiled_peak_bytes(lambda: box.setdefault("t", step_loop(preset, vocab, seq, micro_batch, checkpointing, steps, device="cpu")))
        times, reserved = box["t"], 0
    per_step = min(times[1:]) if len(times) > 1 else times[0]
    return peak, reserved, 2 * micro_batch * seq / per_step

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="125m")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--gpu", default="H200-141GB", help="planner GPU type, for the largest micro-batch and MFU")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--configs", default="1024:8:0,1024:16:0,1024:16:1,2048:8:0,2048:8:1,1024:max:0", help="seq:micro_batch:checkpointing,...")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    gpu = GPUS[args.gpu]
    if args.device == "cuda": print(torch.cuda.get_device_name(), torch.__version__)
    print("| preset | seq | micro-batch | ckpt | predicted GiB | measured GiB | predicted/measured | reserved GiB | tokens/s | MFU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for item in args.configs.split(","):
        seq, mb, ckpt = item.split(":")
        seq, ckpt = int(seq), bool(int(ckpt))
        shape = ModelShape.from_preset(args.preset, args.vocab, seq)
        mb = max_micro_batch(shape, gpu, 1, "ddp", ckpt) if mb == "max" else int(mb)
        predicted = memory_per_gpu(shape, mb, 1, "ddp", ckpt, "bf16")["total"]
        try: peak, reserved, tps = measure(args.preset, args.vocab, seq, mb, ckpt, args.steps, args.device)
        except torch.OutOfMemoryError as e:
            print(f"| {args.preset} | {seq} | {mb} | {ckpt} | {predicted / GiB:.2f} | OOM | | | | |", flush=True); continue
        mfu = tps * shape.flops_per_token() / gpu.peak_flops
        row = dict(preset=args.preset, seq=seq, micro_batch=mb, checkpointing=ckpt, predicted=predicted, measured=peak, reserved=reserved,
                   needed=needed_bytes(predicted), tokens_per_s=tps, mfu=mfu)
        rows.append(row)
        print(f"| {args.preset} | {seq} | {mb} | {ckpt} | {predicted / GiB:.2f} | {peak / GiB:.2f} | {predicted / peak:.3f} | {reserved / GiB:.2f} "
              f"| {tps:,.0f} | {mfu:.1%} |", flush=True)
    if args.out: open(args.out, "w").write(json.dumps(rows, indent=1))
