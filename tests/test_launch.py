"""Two CPU processes (gloo) under `accelerate launch -m codecomplete.train` and as bare ranks: DDP and FSDP give the
one-process model, FSDP really shards (parameters and optimizer state), and a signal to one rank at any step stops
every rank after the same step with one checkpoint that resumes exactly; a second signal exits at once."""
import json, os, signal, socket, subprocess, sys, time
from collections import Counter
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from codecomplete.pack import PackConfig, pack, sample_run
from codecomplete.distributed import RELAY_S
from codecomplete.train import TrainConfig, train

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
# log, eval and save only at the end: every step a signal can land on is a step that does no other collective
SETTINGS = dict(preset="tiny", seq_len=64, micro_batch=4, batch_tokens=512, max_steps=12, warmup_steps=1, eval_every=100,
                save_every=100, eval_batches=2, log_every=100, tensorboard=False)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ARGS = [f"{k}={v}" for k, v in SETTINGS.items()]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    run = sample_run(tmp_path_factory.mktemp("launch") / "base", n_files=12, vocab_size=512)
    pack(PackConfig(run_dir=str(run)))
    return run


def clone(src: Path, dest: Path) -> Path:
    "A run folder that shares `src`'s data, tokenizer and tokens."
    dest.mkdir(parents=True)
    for part in ("data", "tokenizer", "tokens"): (dest / part).symlink_to(src / part, target_is_directory=True)
    return dest


def weights(run: Path) -> dict: return load_file(run / "train" / "model" / "model.safetensors")


def assert_same_weights(a: Path, b: Path, atol: float):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa: torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=lambda m: f"{k}: {m}")


def accelerate_launch(run: Path, *params: str):
    "`accelerate launch` with two CPU processes: `--multi_gpu` picks its torchrun launcher (`--cpu` would start one process)."
    out = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                          "--dynamo_backend", "no", "-m", "codecomplete.train", "--run_dir", str(run), *ARGS, *params],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads((run / "train" / "_COMPLETE.json").read_text())["summary"]["processes"] == 2


def start_ranks(started: list, run: Path, *params: str) -> list[subprocess.Popen]:
    "Two ranks started the way torchrun starts them (environment only), so that each can be signalled and awaited alone."
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "codecomplete.train", "--run_dir", str(run), *ARGS, *params]
    ranks = [subprocess.Popen(cmd, env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    started.extend(ranks)
    return ranks


def wait_for_training(run: Path, ranks):
    "Return once the ranks are in the loop: the main one has logged the untrained model's validation loss (step 0)."
    log, deadline = run / "train" / "log.jsonl", time.time() + 300
    while not (log.exists() and log.read_text().strip()):  # the file itself appears before the signal handlers are set
        assert time.time() < deadline and all(p.poll() is None for p in ranks), [p.communicate()[0][-2000:] for p in ranks]
        time.sleep(0.02)


@pytest.fixture
def started():
    "Ranks that `start_ranks` started, killed at the end of the test whatever happened."
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None: p.kill(); p.wait()


@pytest.fixture(scope="module")
def single(packed, tmp_path_factory):
    run = clone(packed, tmp_path_factory.mktemp("single") / "run")
    train(TrainConfig(run_dir=str(run), **SETTINGS))
    return run


@pytest.fixture(scope="module")
def fsdp(packed, tmp_path_factory):
    run = clone(packed, tmp_path_factory.mktemp("fsdp") / "run")
    accelerate_launch(run, "distributed=fsdp", "save_every=6")
    return run


def shard_bytes(folder: Path) -> Counter:
    "Bytes that each process wrote to a torch.distributed.checkpoint folder (`__<rank>_0.distcp` holds that rank's local shards)."
    written = Counter()
    for info in FileSystemReader(str(folder)).read_metadata().storage_data.values(): written[info.relative_path] += info.length
    return written


def test_ddp_two_processes_equal_one(packed, single, tmp_path):
    run = clone(packed, tmp_path / "ddp")
    accelerate_launch(run)
    assert_same_weights(run, single, atol=1e-5)


def test_fsdp_shards_parameters_and_optimizer_state(fsdp):
    ckpt = fsdp / "train" / "checkpoints" / "step-00000006"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # the model's and AdamW's state, each as every rank's local shards
        written = shard_bytes(ckpt / part)
        assert sorted(written) == ["__0_0.distcp", "__1_0.distcp"], written
        assert all(0.45 < n / sum(written.values()) < 0.55 for n in written.values()), (part, written)
    matrices = {k: m for k, m in FileSystemReader(str(ckpt / "pytorch_model_fsdp_0")).read_metadata().state_dict_metadata.items() if len(m.size) == 2}
    assert matrices and all(len(m.chunks) == 2 and m.chunks[0].sizes[0] == m.size[0] // 2 for m in matrices.values()), matrices


def test_fsdp_equals_one_process_and_exports_a_full_model(fsdp, single):
    from transformers import AutoModelForCausalLM
    assert_same_weights(fsdp, single, atol=1e-5)
    model = AutoModelForCausalLM.from_pretrained(fsdp / "train" / "model")
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in weights(single).items()}


def test_sigterm_to_one_rank_stops_every_rank_at_one_step_and_resumes_exactly(packed, fsdp, tmp_path, started):
    run = clone(packed, tmp_path / "term")
    ranks = start_ranks(started, run, "distributed=fsdp")
    wait_for_training(run, ranks)
    ranks[1].send_signal(signal.SIGTERM)  # the rank that does not log: only the per-step agreement tells rank 0
    said = [p.communicate(timeout=180)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [128 + signal.SIGTERM] * 2, [s[-2000:] for s in said]
    assert not (run / "train" / "_COMPLETE.json").exists()
    (ckpt,) = (run / "train" / "checkpoints").glob("step-*")
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert 0 < step < SETTINGS["max_steps"] and f"stopped at step {step}" in said[0]
    for part in ("pytorch_model_fsdp_0", "optimizer_0"): assert sorted(shard_bytes(ckpt / part)) == ["__0_0.distcp", "__1_0.distcp"]
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()
    ranks = start_ranks(started, run, "distributed=fsdp")
    said = [p.communicate(timeout=180)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], [s[-2000:] for s in said]
    assert f"resuming from {ckpt}" in said[0]
    assert_same_weights(run, fsdp, atol=0)


def test_second_signal_exits_at_once_while_a_peer_hangs(packed, tmp_path, started):
    run = clone(packed, tmp_path / "hang")
    ranks = start_ranks(started, run, "max_steps=100000", "warmup_steps=10")
    wait_for_training(run, ranks)
    ranks[1].send_signal(signal.SIGSTOP)  # a peer that never answers: rank 0 waits in its next collective
    ranks[0].send_signal(signal.SIGINT)
    time.sleep(RELAY_S + 0.5)
    assert ranks[0].poll() is None, "rank 0 exited on the first signal, without its peer"
    ranks[0].send_signal(signal.SIGINT)
    assert ranks[0].wait(timeout=30) == 128 + signal.SIGINT
    assert "SIGINT: stopping with a checkpoint" in ranks[0].communicate()[0]
