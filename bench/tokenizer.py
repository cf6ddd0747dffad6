"""Tokenizer benchmarks: training time and peak memory, batch-encoding MB/s over the whole train split, and
(--ablations) bytes per token of each pre-tokenization choice on held-out code.

    .venv/bin/python bench/tokenizer.py                    # standard library: train = all but the `test` package
    .venv/bin/python bench/tokenizer.py --run runs/NAME    # a curated run's splits instead
    .venv/bin/python bench/tokenizer.py --ablations        # add the pre-tokenization ablation table

Without --run the held-out set is the standard library's `test` package (validation and test halves together)."""
import argparse, hashlib, multiprocessing as mp, os, resource, subprocess, sys, sysconfig, tempfile, time
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from codecomplete.tokenizer import (CODE_PATTERN, WORD, encode_texts, iter_batches, split_shards, texts_of, train_bpe,
                                    MARKER)


def stdlib_run(run_dir: Path) -> Path:
    "Curated-format splits of the standard library: train = every .py outside `test`, validation/test = halves of `test`."
    root = Path(sysconfig.get_paths()["stdlib"])
    rows = {"train": [], "validation": [], "test": []}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if rel.parts[0] in ("site-packages", "__pycache__"): continue
        try: text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError): continue
        split = "train" if rel.parts[0] != "test" else ("validation" if hashlib.md5(str(rel).encode()).digest()[0] % 2 else "test")
        rows[split].append({"content": text, "path": str(rel), "lang": "python", "size": len(text.encode()), "group": rel.parts[0]})
    for split, rs in rows.items():
        d = run_dir / "data" / split; d.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(rs), 500): pq.write_table(pa.Table.from_pylist(rs[i:i + 500]), d / f"part-{i // 500:05d}.parquet")
    (run_dir / "data" / MARKER).write_text("{}")
    return run_dir


def _train_child(data: str, vocab_size: int, pattern, save_to, queue):
    t0 = time.perf_counter()
    bpe = train_bpe(texts_of(split_shards(Path(data) / "train")), vocab_size, pattern=pattern)
    seconds = time.perf_counter() - t0
    if save_to: bpe.save(save_to)
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def train_isolated(data: Path, vocab_size: int, pattern=CODE_PATTERN, save_to=None):
    "Train in a fresh process, so its peak RSS is the training's own; returns (seconds, peak MiB)."
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_child, args=(str(data), vocab_size, pattern, save_to, queue))
    proc.start(); result = queue.get(); proc.join()
    return result


def held_out_bytes_per_token(tok_path: str, data: Path) -> float:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    texts = [t for split in ("validation", "test") for b in iter_batches(split_shards(data / split)) for t in b["content"]]
    return sum(len(t.encode()) for t in texts) / sum(map(len, encode_texts(tok, texts)))


ENCODE_CHILD = """
import sys, time
from pathlib import Path
from tokenizers import Tokenizer
from codecomplete.tokenizer import encode_texts, iter_batches, split_shards
tok = Tokenizer.from_file(sys.argv[1])
texts = [t for b in iter_batches(split_shards(Path(sys.argv[2]) / "train")) for t in b["content"]]
mb = sum(len(t.encode()) for t in texts) / 1e6
times = []
for _ in range(3):
    t0 = time.perf_counter(); encode_texts(tok, texts); times.append(time.perf_counter() - t0)
print(f"{mb:.1f} {min(times):.3f}")
"""


def encode_speed(tok_path: str, data: Path, threads: int | None) -> tuple[float, float]:
    "(MB, seconds) for one `encode_texts` call over the whole train split, best of 3, in a fresh process."
    env = {**os.environ, **({"RAYON_RS_NUM_CPUS": str(threads)} if threads else {})}
    out = subprocess.run([sys.executable, "-c", ENCODE_CHILD, tok_path, str(data)], env=env, capture_output=True, text=True, check=True)
    mb, s = out.stdout.split()
    return float(mb), float(s)


P = r"[^\s\p{L}\p{N}_]"
NL = r"[ \t]*(?:\r?\n[ \t]*)+"
LINE_WORD = r"(?:[ \t]*\r?\n)*[ \t]*" + WORD
TAIL = [r" ?" + P + "+", r"\s+(?!\S)", r"\s+"]
assert "|".join([LINE_WORD, P + WORD]) in CODE_PATTERN and r"\p{N}|" in CODE_PATTERN
ABLATIONS = [
    ("baseline: GPT-2 ByteLevel regex", None),
    ("indentation runs, identifiers, operators, single digits", "|".join([NL, " ?" + WORD, r"\p{N}", *TAIL])),
    ("+ line break and indentation fused with the line's first word", "|".join([LINE_WORD, NL, r"\p{N}", *TAIL])),
    ("+ one operator character fused with the next word (CODE_PATTERN)", CODE_PATTERN),
    ("CODE_PATTERN with digits in groups of up to 3", CODE_PATTERN.replace(r"\p{N}|", r"\p{N}{1,3}|")),
    ("CODE_PATTERN with operators after a word fused to it", CODE_PATTERN.replace(
        "|".join([LINE_WORD, P + WORD]), "|".join([LINE_WORD + P + "*", P + WORD + P + "*"]))),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a curated run folder (default: build the standard-library split in a temp folder)")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--ablations", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.run) / "data" if args.run else stdlib_run(Path(tmp)) / "data"
        print(f"load: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}  data: {data}")
        tok_path = str(Path(tmp) / "code.json")
        seconds, peak = train_isolated(data, args.vocab_size, save_to=tok_path)
        print(f"train vocab {args.vocab_size}: {seconds:.1f} s, peak RSS {peak:.0f} MiB (whole training process)")
        for threads in (None, 1):
            mb, s = encode_speed(tok_path, data, threads)
            print(f"encode_texts, {'all cores' if threads is None else '1 thread'}: {mb:.1f} MB in {s:.2f} s = {mb / s:.2f} MB/s")
        gpt2_path = str(Path(tmp) / "gpt2.json")  # is CODE_PATTERN's regex the bottleneck? the same BPE with GPT-2's regex
        train_isolated(data, args.vocab_size, None, save_to=gpt2_path)
        mb, s = encode_speed(gpt2_path, data, 1)
        print(f"encode_texts, 1 thread, GPT-2 ByteLevel regex instead of CODE_PATTERN: {mb:.1f} MB in {s:.2f} s = {mb / s:.2f} MB/s")
        if args.ablations:
            print(f"\n| pre-tokenization (vocab {args.vocab_size}) | held-out bytes/token | train s |\n| --- | ---: | ---: |")
            for name, pattern in ABLATIONS:
                path = str(Path(tmp) / "ablation.json")
                seconds, _ = train_isolated(data, args.vocab_size, pattern, save_to=path)
                print(f"| {name} | {held_out_bytes_per_token(path, data):.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__": main()
