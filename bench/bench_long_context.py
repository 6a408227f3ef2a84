"""Long context on this machine: pass-key accuracy of a model by prompt length, and peak training memory by
row length with activation checkpointing on and off.

    python bench/bench_long_context.py passkey --lengths 1024,2048,4096,8192 --depths 0.2,0.8 --per-cell 2
    python bench/bench_long_context.py passkey --model runs/long_context --lengths 12288 --depths 0.1,0.5,0.9 \
        --per-cell 4 --seed 42 --max-new-tokens 10 --bf16     # a tuned run, on the demo's prompts
    python bench/bench_long_context.py memory --rows 512,1024,2048,4096 --steps 2

`passkey` runs the eval suite (tuneforge.eval.passkey) on one model (a model folder, or a run folder, loaded
with its rope_scaling) and prints accuracy and seconds per length. `memory` trains a few LoRA steps with `tuneforge train` in a fresh process per setting (pass-key
rows of the given length, one row per micro-batch, no compile, no evaluation) and reads the process's
peak resident memory (ru_maxrss), which includes the fp32 weights and the Python/torch runtime.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def bench_passkey(args) -> None:
    from tuneforge.config import SuiteConfig
    from tuneforge.eval.passkey import run_passkey_suite
    from tuneforge.models.load import load_model, load_tokenizer, resolve_model_path

    if args.model and Path(args.model, "config.yaml").is_file():  # a run: its artifact, its rope_scaling again
        from tuneforge.models.merge import load_for_inference

        model, tok = load_for_inference(args.model)
    else:
        path = resolve_model_path(args.model)
        model, tok = load_model(path), load_tokenizer(path)
    if args.bf16:
        from tuneforge.eval.passkey import scoring_copy

        model = scoring_copy(model, True)  # as recipe long_context answers on a CPU with native bf16
    model.eval()
    for length in _ints(args.lengths):
        # the suite named "passkey", as in examples/long_context.yaml: with --seed 42 the demo's prompts
        suite = SuiteConfig(name="passkey", kind="passkey", lengths=[length], depths=_floats(args.depths),
                            per_cell=args.per_cell, max_new_tokens=args.max_new_tokens)
        started, cpu = time.time(), time.process_time()
        res = run_passkey_suite(model, tok, suite, seed=args.seed, batch_size=1)
        # CPU seconds as well as wall seconds: on a shared machine the wall clock measures the neighbours.
        print(json.dumps({"length": length, "acc": res["acc"], "n": res["n"], "grid": res["grid"][str(length)],
                          "seconds_per_prompt": round((time.time() - started) / res["n"], 1),
                          "cpu_seconds_per_prompt": round((time.process_time() - cpu) / res["n"], 1),
                          "samples": [s["prediction"] for s in res["samples"]]}), flush=True)


def _cap_memory(gib: float | None) -> None:
    # On a shared machine a run that outgrows the memory should fail alone (MemoryError), not wake the
    # kernel's OOM killer, which picks the largest process, whoever owns it.
    if gib:
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _train_once(row: int, checkpointing: bool, steps: int, work: Path, model: str | None,
                cap_gib: float | None = None) -> dict:
    from tuneforge.data.passkey import write_passkey_dataset
    from tuneforge.models.load import load_tokenizer, resolve_model_path

    data = work / f"data-{row}"
    if not (data / "train.jsonl").is_file():
        write_passkey_dataset(data, load_tokenizer(resolve_model_path(model)), [row - 16], n_train=steps * 2, n_val=1)
    cfg = {"model": model, "output_dir": str(work / f"run-{row}-{checkpointing}"), "method": "lora",
           "data": {"train": str(data / "train.jsonl"), "val_ratio": 0.0, "max_length": row, "cache": False},
           "train": {"max_steps": steps, "batch_tokens": row, "pack_length": row, "compile": "false",
                     "activation_checkpointing": checkpointing, "precision": "fp32", "save_every": None},
           "eval": {"before_after": False}}
    config = work / f"cfg-{row}-{checkpointing}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    started, cpu = time.time(), _children_cpu()
    code = ("import resource, sys; from tuneforge.cli import main; sys.argv = ['tuneforge', 'train', sys.argv[1], "
            "'--overwrite']\ntry:\n    main()\nfinally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF)"
            ".ru_maxrss, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True,
                          preexec_fn=lambda: _cap_memory(cap_gib))
    rss = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MAXRSS")]
    return {"row": row, "activation_checkpointing": checkpointing, "steps": steps, "ok": proc.returncode == 0,
            "peak_rss_gib": round(int(rss[-1]) / 2**20, 2) if rss else None,
            "seconds": round(time.time() - started, 1), "cpu_seconds": round(_children_cpu() - cpu, 1),
            "error": None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:]}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_memory(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-long-context-"))
    for row in _ints(args.rows):
        for checkpointing in (False, True):
            print(json.dumps(_train_once(row, checkpointing, args.steps, work, args.model, args.cap_gib)), flush=True)
    print(f"children's peak (max over all): {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    pk = sub.add_parser("passkey")
    pk.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    pk.add_argument("--lengths", default="1024,2048,4096,8192")
    pk.add_argument("--depths", default="0.2,0.8")
    pk.add_argument("--per-cell", type=int, default=2)
    pk.add_argument("--max-new-tokens", type=int, default=16)
    pk.add_argument("--seed", type=int, default=0, help="the prompts' keys (recipe long_context uses the run's seed)")
    pk.add_argument("--bf16", action="store_true", help="answer with a bf16 copy (CPUs with native bf16)")
    mem = sub.add_parser("memory")
    mem.add_argument("--model", default=None)
    mem.add_argument("--rows", default="512,1024,2048,4096")
    mem.add_argument("--steps", type=int, default=2)
    mem.add_argument("--cap-gib", type=float, default=None, help="fail a run that needs more (RLIMIT_DATA)")
    mem.add_argument("--work", default=None, help="folder for data and runs (default: a new temp folder)")
    args = parser.parse_args()
    (bench_passkey if args.what == "passkey" else bench_memory)(args)


if __name__ == "__main__":
    main()
