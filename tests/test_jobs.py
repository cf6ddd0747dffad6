"""The job runner: papermill execution, fail-fast config errors, failing cells, skip/redo, kill and rerun."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "codecomplete")]


@pytest.fixture
def corpus(tmp_path):
    "A tiny source tree of three packages."
    src = tmp_path / "src"
    for pkg in ("alpha", "beta", "gamma"):
        for i in range(4):
            f = src / pkg / f"mod_{i}.py"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f'"""Module {pkg} {i}."""\n\ndef {pkg}_{i}(x):\n    return x * {i} + len("{pkg}")\n' * (i + 1)
                         + "".join(f"\ndef helper_{pkg}_{i}_{j}(value):\n    return value ** {j}\n" for j in range(i + 2)))
    return src


def cli(*args, cwd, check=True):
    out = subprocess.run(CLI + list(args), cwd=cwd, capture_output=True, text=True)
    if check and out.returncode != 0: raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def test_run_skip_and_redo(tmp_path, corpus):
    args = ["run", "curate", "--run", "r1", "-p", f"sources=[{corpus}]", "-p", "card_dir", ""]
    first = cli(*args, cwd=tmp_path)
    assert "IPKernelApp" not in first.stderr + first.stdout and "WARNING" not in first.stderr, first.stderr  # quiet: only the stage speaks
    run_dir = tmp_path / "runs" / "r1"
    executed = run_dir / "jobs" / "01_curate.ipynb"
    assert executed.exists() and (run_dir / "data" / "_COMPLETE.json").exists()
    assert json.loads((run_dir / "jobs" / "01_curate.params.json").read_text())["sources"] == [str(corpus)]
    mtime = executed.stat().st_mtime
    second = cli(*args, cwd=tmp_path)
    assert "skipping" in second.stdout and executed.stat().st_mtime == mtime
    cli(*args, "--force", cwd=tmp_path)
    assert executed.stat().st_mtime > mtime
    changed = cli("run", "curate", "--run", "r1", "-p", f"sources=[{corpus}]", "-p", "card_dir=", "-p", "seed=7", cwd=tmp_path)
    assert "skipping" not in changed.stdout


def test_unknown_key_fails_before_any_kernel(tmp_path):
    out = cli("run", "curate", "--run", "r2", "-p", "langauges=python", cwd=tmp_path, check=False)
    assert out.returncode == 2
    assert "did you mean 'languages'" in out.stderr and "valid keys" in out.stderr
    assert not (tmp_path / "runs" / "r2" / "jobs" / "01_curate.ipynb").exists()


def test_failing_cell_names_stage_cell_and_error_and_keeps_notebook(tmp_path):
    out = cli("run", "curate", "--run", "r3", "-p", f"sources=[{tmp_path / 'missing'}]", "-p", "card_dir=", cwd=tmp_path, check=False)
    assert out.returncode == 1
    assert "job 'curate' failed in cell" in out.stderr and "missing" in out.stderr
    kept = tmp_path / "runs" / "r3" / "jobs" / "01_curate.ipynb"
    assert kept.exists() and "missing" in kept.read_text()
    assert not (tmp_path / "runs" / "r3" / "data" / "_COMPLETE.json").exists()


def test_plain_papermill_cli_runs_the_job_and_rejects_misspelt_parameters(tmp_path, corpus):
    nb = ROOT / "nbs" / "jobs" / "01_curate.ipynb"
    pm = [sys.executable, "-m", "papermill", "--no-progress-bar"]
    ok = subprocess.run(pm + [str(nb), str(tmp_path / "out.ipynb"), "-p", "run_dir", str(tmp_path / "pm"),
                              "-y", f"sources: ['{corpus}']\ncard_dir: ''"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "pm" / "data" / "_COMPLETE.json").exists()
    assert "Passed unknown parameter" not in ok.stderr  # the parameters cell names every setting
    from codecomplete.curate import CurateConfig
    resolved = json.loads((tmp_path / "pm" / "data" / "stage_config.json").read_text())["config"]
    assert resolved["max_files"] == CurateConfig.max_files == 0  # the stage's default, not a test size
    bad = subprocess.run(pm + [str(nb), str(tmp_path / "bad.ipynb"), "-p", "run_dir", str(tmp_path / "pm2"), "-p", "langauges", "python"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "did you mean 'languages'" in bad.stderr + bad.stdout


def test_killed_job_leaves_nothing_that_looks_finished_and_rerun_completes(tmp_path):
    args = ["run", "curate", "--run", "r4", "-p", "card_dir=", "-p", "max_files=400"]
    proc = subprocess.Popen(CLI + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    data = tmp_path / "runs" / "r4" / "data"
    deadline = time.time() + 120
    while time.time() < deadline and not (data / "stage_config.json").exists(): time.sleep(0.2)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (data / "_COMPLETE.json").exists()
    assert not (data / "train").exists() or not any((data / "train").glob("*.parquet"))
    cli(*args, cwd=tmp_path)
    assert (data / "_COMPLETE.json").exists() and any((data / "train").glob("*.parquet"))


def test_train_job_on_a_missing_run_fails_and_fabricates_nothing(tmp_path):
    out = cli("run", "train", "--run", "nosuch", "-p", "max_steps=4", "-p", "warmup_steps=1", cwd=tmp_path, check=False)
    assert out.returncode == 1, out.stderr
    assert "no tokenizer" in out.stderr and "run the tokenizer stage for this run first" in out.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "nosuch").iterdir()) == ["jobs"]


def test_train_job_with_two_processes_equals_one(tmp_path, monkeypatch):
    "`-p num_processes=2` trains through accelerate.notebook_launcher inside the papermill job, with the one-process result."
    import shutil, torch
    from safetensors.torch import load_file
    from codecomplete.jobs import run_job
    from codecomplete.pack import PackConfig, pack, sample_run
    from codecomplete.train import TrainConfig, read_log, train
    settings = dict(preset="tiny", seq_len=32, micro_batch=4, batch_tokens=256, max_steps=8, warmup_steps=2, lr=3e-3,
                    log_every=1, eval_every=4, eval_batches=2, save_every=4, tensorboard=False)
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    sample_run(one, n_files=16, vocab_size=512)
    shutil.copytree(one, two)
    pack(PackConfig(run_dir=str(one), seq_len=settings["seq_len"]))  # the job packs at the train seq_len too
    train(TrainConfig(run_dir=str(one), **settings))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_job("train", "two", {**settings, "num_processes": 2}, runs_root=tmp_path / "runs", quiet=True)
    assert json.loads((two / "train" / "_COMPLETE.json").read_text())["summary"]["processes"] == 2
    w1, w2 = (load_file(str(r / "train" / "model" / "model.safetensors")) for r in (one, two))
    assert w1.keys() == w2.keys()
    for k in w1: torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0, msg=k)
    l1, l2 = ([(r["step"], r["loss"]) for r in read_log(run) if "loss" in r] for run in (one, two))
    assert [s for s, _ in l1] == [s for s, _ in l2] and all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(l1, l2))


def test_job_parameters_cells_name_every_setting_and_keep_no_defaults_of_their_own():
    from codecomplete.jobs import JOBS
    for name, job in JOBS.items():
        nb = json.loads((ROOT / "nbs" / "jobs" / job.notebook).read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
        namespace = {}
        exec("".join(cell["source"]), namespace)
        names = {k: v for k, v in namespace.items() if k != "__builtins__"}
        keys = {k for cls in job.config_classes() for k in cls.keys()}
        assert set(names) == keys, (name, set(names) ^ keys)
        assert names.pop("run_dir") == "runs/default" and set(names.values()) == {None}, name


def test_sigterm_to_the_runner_reaches_the_training_which_checkpoints_then_resumes(tmp_path):
    from codecomplete.pack import sample_run
    run = tmp_path / "runs" / "sig"
    sample_run(run, n_files=8, vocab_size=400)
    args = ["run", "train", "--run", "sig", "-p", "preset=tiny", "-p", "seq_len=64", "-p", "micro_batch=4", "-p", "batch_tokens=256",
            "-p", "warmup_steps=2", "-p", "save_every=1000000", "-p", "eval_every=1000000", "-p", "log_every=1"]
    proc = subprocess.Popen(CLI + args + ["-p", "max_steps=100000"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = run / "train" / "log.jsonl", time.time() + 180
    while time.time() < deadline and not (log.exists() and '"loss"' in log.read_text()): time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the runner alone, as a container runtime does: the kernel lives in a session of its own
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1 and "was stopped" in err, err[-2000:]
    assert "IPKernelApp" not in err and "IProgress" not in err, err[-2000:]  # the kernel's and tqdm's warnings stay out of a job's output
    saved = [int(p.name.split("-")[1]) for p in (run / "train" / "checkpoints").glob("step-*")]
    assert len(saved) == 1 and saved[0] >= 1  # only the stop can have saved it: save_every is a million
    resumed = cli(*args, "-p", "max_steps=100000", "-p", f"stop_at_step={saved[0] + 2}", cwd=tmp_path)  # the same config
    assert f"resuming from {run / 'train' / 'checkpoints'}" in resumed.stdout and f"stopped at step {saved[0] + 2}" in resumed.stdout


def _free_ports(n: int) -> list[int]:
    "`n` distinct TCP ports free on the loopback interface now."
    import socket
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks: s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks: s.close()


def _ours(marker: str) -> list:
    "Processes whose command line names `marker` (this test's Ray folder)."
    import psutil
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []): out.append(p)
        except psutil.Error: pass
    return out


def _stop_head(head, marker: str) -> list:
    "Stop a `ray start --block` head and what it started; returns the processes naming `marker` that outlived it (then killed)."
    # `ray stop` would stop every Ray of this user on the machine; the head's own group and what names its folder are ours alone
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try: os.killpg(head.pid, sig)
        except ProcessLookupError: pass
        try: head.wait(wait); break
        except subprocess.TimeoutExpired: pass
    deadline = time.time() + 30
    while (left := _ours(marker)) and time.time() < deadline: time.sleep(1)
    for p in left: p.kill()
    return left


def _start_head(ray_cli, folder: Path, env: dict, log: Path):
    """A local Ray head with its job server on free loopback ports, its files under `folder`: (process, dashboard port).
    Ray gives a node 30 s to come up and a loaded machine can miss that; a head that exits so is started again, twice."""
    for attempt in range(3):
        gcs, dash, client, agent, agent_grpc, env_agent, metrics = _free_ports(7)
        head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
                                 "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                                 "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics), "--num-cpus", "1",
                                 "--object-store-memory", str(200 << 20), "--temp-dir", str(folder), "--disable-usage-stats"],
                                env=env, cwd=log.parent, start_new_session=True, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while "Ray runtime started" not in log.read_text() and head.poll() is None and time.time() < deadline: time.sleep(1)
        if "Ray runtime started" in log.read_text(): return head, dash  # what `ray start` prints once the head's processes are up
        assert not _stop_head(head, str(folder))
        if attempt == 2: raise AssertionError(f"the Ray head did not start three times:\n{log.read_text()[-3000:]}")


def test_ray_job_submit_runs_a_job_on_a_local_ray_head(tmp_path, corpus):
    """`ray job submit --address http://127.0.0.1:PORT -- codecomplete run curate ...` on a local Ray head with its job server
    (ray[default]; loopback, free ports, a token of its own), the run folder complete after; every Ray process the head
    started is gone at the end. About a minute on a loaded 2-core machine."""
    import importlib.util, secrets, tempfile
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists() or importlib.util.find_spec("ray") is None or importlib.util.find_spec("aiohttp") is None:
        pytest.skip("RAY'S JOB SERVER IS NOT INSTALLED, `ray job submit` IS NOT TESTED: pip install 'codecomplete[ray]' (it brings ray[default])")
    (tmp_path / "ray").mkdir()
    link = Path(tempfile.gettempdir(), f"cc-rayjob-{os.getpid()}")  # Ray's socket paths must stay short
    link.unlink(missing_ok=True); link.symlink_to(tmp_path / "ray")
    token = tmp_path / "token"; token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}  # a job server runs any command: not without a token
    head, dash = _start_head(ray_cli, link, env, tmp_path / "head.log")
    try:
        runs, deadline = tmp_path / "runs", time.time() + 120
        submit = [str(ray_cli), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--",
                  *CLI, "run", "curate", "--run", "onray", "--runs-root", str(runs), "-p", f"sources=[{corpus}]", "-p", "card_dir="]
        while True:  # the head's job agent registers a little after the head is up; until then the server refuses the job
            job = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
            if "No available agent to submit job" not in job.stderr or time.time() > deadline: break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        assert "[curate] done" in job.stdout  # the job's own output comes back through the job server
        assert (runs / "onray" / "data" / "_COMPLETE.json").exists() and (runs / "onray" / "jobs" / "01_curate.ipynb").exists()
        assert any((runs / "onray" / "data" / "train").glob("*.parquet"))
    finally:
        left = _stop_head(head, str(link))
        link.unlink(missing_ok=True)
    assert not left, [p.info["cmdline"][:3] for p in left]  # the head's processes stopped with it
