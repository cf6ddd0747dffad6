"""Planner memory model vs measured peak CPU memory of real training steps (prints a markdown table).

Usage: .venv/bin/python bench/plan_memory.py [--seq 256] [--vocab 4096]
"""
import argparse, datetime, os, platform
from codecomplete.plan import ModelShape, memory_check

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    print(f"{datetime.date.today()} {platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| model | seq | micro-batch | precision | checkpointing | predicted MiB | measured MiB | predicted/measured |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for preset, micro_batch in (("tiny", 4), ("cpu-small", 2)):
        shape = ModelShape.from_preset(preset, vocab=args.vocab, seq=args.seq)
        for precision in ("fp32", "bf16"):
            for checkpointing in (False, True):
                r = memory_check(shape, micro_batch, precision, checkpointing)
                print(f"| {preset} | {args.seq} | {micro_batch} | {precision} | {checkpointing} | {r['predicted_MiB']} | {r['measured_MiB']} | {r['ratio']} |", flush=True)
