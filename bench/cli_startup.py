"""Benchmark the light commands: wall seconds of `codecomplete config <job>` (and `--help`) in a fresh process, and what
they import, against importing the train stage (what `config train` cost while the configs lived beside their stages).

Usage: python bench/cli_startup.py [--repeat 5]"""
import argparse, statistics, subprocess, sys, time

import codecomplete.jobs

def run(code: str) -> tuple[float, set]:
    "Wall seconds of `python -X importtime -c code` and the top-level modules it imported."
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    return seconds, {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per command; the median is printed")
    args = ap.parse_args()
    cases = {f"codecomplete config {job}": ["config", job] for job in [*codecomplete.jobs.JOBS, "pipeline"]} | {"codecomplete --help": ["--help"]}
    rows = [(name, f"import sys; from codecomplete.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass") for name, argv in cases.items()]
    rows.append(("import codecomplete.train (reference)", "import codecomplete.train"))
    print(f"| command | median s (of {args.repeat}) | torch | transformers |\n| --- | --- | --- | --- |")
    for name, code in rows:
        runs = [run(code) for _ in range(args.repeat)]
        loaded = runs[0][1]
        print(f"| `{name}` | {statistics.median(s for s, _ in runs):.2f} | {'yes' if 'torch' in loaded else 'no'} | {'yes' if 'transformers' in loaded else 'no'} |")

if __name__ == "__main__":
    main()
