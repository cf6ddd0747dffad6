"""Completion server speed: closed-loop clients on 127.0.0.1 against `codecomplete serve`, beside in-process complete()
and `transformers serve --continuous-batching`, plus the batching choice (our engine vs transformers' manager).

    python bench/serve.py    # the main job's model, /tmp/ci/runs/default/train/model; about 8 minutes on a quiet 2-core CPU

Requests: single-line FIM completions cut from the held-out files of the model's run (`<run>/data/test`): the cursor at
a random column of a random non-blank line, up to --before characters before it as prefix and --after after it as
suffix, stop at the line break, up to --max-tokens new tokens, greedy. The prompt length in tokens is printed.
Left-to-right (L2R) rows, the only kind `transformers serve` can do, send the same prefixes without suffix and
without stop, so every server does the same work (up to --max-tokens, or an end token): in a first pass with the
stop, transformers serve's answers averaged 31 tokens against our 13.5, so it did not stop where we did.
Every client sends its next request when its last one ends (closed loop); the clients are asyncio tasks on one thread
(aiohttp), and each level is bounded by --requests and --seconds. Each level also prints the CPU per request of the
server's processes and of the clients, and the shares of the machine left idle and stolen by a virtual machine's host:
the clients run on the same cores, and a host that steals slows every figure of that level. Our server runs twice: with 1 worker, and with --workers (default: the cores / --threads), after every
worker answered /health and had a few warm-up requests. Requests stream, so time to first token is where the first event arrives. tok/s counts every path's
answers re-encoded with the model's tokenizer, so all rows count the same way. Prints figures; asserts nothing. Load
averages are printed: on a shared machine rerun quietly before quoting.
"""
import argparse, asyncio, json, os, random, socket, subprocess, sys, time
from pathlib import Path
import aiohttp, httpx, psutil, torch
import pyarrow.parquet as pq
from codecomplete.batching import Engine, Job, KVBatch, Metrics, Scheduler, prefill
from codecomplete.complete import complete, load_model, make_prompt, prompt_room


def requests_from(test_dir: Path, n: int, before: int, after: int, seed: int = 0) -> list[tuple[str, str]]:
    "`n` (prefix, suffix) pairs cut at a random column of a random non-blank line of held-out files."
    rng, texts = random.Random(seed), [t for t in pq.read_table(test_dir, columns=["content"]).column("content").to_pylist() if t.count("\n") > 5]
    out = []
    while len(out) < n:
        text = rng.choice(texts)
        lines = text.splitlines(keepends=True)
        i = rng.randrange(len(lines))
        if not lines[i].strip(): continue
        start = sum(map(len, lines[:i])) + rng.randrange(len(lines[i].rstrip("\n")) + 1)
        out.append((text[max(0, start - before):start], text[start:start + after]))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def report(label: str, lat: list[float], ttft: list[float], tokens: int, wall: float, cpu: str = ""):
    print(f"{label:<48} n={len(lat):3d}  p50 {1000 * pct(lat, .5):6.0f} ms  p95 {1000 * pct(lat, .95):6.0f} ms  "
          f"TTFT p50 {1000 * pct(ttft, .5):6.0f} ms  {len(lat) / wall:6.2f} req/s  {tokens / wall:7.1f} tok/s  (load {os.getloadavg()[0]:.1f})" + (f"  {cpu}" if cpu else ""), flush=True)


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


async def _clients(url: str, model: str, reqs, clients: int, max_tokens: int, seconds: float, fim: bool):
    "Latencies, TTFTs, answer texts and wall seconds of `clients` asyncio clients sending streamed requests back to back."
    lat, ttft, texts, todo = [], [], [], list(reqs)
    end_by = time.monotonic() + seconds
    async def client(http: aiohttp.ClientSession):
        while todo and time.monotonic() < end_by:
            prefix, suffix = todo.pop()
            body = dict(model=model, prompt=prefix, max_tokens=max_tokens, temperature=0, stream=True, **(dict(suffix=suffix, stop=["\n"]) if fim else {}))
            t0, first, text = time.perf_counter(), None, []
            async with http.post(url + "/v1/completions", json=body) as r:
                async for raw in r.content:
                    line = raw.decode().rstrip("\r\n")
                    if not line.startswith("data: "): continue
                    first = first or time.perf_counter()
                    if line == "data: [DONE]": break
                    choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                    text.append(choice.get("text") or "")
            done = time.perf_counter()
            lat.append(done - t0); ttft.append((first or done) - t0); texts.append("".join(text))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=clients)) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return lat, ttft, texts, time.perf_counter() - t


def closed_loop(url: str, model: str, reqs, clients: int, max_tokens: int, seconds: float, tok, fim: bool, server: subprocess.Popen):
    """Latencies, TTFTs, output tokens and wall seconds of one level, and where the machine's CPU went in it.
    The clients are asyncio tasks on one thread (aiohttp, as vLLM's serving benchmark): threads fighting for the GIL
    took twice the CPU per request at 16 clients, CPU the server under test then lacked."""
    procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    def used():
        machine = psutil.cpu_times()
        return sum(sum(p.cpu_times()[:2]) for p in procs), sum(psutil.Process().cpu_times()[:2]), machine.idle, machine.steal
    before = used()
    lat, ttft, texts, wall = asyncio.run(_clients(url, model, reqs, clients, max_tokens, seconds, fim))
    server_s, client_s, idle_s, steal_s = (b - a for a, b in zip(before, used()))
    n, cores = max(1, len(lat)), wall * psutil.cpu_count()
    cpu = (f"CPU per request: server {1000 * server_s / n:.0f} ms, clients {1000 * client_s / n:.0f} ms; "
           f"idle {100 * idle_s / cores:.0f}%, stolen by the host {100 * steal_s / cores:.0f}%")
    return lat, ttft, sum(len(tok(t)["input_ids"]) for t in texts), wall, cpu


def engine_texts(model, tok, prompts, max_tokens: int, threads: int) -> tuple[list[str], int, float]:
    "Greedy texts of `prompts` all submitted at once to a warmed, long-lived `Engine`, their token count, and the seconds to the last answer."
    engine = Engine(model, tok, Metrics(), max_batch=len(prompts), max_queue=len(prompts), threads=threads)
    while not engine.ready.wait(0.05): pass
    async def run():
        loop = asyncio.get_running_loop()
        jobs = [Job(p, max_tokens, 0.0, 1.0, 1, [], None, time.monotonic() + 600, loop) for p in prompts]
        t = time.perf_counter(); engine.submit(jobs); results = await asyncio.gather(*(j.done for j in jobs))
        return results, time.perf_counter() - t
    results, seconds = asyncio.run(run())
    engine.stop()
    return [r[0][0] for r in results], sum(r[0][2] for r in results), seconds


def manager_texts(model, tok, prompts, max_tokens: int, ends: set[int]) -> tuple[list[str], int, float]:
    "The same through a started, warmed, long-lived transformers `ContinuousBatchingManager` (paged attention)."
    from transformers import GenerationConfig
    cfg = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=sorted(ends), pad_token_id=tok.pad_token_id)
    manager = model.init_continuous_batching(generation_config=cfg)
    manager.start()
    try:
        manager.get_result(manager.add_request(prompts[0].ids, max_new_tokens=2), timeout=600)
        t = time.perf_counter()
        order = [manager.add_request(p.ids, max_new_tokens=max_tokens) for p in prompts]
        results = {}
        while len(results) < len(order):
            out = manager.get_result(timeout=600)
            if out is not None and out.request_id in order: results[out.request_id] = list(out.generated_tokens)
        seconds = time.perf_counter() - t
    finally: manager.stop(block=True, timeout=60)
    ids = [results[r] for r in order]
    return [p.completion(tok.decode([t for t in i if t not in ends], skip_special_tokens=True)) for p, i in zip(prompts, ids)], sum(map(len, ids)), seconds


def batching_choice(model, tok, prompts, max_tokens: int, threads: int):
    "The same FIM prompts through our engine and through transformers' manager, both long-lived and warmed."
    ours, n_ours, t_ours = engine_texts(model, tok, prompts, max_tokens, threads)
    theirs, n_cb, t_cb = manager_texts(model, tok, prompts, max_tokens, Scheduler(model, tok, Metrics()).ends)
    print(f"batching choice, {len(prompts)} FIM prompts at once, up to {max_tokens} tokens, greedy: codecomplete.batching.Engine {t_ours:.2f} s "
          f"({n_ours / t_ours:.0f} tok/s), transformers ContinuousBatchingManager {t_cb:.2f} s ({n_cb / t_cb:.0f} tok/s); "
          f"identical texts {sum(a == b for a, b in zip(ours, theirs))}/{len(prompts)}  (load {os.getloadavg()[0]:.1f})", flush=True)


def step_costs(model, prompts, rows: int):
    "What bounds batching on this CPU: a p50 prompt's prefill, and one decode step of 1 and of `rows` rows over such a cache."
    p50 = sorted(prompts, key=lambda p: len(p.ids))[len(prompts) // 2]
    def best(f, k=5):
        times = []
        for _ in range(k): t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
        return min(times)
    prefill_s = best(lambda: prefill(model, p50.ids))
    step_s = {}
    for n in (1, rows):
        batch = KVBatch()
        for _ in range(n): batch.join(prefill(model, p50.ids)[0], [None])
        step_s[n] = best(lambda: batch.step(model, [0] * n))
    print(f"costs, p50 prompt of {len(p50.ids)} tokens: prefill {1000 * prefill_s:.1f} ms; one decode step: 1 row {1000 * step_s[1]:.1f} ms, "
          f"{rows} rows {1000 * step_s[rows]:.1f} ms  (best of 5, load {os.getloadavg()[0]:.1f})", flush=True)


def in_process(model, tok, reqs, max_tokens: int, fim: bool):
    "The same requests one after another through `complete()`."
    stop = ["\n"] if fim else []
    complete(*reqs[0], model, tok, max_new_tokens=max_tokens, stop=stop)
    lat, n, t = [], 0, time.perf_counter()
    for prefix, suffix in reqs:
        t0 = time.perf_counter()
        text = complete(prefix, suffix if fim else None, model, tok, max_new_tokens=max_tokens, stop=stop)
        lat.append(time.perf_counter() - t0); n += len(tok(text)["input_ids"])
    report(f"in-process complete(), one after another, {'FIM' if fim else 'L2R'}", lat, lat, n, time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/ci/runs/default/train/model"); ap.add_argument("--test-data", default=None)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16]); ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=25); ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--before", type=int, default=1500, help="characters of the file before the cursor"); ap.add_argument("--after", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, here and in both servers")
    ap.add_argument("--workers", type=int, default=0, help="server workers for the second pass (default: the cores / --threads); the first has 1")
    ap.add_argument("--no-transformers-serve", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.workers = args.workers or max(1, len(os.sched_getaffinity(0)) // args.threads)
    model_dir = Path(args.model).resolve()
    test_dir = Path(args.test_data) if args.test_data else model_dir.parent.parent / "data" / "test"
    model, tok = load_model(str(model_dir), "cpu")
    reqs = requests_from(test_dir, args.requests, args.before, args.after)
    room = prompt_room(model, args.max_tokens)
    lengths = [len(make_prompt(tok, p, s, room).ids) for p, s in reqs]
    print(f"model {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), CPU, {args.threads} torch thread(s); "
          f"{len(reqs)} single-line FIM requests from {test_dir}: prompt tokens p50 {pct(lengths, .5)}, p95 {pct(lengths, .95)}; "
          f"up to {args.max_tokens} new tokens; load {os.getloadavg()}", flush=True)
    prompts = [make_prompt(tok, p, s, room) for p, s in reqs]
    step_costs(model, prompts, max(args.clients))
    batching_choice(model, tok, prompts[:16], args.max_tokens, args.threads)
    for fim in (True, False): in_process(model, tok, reqs, args.max_tokens, fim)

    one_client = {}
    for workers in sorted({1, args.workers}):
        port = free_port(); url = f"http://127.0.0.1:{port}"
        ours = start([sys.executable, "-c", "import sys; from codecomplete.cli import main; sys.exit(main(sys.argv[1:]))", "serve", "--model", str(model_dir),
                      "--port", str(port), "--threads", str(args.threads), "--max-batch", str(max(args.clients)), "--workers", str(workers)], url, "/health")
        try:
            while len({httpx.get(url + "/health").json()["worker"] for _ in range(8 * workers)}) < workers: time.sleep(0.5)  # every worker up
            for _ in range(workers * 4): warm(url, model_dir.name)
            for fim in (True, False):
                for c in args.clients:
                    lat, ttft, tokens, wall, cpu = closed_loop(url, model_dir.name, reqs, c, args.max_tokens, args.seconds, tok, fim, ours)
                    report(f"codecomplete serve, {workers} worker(s), {c:2d} clients, {'FIM' if fim else 'L2R'}", lat, ttft, tokens, wall, cpu)
                    one_client.setdefault((fim, workers), tokens / wall)
                    if c == max(args.clients) > 1:
                        print(f"  {c} clients / 1 client, tok/s: {tokens / wall / one_client[fim, workers]:.2f}x", flush=True)
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
            report(f"transformers serve --continuous-batching, {c:2d} clients, L2R", *closed_loop(url, str(model_dir), reqs, c, args.max_tokens, args.seconds, tok, False, theirs))
    finally: theirs.terminate(); theirs.wait(60)


if __name__ == "__main__": main()
