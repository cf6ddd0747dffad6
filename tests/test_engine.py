"""engine=ray: the records, splits and accounting of engine=local on a local 2-CPU Ray, also with the near-duplicate components
computed on Ray; clear errors for a missing Ray and an unreachable cluster (before the stage folder is touched); a killed run
leaves no Ray process and nothing that looks finished; a worker killed mid-examine is retried (same dataset), one that always
dies fails the stage cleanly."""
import json, os, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from codecomplete.config import MARKER, ConfigError
from codecomplete.curate import SPLITS, CurateConfig, curate

try:
    import ray
    from codecomplete.engine import EXAMINE_RETRIES, ray_components, start_local_ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="RAY IS NOT INSTALLED, engine=ray IS NOT TESTED: pip install 'codecomplete[ray]' "
                                                   "(the dev extra that `make test` installs includes it)")
STDLIB = Path(os.__file__).parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    "Real files plus every kind of removal: an exact (whitespace) copy, a near copy, binary, long lines, undecodable, unsupported, a symlink, bad records."
    root = tmp_path_factory.mktemp("corpus")
    src = root / "src"; (src / "pkg").mkdir(parents=True)
    for name in ("bisect.py", "colorsys.py", "glob.py", "fnmatch.py", "keyword.py", "shlex.py", "sched.py", "stat.py", "numbers.py", "heapq.py"):
        (src / "pkg" / name).write_text((STDLIB / name).read_text())
    text = (STDLIB / "shlex.py").read_text()
    (src / "pkg/shlex_spaces.py").write_text(text.replace("\n", "  \n"))  # exact duplicate after whitespace normalization
    (src / "pkg/shlex_edit.py").write_text(text.replace("posix", "posix_mode", 3).replace("instream", "stream_in"))  # near duplicate
    (src / "pkg/blob.py").write_bytes(b"x = 1\0\1\2")
    (src / "pkg/wide.py").write_text("x = '" + "a" * 1500 + "'\n")
    (src / "pkg/latin.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (src / "pkg/notes.txt").write_text("not code")
    (src / "pkg/link.py").symlink_to(src / "pkg/glob.py")
    os.mkfifo(src / "pkg/pipe.py")  # listed by the driver, unreadable where a worker opens it: a counted skip, as locally
    records = root / "records.jsonl"
    records.write_text("\n".join([json.dumps({"path": "r/a.py", "content": (STDLIB / "this.py").read_text(), "repo_name": "r"}),
                                  "{not json", json.dumps({"path": "r/b.py", "content": "x = '\ud800'"}),
                                  json.dumps({"path": "r/c.py", "content": (STDLIB / "bisect.py").read_text()})]) + "\n")
    return [str(src), str(records)]


SPLIT_SETTINGS = dict(group_by="file", validation_fraction=0.2, test_fraction=0.2)


def dataset(out: Path):
    "(stats, records of each split sorted by source and path) of a finished curate stage folder."
    records = {s: sorted(pq.read_table(out / s).to_pylist(), key=lambda r: (r["source"], r["path"])) if any((out / s).iterdir()) else []
               for s in SPLITS}
    return json.loads((out / "stats.json").read_text()), records


def run(run_dir, sources, **kw):
    return dataset(curate(CurateConfig(run_dir=str(run_dir), sources=sources, **SPLIT_SETTINGS, **kw)))


@pytest.fixture(scope="module")
def local(corpus, tmp_path_factory):
    return run(tmp_path_factory.mktemp("local") / "run", corpus, num_workers=1)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    "One local 2-CPU Ray for the module, its folder in the test's temporary directory (no dashboard, capped object store)."
    link = Path(tempfile.gettempdir(), f"cc-ray-test-{os.getpid()}"); link.unlink(missing_ok=True)
    link.symlink_to(tmp_path_factory.mktemp("ray"))
    try:
        start_local_ray(ray, 2, link)
        yield ray
    finally: ray.shutdown(); link.unlink(missing_ok=True)


@needs_ray
def test_ray_gives_the_local_dataset(local, local_ray, corpus, tmp_path):
    stats, records = local
    removed = {k: v for k, v in stats["removed"].items() if v}
    assert {"exact_duplicate", "near_duplicate", "binary", "max_line_length", "undecodable", "unsupported_language", "symlink", "malformed_record",
            "unreadable"} <= set(removed), removed
    assert all(records[s] for s in SPLITS), "the corpus must fill every split for the comparison to mean something"
    ray_stats, ray_records = run(tmp_path / "run", corpus, engine="ray")
    assert ray_stats == stats
    assert ray_records == records
    assert not list((tmp_path / "run/data").glob(".*")), "no shard, Ray folder or temporary split folder is left in the run"


@needs_ray
def test_components_on_ray_give_the_driver_dataset(local, local_ray, corpus, tmp_path, capsys):
    "With an edge budget of 0 the near-duplicate components are computed on Ray: the same dataset as the driver's scipy path."
    assert run(tmp_path / "run", corpus, engine="ray", max_driver_edges=0) == local
    assert "their components were computed on Ray" in capsys.readouterr().out


def _min_labels(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    "Smallest member of each node's connected component, from scipy."
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    _, comp = connected_components(coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n)), directed=False)
    smallest = np.full(comp.max() + 1, n); np.minimum.at(smallest, comp, np.arange(n))
    return smallest[comp]


@needs_ray
def test_ray_components_of_long_chains_match_scipy(local_ray):
    "Chains of 5,000 files numbered at random (label propagation's slow case), pairs and lone files, in 4 partitions: scipy's components."
    n, rng = 30_000, np.random.default_rng(1)
    order = rng.permutation(n)
    chains, pairs = order[:20_000].reshape(4, 5_000), order[20_000:28_000].reshape(-1, 2)  # the last 2,000 files are alone
    left = np.concatenate([chains[:, :-1].ravel(), pairs[:, 0]]); right = np.concatenate([chains[:, 1:].ravel(), pairs[:, 1]])
    edges = rng.permutation(np.stack([left, right]), axis=1)
    labels, rounds = ray_components(local_ray, n, [local_ray.put(p) for p in np.array_split(edges, 4, axis=1)])
    assert np.array_equal(labels, _min_labels(n, left, right))
    assert len(np.unique(labels)) == 4 + 4_000 + 2_000
    assert 3 <= rounds <= 30, rounds  # several rounds, about logarithmic in the chain length


def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _finished(tmp_path, corpus):
    "A finished local curate in tmp_path/run; returns its completion marker's text."
    run(tmp_path / "run", corpus[:1], num_workers=1, decontaminate=False)
    return (tmp_path / "run/data" / MARKER).read_text()


def test_ray_missing_is_a_config_error(tmp_path, corpus, monkeypatch):
    marker = _finished(tmp_path, corpus)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'codecomplete\[ray\]'"):
        curate(CurateConfig(run_dir=str(tmp_path / "run"), sources=corpus[:1], engine="ray", force=True))
    assert (tmp_path / "run/data" / MARKER).read_text() == marker, "the finished dataset keeps its marker"


@needs_ray
def test_unreachable_engine_address_fails_fast(tmp_path, corpus):
    marker = _finished(tmp_path, corpus)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="no Ray cluster answers there"):
        curate(CurateConfig(run_dir=str(tmp_path / "run"), sources=corpus[:1], engine="ray", engine_address=f"127.0.0.1:{_free_port()}", force=True))
    assert time.monotonic() - started < 30
    assert (tmp_path / "run/data" / MARKER).read_text() == marker
    with pytest.raises(ConfigError, match="needs engine=ray"): CurateConfig(engine_address="10.0.0.1:6379")


def _ray_processes(tag: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(tag in part for part in p.info["cmdline"] or []): found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    return found


@needs_ray
def test_killed_run_leaves_no_ray_process_and_a_rerun_finishes(local, local_ray, corpus, tmp_path):
    "SIGKILL a curate that started its own local Ray: its Ray processes go, nothing looks finished, and a rerun gives the local dataset."
    code = ("from codecomplete.curate import CurateConfig, curate; "
            f"curate(CurateConfig(run_dir={str(tmp_path / 'run')!r}, sources={corpus!r}, group_by='file', validation_fraction=0.2, "
            "test_fraction=0.2, engine='ray', num_workers=1))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tag = f"cc-ray-{proc.pid}"
    deadline = time.monotonic() + 180
    while not any("raylet" in " ".join(p.cmdline()) for p in _ray_processes(tag)):
        assert proc.poll() is None, f"curate ended before its Ray came up: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the local Ray did not come up in 180 s"
        time.sleep(0.5)
    assert (tmp_path / f"run/data/.ray-{proc.pid}").is_dir(), "Ray's folder lives inside the run folder"
    proc.send_signal(signal.SIGKILL); proc.wait()
    deadline = time.monotonic() + 60
    while (left := _ray_processes(tag)) and time.monotonic() < deadline: time.sleep(1)
    assert not left, f"Ray processes outlived the killed run: {[p.pid for p in left]}"
    data = tmp_path / "run/data"
    assert not (data / MARKER).exists() and not any((data / s).exists() for s in SPLITS)
    assert run(tmp_path / "run", corpus, engine="ray") == local  # the rerun (on the module's Ray) removes the stale folders and finishes
    link = Path(tempfile.gettempdir(), tag)  # pids wrap (pid_max 32768 here): a later process may own a link of this name
    assert not list(data.glob(".*")) and not (link.is_symlink() and os.readlink(link).startswith(str(tmp_path)))


@needs_ray
def test_job_command_of_ray_job_submit_joins_a_cluster(local, local_ray, corpus, tmp_path):
    "The entrypoint `ray job submit ... -- codecomplete run curate ...` runs, run here directly against the module's Ray by its address."
    address = local_ray.get_runtime_context().gcs_address
    cli = [str(Path(sys.executable).parent / "codecomplete"), "run", "curate", "--run", "onray", "-p", "engine=ray", "-p", f"engine_address={address}",
           "-p", f"sources={json.dumps(corpus)}", "-p", "group_by=file", "-p", "validation_fraction=0.2", "-p", "test_fraction=0.2"]
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    data = tmp_path / "runs/onray/data"
    differ = ("dataset", "fingerprint")  # the dataset is named after the run folder
    assert {k: v for k, v in json.loads((data / "stats.json").read_text()).items() if k not in differ} == {k: v for k, v in local[0].items() if k not in differ}
    assert json.loads((data / "stage_config.json").read_text())["config"]["engine_address"] == address


WORKER_DIES = '''
import json, os, sys, tempfile
from pathlib import Path
import ray
from codecomplete.config import MARKER
from codecomplete.curate import SPLITS, CurateConfig, curate
from codecomplete.engine import start_local_ray
cfg, control = json.loads(sys.argv[1]), Path(sys.argv[2])

def die_in_examine():
    "Worker setup: `examine` ends its worker process (os._exit, as a kill or the OOM killer would) while crashes are left in `control`."
    import codecomplete.engine as engine
    examine = engine.examine
    def examine_or_die(item):
        for k in range(int(control.read_text())):
            try: os.close(os.open(control.with_name(f"crash-{k}"), os.O_CREAT | os.O_EXCL))
            except FileExistsError: continue
            os._exit(1)
        return examine(item)
    engine.examine = examine_or_die

link = Path(tempfile.gettempdir(), f"cc-ray-dies-{os.getpid()}"); link.symlink_to(control.parent)
start_local_ray(ray, 2, link, runtime_env={"worker_process_setup_hook": die_in_examine})
data = Path(cfg["run_dir"]) / "data"
control.write_text("1000")  # every examine attempt dies
try: curate(CurateConfig(**cfg)); error = ""
except Exception as e: error = f"{type(e).__name__}: {e}"
crashes = len(list(control.parent.glob("crash-*")))
looks_finished = (data / MARKER).exists() or any((data / s).exists() for s in SPLITS)
control.write_text(str(crashes + 1))  # one more worker dies, then examine runs
curate(CurateConfig(**cfg))
print(json.dumps(dict(error=error[-400:], crashes=crashes, looks_finished=looks_finished, total=len(list(control.parent.glob("crash-*"))))))
ray.shutdown(); link.unlink()
'''


@needs_ray
def test_worker_killed_mid_examine_is_retried_and_one_always_killed_fails_cleanly(local, corpus, tmp_path):
    "A Ray whose workers die inside `examine` on demand: always (the stage fails after EXAMINE_RETRIES, nothing looks finished), then once (retried: the local dataset)."
    control = tmp_path / "ray" / "crashes"; control.parent.mkdir()
    cfg = dict(run_dir=str(tmp_path / "run"), sources=corpus, engine="ray", **SPLIT_SETTINGS)
    done = subprocess.run([sys.executable, "-c", WORKER_DIES, json.dumps(cfg), str(control)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["error"].startswith(f"RuntimeError: engine=ray: a worker died {EXAMINE_RETRIES + 1} times"), seen
    assert seen["crashes"] >= EXAMINE_RETRIES + 1 and not seen["looks_finished"], seen
    assert seen["total"] == seen["crashes"] + 1, seen
    assert dataset(tmp_path / "run/data") == local
