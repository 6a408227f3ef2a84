"""Batched vs one-at-a-time greedy generation: throughput and output identity.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_generate.py [--model PATH]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.eval.generate import generation_autocast, generate, render_prompt

TOPICS = ["the sea", "prime numbers", "Paris", "a lazy dog", "the moon", "coffee", "rain", "chess"]
TEMPLATES = [
    "Tell me about {t}.",
    "Write one sentence about {t}.",
    "In two short sentences, explain to a curious ten-year-old child what is interesting about {t}.",
    "Give a title for an essay on {t}.",
    "I am writing a long report and need a summary paragraph. The topic is {t}; mention history, "
    "present-day relevance and one surprising fact, and keep the tone friendly but precise.",
    "{t}?",
    "List three facts about {t}.",
    "Translate to French: I like {t}.",
]


def one_at_a_time(model, tok, prompts, max_new_tokens, bf16):
    outs, n_tokens = [], 0
    with torch.inference_mode(), generation_autocast(next(model.parameters()).device, bf16):
        for p in prompts:
            ids = tok(render_prompt(tok, p), add_special_tokens=False, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = out[0, ids["input_ids"].shape[1]:]
            n_tokens += len(new)
            outs.append(tok.decode(new, skip_special_tokens=True))
    return outs, n_tokens


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--fp32-subset", type=int, default=16)
    # On CPU, autocast re-casts every weight on every decode step, which can cost more than it saves.
    ap.add_argument("--bf16", action="store_true",
                    help="time under bf16 autocast (default off on CPU: autocast re-casts weights every decode step)")
    args = ap.parse_args()
    path = args.model
    if path is None:
        try:
            from tuneforge.models.embedded import ensure_default_model
        except ImportError:
            ap.error("--model is required (no embedded default model available)")
        path = ensure_default_model()

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [TEMPLATES[i % len(TEMPLATES)].format(t=TOPICS[(i // len(TEMPLATES)) % len(TOPICS)])
               for i in range(args.n)]
    device = next(model.parameters()).device
    bf16 = args.bf16 or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    mnt = args.max_new_tokens
    print(f"model={path} device={device} threads={torch.get_num_threads()} prompts={len(prompts)} "
          f"max_new_tokens={mnt} batch_size={args.batch_size} bf16_autocast={bf16}")

    generate(model, tok, prompts[:2], max_new_tokens=4, autocast_bf16=bf16)  # warm up kernels
    (single, n_single), t_single = timed(lambda: one_at_a_time(model, tok, prompts, mnt, bf16))
    batched, t_batched = timed(lambda: generate(model, tok, prompts, max_new_tokens=mnt,
                                                batch_size=args.batch_size, autocast_bf16=bf16))
    # Count batched tokens the same way (re-tokenizing the text would differ slightly).
    print(f"one-at-a-time: {t_single:7.2f}s  {n_single / t_single:8.1f} new tok/s")
    print(f"batched      : {t_batched:7.2f}s  {n_single / t_batched:8.1f} new tok/s (same work)")
    print(f"speedup      : {t_single / t_batched:.2f}x")
    diff = sum(a != b for a, b in zip(single, batched))
    print(f"identical greedy outputs ({'bf16' if bf16 else 'fp32'}): {len(prompts) - diff}/{len(prompts)}")

    sub = prompts[: args.fp32_subset]
    single32, _ = one_at_a_time(model, tok, sub, mnt, False)
    batched32 = generate(model, tok, sub, max_new_tokens=mnt, batch_size=args.batch_size)
    same32 = sum(a == b for a, b in zip(single32, batched32))
    print(f"identical greedy outputs (fp32, subset): {same32}/{len(sub)}")


if __name__ == "__main__":
    main()
