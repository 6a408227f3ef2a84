"""LoRA over a full-precision base vs QLoRA (nf4, int8): peak memory, speed and final loss.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python bench/bench_qlora.py                 # 20 steps of 1,024 tokens each
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_qlora.py --steps 10 --batch-tokens 512
                                                                    # the table in docs/performance.md
    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python bench/bench_qlora.py --steps 3 --kinds nf4   # smoke run

Every variant is `tuneforge train` (one thread) on the same config (examples/demo.yaml: the embedded SmolLM2-135M,
LoRA r16 on all linear layers, the dates task generated into a temporary folder), the same steps and
seed, each in its own process so peak memory (RSS, from the run's report) never mixes. Only
method.quantize differs. Final loss is the validation loss after the last step on the first VAL
held-out examples (a training step's loss on ~80 targets is too noisy to compare); QLoRA counts as
matching LoRA when it is within TOLERANCE of it. Writes bench/results/qlora.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOLERANCE = 0.05  # relative: |QLoRA final loss - LoRA final loss| <= 5% of LoRA's
VAL = 64  # held-out examples the final validation loss is taken on


def tuneforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from tuneforge.cli import main; main()", *args],
                          capture_output=True, text=True, check=False)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def variant_config(data: Path, out: Path, quantize: str, steps: int, batch_tokens: int) -> dict:
    cfg = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    cfg["output_dir"] = str(out)
    cfg["data"].update(train=str(data / "train.jsonl"), validation=str(data / f"val{VAL}.jsonl"))
    cfg["method"]["quantize"] = quantize
    # The training steps and one validation pass at the end: no time budget, no compile (equal for all).
    # One thread: on a shared machine two OpenMP threads spin-wait for each other and bill it as CPU time.
    cfg["train"].update(max_steps=steps, batch_tokens=batch_tokens, threads=1, time_budget_s=None, eval_every=steps, save_every=None, compile="false",
                        precision="fp32")
    cfg["eval"]["before_after"] = False
    return cfg


def final_val_loss(run: Path) -> float:
    return [m["val_loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in m][-1]


def run_variant(data: Path, work: Path, quantize: str, steps: int, batch_tokens: int) -> dict:
    out = work / f"run-{quantize}"
    cfg_path = work / f"{quantize}.yaml"
    cfg_path.write_text(yaml.safe_dump(variant_config(data, out, quantize, steps, batch_tokens)))
    # CPU seconds of the whole run (load included): unlike tokens/s it hardly moves when other processes
    # share the cores, so it is the steadier comparison on a busy machine.
    before = children_cpu_s()
    done = tuneforge("train", str(cfg_path))
    cpu_s = children_cpu_s() - before
    if done.returncode != 0:
        return {"quantize": quantize, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    report = json.loads((out / "report.json").read_text())
    backend = next((line for line in done.stdout.splitlines() if "base quantized to" in line), "")
    return {"quantize": quantize, "steps": report["steps"], "tokens_per_s": report["train_tokens_per_s"],
            "peak_rss_gb": report["peak_memory_gb"], "final_val_loss": round(final_val_loss(out), 4),
            "cpu_s_whole_run": round(cpu_s),
            "backend": backend.removeprefix("[tuneforge] ")}


def table(rows: list[dict], command: str) -> str:
    lora = next((r for r in rows if r["quantize"] == "none" and "error" not in r), None)
    lines = ["| base | tokens/s (training steps, wall) | CPU s (whole run) | peak RSS (GB) | final val loss "
             "| vs LoRA |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        name = "fp32 (LoRA)" if r["quantize"] == "none" else f"{r['quantize']} (QLoRA)"
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | |")
            continue
        vs = ""
        if lora and r is not lora:
            gap = (r["final_val_loss"] - lora["final_val_loss"]) / lora["final_val_loss"]
            vs = f"{gap:+.1%} ({'within' if abs(gap) <= TOLERANCE else 'outside'} {TOLERANCE:.0%})"
        lines.append(f"| {name} | {r['tokens_per_s']} | {r['cpu_s_whole_run']} | {r['peak_rss_gb']} | "
                     f"{r['final_val_loss']} | {vs} |")
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="tokens per optimizer step (demo.yaml: 4096)")
    parser.add_argument("--kinds", default="nf4,int8", help="quantized variants to run besides plain LoRA")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        work = Path(tmp)
        made = tuneforge("data", "demo", str(work / "dates"))
        if made.returncode != 0:
            sys.exit(f"could not generate the demo data: {made.stderr.strip()}")
        val = (work / "dates" / "val.jsonl").read_text().splitlines(keepends=True)[:VAL]
        (work / "dates" / f"val{VAL}.jsonl").write_text("".join(val))
        for quantize in ["none", *[k for k in args.kinds.split(",") if k]]:
            print(f"bench_qlora: training with method.quantize={quantize} ...", flush=True)
            rows.append(run_variant(work / "dates", work, quantize, args.steps, args.batch_tokens))
            print(f"bench_qlora: {json.dumps(rows[-1])}", flush=True)
    command = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/bench_qlora.py " + " ".join(sys.argv[1:])
    md = table(rows, command.strip())
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "qlora.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                    "rows": rows}, indent=1))
    (results / "qlora.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
