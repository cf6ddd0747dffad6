"""Benchmark the curate stage: files/s, MB/s and peak RSS (process tree) on the default corpus at 1x and 4x, and our
MinHash/LSH near dedup side by side with datasketch's MinHashLSH (same parameters) on the same documents.

Usage: .venv/bin/python bench/curate.py [--workdir /tmp/curate-bench] [--skip-4x]"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

from codecomplete.curate import SPLITS
from codecomplete.sources import _walk, default_corpus, language_of
from codecomplete.dedup import MinHasher, UnionFind, lsh_params, near_duplicates, shingle_hashes, tokenize


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    "(sum of RSS, sum of PSS) in bytes of `root` and its children; PSS splits pages shared after fork, so it does not double count."
    rss = pss = 0
    for p in [root, *root.children(recursive=True)]:
        try: info = p.memory_full_info(); rss += info.rss; pss += info.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    return rss, pss


def measured(fn):
    "Run fn() in this process; returns (result, seconds)."
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def run_measured(cfg: dict) -> tuple[float, int, int]:
    "Run curate(cfg) in a fresh process; returns (seconds, peak tree RSS, peak tree PSS), sampled every 0.1 s."
    code = f"from codecomplete.curate import CurateConfig, curate; curate(CurateConfig.from_dict({cfg!r}))"
    start = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc); peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss); time.sleep(0.1)
    if proc.returncode: raise SystemExit(f"curate failed with exit code {proc.returncode}")
    return time.perf_counter() - start, peak_rss, peak_pss


def input_bytes(sources) -> int:
    "Bytes of the files with a supported extension (what the stage reads; others are counted by name only)."
    return sum(p.stat().st_size for src in sources for p, _ in _walk(src.path, src.skip_dirs)
               if language_of(p.name)[0] and p.is_file() and not p.is_symlink())


def run_stage(name, run_dir, sources, **kw):
    secs, rss, pss = run_measured(dict(run_dir=str(run_dir), sources=sources, force=True, **kw))
    stats = json.loads((Path(run_dir) / "data/stats.json").read_text())
    src = [default_corpus()] if not sources else [type(default_corpus())(Path(s).name, "dir", Path(s)) for s in sources]
    mb = input_bytes(src) / 1e6
    print(f"{name}: {stats['seen']} files ({mb:.1f} MB of supported languages) seen, {stats['kept']} kept in {secs:.1f}s "
          f"(process start included): {stats['seen'] / secs:.0f} files/s, {mb / secs:.2f} MB/s, "
          f"peak memory of the process tree: PSS {pss / 2**20:.0f} MiB (RSS sum {rss / 2**20:.0f} MiB); "
          f"removed exact {stats['removed']['exact_duplicate']}, near {stats['removed']['near_duplicate']}")
    return stats


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
    lsh, uf = MinHashLSH(threshold=threshold, num_perm=num_perm), UnionFind(len(docs))
    for i, d in enumerate(docs):
        toks = tokenize(d)
        shingles = {" ".join(toks[j:j + 5]).encode() for j in range(max(len(toks) - 4, 1))} if toks else set()
        m = MinHash(num_perm=num_perm); m.update_batch(list(shingles))
        if shingles:
            for j in lsh.query(m): uf.union(j, i)
            lsh.insert(i, m)
    return {i for i in range(len(docs)) if uf.find(i) != i}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "curate-bench"))
    ap.add_argument("--skip-4x", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir); shutil.rmtree(work, ignore_errors=True); work.mkdir(parents=True)
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    run_stage("1x (default corpus)", work / "x1", [])
    if not args.skip_4x:
        copy = work / "corpus"
        src = default_corpus()
        for p, _ in _walk(src.path, src.skip_dirs):
            if p.is_file() and not p.is_symlink():
                dest = copy / p.relative_to(src.path); dest.parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(p, dest)
        run_stage("4x (corpus listed 4 times)", work / "x4", [str(copy)] * 4)
    run_stage("candidates (near dedup off)", work / "cand", [], near_dedup=False)
    docs = candidate_docs(work / "cand")
    ours_removed, t_ours = measured(lambda: ours(docs))
    ds_removed, t_ds = measured(lambda: datasketch_lsh(docs))
    inter, union = len(ours_removed & ds_removed), len(ours_removed | ds_removed)
    print(f"near dedup on {len(docs)} documents (single process): ours {t_ours:.1f}s removes {len(ours_removed)}; "
          f"datasketch MinHashLSH {t_ds:.1f}s removes {len(ds_removed)}; speed ratio {t_ds / t_ours:.1f}x; "
          f"removed-set Jaccard {inter / max(union, 1):.3f} (both {inter}, ours only {len(ours_removed - ds_removed)}, "
          f"datasketch only {len(ds_removed - ours_removed)})")
    hashes = [shingle_hashes(tokenize(d)) for d in docs]
    def best_earlier(i):  # exact Jaccard of file i's shingle set with its most similar earlier file
        return max((len(np.intersect1d(hashes[i], hashes[j], assume_unique=True)) / max(len(np.union1d(hashes[i], hashes[j])), 1)
                    for j in range(i)), default=0.0)
    for name, only in (("ours only", ours_removed - ds_removed), ("datasketch only", ds_removed - ours_removed)):
        best = sorted(round(best_earlier(i), 2) for i in only)
        print(f"{name}: exact Jaccard with the most similar earlier file {best}; >= 0.7: {sum(b >= 0.7 for b in best)} of {len(best)}")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__": main()
