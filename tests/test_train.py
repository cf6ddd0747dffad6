"Train stage: overfitting, process-count invariance, exact resume (stop, SIGKILL, corrupt checkpoint), starting over, bad configs."
import json, os, re, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np, pytest, torch
from safetensors.torch import load_file
from codecomplete.config import ConfigError
from codecomplete.pack import PackConfig, pack, sample_run
from codecomplete.train import TrainConfig, read_log, train

# Small enough for a loaded 2-core machine: ~1M parameters, 32-token windows, 256 tokens per optimizer step.
BASE = dict(preset="tiny", seq_len=32, micro_batch=4, batch_tokens=256, max_steps=16, warmup_steps=2, lr=3e-3,
            log_every=1, eval_every=8, eval_batches=2, save_every=4, keep_checkpoints=2, tensorboard=False)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

def free_port() -> str:
    "A free TCP port on 127.0.0.1, so launched process groups of parallel tests never share the default 29500."
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return str(s.getsockname()[1])

@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    run = sample_run(tmp_path_factory.mktemp("train") / "packed", n_files=16, vocab_size=512)
    pack(PackConfig(run_dir=str(run), seq_len=BASE["seq_len"]))  # FIM per window of the windows it trains on
    return run

def new_run(packed, root, name) -> Path:
    run = Path(root) / name
    for sub in ("tokenizer", "tokens"): shutil.copytree(packed / sub, run / sub)
    return run

def weights(run) -> dict: return load_file(str(Path(run) / "train" / "model" / "model.safetensors"))
def losses(run) -> list: return [(r["step"], r["loss"]) for r in read_log(run) if "loss" in r]

def assert_same_weights(a, b, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa: torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)

@pytest.fixture(scope="module")
def straight(packed, tmp_path_factory):
    run = new_run(packed, tmp_path_factory.mktemp("straight"), "run")
    train(TrainConfig(run_dir=str(run), **BASE))
    return run

def run_module(run, *params, check=True):
    cmd = [sys.executable, "-m", "codecomplete.train", "--run_dir", str(run), *[f"{k}={v}" for k, v in BASE.items()], *params]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=check)

def test_overfits_a_small_batch(packed, tmp_path):
    run = new_run(packed, tmp_path, "overfit")
    meta = json.loads((run / "tokens" / "train.json").read_text())
    n = 4 * 32 + 1  # exactly one micro-batch of windows: every step sees the same batch
    np.fromfile(run / "tokens" / "train.bin", dtype=meta["dtype"])[:n].tofile(run / "tokens" / "train.bin")
    (run / "tokens" / "train.json").write_text(json.dumps({**meta, "count": n}))
    train(TrainConfig(run_dir=str(run), **{**BASE, "batch_tokens": 128, "max_steps": 60, "warmup_steps": 5, "lr": 1e-2, "min_lr_ratio": 1.0,
                                           "save_every": 1000, "eval_every": 1000}))
    curve = [l for _, l in losses(run)]
    assert curve[-1] < 0.1 * curve[0], curve

def test_stop_and_resume_equals_straight(packed, straight, tmp_path):
    run = new_run(packed, tmp_path, "resume")
    out = train(TrainConfig(run_dir=str(run), **BASE, stop_at_step=8))
    assert not (out / "_COMPLETE.json").exists() and (out / "checkpoints" / "step-00000008").exists()
    train(TrainConfig(run_dir=str(run), **BASE))
    assert losses(run) == losses(straight)
    assert_same_weights(run, straight)

def test_corrupt_newest_checkpoint_falls_back(packed, straight, tmp_path):
    run = new_run(packed, tmp_path, "corrupt")
    train(TrainConfig(run_dir=str(run), **BASE, stop_at_step=10))  # checkpoints at 8 and 10
    newest = run / "train" / "checkpoints" / "step-00000010" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="step-00000010 is unusable"):
        train(TrainConfig(run_dir=str(run), **BASE))
    assert losses(run) == losses(straight)
    assert_same_weights(run, straight)

def test_sigkill_then_rerun_equals_straight(packed, straight, tmp_path):
    run = new_run(packed, tmp_path, "killed")
    cmd = [sys.executable, "-m", "codecomplete.train", "--run_dir", str(run), *[f"{k}={v}" for k, v in BASE.items()], "max_steps=16"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = run / "train" / "checkpoints" / "step-00000004"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (run / "train" / "_COMPLETE.json").exists(), "the run finished before it could be killed"
    run_module(run)
    assert (run / "train" / "_COMPLETE.json").exists()
    assert losses(run) == losses(straight)
    assert_same_weights(run, straight)

def test_sigterm_saves_a_checkpoint(packed, tmp_path):
    run = new_run(packed, tmp_path, "term")
    cmd = [sys.executable, "-m", "codecomplete.train", "--run_dir", str(run), *[f"{k}={v}" for k, v in BASE.items()], "max_steps=400", "save_every=1000"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log = run / "train" / "log.jsonl"  # the file appears before the handlers are set, its first record (step 0) after
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline: time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, proc.stderr.read()
    ckpts = list((run / "train" / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "MANIFEST.json").exists()

def test_two_processes_equal_one(packed, straight, tmp_path):
    run = new_run(packed, tmp_path, "two")
    code = ("import sys; from accelerate import notebook_launcher; from codecomplete.train import TrainConfig, train; "
            f"notebook_launcher(train, (TrainConfig(run_dir=sys.argv[1], **{BASE!r}),), num_processes=2, use_port=sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(run), free_port()], env=ENV, check=True, capture_output=True, text=True)
    assert json.loads((run / "train" / "stage_config.json").read_text())["config"]["batch_tokens"] == 256
    assert_same_weights(run, straight, atol=1e-5)
    for (s1, a), (s2, b) in zip(losses(run), losses(straight), strict=True): assert s1 == s2 and abs(a - b) < 1e-5

def finished_copy(packed, straight, root, name) -> Path:
    "A copy of the packed run (data included) holding the finished train folder of `straight`."
    run = Path(root) / name
    shutil.copytree(packed, run); shutil.copytree(straight / "train", run / "train")
    return run

def test_changed_config_or_upstream_starts_over_and_keeps_the_old_run(packed, straight, tmp_path, capsys):
    run = finished_copy(packed, straight, tmp_path, "redo")
    capsys.readouterr()
    train(TrainConfig(run_dir=str(run), **{**BASE, "max_steps": 12}))  # a changed train setting on a finished run
    said = capsys.readouterr().out
    assert "starting over" in said and "a different config" in said and "train.previous" in said and "resuming" not in said
    assert [s for s, _ in losses(run)] == list(range(1, 13))
    assert json.loads((run / "train.previous" / "_COMPLETE.json").read_text())["summary"]["steps"] == 16
    previous = load_file(str(run / "train.previous" / "model" / "model.safetensors"))
    assert all(torch.equal(previous[k], v) for k, v in weights(straight).items())
    twelve = weights(run)
    pack(PackConfig(run_dir=str(run), fim_rate=0.1, force=True))  # new upstream results: same vocabulary, other token ids
    train(TrainConfig(run_dir=str(run), **{**BASE, "max_steps": 12}))  # the same train config
    said = capsys.readouterr().out
    assert "starting over" in said and "other upstream results" in said and "resuming" not in said
    assert json.loads((run / "train" / "_COMPLETE.json").read_text())["upstream"]["pack"]["id"] != \
           json.loads((run / "train.previous" / "_COMPLETE.json").read_text())["upstream"]["pack"]["id"]
    previous = load_file(str(run / "train.previous" / "model" / "model.safetensors"))  # the 12-step run replaced the 16-step one
    assert all(torch.equal(previous[k], v) for k, v in twelve.items())
    assert not all(torch.equal(weights(run)[k], v) for k, v in twelve.items())

def test_failing_check_leaves_a_finished_stage_untouched(packed, straight, tmp_path):
    run = finished_copy(packed, straight, tmp_path, "kept")
    before = {name: (run / "train" / name).read_bytes() for name in ("_COMPLETE.json", "stage_config.json")}
    meta = json.loads((run / "tokens" / "train.json").read_text())
    (run / "tokens" / "train.json").write_text(json.dumps({**meta, "count": 20}))  # fewer tokens than one window
    for params, message in [({"max_steps": 12}, "train split has 20 tokens"),
                            ({"init_from": str(tmp_path / "nothing")}, "holds no model"),
                            ({"seq_len": 1024, "micro_batch": 64, "batch_tokens": 65536}, "validation split has")]:
        with pytest.raises(ConfigError, match=message): train(TrainConfig(run_dir=str(run), **{**BASE, **params}))
        assert {name: (run / "train" / name).read_bytes() for name in before} == before
        assert not (run / "train.previous").exists()

def test_model_loads_offline_with_card(straight):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model_dir = straight / "train" / "model"
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tok)
    card = (model_dir / "README.md").read_text()
    assert "tokens seen: 4,096" in card and "validation loss" in card
    assert not (model_dir / "stage_config.json").exists()

def test_init_from_continues_and_rejects_other_vocab(packed, straight, tmp_path):
    run = new_run(packed, tmp_path, "finetune")
    train(TrainConfig(run_dir=str(run), **{**BASE, "max_steps": 4, "init_from": str(straight / "train" / "model")}))
    first = losses(run)[0][1]
    assert first < losses(straight)[0][1] - 1  # starts from the trained weights, not from scratch
    card = (run / "train" / "model" / "README.md").read_text()
    assert f"fine-tuned from `{straight / 'train' / 'model'}`" in card and "tokens seen in this fine-tuning only: 1,024" in card
    other = sample_run(tmp_path / "other", n_files=8, vocab_size=300)
    pack(PackConfig(run_dir=str(other)))
    with pytest.raises(ConfigError, match="token ids, the run's tokenizer needs"):
        train(TrainConfig(run_dir=str(other), **{**BASE, "init_from": str(straight / "train" / "model")}))

@pytest.mark.parametrize("params, message", [
    (dict(seq_len=4096), "longer than preset 'tiny' supports"),
    (dict(batch_tokens=300), "not a multiple of seq_len*micro_batch"),
    (dict(preset="125M"), "unknown model preset '125M' (did you mean '125m'?)"),
    (dict(warmup_steps=16), "warmup_steps=16 must be below max_steps"),
    (dict(grad_clip=-1), "grad_clip=-1.0 is out of range; use >= 0 (0 = off)"),
    (dict(lr=float("nan")), "lr=nan is out of range"),
    (dict(optimizer="Muon"), "optimizer='Muon': use adamw or muon"),
    (dict(optimizer="muon", distributed="fsdp"), "use distributed=ddp with muon"),
    (dict(attention="flash3"), "attention='flash3': use one of auto, cudnn, flash, efficient, math"),
])
def test_bad_configs_fail_at_construction(params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**{**BASE, **params})

def test_bad_inputs_fail_before_compute(packed, tmp_path):
    run = new_run(packed, tmp_path, "missing")
    shutil.rmtree(run / "tokens")
    with pytest.raises(ConfigError, match="run the pack stage first"): train(TrainConfig(run_dir=str(run), **BASE))
    assert not (run / "train").exists()
    with pytest.raises(ConfigError, match="does not divide among 2 processes"): TrainConfig(**{**BASE, "batch_tokens": 128}).accum_steps(2)
    run = new_run(packed, tmp_path, "no-val")
    for f in (run / "tokens").glob("validation.*"): f.unlink()
    with pytest.raises(ConfigError, match="no packed 'validation' tokens .* pack the validation split too"): train(TrainConfig(run_dir=str(run), **BASE))
    run = new_run(packed, tmp_path, "tiny-val")
    with pytest.raises(ConfigError, match="validation split has"): train(TrainConfig(run_dir=str(run), **{**BASE, "seq_len": 1024, "micro_batch": 64, "batch_tokens": 65536}))
    result = run_module(run, "micro_bach=2", check=False)
    assert result.returncode != 0 and "did you mean 'micro_batch'" in result.stderr

# --- the loss, the optimizer and the attention kernel ---

def test_loss_shifts_the_targets_once():
    "lm_loss scores position t against token t+1: transformers' own single shift of `labels`, never a second one."
    from codecomplete.model import build_model, model_config
    from codecomplete.train import lm_loss
    torch.manual_seed(0)
    model = build_model(model_config("tiny", 256))
    with torch.no_grad(): model.lm_head.weight.mul_(50)  # confident predictions: the loss depends on which token is scored
    batch = torch.randint(0, 256, (3, 33))
    with torch.no_grad():
        once = model(input_ids=batch, labels=batch).loss
        logits = model(input_ids=batch[:, :-1]).logits
        twice = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), batch[:, 2:].reshape(-1))
        for chunk in (0, 7, 96):
            loss = lm_loss(model, batch, chunk)
            torch.testing.assert_close(loss, once, rtol=1e-5, atol=0)
            assert abs(float(loss) - float(twice)) > 0.1

def test_chunked_loss_trains_like_the_whole_batch(packed, straight, tmp_path):
    run = new_run(packed, tmp_path, "chunked")
    train(TrainConfig(run_dir=str(run), **BASE, loss_chunk_tokens=24))  # 128-token micro-batches in 6 chunks (the last one short)
    for (s1, a), (s2, b) in zip(losses(run), losses(straight), strict=True): assert s1 == s2 and abs(a - b) < 1e-4
    diffs = {k: float((v - weights(straight)[k]).abs().max()) for k, v in weights(run).items()}
    assert max(diffs.values()) < 1e-3, diffs  # float summation order only; AdamW turns it into far less than one lr=3e-3 step

@pytest.fixture(scope="module")
def muon_straight(packed, tmp_path_factory):
    run = new_run(packed, tmp_path_factory.mktemp("muon"), "run")
    train(TrainConfig(run_dir=str(run), **BASE, optimizer="muon"))
    return run

def test_muon_stop_and_resume_equals_straight(packed, straight, muon_straight, tmp_path):
    run = new_run(packed, tmp_path, "muon-resume")
    train(TrainConfig(run_dir=str(run), **BASE, optimizer="muon", stop_at_step=8))
    state = torch.load(run / "train" / "checkpoints" / "step-00000008" / "optimizer.bin", weights_only=True)
    assert state["muon"]["state"] and state["adamw"]["state"]  # both optimizers' state is in the checkpoint
    train(TrainConfig(run_dir=str(run), **BASE, optimizer="muon"))
    assert losses(run) == losses(muon_straight)
    assert_same_weights(run, muon_straight)
    w, adamw = weights(muon_straight), weights(straight)
    assert not torch.allclose(w["model.layers.0.mlp.up_proj.weight"], adamw["model.layers.0.mlp.up_proj.weight"], atol=1e-3)

def test_attention_kernel_is_checked_before_the_stage_starts(packed, tmp_path, monkeypatch):
    import codecomplete.model as model
    run = new_run(packed, tmp_path, "kernel")
    with pytest.raises(ConfigError, match="attention=cudnn has no kernel for 4 heads of 32 dims on cpu in float32; kernels that run here: auto, flash, math"):
        train(TrainConfig(run_dir=str(run), **BASE, attention="cudnn"))
    assert not (run / "train").exists()
    monkeypatch.setattr(model, "_sdpa_runs", lambda name, heads, kv_heads, *a: name == "math" or heads == kv_heads)  # a kernel without GQA
    with pytest.raises(ConfigError, match=re.escape("attention=flash does not run grouped-query attention (4 query heads sharing 2 key/value heads) "
                                                    "on cpu in float32; use one that does: auto, math")):
        train(TrainConfig(run_dir=str(run), **BASE, attention="flash"))
    assert not (run / "train").exists()

def test_muon_schedule_reaches_both_optimizers_after_prepare_and_resume():
    "Accelerate's prepare (and every resume) reloads the optimizer state: the scheduler's learning rate must still reach Muon and AdamW."
    from accelerate import Accelerator
    from codecomplete.model import build_model, model_config
    from codecomplete.train import lr_factor, make_optimizer
    model = build_model(model_config("tiny", 256))
    opt = make_optimizer(model, TrainConfig(**BASE, optimizer="muon"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 4, 16, 0.1))
    acc = Accelerator(cpu=True)
    model, popt, sched = acc.prepare(model, opt, sched)
    for step in range(3):
        popt.step(); sched.step()
        opt.load_state_dict(opt.state_dict())  # as a resume does
        want = BASE["lr"] * lr_factor(step + 1, 4, 16, 0.1)
        assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == pytest.approx([want] * 3)
