"""The completion server over a real socket on 127.0.0.1: the openai client with suffix (streaming and not) equals
complete(), Continue's raw template equals suffix, llama.vim's /infill, cancellation on disconnect, the full queue,
auth, every bad input a 4xx, SIGTERM drains, and the light commands never import torch."""
import concurrent.futures, http.client, json, os, signal, socket, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path
import httpx, openai, psutil, pytest, torch
from prometheus_client.parser import text_string_to_metric_families
from codecomplete.complete import complete, load_model, save_random_model
from codecomplete.pack import sample_run

KEY = "sk-test-key"
LONG, BUSY = 1000, "def f(x):\n"  # the random model runs on from BUSY without an end token: a request busy for seconds
torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    "`codecomplete serve` in a subprocess on 127.0.0.1, ready once /health says 200."
    def __init__(self, model_dir, *flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = "import sys; from codecomplete.cli import main; sys.exit(main(sys.argv[1:]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", str(model_dir), "--port", str(self.port),
                                      "--threads", "1", *flags], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300  # a loaded 2-core machine can take minutes to import torch and load
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200: return
            except httpx.TransportError: pass
            time.sleep(0.2)
        raise TimeoutError("the server did not become healthy in 300 s")

    def metrics(self) -> dict:
        text = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def wait_for(self, name: str, pred, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if pred(self.metrics().get(name, 0)): return
            time.sleep(0.05)
        raise TimeoutError(f"{name} never met the condition: {self.metrics()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    sample_run(run, n_files=8, vocab_size=400)
    return save_random_model(run / "model", run / "tokenizer", seed=1)


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir, "--api-key", KEY, "--max-batch", "4", "--max-queue", "2")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def ours(model_dir, prefix, suffix=None, **kw):
    model, tok = load_model(str(model_dir))
    return complete(prefix, suffix, model, tok, **kw)


PREFIX, SUFFIX = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"


def test_openai_client_suffix_equals_complete_streaming_or_not(server, client, model_dir):
    want = ours(model_dir, PREFIX, SUFFIX, max_new_tokens=12)
    got = client.completions.create(model="model", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0)
    assert got.object == "text_completion" and got.choices[0].text == want and got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 12 and got.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model="model", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want and chunks[-1].choices[0].finish_reason == "length"
    stops = [want[3:5], "\n\n\n", "zz1", "zz2", "zz3", "zz4", "zz5"]  # more than OpenAI's 4, the first one hit
    cut = client.completions.create(model="model", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0, stop=stops)
    assert cut.choices[0].text == ours(model_dir, PREFIX, SUFFIX, max_new_tokens=12, stop=stops) and cut.choices[0].finish_reason == "stop"


def test_continue_raw_template_equals_suffix_request(server, model_dir):
    "Continue's request: the FIM template in the prompt, stream on, several stops."
    stops = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>", "\n\n", "\r\n\r\n", "/src/"]
    body = dict(model="model", prompt=f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>", max_tokens=10, temperature=0, stop=stops, stream=True)
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
    assert text == ours(model_dir, PREFIX, SUFFIX, max_new_tokens=10, stop=stops)


def test_llama_vim_infill(server, model_dir):
    body = dict(input_prefix="import os\n\ndef add(a, b):\n", input_suffix="\n\nprint(add(1, 2))\n", prompt="    return", n_predict=10,
                input_extra=[{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}], n_indent=0, t_max_predict_ms=5000,
                cache_prompt=True, samplers=["top_k", "top_p", "infill"], top_k=40, top_p=0.99, stream=False)
    r = httpx.post(server.url + "/infill", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    prefix = "\n\n--- snippet ---\n\ndef sub(a, b):\n    return a - b\n\n\nimport os\n\ndef add(a, b):\n    return"  # llama.cpp's layout
    assert answer["content"] == ours(model_dir, prefix, body["input_suffix"], max_new_tokens=10)
    assert answer["stop"] is True and answer["tokens_predicted"] == 10 and answer["timings"]["predicted_n"] == 10
    warm = httpx.post(server.url + "/infill", json=dict(body, n_predict=0), headers={"Authorization": f"Bearer {KEY}"}).json()
    assert warm["content"] == "" and warm["tokens_predicted"] == 0


def test_disconnect_mid_stream_is_cancelled_and_its_slot_reused(server, client):
    before = server.metrics().get("codecomplete_requests_cancelled_total", 0)
    body = dict(model="model", prompt=BUSY, max_tokens=LONG, temperature=0, stream=True)
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    server.wait_for("codecomplete_requests_cancelled_total", lambda v: v == before + 1)
    server.wait_for("codecomplete_requests_running", lambda v: v == 0, seconds=3)  # its row stops at the next token, not after 1000
    assert client.completions.create(model="model", prompt="x", max_tokens=3, temperature=0).choices[0].finish_reason == "length"


def test_full_queue_gives_503_with_retry_after(server, client):
    headers = {"Authorization": f"Bearer {KEY}"}
    busy_body = dict(prompt=[BUSY] * 2, max_tokens=LONG, stream=True)  # two of these: 4 greedy rows fill --max-batch 4
    with httpx.stream("POST", server.url + "/v1/completions", json=busy_body, headers=headers, timeout=60) as busy, \
         httpx.stream("POST", server.url + "/v1/completions", json=busy_body, headers=headers, timeout=60) as busier:
        lines = [busy.iter_lines(), busier.iter_lines()]  # kept: an iterator left to the garbage collector closes the connection
        for it in lines: next(it)
        server.wait_for("codecomplete_requests_running", lambda v: v == 4)
        statuses = []
        def send(i):  # no slot is free: these wait for a running row to end, --max-queue 2 of them
            statuses.append(httpx.post(server.url + "/v1/completions", json=dict(prompt="x", max_tokens=2 + i), headers=headers, timeout=60))
        waiting = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in waiting: t.start()
        server.wait_for("codecomplete_requests_waiting", lambda v: v == 2)
        full = httpx.post(server.url + "/v1/completions", json=dict(prompt="x", max_tokens=9), headers=headers, timeout=60)
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1 and "queue is full" in full.json()["error"]["message"]
    for t in waiting: t.join(60)
    assert [r.status_code for r in statuses] == [200, 200]
    assert server.metrics()["codecomplete_requests_rejected_total"] >= 1


def test_api_key(server, model_dir):
    assert httpx.get(server.url + "/health").status_code == 200  # open without a key
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server.url + "/v1/completions", json=dict(prompt="x"), headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/metrics").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).completions.create(model="model", prompt="x")
    models = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]] == ["model"]


BAD = [  # (body bytes, content type, status, words the message must hold, param)
    (b'{"prompt": "x",', "application/json", 400, "not valid JSON", None),
    (b'{"prompt": "x", "max_tokens": "ten"}', "application/json", 400, "max_tokens: input should be a valid integer", "max_tokens"),
    (b'{"prompt": "x", "max_tokens": -3}', "application/json", 400, "max_tokens: input should be greater than or equal to 1", "max_tokens"),
    (b'{"prompt": "x", "max_tokens": 1000000000}', "application/json", 400, "alone fills the model's 1024 positions; send max_tokens below 1024", "max_tokens"),
    (b'{"prompt": "x", "temperature": -1}', "application/json", 400, "temperature: input should be greater than or equal to 0", "temperature"),
    (b'{"prompt": ""}', "application/json", 400, "prompt is empty", "prompt"),
    (b'{"prompt": [1, 2]}', "application/json", 400, "prompt: input should be a valid string", "prompt"),
    (b'{"prompt": "x", "model": "gpt-4"}', "application/json", 404, "model 'gpt-4' is not served here; send model='model'", "model"),
    (b'{"prompt": "\xff\xfe"}', "application/json", 400, "not valid UTF-8", None),
    (b'{"prompt": "\\ud800"}', "application/json", 400, "unpaired UTF-16 surrogate", None),
    (b'[1, 2]', "application/json", 400, "send one JSON object", None),
    (b'{"prompt": "x", "n": 2}', "application/json", 400, "n > 1 with temperature 0", "n"),
    (b'{"prompt": "' + b"x" * (10 << 20) + b'"}', "application/json", 413, "larger than", None),
]


@pytest.mark.parametrize("body,ctype,status,words,param", BAD, ids=[b[3][:30] for b in BAD])
def test_bad_input_is_a_4xx_in_openai_shape(server, body, ctype, status, words, param):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"Authorization": f"Bearer {KEY}", "Content-Type": ctype}, timeout=60)
    error = r.json()["error"]
    assert r.status_code == status and words in error["message"] and error["param"] == param and error["type"] == "invalid_request_error", r.text
    assert httpx.get(server.url + "/health").status_code == 200


def test_prompt_longer_than_the_positions_is_windowed_like_complete(server, client, model_dir):
    prefix = "x = 1\n" * 1500  # ~3000 tokens against 1024 positions
    got = client.completions.create(model="model", prompt=prefix, suffix="\nprint(x)\n", max_tokens=5, temperature=0)
    assert got.choices[0].text == ours(model_dir, prefix, "\nprint(x)\n", max_new_tokens=5) and got.usage.prompt_tokens <= 1024 - 5


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_in_flight_and_refuses_new(model_dir, workers):
    s = Server(model_dir, "--drain-seconds", "60", "--workers", str(workers))
    try:
        every_worker_up(s, workers)
        children = psutil.Process(s.proc.pid).children()  # the workers (and multiprocessing's resource tracker)
        result = {}
        def long_request():
            result["r"] = httpx.post(s.url + "/v1/completions", json=dict(prompt=BUSY, max_tokens=150), timeout=120)
        t = threading.Thread(target=long_request); t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 'codecomplete_requests_running 1.0' not in httpx.get(s.url + "/metrics").text: time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        with pytest.raises(httpx.TransportError):  # the listening socket is closed
            while time.monotonic() < deadline: httpx.get(s.url + "/health", timeout=5); time.sleep(0.1)
        t.join(120)
        assert result["r"].status_code == 200 and result["r"].json()["usage"]["completion_tokens"] == 150
        assert s.proc.wait(30) == -signal.SIGTERM  # uvicorn ends by the signal it got, once drained; the parent of workers too
        assert not psutil.wait_procs(children, timeout=30)[1]  # none outlives the server
    finally: s.stop()


def every_worker_up(s: Server, workers: int) -> set[int]:
    "The pids of `s`'s workers, once each has answered /health with 200 (a new connection per probe: the parent takes turns on ties)."
    seen, deadline = set(), time.monotonic() + 300
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only workers {seen} came up"
        r = httpx.get(s.url + "/health", timeout=10)
        if r.status_code == 200: seen.add(r.json()["worker"])
    return seen


def test_workers_share_the_port_and_sum_their_metrics(model_dir):
    "Two worker processes on one port: connections reach both, answers are complete()'s, /metrics from either sums both."
    s = Server(model_dir, "--workers", "2", "--api-key", KEY)
    try:
        pids = every_worker_up(s, 2)
        assert s.proc.pid not in pids and pids <= {p.pid for p in psutil.Process(s.proc.pid).children()}
        prompts = ["import os\n", "def f(x):\n", "class A:\n", "x = 1\n"] * 4
        def ask(prefix):  # a new connection per request, so requests land on both workers
            r = httpx.post(s.url + "/v1/completions", json=dict(prompt=prefix, max_tokens=6), headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
            return r.json()
        with concurrent.futures.ThreadPoolExecutor(8) as pool: answers = list(pool.map(ask, prompts))
        for prefix, answer in zip(prompts[:4], answers[:4]): assert answer["choices"][0]["text"] == ours(model_dir, prefix, max_new_tokens=6)
        total = sum(a["usage"]["completion_tokens"] for a in answers)
        assert {s.metrics()["codecomplete_generated_tokens_total"] for _ in range(8)} == {total}  # whichever worker answers
    finally: s.stop()


def test_workers_get_connections_least_served_first_and_end_with_their_parent(model_dir):
    "The parent hands each new connection to the worker holding the fewest: 6 kept-alive connections split 3/3, and after two of one worker's close,"
    " the next two go to it. Killed outright, the parent takes no worker with it: each sees its channel end and exits."
    s = Server(model_dir, "--workers", "2")
    try:
        every_worker_up(s, 2)
        time.sleep(1)  # the probes' closes reach the parent
        def connect():
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
            c.request("GET", "/health")
            return c, json.loads(c.getresponse().read())["worker"]
        held = [connect() for _ in range(6)]
        assert sorted(Counter(w for _, w in held).values()) == [3, 3], held
        first = held[0][1]
        for c, _ in [h for h in held if h[1] == first][:2]: c.close()
        time.sleep(1)
        assert [connect()[1] for _ in range(2)] == [first, first]
        workers = [p for p in psutil.Process(s.proc.pid).children() if p.pid in {w for _, w in held}]
        s.proc.kill()
        assert len(workers) == 2 and not psutil.wait_procs(workers, timeout=60)[1]
    finally: s.stop()


def test_workers_refuse_a_gpu_and_a_taken_port(model_dir):
    code = "import sys; from codecomplete.cli import main; sys.exit(main(sys.argv[1:]))"
    gpu = subprocess.run([sys.executable, "-c", code, "serve", "--model", str(model_dir), "--workers", "2", "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert gpu.returncode == 2 and "--workers 2 is for CPUs" in gpu.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0)); taken.listen()
        busy = subprocess.run([sys.executable, "-c", code, "serve", "--model", str(model_dir), "--workers", "2", "--port", str(taken.getsockname()[1])],
                              capture_output=True, text=True, timeout=300)
    assert busy.returncode == 2 and "cannot listen on 127.0.0.1" in busy.stderr and "pick a free --port" in busy.stderr


def test_light_commands_do_not_import_torch():
    code = ("import sys, contextlib, io\nfrom codecomplete.cli import build_parser, main\n"
            "build_parser().parse_args(['serve', '--model', 'x'])\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(['config', 'curate']); main(['config', 'tokenizer'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
