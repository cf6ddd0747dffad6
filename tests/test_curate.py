"End-to-end, multi-process, determinism, near-dedup quality and bad-input tests of the curate stage."
import gzip, json, os, random, re, shutil, subprocess, sys, sysconfig, time
from pathlib import Path

import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
import pytest

import codecomplete.curate as curate_mod
from codecomplete.config import MARKER, ConfigError
from codecomplete.curate import SPLITS, CurateConfig, EmptyDatasetError, curate
from codecomplete.dedup import MinHasher, humaneval_path, shingle_hashes, tokenize

STDLIB = Path(sysconfig.get_paths()["stdlib"])
GOOD = "def area(width, height):\n    \"Area of a rectangle.\"\n    return width * height\n\n\nprint(area(3, 4))\n"


def run(tmp_path, sources, name="run", **kw):
    "Curate `sources` into tmp_path/name; returns (stats, {split: table}) after checking the accounting."
    cfg = CurateConfig(run_dir=str(tmp_path / name), sources=[str(s) for s in sources], num_workers=kw.pop("num_workers", 1), **kw)
    data = curate(cfg)
    stats = json.loads((data / "stats.json").read_text())
    assert stats["kept"] + sum(stats["removed"].values()) == stats["seen"]
    assert (data / MARKER).exists()
    return stats, {s: pq.read_table(data / s) for s in SPLITS}


def kept_paths(tables):
    return sorted(p for t in tables.values() if len(t) for p in t.column("path").to_pylist())


def test_default_corpus_subset_multiprocess_and_loadable(tmp_path):
    stats, tables = run(tmp_path, [], max_files=200, num_workers=2, validation_fraction=0.2, test_fraction=0.2)
    assert stats["seen"] == 200 and stats["kept"] > 100
    assert sum(len(t) for t in tables.values()) == stats["kept"]
    groups = {s: set(t.column("group").to_pylist()) if len(t) else set() for s, t in tables.items()}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
    import datasets
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "run/data"))
    assert {s: len(ds[s]) for s in ds} == {s: len(t) for s, t in tables.items() if len(t)}
    assert (tmp_path / "run/data/card/python-stdlib.md").exists()


def test_same_inputs_and_seed_give_identical_bytes(tmp_path):
    kw = dict(max_files=150, shard_bytes=300_000, row_group_bytes=60_000, validation_fraction=0.2, test_fraction=0.2)
    run(tmp_path, [], name="a", num_workers=1, **kw)
    run(tmp_path, [], name="b", num_workers=2, **kw)
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name not in (MARKER, "stage_config.json"))
    a, b = tmp_path / "a/data", tmp_path / "b/data"
    assert files(a) == files(b) and len(list(a.glob("train/part-*.parquet"))) > 1
    for rel in files(a): assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    run(tmp_path, [], name="c", num_workers=1, **{**kw, "seed": 1})
    assert (tmp_path / "c/data/stats.json").read_bytes() != (a / "stats.json").read_bytes()


# ---- near duplicates: precision and recall on planted pairs ----

HEADER = "".join(f"# Copyright (c) Example Corp. Licensed under the Apache License line {i}.\n" for i in range(12)) + \
         "import os\nimport sys\nimport json\nfrom typing import Any, Optional\n\n"


def _bases(n):
    "n stdlib files of 3-20 KB that are not near duplicates of each other (estimated Jaccard < 0.4)."
    mh, picked, sigs = MinHasher(128, seed=3), [], []
    for p in sorted(STDLIB.rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts or not 3_000 <= p.stat().st_size <= 20_000: continue
        try: text = p.read_text()
        except UnicodeDecodeError: continue
        sig = mh.signature(shingle_hashes(tokenize(text)))
        if any(np.mean(sig == s) >= 0.4 for s in sigs): continue
        picked.append(text); sigs.append(sig)
        if len(picked) == n: return picked


def _variant(text, rng):
    "Rename two identifiers, reformat indentation and trailing space, change three lines."
    idents = [t for t in set(re.findall(r"\b[a-z_][a-z0-9_]{5,}\b", text)) if 2 <= len(re.findall(rf"\b{t}\b", text)) <= 8]
    for old in rng.sample(sorted(idents), min(2, len(idents))): text = re.sub(rf"\b{old}\b", old + "_renamed", text)
    lines = [re.sub(r"^( {4})+", lambda m: "  " * (len(m.group(0)) // 4), l) + (" " if i % 3 == 0 else "") for i, l in enumerate(text.splitlines())]
    for i in rng.sample(range(len(lines)), 3): lines[i] = f"changed_value_{i} = compute({i}, {rng.randint(0, 99)})"
    return "\n".join(lines) + "\n"


def test_near_duplicates_precision_recall(tmp_path):
    rng, bases = random.Random(0), _bases(120)
    assert len(bases) == 120
    for i, text in enumerate(bases):
        (tmp_path / "src/a_originals").mkdir(parents=True, exist_ok=True); (tmp_path / "src/b_variants").mkdir(exist_ok=True)
        (tmp_path / f"src/a_originals/f{i:03d}.py").write_text(HEADER + text)
        (tmp_path / f"src/b_variants/f{i:03d}.py").write_text(HEADER + _variant(text, rng))
    stats, tables = run(tmp_path, [tmp_path / "src"], num_workers=2, redact_pii=False)
    kept = set(kept_paths(tables))
    removed = {f"{d}/f{i:03d}.py" for d in ("a_originals", "b_variants") for i in range(120)} - kept
    planted = {f"b_variants/f{i:03d}.py" for i in range(120)}
    precision, recall = len(removed & planted) / max(len(removed), 1), len(removed & planted) / len(planted)
    jaccards = []
    for i, text in enumerate(bases):
        a = shingle_hashes(tokenize(HEADER + text)); b = shingle_hashes(tokenize((tmp_path / f"src/b_variants/f{i:03d}.py").read_text()))
        jaccards.append(len(np.intersect1d(a, b)) / len(np.union1d(a, b)))
    print(f"\nnear dedup on {len(planted)} planted pairs: precision {precision:.3f}, recall {recall:.3f} "
          f"(true Jaccard of pairs: min {min(jaccards):.2f}, median {np.median(jaccards):.2f}); removed {stats['removed']['near_duplicate']}; "
          f"true Jaccard of missed pairs: {sorted(round(jaccards[i], 2) for i in range(120) if f'b_variants/f{i:03d}.py' not in removed)}")
    assert stats["removed"]["near_duplicate"] == len(removed)
    assert all(f"a_originals/f{i:03d}.py" in kept for i in range(120)), "distinct files sharing boilerplate must be kept"
    assert precision >= 0.95 and recall >= 0.9


# ---- PII and decontamination ----

def test_pii_redacted_and_ordinary_values_kept(tmp_path):
    src = tmp_path / "src"; src.mkdir()
    (src / "settings.py").write_text(
        '"""Settings. Contact: ops-team@example.com"""\n'
        'SERVER = "93.184.216.34"\nBACKUP = "2606:4700:4700::1111"\nLOCAL = "10.0.0.7"\nLOOPBACK = "127.0.0.1"\n'
        'AWS_KEY = "AKIAIOSFODNN7EXAMPLE"\nSLACK = "xoxb-123456789012-abcdefghijklmnop"\n'
        'api_secret = "Zx8vQ2mN7pL4kR9sT1wY6uB3eH5jC0aD"\nadmin_password = "s3cr3t-Passw0rd"\n'
        'MAGIC = 0xDEADBEEF\nCOLOR = "#a1b2c3"\nCOMMIT = "a94a8fe5"\n__version__ = "3.1.4.1"\n'
        'def check(value):\n    return value & MAGIC == 0x1F\n')
    stats, tables = run(tmp_path, [src])
    import datasets  # a single group: validation and test are empty folders, and the dataset still loads
    assert list(datasets.load_dataset("parquet", data_dir=str(tmp_path / "run/data"))) == ["train"]
    assert [len(tables[s]) for s in SPLITS] == [1, 0, 0]
    text = tables["train"].column("content").to_pylist()[0]
    for placeholder, n in (("<EMAIL>", 1), ("<IP_ADDRESS>", 2), ("<KEY>", 3), ("<PASSWORD>", 1)): assert text.count(placeholder) == n, (placeholder, text)
    for kept in ("10.0.0.7", "127.0.0.1", "0xDEADBEEF", "#a1b2c3", "a94a8fe5", "3.1.4.1", "0x1F"): assert kept in text, kept
    for gone in ("ops-team@", "93.184", "2606:4700", "AKIA", "xoxb", "Zx8vQ2", "s3cr3t"): assert gone not in text, gone
    assert stats["pii_replacements"] == {"email": 1, "ip_address": 2, "key": 3, "password": 1}


def test_humaneval_solution_planted_is_removed(tmp_path):
    tasks = [json.loads(l) for l in gzip.open(humaneval_path(), "rt")]
    solution_only = next(t for t in tasks if len(" ".join(t["canonical_solution"].split())) >= 80)
    src = tmp_path / "src"; src.mkdir()
    (src / "good.py").write_text(GOOD)
    (src / "leak_full.py").write_text("import math\n\n" + tasks[0]["prompt"] + tasks[0]["canonical_solution"] + "\nprint('done')\n")
    body = solution_only["canonical_solution"].replace("    ", "\t")  # reindented: whitespace-normalized match
    (src / "leak_solution.py").write_text(f"def my_helper(x):\n    return x\n\ndef solve(*args):\n{body}\n")
    (src / "short.py").write_text("def add(x: int, y: int):\n    return x + y\n\n\nprint(add(1, 2))\n")
    stats, tables = run(tmp_path, [src])
    assert kept_paths(tables) == ["good.py", "short.py"]
    assert stats["removed"]["contaminated"] == 2
    assert set(stats["contaminated_tasks"]) == {"HumanEval/0", solution_only["task_id"]}


# ---- sources ----

def test_git_repository_tracked_files_only(tmp_path):
    repo = tmp_path / "myrepo"; (repo / "pkg").mkdir(parents=True)
    (repo / "pkg/mod.py").write_text(GOOD); (repo / "app.js").write_text("function area(w, h) {\n  return w * h;\n}\nconsole.log(area(3, 4));\n")
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True); subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    (repo / "untracked.py").write_text(GOOD.replace("area", "volume"))
    stats, tables = run(tmp_path, [repo])
    assert kept_paths(tables) == ["app.js", "pkg/mod.py"] and stats["seen"] == 2
    assert {g for t in tables.values() if len(t) for g in t.column("group").to_pylist()} == {"myrepo"}
    assert stats["sources"][0]["kind"] == "git"


def test_jsonl_and_parquet_sources(tmp_path):
    recs = [{"content": f"def power_{i}(base):\n    return base ** {i} + {i * 7}\n\n\nprint(power_{i}({i}))\n", "max_stars_repo_path": f"src/m{i}.py", "max_stars_repo_name": f"org/repo{i % 3}",
             "max_stars_repo_licenses": ["MIT"]} for i in range(6)]
    with gzip.open(tmp_path / "stack.jsonl.gz", "wt") as f:
        for r in recs: f.write(json.dumps(r) + "\n")
        f.write("{not json\n"); f.write(json.dumps({"max_stars_repo_path": "x.py"}) + "\n")
    pq.write_table(pa.table({"content": ["fn main() {\n    println!(\"hi\");\n}\n", None], "path": ["main.rs", "b.rs"], "repo_name": ["org/rust", "org/rust"]}),
                   tmp_path / "rust.parquet")
    stats, tables = run(tmp_path, [tmp_path / "stack.jsonl.gz", tmp_path / "rust.parquet"], test_fraction=0)
    assert stats["seen"] == 10 and stats["kept"] == 7 and stats["removed"]["malformed_record"] == 3
    train = pa.concat_tables([t for t in tables.values() if len(t)]).to_pydict()  # all splits
    assert set(train["group"]) == {"org/repo0", "org/repo1", "org/repo2", "org/rust"}
    assert train["license"][0] == "MIT" and "rust" in train["lang"]


# ---- bad inputs ----

def test_non_utf8_file_name_is_a_counted_skip_in_folders_and_git(tmp_path):
    for kind in ("dir", "git"):
        src = tmp_path / kind / "pkg"; src.mkdir(parents=True)
        (src / "good.py").write_text(GOOD)
        with open(os.fsencode(src) + b"/bad_\xff_name.py", "w") as f: f.write(GOOD.replace("area", "volume"))
        if kind == "git":
            for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
                subprocess.run(["git", "-C", str(src.parent), *args], check=True)
        stats, tables = run(tmp_path, [src.parent], name=f"run-{kind}")
        assert stats["removed"]["undecodable_path"] == 1 and kept_paths(tables) == ["pkg/good.py"], kind
        card = next((tmp_path / f"run-{kind}/data/card").glob("*.md")).read_text()
        assert "| undecodable_path | 1 |" in card


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux only")
def test_killed_curate_leaves_no_workers_and_its_spool_is_removed_next_time(tmp_path):
    # a `sleep` holding the pool's task pipe stands for anything that keeps workers from seeing EOF: only the death signal ends them
    script = ("import os, subprocess, time, multiprocessing as mp\nfrom codecomplete.curate import CurateConfig, _init_pool_worker\n"
              "pool = mp.get_context('fork').Pool(2, _init_pool_worker, (CurateConfig(decontaminate=False), os.getpid()))\n"
              "pool.map(abs, range(4)); fd = pool._inqueue._writer.fileno()\n"
              "holder = subprocess.Popen(['sleep', '60'], pass_fds=[fd])\n"
              "print(holder.pid, *(p.pid for p in pool._pool), flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(curate_mod.__file__).parents[1])})
    holder, *workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2
    proc.kill(); proc.wait()
    def running(pid):
        try: return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError: return False
    deadline = time.time() + 10
    while any(map(running, workers)) and time.time() < deadline: time.sleep(0.1)
    survivors = [pid for pid in workers if running(pid)]
    for pid in (holder, *survivors): os.kill(pid, 9)
    assert not survivors, "pool workers outlived their killed parent"
    src = tmp_path / "src"; src.mkdir(); (src / "a.py").write_text(GOOD)
    stale = tmp_path / "run" / "data" / f".spool-{proc.pid}"; stale.mkdir(parents=True); (stale / "records.parquet").write_text("x")
    run(tmp_path, [src])
    assert not stale.exists()

def test_missing_path_and_empty_directory_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"): run(tmp_path, [tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty directory"): run(tmp_path, [tmp_path / "empty"])
    os.symlink("looping", tmp_path / "looping")
    with pytest.raises(ConfigError, match="looping symlink"): run(tmp_path, [tmp_path / "looping"])


def test_parquet_without_content_column_is_a_clear_error_and_keeps_finished_work(tmp_path):
    src = tmp_path / "src"; src.mkdir(); (src / "good.py").write_text(GOOD)
    run(tmp_path, [src])
    marker = (tmp_path / "run/data" / MARKER).read_bytes()
    pq.write_table(pa.table({"text": ["x"], "path": ["a.py"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=r"no 'content' column \(columns: text, path\); set content_column"):
        run(tmp_path, [src, tmp_path / "bad.parquet"], force=True)
    assert (tmp_path / "run/data" / MARKER).read_bytes() == marker and len(pq.read_table(tmp_path / "run/data/train")) == 1


def test_bad_files_are_counted_skips(tmp_path, monkeypatch):
    src = tmp_path / "src"; src.mkdir()
    (src / "good.py").write_text(GOOD)
    (src / "binary.py").write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    (src / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))
    with open(src / "huge.py", "wb") as f: f.truncate(50_000_000)  # sparse 50 MB file: rejected by size, never read
    os.symlink("loop.py", src / "loop.py")
    os.mkfifo(src / "pipe.py")  # opening a FIFO would block: it must be skipped, not read
    (src / "denied.py").write_text(GOOD.replace("area", "denied"))
    real_open = open
    def guarded_open(file, *a, **kw):
        if str(file).endswith("denied.py"): raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)
    monkeypatch.setattr(curate_mod, "open", guarded_open, raising=False)
    stats, tables = run(tmp_path, [src])
    assert kept_paths(tables) == ["good.py"]
    removed = {k: v for k, v in stats["removed"].items() if v}
    assert removed == {"binary": 1, "undecodable": 1, "too_large": 1, "symlink": 1, "unreadable": 2}, removed


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_file_is_counted(tmp_path):
    src = tmp_path / "src"; src.mkdir(); (src / "good.py").write_text(GOOD)
    (src / "secret.py").write_text(GOOD.replace("area", "hidden")); (src / "secret.py").chmod(0)
    stats, _ = run(tmp_path, [src])
    assert stats["removed"]["unreadable"] == 1


def test_nothing_kept_writes_stats_and_fails_clearly(tmp_path):
    src = tmp_path / "src"; src.mkdir(); (src / "a.bin").write_bytes(b"\0" * 10)
    with pytest.raises(EmptyDatasetError, match="no file survived curation"): run(tmp_path, [src])
    stats = json.loads((tmp_path / "run/data/stats.json").read_text())
    assert stats["removed"]["unsupported_language"] == 1 and not (tmp_path / "run/data" / MARKER).exists()


def test_truncated_jsonl_gz_is_a_clear_error(tmp_path):
    data = gzip.compress(b"".join(json.dumps({"content": GOOD, "path": f"m{i}.py"}).encode() + b"\n" for i in range(50)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"cut.jsonl.gz: cannot be read after line \d+ .*repair or remove it"):
        run(tmp_path, [tmp_path / "cut.jsonl.gz"], num_workers=2)


def test_code_folder_with_a_stray_parquet_file_is_a_folder(tmp_path):
    src = tmp_path / "src"; src.mkdir(); (src / "good.py").write_text(GOOD)
    pq.write_table(pa.table({"x": [1]}), src / "fixture.parquet")
    stats, tables = run(tmp_path, [src])
    assert kept_paths(tables) == ["good.py"] and stats["removed"]["unsupported_language"] == 1


# ---- the site-packages preset ----

def _fake_site_packages(root):
    "Two installed distributions (licence from License-Expression / from classifiers) and the clutter a real site-packages holds."
    def install(name, version, files, metadata):
        info = root / f"{name}-{version}.dist-info"; info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{metadata}")
        for rel, text in files.items():
            if not rel.startswith(".."): (root / rel).parent.mkdir(parents=True, exist_ok=True); (root / rel).write_text(text)
        record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
        (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))
    install("alpha", "1.2", {"alpha/__init__.py": GOOD, "alpha/core.py": GOOD.replace("area", "alpha_area"),
                             "alpha/__pycache__/core.cpython-311.pyc": "x", "../../../bin/alpha": "#!/bin/sh\n"}, "License-Expression: MIT\n")
    install("beta", "0.1", {"beta.py": GOOD.replace("area", "beta_area")}, "License: UNKNOWN\nClassifier: License :: OSI Approved :: BSD License\n")
    (root / "leftover.py").write_text(GOOD.replace("area", "stray"))  # in no RECORD: not installed code


def test_site_packages_preset_gives_each_file_its_package_and_licence(tmp_path, monkeypatch):
    import codecomplete.sources as sources_mod
    site = tmp_path / "venv/lib/site-packages"; site.mkdir(parents=True); _fake_site_packages(site)
    monkeypatch.setattr(sources_mod, "site_package_dirs", lambda: [site.resolve()])
    stats, tables = run(tmp_path, ["site-packages"], test_fraction=0, validation_fraction=0.3)
    assert kept_paths(tables) == ["alpha/__init__.py", "alpha/core.py", "beta.py"] and stats["seen"] == 3
    rows = pa.concat_tables([t for t in tables.values() if len(t)]).to_pylist()
    assert {(r["path"], r["package"], r["group"], r["license"]) for r in rows} == {
        ("alpha/__init__.py", "alpha", "alpha", "MIT"), ("alpha/core.py", "alpha", "alpha", "MIT"), ("beta.py", "beta", "beta", "BSD License")}
    assert stats["sources"] == [{"name": "site-packages", "kind": "site-packages", "path": str(site.resolve()), "license": ""}]
    assert stats["packages"] == {"alpha": {"version": "1.2", "license": "MIT", "files": 2, "bytes": len(GOOD) + len(GOOD.replace("area", "alpha_area")), "splits": {"validation": 2}},
                                 "beta": {"version": "0.1", "license": "BSD License", "files": 1, "bytes": len(GOOD.replace("area", "beta_area")), "splits": {"train": 1}}}  # a package is one split group
    card = (tmp_path / "run/data/card/python-site-packages.md").read_text()
    assert "| alpha | 1.2 | MIT | 2 |" in card and "| beta | 0.1 | BSD License | 1 |" in card
    empty = tmp_path / "empty-site"; empty.mkdir()
    monkeypatch.setattr(sources_mod, "site_package_dirs", lambda: [empty])
    with pytest.raises(ConfigError, match="no installed distribution lists files under .*install packages into this environment or remove it"):
        run(tmp_path, ["site-packages"], name="none")
