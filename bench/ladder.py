"""Benchmark the scaling ladder's engines: wall seconds of the same ladder trained one rung after another (engine=local)
and as parallel Ray tasks (engine=ray, one CPU per rung) on a local Ray, with that Ray's start timed apart, and whether
the two gave the same results. Each engine trains in a fresh copy of one sample run (curated stdlib files + a BPE tokenizer).

Usage: python bench/ladder.py [--models dial-1,dial-2,dial-3,dial-4] [--tokens-per-param 0.003] [--min-steps 2] [--cpus 2] [--workdir DIR]"""
import argparse, json, os, shutil, tempfile, time
from pathlib import Path

import ray
import torch

from codecomplete.engine import start_local_ray
from codecomplete.pack import sample_run
from codecomplete.scaling import LadderConfig, ladder


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="dial-1,dial-2,dial-3,dial-4")
    p.add_argument("--tokens-per-param", type=float, default=0.003)
    p.add_argument("--min-steps", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (rungs trained at once)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ladder-"))
    try:
        source = sample_run(work / "source", n_files=12, vocab_size=400)
        cfg = dict(models=args.models.split(","), tokens_per_param=args.tokens_per_param, predict=["dial-5"], seq_len=32,
                   batch_tokens=256, min_steps=args.min_steps, eval_batches=2)
        def fresh(name):
            run = work / name
            shutil.rmtree(run, ignore_errors=True)
            for sub in ("data", "tokenizer"): shutil.copytree(source / sub, run / sub)
            return str(run)
        torch.set_num_threads(1)  # the Ray rungs train on one thread each (rung_num_cpus=1); the sequential ones too, for equal results
        start = time.time()
        local = json.loads((ladder(LadderConfig(run_dir=fresh("local"), **cfg)) / "results.json").read_text())
        local_s = time.time() - start
        link = Path(tempfile.gettempdir(), f"cc-bench-ladder-{os.getpid()}"); link.unlink(missing_ok=True); link.symlink_to(work)
        try:
            for attempt in range(3):  # Ray gives a node 30 s to come up; a loaded machine can miss that
                start = time.time()
                try: start_local_ray(ray, args.cpus, link); break
                except RuntimeError as e:
                    if attempt == 2: raise
                    print(f"local Ray start {attempt + 1} failed after {time.time() - start:.0f} s; retrying")
            ray_start_s = time.time() - start
            start = time.time()
            on_ray = json.loads((ladder(LadderConfig(run_dir=fresh("ray"), engine="ray", rung_num_cpus=1, **cfg)) / "results.json").read_text())
            ray_s = time.time() - start
        finally: ray.shutdown(); link.unlink(missing_ok=True)
        same = all(local[k] == on_ray[k] for k in ("rungs", "fits", "predictions"))
        steps = [r["steps"] for r in local["rungs"]]
        print(f"rungs {cfg['models']} ({steps} steps), load average {os.getloadavg()[0]:.2f}")
        print(f"| engine | wall s | rung seconds |\n| --- | --- | --- |")
        seconds = lambda results: ", ".join(f"{p['seconds']:.1f}" for p in results["placement"])
        print(f"| local (one after another) | {local_s:.1f} | {seconds(local)} |")
        print(f"| ray, {args.cpus} CPUs (joined; its start: {ray_start_s:.1f} s) | {ray_s:.1f} | {seconds(on_ray)} |")
        print(f"same rungs, fits and predictions: {same}; Ray worker pids: {sorted({p['pid'] for p in on_ray['placement']})}")
    finally:
        if not args.workdir: shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__": main()
