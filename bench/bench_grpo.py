"""GRPO side by side: tuneforge's `recipe: rl` vs TRL's GRPOTrainer, same model, prompts, reward and budget.

    .venv/bin/python -m pip install --no-deps -r bench/requirements.txt        # TRL, leaving torch as pinned
    .venv/bin/tuneforge data arithmetic data/generated/arithmetic
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_grpo.py --steps 10

Both take examples/rl.yaml's settings: the embedded SmolLM2-135M-Instruct, LoRA r16 alpha 32 on every
linear layer, 4 prompts x 8 completions per optimizer step in 2 micro-batches, 24 new tokens at
temperature 1, lr 2e-4 (cosine, 3% warm-up), beta 0.04 (k3 KL to the adapter-disabled model), epsilon
0.2, token-level loss (TRL's loss_type "dapo"), one update per batch of samples. The reward is
tuneforge's `numeric` function, called by both. Each runs in its own process, alone, fp32 on CPU (also on
a CPU with bf16 units: TRL is run with bf16=False). Activation checkpointing is the same for both:
on by default, as TRL's GRPOConfig has it (`--activation-checkpointing off` turns it off in both). The
same order of prompts is not guaranteed (each samples its own), so the reward curves are two draws of the
same experiment and only their trend compares; the seconds per step compare directly. Writes
bench/results/grpo.md and grpo.json (grpo-no-checkpointing.* with checkpointing off).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_results import write_results

from tuneforge.docs_block import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SETTINGS = dict(prompts_per_step=4, num_generations=8, grad_accum=2, max_new_tokens=24, lr=2e-4, beta=0.04,
                epsilon=0.2, temperature=1.0, r=16, alpha=32, warmup_ratio=0.03)


def run_tuneforge(data: Path, steps: int, work: Path, checkpointing: bool) -> dict:
    out = work / "tuneforge"
    cmd = [str(ROOT / ".venv/bin/tuneforge"), "train", str(ROOT / "examples/rl.yaml"), "--overwrite",
           f"output_dir={out}", f"data.train={data / 'train.jsonl'}", f"data.validation={data / 'val.jsonl'}",
           f"train.max_steps={steps}", "train.time_budget_s=null", "eval.before_after=false", "train.precision=fp32",
           f"train.activation_checkpointing={str(checkpointing).lower()}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - start
    if done.returncode:
        return {"system": "tuneforge", "error": done.stderr.strip().splitlines()[-1]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward_mean" in r]
    report = json.loads((out / "report.json").read_text())
    return {"system": "tuneforge", "steps": len(rows), "wall_s": round(wall, 1),
            # the step's seconds: its sampling time over the share of the step it took (both logged)
            "train_s": round(sum(r["generate_s"] / r["generate_share"] for r in rows if r.get("generate_share")), 1),
            "generate_s": round(sum(r.get("generate_s", 0.0) for r in rows), 1),
            "rewards": [r["reward_mean"] for r in rows], "completion_length": [r["completion_length"] for r in rows],
            "peak_memory_gb": report.get("peak_memory_gb")}


def trl_worker(data: Path, steps: int, work: Path, checkpointing: bool) -> dict:
    """In its own process (started by main): TRL's GRPOTrainer with the same settings."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from tuneforge.config import RewardConfig
    from tuneforge.models.embedded import ensure_default_model
    from tuneforge.recipes.rl_rewards import numeric_reward

    s = SETTINGS
    path = str(ensure_default_model())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in records])
    score = numeric_reward(RewardConfig(name="numeric", field="answer"))

    def numeric(prompts, completions, answer, **_):
        return [score(p, c[0]["content"] if isinstance(c, list) else c, {"answer": a})
                for p, c, a in zip(prompts, completions, answer)]

    step_times: list[float] = []
    # TRL times its own blocks (profiling_context, e.g. "transformers.generate"); keep those durations
    # too, so the share of a step spent sampling compares with tuneforge's logged generate_s.
    blocks: dict[str, float] = {}
    log_block = profiling.ProfilingContext._log_metrics

    def record_block(self, duration: float) -> None:
        blocks[self.name] = blocks.get(self.name, 0.0) + duration
        log_block(self, duration)

    profiling.ProfilingContext._log_metrics = record_block

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t)

    cfg = GRPOConfig(output_dir=str(work / "trl"), max_steps=steps, learning_rate=s["lr"], lr_scheduler_type="cosine",
                     warmup_steps=math.ceil(s["warmup_ratio"] * steps),  # TRL 1.16 has no warmup_ratio
                     per_device_train_batch_size=s["prompts_per_step"]
                     * s["num_generations"] // s["grad_accum"], gradient_accumulation_steps=s["grad_accum"],
                     num_generations=s["num_generations"], max_completion_length=s["max_new_tokens"],
                     temperature=s["temperature"], beta=s["beta"], epsilon=s["epsilon"], loss_type="dapo",
                     num_iterations=1, use_cpu=True, bf16=False, logging_steps=1, report_to="none", save_strategy="no",
                     seed=42, disable_dropout=True, gradient_checkpointing=checkpointing)
    lora = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[numeric], args=cfg, train_dataset=dataset,
                          processing_class=tok, peft_config=lora, callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"system": f"trl {trl.__version__} GRPOTrainer", "steps": len(logs), "wall_s": round(wall, 1),
            "train_s": round(sum(step_times), 1), "rewards": [round(h["reward"], 4) for h in logs],
            "generate_s": round(sum(v for k, v in blocks.items() if k.endswith("transformers.generate")), 1),
            "completion_length": [round(h.get("completions/mean_length", 0.0), 2) for h in logs],
            "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def share_sampling(row: dict) -> str:
    """The share of the training loop's time spent in the sampling call (model.generate) alone."""
    return f"{row['generate_s'] / row['train_s']:.0%}" if row.get("generate_s") and row.get("train_s") else "-"


def table(rows: list[dict], command: str, checkpointing: bool) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, fp32, activation checkpointing "
             f"{'on' if checkpointing else 'off'} in both, one system at a time:",
             "", "```bash", command, "```", "",
             "| system | steps | s/step (training loop) | wall (s, process incl. loading) | reward, first 3 steps "
             "| reward, last 3 steps | CPU s (process) | peak RSS (GB) | share of steps sampling |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | failed: {r['error']} | | | | | | | |")
            continue
        first, last = r["rewards"][:3], r["rewards"][-3:]
        per_step = f"{r['train_s'] / r['steps']:.1f}" if r.get("train_s") else "-"
        lines.append(f"| {r['system']} | {r['steps']} | {per_step} | {r['wall_s']} | {sum(first) / len(first):.3f} "
                     f"| {sum(last) / len(last):.3f} | {r.get('cpu_s', '-')} | {r['peak_memory_gb']} "
                     f"| {share_sampling(r)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data/generated/arithmetic")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--systems", default="tuneforge,trl")
    ap.add_argument("--activation-checkpointing", choices=["on", "off"], default="on",
                    help="for both systems; on is TRL's GRPO default")
    ap.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    checkpointing = args.activation_checkpointing == "on"
    if args.worker:
        print("RESULT " + json.dumps(trl_worker(args.data, args.steps, args.work, checkpointing)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(tmp)
        for system in args.systems.split(","):
            print(f"bench_grpo: {system} ...", flush=True)
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            if system == "tuneforge":
                rows.append(run_tuneforge(args.data, args.steps, work, checkpointing))
            else:
                done = subprocess.run([sys.executable, __file__, "--worker", "trl", "--data", str(args.data),
                                       "--steps", str(args.steps), "--work", str(work),
                                       "--activation-checkpointing", args.activation_checkpointing], capture_output=True,
                                      text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
                found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                rows.append(json.loads(found[-1][7:]) if found else
                            {"system": "trl", "error": (done.stderr.strip().splitlines() or ["no output"])[-1]})
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU seconds of the whole process (loading included): steadier than wall time on a shared machine
            rows[-1]["cpu_s"] = round(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime, 1)
            print(f"bench_grpo: {json.dumps(rows[-1])}", flush=True)
    command = (f"HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_grpo.py --steps {args.steps} "
               f"--activation-checkpointing {args.activation_checkpointing}")
    md = table(rows, command, checkpointing)
    write_results("grpo" if checkpointing else "grpo-no-checkpointing", md, rows)
    print(md)


if __name__ == "__main__":
    main()
