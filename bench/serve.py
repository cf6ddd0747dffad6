"""Completion server speed: closed-loop clients on 127.0.0.1 against `codecomplete serve`, beside in-process complete()
and `transformers serve --continuous-batching`, plus the batching choice (our generate vs transformers' manager).

python bench/serve.py --model runs/default/train/model (the main job's model; held-out files from its run's data/test).
Single-line FIM requests: the cursor at a random point of a held-out line, the rest of the file as suffix, stop at the
line break, up to --max-tokens new tokens. Every client sends its next request when the last one ends; each level is
bounded by --requests and --seconds. Streams, so time to first token is measured where the first event arrives.
Prints figures; asserts nothing. Load averages are printed: on a shared machine rerun quietly before quoting.
"""
import argparse, json, os, random, socket, subprocess, sys, threading, time
from pathlib import Path
import httpx, torch
import pyarrow.parquet as pq
from codecomplete.complete import complete, generate, load_model, make_prompt


def requests_from(test_dir: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    "`n` (prefix, suffix) pairs cut at a random column of a random non-blank line of held-out files."
    rng, texts = random.Random(seed), [t for t in pq.read_table(test_dir, columns=["content"]).column("content").to_pylist() if t.count("\n") > 5]
    out = []
    while len(out) < n:
        text = rng.choice(texts)
        lines = text.splitlines(keepends=True)
        i = rng.randrange(len(lines))
        if not lines[i].strip(): continue
        start = sum(map(len, lines[:i])) + rng.randrange(len(lines[i].rstrip("\n")) + 1)
        out.append((text[max(0, start - 4000):start], text[start:start + 2000]))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def report(label: str, lat: list[float], ttft: list[float], tokens: int, wall: float):
    print(f"{label:<44} n={len(lat):3d}  p50 {1000 * pct(lat, .5):6.0f} ms  p95 {1000 * pct(lat, .95):6.0f} ms  "
          f"TTFT p50 {1000 * pct(ttft, .5):6.0f} ms  {len(lat) / wall:6.2f} req/s  {tokens / wall:7.1f} tok/s  (load {os.getloadavg()[0]:.1f})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def start(cmd: list[str], url: str, health: str, env=None) -> subprocess.Popen:
    "A server subprocess, once `url + health` answers 200 (bounded: 180 s)."
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise RuntimeError(f"{cmd[0]} exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200: return proc
        except httpx.TransportError: pass
        time.sleep(0.3)
    proc.kill(); raise RuntimeError(f"{' '.join(cmd[:3])} did not answer {health} in 180 s")


def warm(url: str, model: str):
    "One untimed request: a server's first generation allocates (transformers' manager also builds its cache)."
    httpx.post(url + "/v1/completions", json=dict(model=model, prompt="import os\n", max_tokens=4, temperature=0), timeout=600)


def closed_loop(url: str, model: str, reqs, clients: int, max_tokens: int, seconds: float, tok, fim: bool):
    "Latencies, TTFTs and output tokens of `clients` threads sending streamed requests back to back."
    lat, ttft, tokens, lock, todo = [], [], [0], threading.Lock(), list(reqs)
    end_by = time.monotonic() + seconds
    def client():
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < end_by:
                with lock:
                    if not todo: return
                    prefix, suffix = todo.pop()
                body = dict(model=model, prompt=prefix, max_tokens=max_tokens, temperature=0, stop=["\n"], stream=True, **({"suffix": suffix} if fim else {}))
                t0, first, text = time.perf_counter(), None, []
                with http.stream("POST", url + "/v1/completions", json=body) as r:
                    for line in r.iter_lines():
                        if not line.startswith("data: "): continue
                        first = first or time.perf_counter()
                        if line == "data: [DONE]": break
                        choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                        text.append(choice.get("text") or "")
                done = time.perf_counter()
                with lock:
                    lat.append(done - t0); ttft.append((first or done) - t0); tokens[0] += len(tok("".join(text))["input_ids"])
    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads: th.start()
    for th in threads: th.join()
    return lat, ttft, tokens[0], time.perf_counter() - t


def batching_choice(model, tok, prompts, max_tokens: int):
    "16 FIM prompts through our padded `generate` (one batch) and through transformers' continuous-batching manager."
    from transformers import GenerationConfig
    generate(model, tok, prompts[:2], max_new_tokens=4)
    t = time.perf_counter(); ours = generate(model, tok, prompts, max_new_tokens=max_tokens, batch_size=len(prompts)); t_ours = time.perf_counter() - t
    cfg = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1, pad_token_id=tok.pad_token_id)
    t = time.perf_counter(); model.generate_batch([p.ids for p in prompts], generation_config=cfg, max_new_tokens=max_tokens); t_cb = time.perf_counter() - t
    print(f"batching choice, {len(prompts)} FIM prompts x {max_tokens} tokens: our generate (one padded batch) {t_ours:.2f} s, "
          f"transformers generate_batch (continuous batching, paged attention) {t_cb:.2f} s  (load {os.getloadavg()[0]:.1f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/default/train/model"); ap.add_argument("--test-data", default=None)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16]); ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=60); ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, here and in both servers")
    ap.add_argument("--no-transformers-serve", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model).resolve()
    test_dir = Path(args.test_data) if args.test_data else model_dir.parent.parent / "data" / "test"
    model, tok = load_model(str(model_dir), "cpu")
    reqs = requests_from(test_dir, args.requests)
    print(f"model {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), CPU, {args.threads} torch thread(s), "
          f"{len(reqs)} single-line FIM requests of up to {args.max_tokens} tokens from {test_dir}, load {os.getloadavg()}")
    batching_choice(model, tok, [make_prompt(tok, p, s, 1024 - args.max_tokens) for p, s in reqs[:16]], args.max_tokens)

    for fim in (True, False):
        complete(*reqs[0], model, tok, max_new_tokens=args.max_tokens, stop=["\n"])
        lat, n = [], 0
        t = time.perf_counter()
        for prefix, suffix in reqs[:16]:
            t0 = time.perf_counter()
            text = complete(prefix, suffix if fim else None, model, tok, max_new_tokens=args.max_tokens, stop=["\n"])
            lat.append(time.perf_counter() - t0); n += len(tok(text)["input_ids"])
        report(f"in-process complete(), one after another, {'FIM' if fim else 'L2R'}", lat, lat, n, time.perf_counter() - t)

    port = free_port(); url = f"http://127.0.0.1:{port}"
    ours = start([sys.executable, "-c", "import sys; from codecomplete.cli import main; sys.exit(main(sys.argv[1:]))", "serve", "--model", str(model_dir),
                  "--port", str(port), "--threads", str(args.threads)], url, "/health")
    try:
        warm(url, model_dir.name)
        for fim in (True, False):
            for c in args.clients:
                report(f"codecomplete serve, {c:2d} clients, {'FIM' if fim else 'L2R'}",
                       *closed_loop(url, model_dir.name, reqs, c, args.max_tokens, args.seconds, tok, fim))
    finally: ours.terminate(); ours.wait(60)

    if args.no_transformers_serve: return
    port = free_port(); url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    try: theirs = start([os.path.join(os.path.dirname(sys.executable), "transformers"), "serve", str(model_dir), "--continuous-batching",
                         "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)], url, "/health", env)
    except RuntimeError as e: print(f"transformers serve --continuous-batching could not run here: {e}"); return
    try:
        warm(url, str(model_dir))
        for c in args.clients:
            report(f"transformers serve --continuous-batching, {c:2d} clients, L2R", *closed_loop(url, str(model_dir), reqs, c, args.max_tokens, args.seconds, tok, False))
    finally: theirs.terminate(); theirs.wait(60)


if __name__ == "__main__": main()
