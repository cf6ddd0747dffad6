"""The whole pipeline as a newcomer runs it, on a small slice of the default corpus: every promised artifact, a model
that learned, skip on rerun, and a kill mid-way that a rerun recovers from."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

CLI = [str(Path(sys.executable).parent / "codecomplete")]
SMALL = ["-p", "max_files=400", "-p", "vocab_size=2048", "-p", "preset=tiny", "-p", "seq_len=128", "-p", "micro_batch=8",
         "-p", "batch_tokens=1024", "-p", "max_steps=200", "-p", "warmup_steps=10", "-p", "lr=3e-3", "-p", "eval_every=50",
         "-p", "save_every=20",
         "-p", "num_problems=4", "-p", "max_new_tokens=48", "-p", "fim_max_cases=12", "-p", "bpb_max_bytes=40000"]


def test_pipeline_end_to_end_with_kill_and_rerun(tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    args = CLI + ["run", "pipeline", "--run", "e2e"] + SMALL
    run = tmp_path / "runs" / "e2e"
    # kill the whole pipeline once the train stage has started, then rerun: nothing finished is redone, the run completes
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (run / "train" / "checkpoints").exists(): time.sleep(0.3)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    assert (run / "data" / "_COMPLETE.json").exists() and (run / "tokenizer" / "_COMPLETE.json").exists()
    assert not (run / "train" / "_COMPLETE.json").exists()

    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[curate] finished with this config" in out.stdout and "[tokenizer] finished with this config" in out.stdout

    # every artifact the README promises
    for nb in ("01_curate", "02_tokenizer", "03_train", "04_evaluate"): assert (run / "jobs" / f"{nb}.ipynb").exists(), nb
    for split in ("train", "validation", "test"): assert list((run / "data" / split).glob("*.parquet")), split
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["kept"] + sum(stats["removed"].values()) == stats["seen"]
    assert list((run / "data" / "card").glob("*.md"))
    assert (run / "tokenizer" / "report.json").exists() and (run / "tokens" / "train.bin").exists()
    assert (run / "train" / "model" / "model.safetensors").exists() and (run / "train" / "model" / "README.md").exists()
    results = json.loads((run / "eval" / "results.json").read_text())
    assert {"bpb", "humaneval", "fim"} <= set(results) and (run / "eval" / "samples.jsonl").exists()
    report = (run / "report.md").read_text()
    for section in ("## Data", "## Vocabulary", "## Training", "## Evaluation", "## A completion"): assert section in report, section
    assert (run / "report" / "training.png").exists()

    # the model learned: validation bits per byte clearly below the untrained model's (this 200-step slice gets about
    # 20% below; the full CPU main job about 45%, BENCHMARKS.md)
    log = [json.loads(l) for l in (run / "train" / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if "val_bpb" in r]
    assert val[0]["step"] == 0 and val[-1]["val_bpb"] < 0.85 * val[0]["val_bpb"], val

    # the installed package completes without notebooks
    check = ("from codecomplete.complete import complete; "
             f"t = complete('def add(a, b):\\n    return', model='{run / 'train' / 'model'}', max_new_tokens=8); assert isinstance(t, str)")
    subprocess.run([sys.executable, "-c", check], check=True, env=env)

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("finished with this config") == 4, again.stdout[-2000:]
