"""The continuous-batching engine in-process (no HTTP): rows that end leave while others continue, a request admitted
while others run gets the text it gets alone, a cancel mid-decode frees its slot, per-row sampling settings, and the
one place where a row's logits processors are built."""
import asyncio, time
import pytest, torch
from transformers import LogitsProcessor
import codecomplete.batching as batching
from codecomplete.batching import Engine, Job, Metrics
from codecomplete.complete import complete, load_model, make_prompt, save_random_model
from codecomplete.pack import sample_run

BUSY = "def f(x):\n"  # the random model runs on from here without an end token
FIM = ("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    sample_run(run, n_files=8, vocab_size=400)
    return load_model(str(save_random_model(run / "model", run / "tokenizer", seed=1)))


def engine_for(lm, **kw) -> Engine:
    engine = Engine(*lm, Metrics(), **kw)
    assert engine.ready.wait(120), engine.error
    return engine


def job(lm, prefix, suffix=None, max_tokens=8, temperature=0.0, top_p=1.0, n=1, stop=(), seed=None) -> Job:
    model, tok = lm
    return Job(make_prompt(tok, prefix, suffix), max_tokens, temperature, top_p, n, list(stop), seed, time.monotonic() + 60, asyncio.get_running_loop())


async def until(pred, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def alone(lm, prefix, suffix=None, **kw) -> str:
    return complete(prefix, suffix, *lm, **kw)


def test_rows_in_slots_step_as_they_would_alone(lm):
    "Rows beside longer and shorter ones, after a row left from the middle, after a longer prompt joined (new buffers), after all left and new ones joined, and past the buffers' right edge (the live columns moved in place): each row gets the logits of its own sequence run alone."
    model, tok = lm
    batch, seqs, buffers, moved_in_place = batching.KVBatch(), {}, [], 0
    def join(text):
        ids = make_prompt(tok, text).ids
        cache, logits = batching.prefill(model, ids)
        row = object(); seqs[row] = ids + [int(logits.argmax())]; batch.join(cache, [row])
    for text in ("x", "import os\nimport sys\n\nclass A:\n    def f(self):\n", "def g():\n"): join(text)
    for k in range(130):
        if k == 2: batch.keep([r for i, r in enumerate(batch.rows) if i != 1])  # a middle slot frees: the last row moves into it
        if k == 3: join("class B:\n    pass\n" * 8)  # longer than the room left of `end`: new buffers
        if k == 80: batch.keep([]); join("y = 2\n"); join("def h():\n")  # all leave near the right edge; short ones join
        before = (batch.keys[0], batch.end)
        logits = batch.step(model, [seqs[r][-1] for r in batch.rows])
        if not any(b is batch.keys[0] for b in buffers): buffers.append(batch.keys[0])  # held, so no id is reused
        moved_in_place += batch.keys[0] is before[0] and batch.end < before[1]
        for row, got in zip(batch.rows, logits):
            with torch.no_grad(): want = model(torch.tensor([seqs[row]])).logits[0, -1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            seqs[row].append(int(got.argmax()))
    assert len(batch) == 2 and len(buffers) >= 2 and moved_in_place >= 1
    assert batch.end - batch.start == max(len(seqs[r]) for r in batch.rows) - 1  # attends over the longest row only


def test_rows_that_end_early_leave_while_others_continue(lm):
    async def go():
        engine = engine_for(lm)
        long, short = job(lm, BUSY, max_tokens=200), job(lm, "import os\n", max_tokens=3)
        engine.submit([long, short])
        (text, reason, count), = await short.done
        assert not long.done.done() and len(engine.batch) == 1 and engine.batch.rows[0].job is long  # answered, left; the long row runs on
        assert (reason, count) == ("length", 3) and text == alone(lm, "import os\n", max_new_tokens=3)
        assert (await long.done)[0][0] == alone(lm, BUSY, max_new_tokens=200)
        engine.stop()
    asyncio.run(go())


def test_request_admitted_while_others_run_gets_its_text_alone(lm):
    async def go():
        engine = engine_for(lm)
        first, second = job(lm, BUSY, max_tokens=60), job(lm, "class A:\n", max_tokens=40)
        engine.submit([first, second])
        await until(lambda: first in engine.running and len(engine.running[first][0].ids) >= 5)
        late = job(lm, *FIM, max_tokens=12)
        engine.submit([late])
        assert (await late.done)[0][0] == alone(lm, *FIM, max_new_tokens=12)
        assert not first.done.done()  # it joined a running batch, it did not wait for it
        assert (await first.done)[0][0] == alone(lm, BUSY, max_new_tokens=60)
        assert (await second.done)[0][0] == alone(lm, "class A:\n", max_new_tokens=40)
        engine.stop()
    asyncio.run(go())


def test_cancel_mid_decode_frees_the_slot(lm):
    async def go():
        engine = engine_for(lm, max_batch=1)
        busy, waiting = job(lm, BUSY, max_tokens=1000), job(lm, *FIM, max_tokens=6)
        engine.submit([busy, waiting])
        await until(lambda: busy in engine.running and len(engine.running[busy][0].ids) >= 3)
        assert list(engine.pending) == [waiting]  # the one slot is taken
        row = engine.running[busy][0]
        engine.cancel(busy)
        generated = len(row.ids)
        assert (await waiting.done)[0][0] == alone(lm, *FIM, max_new_tokens=6)
        assert len(row.ids) <= generated + 1  # the cancelled row left before the next step, not after its 1000 tokens
        assert busy not in engine.running and not busy.done.done() and engine.metrics.cancelled._value.get() == 1
        engine.stop()
    asyncio.run(go())


def test_per_row_sampling_settings(lm):
    async def go(neighbours: bool):
        engine = engine_for(lm)
        sampled = job(lm, BUSY, max_tokens=12, temperature=0.8, top_p=0.95, n=2, seed=3)
        narrow = job(lm, BUSY, max_tokens=12, temperature=1.0, top_p=1e-6, seed=4)  # top-p this small leaves the argmax only
        stopped = job(lm, *FIM, max_tokens=12, stop=[alone(lm, *FIM, max_new_tokens=12)[3:5]])
        others = [job(lm, BUSY, max_tokens=12), stopped] if neighbours else []
        engine.submit([*others, sampled, narrow])
        results = [await j.done for j in (*others, sampled, narrow)]
        engine.stop()
        return results
    sampled_alone, _ = asyncio.run(go(False))
    greedy, stop, sampled, narrow = asyncio.run(go(True))
    assert sampled == sampled_alone  # a seeded request samples the same whatever runs beside it
    assert sampled[0][0] != sampled[1][0]  # its two choices draw from their own generators
    assert narrow[0][0] == greedy[0][0] == alone(lm, BUSY, max_new_tokens=12)
    want = alone(lm, *FIM, max_new_tokens=12, stop=[alone(lm, *FIM, max_new_tokens=12)[3:5]])
    assert stop[0][:2] == (want, "stop")


class _Force(LogitsProcessor):
    "Makes one token the only choice."
    def __init__(self, token): self.token = token
    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -float("inf")); out[:, self.token] = 0
        return out


def test_row_processors_is_where_every_rows_processors_come_from(lm, monkeypatch):
    model, tok = lm
    token, made, original = tok.convert_tokens_to_ids("x"), [], batching.row_processors
    def with_force(tokenizer, prompt, temperature, top_p):
        made.append(prompt)
        processors = original(tokenizer, prompt, temperature, top_p)
        processors.append(_Force(token)); return processors
    monkeypatch.setattr(batching, "row_processors", with_force)
    async def go():
        engine = engine_for(lm)
        greedy, sampled = job(lm, BUSY, max_tokens=4), job(lm, *FIM, max_tokens=4, temperature=1.0, seed=0)
        engine.submit([greedy, sampled])
        results = [await j.done for j in (greedy, sampled)]
        engine.stop()
        return greedy, sampled, results
    greedy, sampled, results = asyncio.run(go())
    assert made == [greedy.prompt, sampled.prompt]
    assert all(text == tok.decode([token] * 4) for r in results for text, _, _ in r)
