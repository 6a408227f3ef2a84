"""What agent evaluation costs per generation: planner prompts from a tool-world test split, batched,
with fp32 and with bf16 weights (docs/agent.md, "Cost on this machine"), plus the training tokens of
one backbone epoch of the world's train split (per-step examples and whole trajectories).

    tuneforge agent world /tmp/tw --n-train 400 --n-test 80
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_agent_generate.py /tmp/tw

With `--run RUN` (a trained agent run), it also times the step-wise replies of each system on
`--tasks` test tasks, the plain way (one base with the adapters switched, every prompt read from
scratch) against the fast one (adapters folded, prefix cache, the greedy loop), and counts
how many replies agree (all of them in fp32: `--precision fp32`).

With `--run RUN --decoders SYSTEM` it times one system's step-wise and end-to-end evaluation on
`--tasks` tasks of each test split in each of `--ways` (packed: the current way, bf16 weights packed
for oneDNN, models/packed_linear.py; unpacked: the same without packing; previous: prompts read
through the whole model, output head included, and transformers' generate from a static cache), with
`--chunks` episodes in lockstep (docs/agent.md, "Cost on this machine"):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_agent_generate.py data/generated/toolworld \
        --run runs/agent --decoders backbone --tasks 32 --ways packed,unpacked --chunks 64 32 --end-to-end-only

With `--run RUN --decode-steps` it times single greedy decode steps at 1, 16 and 64 rows over 1,000
cached positions, plain and packed, and checks both give the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tuneforge.agent.evaluate import load_trajectories, static_replies
from tuneforge.agent.roles import backbone_examples, build_role_examples, context_segments, fit_to_length
from tuneforge.data.formats import Example
from tuneforge.data.render import encode
from tuneforge.eval.generate import generate
from tuneforge.models.load import load_model, load_tokenizer, resolve_model_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world", type=Path, help="folder written by `tuneforge agent world`")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--run", type=Path, help="a trained agent run: time its systems' step-wise replies")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--decoders", metavar="SYSTEM", help="with --run: compare ways of generating on SYSTEM")
    ap.add_argument("--ways", default="packed,previous", help=f"with --decoders, of: {', '.join(WAYS)}")
    ap.add_argument("--chunks", type=int, nargs="+", default=[64], help="with --decoders: episodes in lockstep")
    ap.add_argument("--end-to-end-only", action="store_true")
    ap.add_argument("--decode-steps", action="store_true", help="with --run: time single decode steps")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    if args.run and args.decode_steps:
        time_decode_steps(args)
        return
    if args.run and args.decoders:
        compare_decoders(args)
        return
    if args.run:
        time_systems(args)
        return
    path = resolve_model_path(None)
    tok = load_tokenizer(path)

    train, _ = load_trajectories(args.world / "train.json", "skip")
    for role in ("backbone", "planner", "caller", "summarizer"):
        examples, _ = build_role_examples(train, role)
        lengths = [len(encode(Example(fit_to_length(e.segments, tok, args.max_length)), tok, args.max_length).ids)
                   for e in examples]
        print(f"{role}: {len(examples)} examples, mean {statistics.mean(lengths):.0f} tokens, "
              f"{sum(lengths):,} tokens per epoch")
    whole, _, split = backbone_examples(train, tok, args.max_length)
    tokens = sum(len(encode(e, tok, args.max_length).ids) for e in whole)
    print(f"backbone as whole trajectories: {len(whole)} examples ({split} trajectories longer than "
          f"{args.max_length} as their steps), {tokens:,} tokens per epoch")

    test, _ = load_trajectories(args.world / "test_id.json", "keep")
    points = [(t, i) for t in test for i, s in enumerate(t.steps) if s.decision is not None][: args.prompts]
    prompts = [[{"role": s.role, "content": s.text} for s in context_segments("planner", t, t.steps[:i])]
               for t, i in points]
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(path, dtype=dtype)
        start = time.perf_counter()
        generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        print(f"{dtype}: {seconds / len(prompts):.2f} s per planner prompt (batch {args.batch_size}, "
              f"{args.max_new_tokens} new tokens)")


def time_systems(args) -> None:
    from tuneforge.agent.models import RoleModels, read_agent_layout, systems

    test, _ = load_trajectories(args.world / "test_id.json", "keep")
    test = test[: args.tasks]
    for system in systems(read_agent_layout(args.run)):
        times, replies = {}, {}
        for way, fast in (("plain", False), ("fast", True)):
            models = RoleModels(args.run, system, max_new_tokens=args.max_new_tokens, precision=args.precision,
                                fold_adapters=fast, prefix_cache_gb=4.0 if fast else 0)
            start = time.perf_counter()
            replies[way] = static_replies(models, test, models.single_model, models.tokenizer, args.max_length)
            times[way] = time.perf_counter() - start
        same = sum(a == b for a, b in zip(replies["plain"], replies["fast"]))
        print(f"{system}: {len(replies['fast'])} steps of {len(test)} tasks: plain {times['plain']:.1f} s, "
              f"fast {times['fast']:.1f} s ({times['plain'] / times['fast']:.1f}x); {same} of "
              f"{len(replies['fast'])} steps with the same replies ({args.precision})")


# How each way generates: (weights packed, greedy loop, prompts read without the head).
WAYS = {"packed": (True, True, True), "unpacked": (False, True, True), "previous": (False, False, False)}


def compare_decoders(args) -> None:
    import tuneforge.eval.prefix_cache as prefix_cache
    from tuneforge.agent.evaluate import end_to_end, is_world_task
    from tuneforge.agent.models import RoleModels

    tests = []
    for split in ("test_id", "test_ood"):
        tests += load_trajectories(args.world / f"{split}.json", "keep")[0][: args.tasks]
    current = prefix_cache.plain_greedy, prefix_cache._decoder
    for way in args.ways.split(","):
        pack, greedy, decoder = WAYS[way]
        # the previous way: transformers' generate from a static cache, prompts read by the whole model
        prefix_cache.plain_greedy = current[0] if greedy else (lambda config: False)
        prefix_cache._decoder = current[1] if decoder else (lambda model: model)
        for chunk in args.chunks:
            models = RoleModels(args.run, args.decoders, max_new_tokens=96, precision=args.precision,
                                pack_weights=pack)
            start = time.perf_counter()
            if not args.end_to_end_only:
                static_replies(models, tests, models.single_model, models.tokenizer, 2048)
            middle = time.perf_counter()
            _, results = end_to_end(models, [t for t in tests if is_world_task(t)], models.single_model,
                                    tokenizer=models.tokenizer, max_length=2048, max_steps=6, chunk=chunk)
            end = time.perf_counter()
            print(f"{args.decoders}, {way}, chunks of {chunk}: {len(tests)} tasks, step-wise {middle - start:.1f} s, "
                  f"end to end {end - middle:.1f} s, in all {end - start:.1f} s "
                  f"({sum(r.steps for r in results)} episode steps)", flush=True)
    prefix_cache.plain_greedy, prefix_cache._decoder = current


def time_decode_steps(args) -> None:
    """Milliseconds per greedy decode step at 1, 16 and 64 rows over 1,000 cached positions (random
    prompts and keys/values, the run's backbone weights), plain and packed, and whether the tokens agree."""
    from tuneforge.agent.models import RoleModels
    from tuneforge.eval.prefix_cache import greedy_decode
    from tuneforge.models.packed_linear import pack_linears

    model, _ = RoleModels(args.run, "backbone", precision=args.precision, pack_weights=False)._models["backbone"]
    cfg = model.config
    heads, dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    cases = {}
    for rows in (1, 16, 64):
        prompts = [torch.randint(100, cfg.vocab_size - 100, (1001,), generator=gen).tolist() for _ in range(rows)]
        kvs = [[tuple(torch.randn(1, heads, 1000, dim, generator=gen).to(dtype) for _ in "kv")
                for _ in range(cfg.num_hidden_layers)] for _ in prompts]
        cases[rows] = prompts, kvs
    results = {}
    for way in ("plain", "packed"):
        if way == "packed":
            pack_linears(model)
        for rows, (prompts, kvs) in cases.items():
            with torch.inference_mode():
                greedy_decode(model, prompts, kvs, 3, [], 0)  # warm up
                start = time.perf_counter()
                tokens = greedy_decode(model, prompts, kvs, args.steps, [], 0)
                ms = (time.perf_counter() - start) / args.steps * 1000
            results[way, rows] = ms, tokens
    for rows in cases:
        same = torch.equal(results["plain", rows][1], results["packed", rows][1])
        print(f"{rows:>3} rows: plain {results['plain', rows][0]:.1f} ms/step, packed "
              f"{results['packed', rows][0]:.1f} ms/step; same tokens: {same}")


if __name__ == "__main__":
    main()
