"""complete(): text only, stop sequences, the FIM prompt, batching, long files, and the command line on a file and on stdin."""
import argparse, subprocess, sys
from pathlib import Path
import pytest, torch
from codecomplete.complete import complete, generate, load_model, make_prompt, prompt_ids, save_random_model, split_at_cursor
from codecomplete.config import ConfigError
from codecomplete.pack import sample_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    sample_run(run, n_files=8, vocab_size=400)
    return save_random_model(run / "train" / "model", run / "tokenizer", seed=1)


def test_never_returns_the_prompt(model_dir):
    model, tok = load_model(str(model_dir))
    prefix = "def add(a, b):\n    return"
    ids = prompt_ids(tok, prefix)
    full = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    new_text = tok.decode(full[0, len(ids):], skip_special_tokens=True)
    text = complete(prefix, model=model, tokenizer=tok, max_new_tokens=10)
    assert new_text.startswith(text) and not text.startswith(prefix)


def test_stop_sequences_cut_the_text(model_dir):
    model, tok = load_model(str(model_dir))
    free = complete("x", model=model, tokenizer=tok, max_new_tokens=30)
    assert len(free) > 3
    stop = free[2:4]  # a stop sequence the model is known to produce greedily
    cut = complete("x", model=model, tokenizer=tok, max_new_tokens=30, stop=[stop])
    assert cut == free[:free.find(stop)] and stop not in cut


def test_fim_prompt_layout(model_dir):
    "SPM by default (the suffix first, the prefix right before what the model writes), PSM on request, sentinel spellings in text stay text."
    _, tok = load_model(str(model_dir))
    v = tok.get_vocab()
    ids = prompt_ids(tok, "AB", "CD")
    assert ids[:3] == [tok.bos_token_id, v["<fim_prefix>"], v["<fim_suffix>"]]
    cut = ids.index(v["<fim_middle>"])
    assert tok.decode(ids[3:cut]) == "CD" and tok.decode(ids[cut + 1:]) == "AB"
    psm = prompt_ids(tok, "AB", "CD", layout="psm")
    assert psm[0] == tok.bos_token_id and psm[1] == v["<fim_prefix>"] and psm[-1] == v["<fim_middle>"]
    cut = psm.index(v["<fim_suffix>"])
    assert tok.decode(psm[2:cut]) == "AB" and tok.decode(psm[cut + 1:-1]) == "CD"
    assert ids.count(v["<fim_prefix>"]) == 1 and prompt_ids(tok, "<fim_prefix>").count(v["<fim_prefix>"]) == 0
    assert make_prompt(tok, "AB\n", "CD").ids == ids and make_prompt(tok, "AB\n", "CD", layout="psm").ids == psm  # healing cuts the "\n"
    with pytest.raises(ConfigError, match="layout='pms'"): prompt_ids(tok, "AB", "CD", layout="pms")


def test_batched_equals_unbatched_greedy(model_dir):
    model, tok = load_model(str(model_dir))
    prefixes = ["def f(x):\n", "import os\nclass A:\n    def run(self, path):\n        ", "#", "for i in range(10):\n    print("]
    prompts = [make_prompt(tok, p) for p in prefixes]
    alone = [generate(model, tok, [p], max_new_tokens=12)[0][0] for p in prompts]
    together = [t[0] for t in generate(model, tok, prompts, max_new_tokens=12, batch_size=4)]
    assert together == alone


def test_sampling_is_seeded_and_bad_settings_are_clear(model_dir):
    model, tok = load_model(str(model_dir))
    a = complete("x", model=model, tokenizer=tok, max_new_tokens=8, temperature=1.0, num_samples=3, seed=5)
    assert a == complete("x", model=model, tokenizer=tok, max_new_tokens=8, temperature=1.0, num_samples=3, seed=5)
    with pytest.raises(ConfigError, match="top_p"): complete("x", model=model, tokenizer=tok, top_p=0)
    with pytest.raises(ConfigError, match="positions"): complete("x", model=model, tokenizer=tok, max_new_tokens=model.config.max_position_embeddings)
    with pytest.raises(ConfigError, match="not a model folder"): load_model(str(model_dir.parent))


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-c", "import sys; from codecomplete.cli import main; sys.exit(main(['complete', *sys.argv[1:]]))", *args],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_cli_on_a_file_and_on_stdin(model_dir, tmp_path):
    source = "def add(a, b):\n    \n    return c\n"
    path = tmp_path / "x.py"; path.write_text(source)
    model, tok = load_model(str(model_dir))
    expected = complete("def add(a, b):\n    ", "\n    return c\n", model, tok, max_new_tokens=6)
    from_file = _cli(str(path), "--line", "2", "--model", str(model_dir), "--max-new-tokens", "6")
    from_stdin = _cli("-", "--line", "2", "--column", "5", "--model", str(model_dir), "--max-new-tokens", "6", stdin=source)
    assert from_file.returncode == 0 and from_file.stdout == expected, from_file
    assert from_stdin.returncode == 0 and from_stdin.stdout == expected, from_stdin
    bad = _cli(str(path), "--line", "9", "--model", str(model_dir))
    assert bad.returncode == 2 and "--line 9" in bad.stderr


def test_completes_in_the_middle_of_a_long_real_file(model_dir):
    model, tok = load_model(str(model_dir))
    source = Path(argparse.__file__).read_text()
    prefix, suffix = split_at_cursor(source, len(source.splitlines()) // 2)
    limit = model.config.max_position_embeddings
    assert len(prompt_ids(tok, prefix)) > limit and len(prompt_ids(tok, "", suffix)) > limit  # both sides need the window
    assert isinstance(complete(prefix, suffix, model, tok, max_new_tokens=8), str)
    assert isinstance(complete(prefix, model=model, tokenizer=tok, max_new_tokens=8), str)
    line = str(len(source.splitlines()) // 2)
    for extra in ([], ["--no-suffix"]):
        done = _cli(argparse.__file__, "--line", line, "--model", str(model_dir), "--max-new-tokens", "8", *extra)
        assert done.returncode == 0, done.stderr


def test_healed_whitespace_is_written_back_first(model_dir):
    "Every row of a prompt healed of '\\n' or '\\n    ' starts by writing that whitespace back, sampled or greedy, PSM or L2R."
    from transformers import StoppingCriteria
    model, tok = load_model(str(model_dir))

    class FirstTokens(StoppingCriteria):
        def __init__(self): self.rows = None
        def __call__(self, input_ids, scores, **kwargs):
            if self.rows is None: self.rows = input_ids[:, -1].tolist()
            return torch.zeros(len(input_ids), dtype=torch.bool)

    prompts = [make_prompt(tok, "def add(a, b):\n"), make_prompt(tok, "def add(a, b):\n    ", "\n    return c\n"), make_prompt(tok, "x = 1")]
    assert [p.whitespace for p in prompts] == ["\n", "\n    ", ""]
    seen = FirstTokens()
    generate(model, tok, prompts, max_new_tokens=3, temperature=1.0, num_samples=8, batch_size=24, seed=0, criteria=[seen])
    firsts = [tok.decode([t]) for t in seen.rows]
    for p, row in zip([p for p in prompts for _ in range(8)], firsts):
        if p.whitespace: assert row.startswith(p.whitespace) or p.whitespace.startswith(row), (p.whitespace, row)
    assert len({f for f in firsts[16:]}) > 1  # the unhealed prompt is left free
