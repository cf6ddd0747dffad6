"""The tokenizer stage end to end on a small curated dataset: lossless on every held-out file and on arbitrary Unicode,
safe with special-token spellings, loads offline with AutoTokenizer, clear errors on bad inputs."""
import json, os, subprocess, sys, sysconfig
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st
from codecomplete.config import ConfigError, MARKER
from codecomplete.tokenizer import (SPECIAL_TOKENS, TokenizerConfig, TokenizerMismatchError, encode_texts, load_tokenizer,
                                    texts_of, split_shards, train_bpe, train_tokenizer, truncate)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCAB = 1500
PLANTED = {
    "special.py": "END = '<|endoftext|>'\nPAD = \"<|pad|>\"\nFIM = '<fim_prefix>a<fim_suffix>b<fim_middle>'\n",
    "unicode.py": "# -*- coding: utf-8 -*-\nname = 'ünïcödé 🐍 漢字'\r\nif name:\r\n\treturn '\\x00'\n",
    "empty.py": "",
}


def write_split(run_dir: Path, split: str, records: list[dict]):
    d = run_dir / "data" / split
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"content": r["content"], "path": r["path"], "source": "stdlib", "lang": r.get("lang", "python"),
             "ext": Path(r["path"]).suffix.lstrip("."), "size": len(r["content"].encode()), "group": split} for r in records]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("content", pa.string()), ("path", pa.string()),
        ("source", pa.string()), ("lang", pa.string()), ("ext", pa.string()), ("size", pa.int64()), ("group", pa.string())])),
        d / "part-00000.parquet")


def stdlib_records(paths):
    return [{"content": p.read_text(encoding="utf-8"), "path": str(p.relative_to(STDLIB))} for p in paths]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A curated run: 60 stdlib modules to train on, 40 files of the `test` package (plus planted files) held out."
    run_dir = tmp_path_factory.mktemp("run")
    train = sorted(p for p in STDLIB.glob("*.py") if p.stat().st_size < 40_000)[:60]
    held = sorted(p for p in (STDLIB / "test").glob("test_*.py") if p.stat().st_size < 30_000)[:40]
    planted = [{"content": c, "path": n} for n, c in PLANTED.items()]
    js = {"content": "function add(a, b) {\n  return a + b; // '<|endoftext|>'\n}\n", "path": "add.js", "lang": "javascript"}
    write_split(run_dir, "train", stdlib_records(train) + [js])
    write_split(run_dir, "validation", stdlib_records(held[:20]) + planted)
    write_split(run_dir, "test", stdlib_records(held[20:]) + [js])
    (run_dir / "data" / MARKER).write_text("{}")
    out = train_tokenizer(TokenizerConfig(run_dir=str(run_dir), vocab_size=VOCAB))
    return run_dir, out


@pytest.fixture(scope="module")
def tok(run):
    return load_tokenizer(run[1], expected_vocab_size=VOCAB)


def held_out_texts(run_dir):
    return [t for split in ("validation", "test") for texts in texts_of(split_shards(run_dir / "data" / split)) for t in texts]


def test_lossless_on_every_held_out_file(run, tok):
    texts = held_out_texts(run[0])
    assert len(texts) == 44
    ids = encode_texts(tok, texts)
    assert [tok.decode(i) for i in ids] == texts
    assert [tok.decode(tok(t)["input_ids"]) for t in texts] == texts


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=200)
       | st.lists(st.sampled_from(SPECIAL_TOKENS + ["\n", "    ", "\t", "x", "é", "🐍", "<|", "|>", "1"]), max_size=30).map("".join))
def test_lossless_on_arbitrary_unicode(tok, text):
    ids = encode_texts(tok, [text])[0]
    assert tok.decode(ids) == text
    assert all(i >= len(SPECIAL_TOKENS) for i in ids)


def test_special_token_spellings_stay_text_unless_asked(tok):
    text = PLANTED["special.py"]
    for ids in (encode_texts(tok, [text])[0], tok(text)["input_ids"], tok.encode(text)):
        assert not set(ids) & set(range(len(SPECIAL_TOKENS))), ids
        assert tok.decode(ids) == text
    asked = tok("<fim_prefix>a<fim_suffix>b<fim_middle><|endoftext|>", split_special_tokens=False)["input_ids"]
    assert asked[0] == 2 and asked[-1] == 0 and 4 in asked and 3 in asked


def test_autotokenizer_loads_offline_with_the_right_ids(run):
    code = ("from transformers import AutoTokenizer; import json, sys\n"
            "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
            "print(json.dumps([len(t), t.eos_token_id, t.bos_token_id, t.pad_token_id, t.fim_prefix_token_id,"
            " t.fim_middle_token_id, t.fim_suffix_token_id, t.fim_pad_token_id, t.decode(t('x = 1\\n')['input_ids'])]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(run[0] / "no-cache")}
    out = subprocess.run([sys.executable, "-c", code, str(run[1])], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [VOCAB, 0, 0, 1, 2, 3, 4, 5, "x = 1\n"]
    assert not (run[1] / "config.json").exists()


def test_report(run):
    report = json.loads((run[1] / "report.json").read_text())
    assert set(report["splits"]) == {"validation", "test"}
    assert set(report["splits"]["test"]) == {"python", "javascript", "all"}
    for split in report["splits"].values():
        assert split["all"]["files"] == sum(s["files"] for lang, s in split.items() if lang != "all")
        assert split["all"]["code_bytes_per_token"] > 2
    sizes = [p["vocab_size"] for p in report["sweep"]]
    assert len(sizes) >= 4 and sizes[-1] == VOCAB and sizes == sorted(sizes)
    bpt = [p["code_bytes_per_token"] for p in report["sweep"]]
    assert bpt == sorted(bpt), "compression must grow with the vocabulary"
    assert (run[1] / "compression.png").stat().st_size > 1000


def test_truncated_vocabulary_equals_a_smaller_training(run):
    texts = list(texts_of(split_shards(run[0] / "data" / "train")))
    assert truncate(train_bpe(iter(texts), VOCAB), 700).to_str() == train_bpe(iter(texts), 700).to_str()


def test_finished_stage_is_skipped(run, capsys):
    before = (run[1] / "tokenizer.json").stat().st_mtime_ns
    train_tokenizer(TokenizerConfig(run_dir=str(run[0]), vocab_size=VOCAB))
    assert "skipping" in capsys.readouterr().out
    assert (run[1] / "tokenizer.json").stat().st_mtime_ns == before


def test_vocab_too_small():
    with pytest.raises(ConfigError, match="use at least 262"): TokenizerConfig(vocab_size=261)
    with pytest.raises(ConfigError, match="use at least 262"): TokenizerConfig.from_dict({"vocab_size": "100"})
    TokenizerConfig(vocab_size=262)


def test_missing_curate_output(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the curate stage"):
        train_tokenizer(TokenizerConfig(run_dir=str(tmp_path), vocab_size=300))
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="did not finish"):
        train_tokenizer(TokenizerConfig(run_dir=str(tmp_path), vocab_size=300))
    (tmp_path / "data" / MARKER).write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds no parquet shards"):
        train_tokenizer(TokenizerConfig(run_dir=str(tmp_path), vocab_size=300))
    assert not (tmp_path / "tokenizer").exists()


@pytest.mark.parametrize("records", [[], [{"content": "", "path": "a.py"}, {"content": "", "path": "b.py"}]])
def test_empty_train_split(tmp_path, records):
    write_split(tmp_path, "train", records)
    (tmp_path / "data" / MARKER).write_text("{}")
    with pytest.raises(ValueError, match="has no text"):
        train_tokenizer(TokenizerConfig(run_dir=str(tmp_path), vocab_size=300))
    assert not (tmp_path / "tokenizer").exists()


def test_shard_without_content_column(tmp_path):
    d = tmp_path / "data" / "train"; d.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["x = 1"]}), d / "part-00000.parquet")
    (tmp_path / "data" / MARKER).write_text("{}")
    with pytest.raises(ValueError, match="no 'content' column"):
        train_tokenizer(TokenizerConfig(run_dir=str(tmp_path), vocab_size=300))


def test_failed_rerun_keeps_the_finished_tokenizer(run, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    shutil.rmtree(copy / "data" / "train")
    with pytest.raises(FileNotFoundError, match="run the curate stage"):
        train_tokenizer(TokenizerConfig(run_dir=str(copy), vocab_size=VOCAB, force=True))
    assert (copy / "tokenizer" / MARKER).exists()
    assert len(load_tokenizer(copy / "tokenizer", expected_vocab_size=VOCAB)) == VOCAB


def test_tokenizer_from_another_run(run, tmp_path):
    with pytest.raises(TokenizerMismatchError, match=f"has {VOCAB} tokens but 32768 were expected"):
        load_tokenizer(run[1], expected_vocab_size=32768)
    with pytest.raises(FileNotFoundError, match="run the tokenizer stage"):
        load_tokenizer(tmp_path / "missing")
    from tokenizers import Tokenizer, models
    other = Tokenizer(models.BPE())
    other.add_special_tokens(["<|pad|>", "<|endoftext|>"] + SPECIAL_TOKENS[2:])
    from codecomplete.tokenizer import save_tokenizer
    save_tokenizer(other, tmp_path / "other")
    with pytest.raises(TokenizerMismatchError, match="not 0-5"):
        load_tokenizer(tmp_path / "other")
