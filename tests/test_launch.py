"""`accelerate launch -m codecomplete.train`: the command-line way to several processes (here two CPU processes, gloo),
with DDP and with FSDP, gives the same model as one process."""
import subprocess, sys
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from codecomplete.pack import PackConfig, pack, sample_run
from codecomplete.train import TrainConfig, train

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
SETTINGS = dict(preset="tiny", seq_len=64, micro_batch=4, batch_tokens=512, max_steps=6, warmup_steps=1, eval_every=3,
                save_every=3, eval_batches=2, log_every=1, tensorboard=False)


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


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_accelerate_launch_two_cpu_processes_equals_one(packed, tmp_path, distributed):
    single = clone(packed, tmp_path / "single")
    train(TrainConfig(run_dir=str(single), **SETTINGS))
    multi = clone(packed, tmp_path / "multi")
    args = [f"{k}={v}" for k, v in SETTINGS.items()] + [f"distributed={distributed}"]
    out = subprocess.run([ACCELERATE, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                          "--dynamo_backend", "no", "-m", "codecomplete.train", "--run_dir", str(multi)] + args,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    a, b = (load_file(r / "train" / "model" / "model.safetensors") for r in (single, multi))
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")
