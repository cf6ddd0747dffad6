"""Generation speed of codecomplete.complete.generate: batch-1 latency of a 32-token completion and batched throughput.

CPU: a random `tiny` model (python bench/generate.py). GPU: python bench/generate.py --device cuda --preset 125m
(bf16). Imports torch, transformers, tokenizers and pyarrow (no datasets, no papermill), so it runs on a bare GPU machine.
Greedy decoding with stop sequences off and end-of-text suppressed, so every row generates exactly --new-tokens tokens.
"""
import argparse, os, time
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from codecomplete.complete import Prompt, generate
from codecomplete.model import PRESETS, build_model, model_config
from codecomplete.tokenizer import SPECIAL_TOKENS

def tokenizer_for(vocab_size: int) -> PreTrainedTokenizerFast:
    "A byte-level BPE trained on this package's own source, with the project's special tokens (at most `vocab_size` ids)."
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    texts = [open(os.path.join(d, f)).read() for d, _, fs in os.walk(os.path.join(root, "codecomplete")) for f in fs if f.endswith(".py")]
    bpe = Tokenizer(models.BPE()); bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=SPECIAL_TOKENS[0], bos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[1],
                                   additional_special_tokens=SPECIAL_TOKENS[2:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu"); ap.add_argument("--preset", default="tiny", choices=PRESETS)
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary (the real tokenizer uses 32768)")
    ap.add_argument("--new-tokens", type=int, default=32); ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32]); ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tok = tokenizer_for(args.vocab)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    config = model_config(args.preset, args.vocab)  # the full vocabulary, whatever the size of the small demo tokenizer
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model = build_model(config).to(device=args.device, dtype=dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    model.generation_config.suppress_tokens = [tok.eos_token_id] + tok.convert_tokens_to_ids(SPECIAL_TOKENS[2:])  # always full length
    prompt = Prompt(torch.randint(len(SPECIAL_TOKENS), len(tok), (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist())

    def timed(batch):
        generate(model, tok, [prompt] * batch, max_new_tokens=args.new_tokens, batch_size=batch)  # warm-up
        if args.device.startswith("cuda"): torch.cuda.synchronize()
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            generate(model, tok, [prompt] * batch, max_new_tokens=args.new_tokens, batch_size=batch)
            if args.device.startswith("cuda"): torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"preset {args.preset} ({params / 1e6:.1f}M params), {dtype}, {where}, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, load {os.getloadavg()[0]:.2f}")
    t1 = timed(1)
    print(f"batch 1: {t1 * 1000:.0f} ms per {args.new_tokens}-token completion ({args.new_tokens / t1:.0f} tokens/s)")
    for b in args.batch:
        t = timed(b)
        print(f"batch {b}: {t * 1000:.0f} ms, {b * args.new_tokens / t:.0f} tokens/s")


if __name__ == "__main__": main()
