"""The run planner against reality: predicted peak memory vs peak memory measured in real CPU training steps; refusals."""
import pytest
from codecomplete.config import ConfigError
from codecomplete.plan import ModelShape, PlanError, memory_check, memory_per_gpu, needed_bytes, plan, GPUS

TOLERANCE = 0.25  # predicted / measured must lie in [0.75, 1.25]; measured agreement is within 3% (BENCHMARKS.md)


@pytest.mark.parametrize("preset,micro_batch,precision,checkpointing", [
    ("tiny", 4, "fp32", False), ("tiny", 4, "fp32", True), ("tiny", 4, "bf16", False), ("tiny", 4, "bf16", True),
    ("cpu-small", 2, "fp32", False), ("cpu-small", 2, "bf16", True)])
def test_predicted_memory_matches_measured_cpu_peak(preset, micro_batch, precision, checkpointing):
    shape = ModelShape.from_preset(preset, vocab=4096, seq=128)
    check = memory_check(shape, micro_batch, precision, checkpointing)
    assert abs(check["ratio"] - 1) <= TOLERANCE, check


def test_memory_grows_with_the_micro_batch_as_measured():
    shape = ModelShape.from_preset("tiny", vocab=4096, seq=128)
    one, four = memory_check(shape, 1, "fp32", False), memory_check(shape, 4, "fp32", False)
    measured_slope = (four["measured_MiB"] - one["measured_MiB"]) / 3
    predicted_slope = (four["predicted_MiB"] - one["predicted_MiB"]) / 3
    assert abs(predicted_slope / measured_slope - 1) <= TOLERANCE, (one, four)


def test_plan_that_cannot_fit_is_refused_with_why_and_what_would_fit():
    with pytest.raises(PlanError) as err:
        plan("3b", 525e9, gpu="A100-40GB", n_gpus=1)
    msg = str(err.value)
    assert "does not fit even micro-batch 1" in msg and "optimizer" in msg and "GiB" in msg
    assert "FSDP over at least 2 x A100-40GB" in msg
    fixed = plan("3b", 525e9, gpu="A100-40GB", n_gpus=2, strategy="fsdp")
    assert fixed.micro_batch >= 1 and needed_bytes(fixed.memory["total"]) <= GPUS["A100-40GB"].memory


def test_micro_batch_too_large_names_the_largest_that_fits():
    with pytest.raises(PlanError, match=r"micro_batch=100000 does not fit .* at most \d+"):
        plan("125m", 1e9, gpu="H100-80GB", seq=1024, micro_batch=100_000)


def test_forced_setup_is_respected_and_reported():
    p = plan("1b", 1e11, gpu="H100-80GB", n_gpus=8, strategy="fsdp", checkpointing=True, price_per_gpu_hour=2.5, mfu=0.4)
    assert (p.strategy, p.checkpointing) == ("fsdp", True)
    assert p.effective_mfu == pytest.approx(0.3)
    assert p.cost == pytest.approx(p.gpu_hours * 2.5)
    text = str(p)
    assert "FSDP + ckpt" in text and "DDP" in text and "| wall time |" in text


def test_fsdp_shards_the_states_ddp_replicates_them():
    shape = ModelShape.from_preset("1b", seq=2048)
    ddp, fsdp = memory_per_gpu(shape, 1, 8, "ddp"), memory_per_gpu(shape, 1, 8, "fsdp")
    assert fsdp["optimizer"] == pytest.approx(ddp["optimizer"] / 8)
    assert ddp["ddp buckets"] == ddp["gradients"] and memory_per_gpu(shape, 1, 1, "ddp")["ddp buckets"] == 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(model="125M", tokens=1e9), "did you mean '125m'"),
    (dict(model="125m", tokens=1e9, gpu="V100"), "unknown GPU 'V100'"),
    (dict(model="125m", tokens=0), "tokens=0"),
    (dict(model="125m", tokens=1e9, n_gpus=0), "n_gpus=0"),
    (dict(model="125m", tokens=1e9, mfu=45), "mfu=45"),
    (dict(model="125m", tokens=1e9, precision="fp16"), "precision='fp16'"),
    (dict(model="125m", tokens=1e9, strategy="zero3"), "strategy='zero3'"),
    (dict(model="tiny", tokens=1e9, seq=4096), "longer than preset"),
])
def test_bad_inputs_fail_with_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(**kwargs)


@pytest.mark.parametrize("device,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                                         ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12),
                                         ("NVIDIA A100-SXM4-40GB", 312e12)])
def test_train_reads_the_peak_of_exactly_the_card_it_runs_on(monkeypatch, device, peak):
    "One table of cards (plan's), matched by the exact CUDA name: an L40 is not an L4, an H100 PCIe is not an H100 SXM."
    import torch
    from codecomplete.train import TrainConfig, device_peak_flops
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: device)
    assert device_peak_flops(TrainConfig()) == peak


@pytest.mark.parametrize("device", ["NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA A10G", "NVIDIA GeForce RTX 4090"])
def test_an_unknown_card_says_so_instead_of_guessing(monkeypatch, device):
    import torch
    from codecomplete.train import TrainConfig, device_peak_flops
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: device)
    with pytest.warns(UserWarning, match=f"GPU '{device}' is not in codecomplete.plan.GPUS, so MFU is not reported; pass peak_tflops"):
        assert device_peak_flops(TrainConfig()) is None
    assert device_peak_flops(TrainConfig(peak_tflops=835)) == 835e12
