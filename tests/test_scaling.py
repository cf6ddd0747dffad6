"""Scaling ladder: the power-law fit on synthetic data, the ladder end to end on real (tiny) train runs, and its rungs on Ray."""
import json, os, shutil, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, pytest, torch
from codecomplete.config import ConfigError
from codecomplete.pack import read_meta, sample_run
from codecomplete.scaling import LadderConfig, RungFailed, fit_power_law, ladder, power_law

try: import ray
except ImportError: ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="RAY IS NOT INSTALLED, THE LADDER ON RAY IS NOT TESTED: pip install 'codecomplete[ray]'")


@pytest.mark.parametrize("a,b,c", [(2.0, 0.25, 0.8), (5.0, 0.1, 1.5), (0.7, 0.5, 0.3)])
def test_fit_recovers_known_parameters_from_noisy_data(a, b, c):
    rng = np.random.default_rng(1)
    x = np.logspace(10, 15, 10)
    y = power_law(x / x[0], a, b, c) + rng.normal(0, 0.003, len(x))
    fit = fit_power_law(x, y)
    assert fit.b == pytest.approx(b, abs=0.03) and fit.c == pytest.approx(c, abs=0.05) and fit.a == pytest.approx(a, rel=0.1)
    far = power_law(1e16 / x[0], a, b, c)
    assert fit.predict([1e16])[0] == pytest.approx(far, rel=0.01)


def test_band_covers_the_truth_a_decade_out_most_of_the_time():
    x, covered, trials = np.logspace(12, 16, 8), 0, 100
    truth = power_law(1e17 / x[0], 2.0, 0.25, 0.8)
    for seed in range(trials):
        y = power_law(x / x[0], 2.0, 0.25, 0.8) + np.random.default_rng(seed).normal(0, 0.005, len(x))
        low, high = fit_power_law(x, y).band([1e17])
        covered += low[0] <= truth <= high[0]
    assert covered >= 0.8 * trials, covered


def test_fit_refuses_too_few_or_repeated_points():
    with pytest.raises(ValueError, match="at least 4 points"): fit_power_law([1, 2, 3], [3, 2, 1])
    with pytest.raises(ValueError, match="distinct"): fit_power_law([1, 2, 2, 3], [4, 3, 3, 2])


@pytest.fixture(scope="module")
def one_thread():
    "Tiny models train fastest on one thread, and a loaded 2-core machine makes two threads crawl."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    "Curated splits and a tokenizer: what the ladder needs (it packs them itself)."
    return sample_run(tmp_path_factory.mktemp("ladder") / "run", n_files=12, vocab_size=400)


def test_ladder_end_to_end_then_resumes_without_retraining(curated, one_thread, capsys):
    cfg = dict(run_dir=str(curated), models=["dial-1", "dial-2", "dial-3", "dial-4"], tokens_per_param=0.02, predict=["dial-5"],
               check_prediction=True, seq_len=32, batch_tokens=256, min_steps=4, eval_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ladder(LadderConfig(**cfg))
    # the ladder packs at the seq_len its rungs train, so the train stage finds no FIM window cut in two
    assert read_meta(out / "tokens", "train")["fim"]["seq_len"] == cfg["seq_len"]
    assert not [w for w in caught if "cuts them" in str(w.message)], [str(w.message) for w in caught]
    results = json.loads((out / "results.json").read_text())
    rungs = results["rungs"]
    assert [r["model"] for r in rungs] == cfg["models"]
    assert all(r["flops"] < s["flops"] and r["params"] < s["params"] for r, s in zip(rungs, rungs[1:]))
    assert all(0 < r["val_bpb"] < 10 for r in rungs)
    for r in rungs + results["checks"]:
        assert (out / r["model"] / "train" / "_COMPLETE.json").exists() and (out / r["model"] / "train" / "model" / "config.json").exists()
    assert set(results["fits"]) == {"flops", "params", "tokens"}
    [pred], [check] = results["predictions"], results["checks"]
    # The check rung is dial-5 trained for real with the ladder's recipe, and the fit of the four smaller rungs must have
    # predicted what it measured. The fit's own 95% band covers only the fit's parameter uncertainty, which is narrower than
    # how far four rungs of 4-88 steps can see, so the yardstick is the measurement: within 7.5% (measured here: 6.2% off,
    # 3.52 predicted for 3.32; a prediction made at a quarter of dial-5's compute is 7.9% off), and closer to it than
    # the largest rung is. Training is seeded and on one thread, so these figures repeat on one machine.
    assert pred["model"] == check["model"] == "dial-5" and check["predicted"] == pred["val_bpb"]
    error = abs(pred["val_bpb"] - check["measured"])
    assert error <= 0.075 * check["measured"], (pred, check["measured"])
    assert error < abs(rungs[-1]["val_bpb"] - check["measured"]), (rungs[-1], pred, check["measured"])
    assert (out / "fit.png").stat().st_size > 10_000
    assert (out / "_COMPLETE.json").exists()

    # the finished ladder is skipped; with its marker gone, the rungs are skipped and the fit is redone identically
    capsys.readouterr()
    ladder(LadderConfig(**cfg))
    assert "skipping" in capsys.readouterr().out
    (out / "_COMPLETE.json").unlink()
    mtime = (out / "dial-4" / "train" / "_COMPLETE.json").stat().st_mtime
    start = time.time()
    ladder(LadderConfig(**cfg))
    assert (out / "dial-4" / "train" / "_COMPLETE.json").stat().st_mtime == mtime and time.time() - start < 30
    assert json.loads((out / "results.json").read_text())["rungs"] == rungs


def test_ladder_without_curated_data_fails_clearly(tmp_path):
    with pytest.raises(ConfigError, match="no curated data or tokenizer .*codecomplete run curate --run empty"):
        ladder(LadderConfig(run_dir=str(tmp_path / "empty")))
    assert not (tmp_path / "empty").exists()


def test_ladder_on_ray_without_ray_or_cluster_fails_before_the_ladder_folder(curated, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(curated / "data", run / "data"); shutil.copytree(curated / "tokenizer", run / "tokenizer")
    with pytest.raises(ConfigError, match="no Ray cluster answers there"):
        ladder(LadderConfig(run_dir=str(run), engine="ray", engine_address="127.0.0.1:9"))  # the discard port: nothing listens
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match="engine=ray needs Ray, which is not installed: pip install 'codecomplete\\[ray\\]'"):
        ladder(LadderConfig(run_dir=str(run), engine="ray"))
    assert not (run / "ladder").exists()


def _copy_run(src, dst):
    shutil.copytree(src / "data", dst / "data"); shutil.copytree(src / "tokenizer", dst / "tokenizer")
    return dst


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local 2-CPU Ray (no dashboard, capped object store, its folder in the test's temporary directory), which the
    ladder joins as the Ray its process joined. Ray gives a node 30 s to come up; a loaded machine can miss that, so a
    start that misses it is retried twice."""
    from codecomplete.engine import start_local_ray
    link = Path(tempfile.gettempdir(), f"cc-ray-ladder-test-{os.getpid()}"); link.unlink(missing_ok=True)
    link.symlink_to(tmp_path_factory.mktemp("ray"))
    try:
        for attempt in range(3):
            try: start_local_ray(ray, 2, link); break
            except RuntimeError as e:
                if attempt == 2: raise
                print(f"local Ray start {attempt + 1} failed ({e}); retrying", file=sys.stderr)
        yield ray
    finally: ray.shutdown(); link.unlink(missing_ok=True)


@needs_ray
def test_ladder_on_ray_equals_sequential_and_runs_rungs_apart(curated, one_thread, local_ray, tmp_path):
    """Rungs as Ray tasks on a local 2-CPU Ray give the sequential ladder's results, each rung in a Ray worker, two at once;
    a rung that fails is named once the others finished, and the rerun trains only it. About 2 minutes on a loaded 2-core machine."""
    cfg = dict(models=["dial-1", "dial-2", "dial-3", "dial-4"], tokens_per_param=0.003, predict=["dial-5"], seq_len=32, batch_tokens=256,
               min_steps=2, eval_batches=2)  # 2, 3, 7 and 14 steps (25 for dial-5)
    seq, par = _copy_run(curated, tmp_path / "seq"), _copy_run(curated, tmp_path / "ray")
    expected = json.loads((ladder(LadderConfig(run_dir=str(seq), **cfg)) / "results.json").read_text())
    assert {p["pid"] for p in expected["placement"]} == {os.getpid()}

    on_ray = dict(engine="ray", rung_num_cpus=1)
    got = json.loads((ladder(LadderConfig(run_dir=str(par), **on_ray, **cfg)) / "results.json").read_text())
    for key in ("rungs", "fits", "predictions", "checks"): assert got[key] == expected[key], key
    placement = got["placement"]
    pids = [p["pid"] for p in placement]
    assert os.getpid() not in pids and len(set(pids)) >= 2, placement  # Ray workers, not this process
    spans = [(p["started"], p["started"] + p["seconds"]) for p in placement]
    assert any(a0 < b1 and b0 < a1 for i, (a0, a1) in enumerate(spans) for b0, b1 in spans[i + 1:]), spans  # two rungs trained at once

    blocked = par / "ladder" / "dial-5" / "train"
    blocked.parent.mkdir(parents=True); blocked.write_text("in the way")  # the train stage cannot make its folder: this rung fails
    finished = {m: (par / "ladder" / m / "train" / "_COMPLETE.json").stat().st_mtime for m in cfg["models"]}
    with pytest.raises(RungFailed, match=r"ladder rung failed: dial-5: .*the 4 finished rungs are kept"):
        ladder(LadderConfig(run_dir=str(par), check_prediction=True, **on_ray, **cfg))
    assert (blocked.parent / "error.txt").exists() and not (par / "ladder" / "_COMPLETE.json").exists()
    blocked.unlink()
    checked = json.loads((ladder(LadderConfig(run_dir=str(par), check_prediction=True, **cfg)) / "results.json").read_text())  # either engine resumes
    assert {m: (par / "ladder" / m / "train" / "_COMPLETE.json").stat().st_mtime for m in finished} == finished  # kept, not retrained
    assert checked["rungs"] == expected["rungs"] and [c["model"] for c in checked["checks"]] == ["dial-5"]
    assert not (blocked.parent / "error.txt").exists()  # the rung that now trained leaves no stale traceback


@pytest.mark.parametrize("params,message", [
    ({"models": ["dial-1", "dial-2", "dial-3"]}, "at least 4 rungs"),
    ({"models": ["dial-1", "dial-1", "dial-2", "dial-3"]}, "repeats a model"),
    ({"models": ["dial-1", "dial-2", "dial-3", "7b"]}, "unknown model preset '7b'"),
    ({"predict": ["dial-two"]}, "dial-<integer>"),
    ({"tokens_per_param": 0}, "tokens_per_param=0"),
    ({"tokens_per_parm": 1}, "did you mean 'tokens_per_param'"),
])
def test_bad_ladder_configs_fail_before_any_training(params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        LadderConfig.from_dict(params)
