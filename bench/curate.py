"""Benchmark the curate stage and its near dedup.

1. The stage per corpus size and engine: seconds, MB/s and peak memory (PSS of the process tree, Ray's processes included)
   on distinct real code: 1x = the default corpus (the standard library), about 4x and 8x = packages of the environment's
   site-packages (whole packages, in sorted order, until their supported-language bytes reach 4x and 8x the standard
   library's). Exact copies would be removed on arrival and prove nothing about near dedup, so none are used.
2. Near dedup alone (`dedup.near_duplicates`) on synthetic signatures (random, 1% planted near copies) up to 1,000,000
   files, each size in a fresh process: seconds and peak RSS, to show the cost grows about linearly.
3. Our MinHash/LSH side by side with datasketch's MinHashLSH (same parameters) on the documents that reach near dedup.

Usage: python bench/curate.py [--sizes 1,4,8] [--engines local,ray] [--ray-workers 1,2] [--signatures 125000,250000,500000,1000000]
       [--skip-datasketch] [--skip 8-ray-1] [--workdir DIR]"""
import argparse, json, os, shutil, subprocess, sys, sysconfig, tempfile, time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

from codecomplete.curate import SPLITS
from codecomplete.sources import _walk, default_corpus, language_of
from codecomplete.dedup import MinHasher, cluster_duplicates, lsh_params, near_duplicates, shingle_hashes, tokenize


def tree_sample(root: psutil.Process, cpu: dict) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes of `root` and its descendants; records each one's CPU seconds in `cpu` (pid -> seconds).
    PSS splits pages shared after fork, so it does not double count; CPU is read from every process seen, so Ray's daemons
    and workers, which the driver does not wait for, are counted too (up to the last 0.2 s sample of each)."""
    rss = pss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            with p.oneshot():
                info, times = p.memory_full_info(), p.cpu_times()
            rss += info.rss; pss += info.pss; cpu[p.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    return rss, pss


def run_measured(code: str) -> tuple[float, float, int, int]:
    "Run `code` in a fresh Python; returns (seconds, CPU seconds of the process tree, peak tree RSS, peak tree PSS), sampled every 0.2 s."
    start, cpu = time.perf_counter(), {}
    with tempfile.TemporaryFile() as err:  # the step's stderr, shown when it fails (a failure without its traceback stays unexplained)
        proc = psutil.Popen([sys.executable, "-c", code], stderr=err, stdout=subprocess.DEVNULL)
        peak_rss = peak_pss = 0
        while proc.poll() is None:
            rss, pss = tree_sample(proc, cpu); peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss); time.sleep(0.2)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"benchmark step failed with exit code {proc.returncode}: {code[:200]}\n" + err.read().decode(errors="replace")[-3000:])
    return time.perf_counter() - start, sum(cpu.values()), peak_rss, peak_pss


def supported_bytes(path: Path, skip=frozenset({"__pycache__", ".git"})) -> int:
    "Bytes of the files under `path` with a supported extension (what the stage reads)."
    return sum(p.stat().st_size for p, _ in _walk(path, skip) if language_of(p.name)[0] and p.is_file() and not p.is_symlink())


def site_packages_sources(target_bytes: int) -> list[str]:
    "Whole package folders of this environment's site-packages, in sorted order, until their supported bytes reach `target_bytes`."
    site = Path(sysconfig.get_paths()["purelib"])
    picked, total = [], 0
    for d in sorted(p for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".egg-info", ".data")) and p.name != "__pycache__"):
        if total >= target_bytes: break
        picked.append(str(d)); total += supported_bytes(d)
    if total < target_bytes * 0.9: print(f"note: site-packages holds only {total / 1e6:.0f} MB of supported code, short of {target_bytes / 1e6:.0f} MB")
    return picked


def run_stage(label, run_dir, sources, mb, **kw):
    cfg = dict(run_dir=str(run_dir), sources=sources, force=True, **kw)
    secs, cpu, rss, pss = run_measured(f"from codecomplete.curate import CurateConfig, curate; curate(CurateConfig.from_dict({cfg!r}))")
    stats = json.loads((Path(run_dir) / "data/stats.json").read_text())
    print(f"{label}: {stats['seen']} files, {mb:.0f} MB of supported languages, {stats['kept']} kept in {secs:.1f}s, {cpu:.1f} CPU-s of the process tree (Ray's daemons included; process start included): "
          f"{mb / secs:.2f} MB/s, peak memory PSS {pss / 2**20:.0f} MiB (RSS sum {rss / 2**20:.0f} MiB); removed exact "
          f"{stats['removed']['exact_duplicate']}, near {stats['removed']['near_duplicate']}; load {os.getloadavg()[0]:.1f}", flush=True)
    return stats


SYNTHETIC = """
import resource, time, numpy as np
from codecomplete.dedup import near_duplicates
n = {n}; rng = np.random.default_rng(0)
sigs = rng.integers(0, 2**32, (n, 256), dtype=np.uint32)
planted = rng.choice(n // 2, n // 100, replace=False)
copies = n // 2 + np.arange(len(planted))
sigs[copies] = sigs[planted]; sigs[copies, :40] = rng.integers(0, 2**32, (len(planted), 40), dtype=np.uint32)  # 84% of slots equal
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu = time.perf_counter(), time.process_time(); dup = near_duplicates(sigs, 0.7, 25, 10)
secs, cpu = time.perf_counter() - start, time.process_time() - cpu
print(secs, int(dup.sum()), len(planted), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, cpu)
"""


def synthetic(sizes):
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", SYNTHETIC.format(n=n)], capture_output=True, text=True, check=True).stdout.split()
        secs, found, planted, before, peak, cpu = float(out[0]), int(out[1]), int(out[2]), int(out[3]), int(out[4]), float(out[5])
        print(f"near dedup alone, {n} synthetic signatures ({n * 1024 / 2**20:.0f} MiB of signatures): {secs:.1f}s, {cpu:.1f} CPU-s, "
              f"{n / secs / 1e3:.0f}k signatures/s, found {found} of {planted} planted; peak RSS {peak / 2**10:.0f} MiB "
              f"({(peak - before) / 2**10:.0f} MiB above the signatures); load {os.getloadavg()[0]:.1f}", flush=True)


def candidate_docs(run_dir) -> list[str]:
    "Contents of the files that reach near dedup (a run with near_dedup=False), in input (sorted path) order."
    rows = []
    for s in SPLITS:
        t = pq.read_table(Path(run_dir) / "data" / s, columns=["path", "content"]).to_pydict()
        rows += list(zip(t["path"], t["content"]))
    return [c for _, c in sorted(rows, key=lambda r: r[0].split("/"))]


def ours(docs, threshold=0.7, num_perm=256):
    mh = MinHasher(num_perm, seed=0)
    hashes = [shingle_hashes(tokenize(d)) for d in docs]
    sigs = np.stack([mh.signature(h) for h in hashes])
    bands, rows = lsh_params(threshold, num_perm)
    return set(np.flatnonzero(near_duplicates(sigs, threshold, bands, rows, skip=np.array([len(h) == 0 for h in hashes]))).tolist())


def datasketch_lsh(docs, threshold=0.7, num_perm=256):
    from datasketch import MinHash, MinHashLSH
    lsh, left, right = MinHashLSH(threshold=threshold, num_perm=num_perm), [], []
    for i, d in enumerate(docs):
        toks = tokenize(d)
        shingles = {" ".join(toks[j:j + 5]).encode() for j in range(max(len(toks) - 4, 1))} if toks else set()
        m = MinHash(num_perm=num_perm); m.update_batch(list(shingles))
        if shingles:
            for j in lsh.query(m): left.append(j); right.append(i)
            lsh.insert(i, m)
    return set(np.flatnonzero(cluster_duplicates(len(docs), np.array(left, dtype=np.int64), np.array(right, dtype=np.int64))).tolist())


def compare_datasketch(work):
    run_stage("candidates (near dedup off)", work / "cand", [], supported_bytes(default_corpus().path, default_corpus().skip_dirs) / 1e6, near_dedup=False)
    docs = candidate_docs(work / "cand")
    start = time.perf_counter(); ours_removed = ours(docs); t_ours = time.perf_counter() - start
    start = time.perf_counter(); ds_removed = datasketch_lsh(docs); t_ds = time.perf_counter() - start
    inter, union = len(ours_removed & ds_removed), len(ours_removed | ds_removed)
    print(f"near dedup on {len(docs)} documents (single process): ours {t_ours:.1f}s removes {len(ours_removed)}; "
          f"datasketch MinHashLSH {t_ds:.1f}s removes {len(ds_removed)}; speed ratio {t_ds / t_ours:.1f}x; "
          f"removed-set Jaccard {inter / max(union, 1):.3f} (both {inter}, ours only {len(ours_removed - ds_removed)}, "
          f"datasketch only {len(ds_removed - ours_removed)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "curate-bench"))
    ap.add_argument("--sizes", default="1,4,8", help="corpus sizes in multiples of the standard library")
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--ray-workers", default="1,2", help="Ray worker counts (num_workers of the local Ray)")
    ap.add_argument("--local-workers", type=int, default=0, help="num_workers of engine=local (0 = all cores)")
    ap.add_argument("--signatures", default="125000,250000,500000,1000000", help="synthetic signature counts for near dedup alone ('' = skip)")
    ap.add_argument("--skip-datasketch", action="store_true")
    ap.add_argument("--skip", default="", help="runs to leave out, as SIZE-ENGINE-WORKERS, e.g. 8-ray-1 (keeps one command within a time budget)")
    args = ap.parse_args()
    work = Path(args.workdir); shutil.rmtree(work, ignore_errors=True); work.mkdir(parents=True)
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()}")
    if args.signatures: synthetic([int(n) for n in args.signatures.split(",")])
    stdlib_mb = supported_bytes(default_corpus().path, default_corpus().skip_dirs) / 1e6
    for size in map(int, args.sizes.split(",")):
        sources = [] if size == 1 else site_packages_sources(int(size * stdlib_mb * 1e6))
        mb = stdlib_mb if size == 1 else sum(supported_bytes(Path(s)) for s in sources) / 1e6
        name = "default corpus" if size == 1 else f"{len(sources)} site-packages packages"
        for engine in args.engines.split(","):
            for workers in ([args.local_workers] if engine == "local" else map(int, args.ray_workers.split(","))):
                if f"{size}-{engine}-{workers}" in args.skip.split(","): continue
                run_stage(f"{size}x ({name}), engine={engine}, workers={workers or os.cpu_count()}", work / f"x{size}-{engine}-{workers}",
                          sources, mb, engine=engine, num_workers=workers)
    if not args.skip_datasketch: compare_datasketch(work)
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__": main()
