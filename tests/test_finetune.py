"""Bring your own code in one command: `run pipeline` with `init_from` curates a repository, takes the base model's
tokenizer, fine-tunes from the base model's weights, evaluates bits per byte only and writes the report."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM
from codecomplete.complete import save_random_model
from codecomplete.pack import TokenLoader, sample_run
from codecomplete.tokenizer import load_tokenizer
from codecomplete.train import lm_loss

CLI = [str(Path(sys.executable).parent / "codecomplete")]
SEQ_LEN, MICRO_BATCH, EVAL_BATCHES = 64, 2, 2


def user_repo(root: Path) -> Path:
    "Thirty standard-library modules standing in for a user's repository."
    stdlib = Path(os.__file__).parent
    root.mkdir()
    for p in sorted(p for p in stdlib.glob("*.py") if 3_000 < p.stat().st_size < 15_000)[:30]: shutil.copy(p, root / p.name)
    return root


def test_finetune_pipeline_reuses_the_base_model_tokenizer_and_weights(tmp_path):
    base = tmp_path / "base"
    sample_run(base, n_files=8, vocab_size=400)
    model_dir = save_random_model(base / "train" / "model", base / "tokenizer", seed=7)  # not the weights a fresh tiny model gets
    params = {"sources": f"[{user_repo(tmp_path / 'repo')}]", "init_from": str(model_dir), "group_by": "file",
              "validation_fraction": 0.2, "test_fraction": 0.2, "seq_len": SEQ_LEN, "micro_batch": MICRO_BATCH,
              "batch_tokens": SEQ_LEN * MICRO_BATCH, "max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2,
              "eval_batches": EVAL_BATCHES, "num_problems": 0, "fim_max_cases": 0, "bpb_max_bytes": 3000, "context": SEQ_LEN}
    args = CLI + ["run", "pipeline", "--run", "mycode"] + [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / "mycode"

    # the run's tokenizer is the base model's (no vocabulary trained: the default vocab_size is ignored), and reported
    tok = load_tokenizer(run / "tokenizer")
    assert tok.get_vocab() == load_tokenizer(model_dir).get_vocab() and len(tok) == 400
    assert json.loads((run / "tokenizer" / "report.json").read_text())["init_from"] == str(model_dir)

    # training started from the base weights: the step-0 validation loss is the base model's on the same windows
    step0 = next(r for r in map(json.loads, (run / "train" / "log.jsonl").read_text().splitlines()) if r["step"] == 0)
    loader = TokenLoader(run / "tokens", "validation", SEQ_LEN, MICRO_BATCH, EVAL_BATCHES)
    assert loader.n_windows >= MICRO_BATCH * EVAL_BATCHES  # so the train stage evaluated these EVAL_BATCHES micro-batches
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
    with torch.no_grad(): base_loss = torch.stack([lm_loss(model, b) for b in loader.next_step()]).mean().item()
    assert abs(step0["val_loss"] - base_loss) < 1e-4, (step0, base_loss)

    # the evaluate job ran every cell with HumanEval and FIM skipped, and the pipeline wrote its report
    assert (run / "eval" / "samples.jsonl").read_text() == ""
    assert set(json.loads((run / "eval" / "results.json").read_text())) & {"bpb", "humaneval", "fim"} == {"bpb"}
    report = (run / "report.md").read_text()
    assert "## Training" in report and "## Evaluation" in report and f"init_from model `{model_dir}`" in report
    assert (run / "data" / "card" / "mycode.md").exists()  # the card is named after the run, not python-stdlib
