"Pack stage: determinism, FIM layout, special-token spellings, bad inputs, loader disjointness."
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

def test_fim_layout_reassembles_every_document(base, tmp_path):
    run = fresh(base, tmp_path, "fim")
    tokens = pack(PackConfig(run_dir=str(run), fim_rate=0.8))
    tok = load_run_tokenizer(run); sp = special_ids(tok)
    texts = pq.read_table(run / "data" / "train").column("content").to_pylist()
    ids, starts = np.asarray(open_tokens(tokens, "train")), doc_starts(tokens, "train")
    ends = list(starts[1:]) + [len(ids)]
    layouts = {"plain": 0, "psm": 0, "spm": 0}
    for text, s, e in zip(texts, starts, ends):
        doc = ids[s:e].tolist()
        assert doc[-1] == sp["eot"] and sp["eot"] not in doc[:-1]
        dec = lambda part: tok.decode(part)
        if doc[0] != sp["prefix"]:
            layouts["plain"] += 1; assert dec(doc[:-1]) == text; continue
        body = doc[1:-1]
        if body[0] == sp["suffix"]:  # SPM: <pre><suf> suffix <mid> prefix+middle
            layouts["spm"] += 1
            m = body.index(sp["middle"])
            assert dec(body[m + 1:]) + dec(body[1:m]) == text
        else:  # PSM: <pre> prefix <suf> suffix <mid> middle
            layouts["psm"] += 1
            si, mi = body.index(sp["suffix"]), body.index(sp["middle"])
            assert dec(body[:si]) + dec(body[mi + 1:]) + dec(body[si + 1:mi]) == text
    assert layouts["psm"] > 0 and layouts["spm"] > 0 and layouts["plain"] > 0
    meta = read_meta(tokens, "train")
    assert {k: meta["fim"][k] for k in layouts} == layouts and meta["docs"] == len(texts)
    assert meta["bytes"] == sum(len(t.encode()) for t in texts)

def test_spelled_special_tokens_stay_text(base, tmp_path):
    run = fresh(base, tmp_path, "spell")
    tokens = pack(PackConfig(run_dir=str(run), fim_rate=0.0))
    tok = load_run_tokenizer(run); sp = special_ids(tok)
    ids = np.asarray(open_tokens(tokens, "train"))
    assert (ids == sp["eot"]).sum() == read_meta(tokens, "train")["docs"]
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
