"Pack stage: determinism, FIM per window, special-token spellings, bad inputs, loader disjointness."
import json, shutil
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, pytest, torch
from codecomplete.config import ConfigError
from codecomplete.pack import (PackConfig, TokenLoader, doc_starts, load_run_tokenizer, open_tokens, pack, read_meta,
                               sample_run, special_ids)

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    run = sample_run(tmp_path_factory.mktemp("pack") / "base", n_files=24, vocab_size=512)
    spelled = {"content": "s = '<|endoftext|> <fim_prefix> <fim_middle>'\n", "path": "spell.py", "lang": "python"}
    pq.write_table(pa.Table.from_pylist([spelled]), run / "data" / "train" / "part-00001.parquet")
    return run

def fresh(base, tmp_path, name):
    run = tmp_path / name
    shutil.copytree(base / "data", run / "data"); shutil.copytree(base / "tokenizer", run / "tokenizer")
    return run

def test_deterministic_and_seeded(base, tmp_path):
    a, b, c = (pack(PackConfig(run_dir=str(fresh(base, tmp_path, n)), seed=s)) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert (a / "train.bin").read_bytes() == (b / "train.bin").read_bytes()
    assert (a / "train.bin").read_bytes() != (c / "train.bin").read_bytes()
    assert (a / "validation.bin").read_bytes() == (c / "validation.bin").read_bytes()  # no FIM on held-out splits
    assert read_meta(a, "train")["dtype"] == "uint16"

def fim_examples(window: list[int], sp: dict):
    "The (prefix, middle, suffix) id lists of every FIM example in a packed window."
    ends = [-1, *(i for i, t in enumerate(window) if t == sp["eot"]), len(window)]
    for ids in (window[s + 1:e] for s, e in zip(ends, ends[1:])):
        if sp["prefix"] not in ids: continue
        body = ids[ids.index(sp["prefix"]) + 1:]
        m = body.index(sp["middle"])
        if body[0] == sp["suffix"]: yield [], body[m + 1:], body[1:m]  # SPM: the prefix is the start of what follows <fim_middle>
        else: s = body.index(sp["suffix"]); yield body[:s], body[m + 1:], body[s + 1:m]

def test_fim_per_window_keeps_windows_whole(base, tmp_path):
    run = fresh(base, tmp_path, "fim")
    tokens = pack(PackConfig(run_dir=str(run), seq_len=128, fim_rate=0.8))
    tok = load_run_tokenizer(run); sp = special_ids(tok)
    corpus = "\n".join(pq.read_table(run / "data" / "train").column("content").to_pylist())
    meta = read_meta(tokens, "train")
    ids = np.asarray(open_tokens(tokens, "train"))
    assert len(ids) == meta["fim"]["windows"] * 128 + 1 and ids[-1] == sp["eot"]
    layouts = {"psm": 0, "spm": 0}
    for window in ids[:-1].reshape(-1, 128).tolist():
        pads = [i for i, t in enumerate(window) if t == sp["pad"]]
        assert pads == list(range(128 - len(pads), 128))  # padding only at the end of a window
        for prefix, middle, suffix in fim_examples(window, sp):
            layouts["spm" if not prefix else "psm"] += 1
            text = tok.decode(prefix) + tok.decode(middle) + tok.decode(suffix)
            assert text in corpus  # prefix + middle + suffix is a stretch of a document, trimmed at its ends only
    assert layouts["psm"] > 0 and layouts["spm"] > 0 and {k: meta["fim"][k] for k in layouts} == layouts
    assert meta["fim"]["window_share"] > 0.7 and meta["docs"] == len(pq.read_table(run / "data" / "train"))
    assert read_meta(tokens, "validation")["fim"]["windows"] == 0

@pytest.mark.parametrize("seq_len", [128, 256, 512, 1024, 2048, 4096])
def test_share_of_windows_with_a_whole_fim_example(base, tmp_path, seq_len):
    tokens = pack(PackConfig(run_dir=str(fresh(base, tmp_path, f"s{seq_len}")), splits=["train"], seq_len=seq_len))
    fim = read_meta(tokens, "train")["fim"]
    assert fim["windows"] >= 30 and fim["window_share"] >= 0.9 * fim["rate"], fim

def test_spelled_special_tokens_stay_text(base, tmp_path):
    run = fresh(base, tmp_path, "spell")
    tokens = pack(PackConfig(run_dir=str(run), fim_rate=0.0))
    tok = load_run_tokenizer(run); sp = special_ids(tok)
    ids = np.asarray(open_tokens(tokens, "train"))
    assert (ids == sp["eot"]).sum() == read_meta(tokens, "train")["docs"] + 1  # and the one that closes the last window
    assert (ids == sp["prefix"]).sum() == 0 and (ids == sp["middle"]).sum() == 0

def test_bad_inputs(base, tmp_path):
    run = fresh(base, tmp_path, "bad")
    shutil.rmtree(run / "data" / "test")
    with pytest.raises(ConfigError, match="run the curate stage first"): pack(PackConfig(run_dir=str(run)))
    assert not (run / "tokens" / "train.bin").exists()
    for f in (run / "data" / "validation").glob("*.parquet"): f.unlink()  # curate ran, but the split came out empty
    with pytest.raises(ConfigError, match="'validation' split in .* is empty; the train stage needs it, or rerun curate .* group_by=file"):
        pack(PackConfig(run_dir=str(run), splits=["train", "validation"]))
    shutil.rmtree(run / "tokenizer")
    with pytest.raises(FileNotFoundError, match="run the tokenizer stage"): pack(PackConfig(run_dir=str(run), splits=["train"], fim_splits=[]))

@pytest.mark.parametrize("world", [2, 3])
def test_loader_ranks_disjoint_and_equal_to_one_process(base, tmp_path, world):
    tokens = pack(PackConfig(run_dir=str(fresh(base, tmp_path, f"l{world}"))))
    single = TokenLoader(tokens, "train", seq_len=16, micro_batch=2, accum=world * 2)
    ranks = [TokenLoader(tokens, "train", seq_len=16, micro_batch=2, accum=2, rank=r, world=world) for r in range(world)]
    for _ in range(5):
        one = torch.cat(single.next_step())
        parts = [rank.next_step() for rank in ranks]
        together = torch.cat([parts[r][j] for j in range(2) for r in range(world)])
        assert torch.equal(one, together)
        windows = [tuple(row.tolist()) for p in parts for mb in p for row in mb]
        assert len(set(windows)) == len(windows)
    assert all(r.state_dict() == single.state_dict() for r in ranks)
