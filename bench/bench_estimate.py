"""`tuneforge estimate` against reality: real runs' peak memory next to what the estimate said.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python bench/bench_estimate.py            # every row (~30-60 min)
    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python bench/bench_estimate.py --rows tiny-lora,smol-lora-2048

Each row is a real `tuneforge train` of examples/demo.yaml (the date task, generated here) for 3 optimizer
steps with eval.before_after=false, in its own process. Three numbers per row:

- estimate (config): `tuneforge estimate CONFIG --device cpu`: rows as long as data.max_length allows and
  every token a target (upper bounds: the command reads no data);
- estimate (run): the line `tuneforge train` logs before training, with the real longest row;
- measured: the run's report.json peak_memory_gb (the process's peak resident memory on CPU).

Rows run with MALLOC_MMAP_THRESHOLD_ set (glibc then gives freed blocks back) are compared with the live
bytes: the estimate less its "freed memory glibc keeps" term.

Models: the tiny random Llama of the tests, the embedded SmolLM2-135M-Instruct, and a SmolLM2-shaped model
with 8 of its 30 blocks (random weights, same widths and vocabulary), which keeps the 8,192-token rows
within this machine's memory and minutes. Results land in bench/results/estimate.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEMO = ROOT / "examples" / "demo.yaml"
LORA = ["method.name=lora", "method.r=16", "method.alpha=32", "method.target_modules=all-linear"]
FULL = ["method=full", "train.lr=2e-5"]
# glibc's heap keeps freed activation memory (docs/training.md); a fixed mmap threshold gives it back
MMAP = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
# name, model, overrides on top of demo.yaml, extra environment
ROWS = [
    ("tiny-lora-2048", "tiny", [*LORA, "train.batch_tokens=2048"], {}),
    ("smol-lora-2048", "smol", [*LORA, "train.batch_tokens=2048"], {}),
    ("smol-full-2048", "smol", [*FULL, "train.batch_tokens=2048"], {}),
    ("smol-lora-4096", "smol", [*LORA, "train.batch_tokens=4096"], {}),
    ("smol-lora-8192-checkpointing", "smol", [*LORA, "train.batch_tokens=8192",
                                              "train.activation_checkpointing=true"], {}),
    ("smol8-lora-8192", "smol8", [*LORA, "train.batch_tokens=8192"], {}),
    ("smol8-full-8192", "smol8", [*FULL, "train.batch_tokens=8192"], {}),
    ("smol-lora-2048 (MALLOC_MMAP_THRESHOLD_=1M)", "smol", [*LORA, "train.batch_tokens=2048"], MMAP),
]
STEPS = ["train.max_steps=3", "eval.before_after=false", "train.eval_every=null", "train.save_every=null",
         "train.time_budget_s=null"]


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def prepare(work: Path) -> dict[str, Path | None]:
    """The date data, the tiny model and the 8-block SmolLM2-shaped model (made once, kept in `work`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuneforge.data.demo_tasks import write_dates_dataset
    from tuneforge.models.embedded import ensure_default_model
    from tuneforge.models.tiny import build_tiny_model

    data = work / "dates"
    if not (data / "train.jsonl").is_file():
        write_dates_dataset(data, 2000, 200, 0)
    tiny = work / "tiny-llama"
    if not (tiny / "config.json").is_file():
        build_tiny_model(tiny, "llama", seed=0)
    smol = ensure_default_model()
    smol8 = work / "smollm2-8-blocks"
    if not (smol8 / "config.json").is_file():
        config = AutoConfig.from_pretrained(smol)
        config.num_hidden_layers = 8
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(smol8)
        AutoTokenizer.from_pretrained(smol).save_pretrained(smol8)
    return {"data": data, "tiny": tiny, "smol": None, "smol8": smol8}


def row_config(work: Path, paths: dict, name: str, model: str) -> Path:
    cfg = yaml.safe_load(DEMO.read_text())
    if paths[model] is not None:
        cfg["model"] = str(paths[model])
    slug = re.sub(r"[^\w.-]+", "_", name)
    cfg["output_dir"] = str(work / "runs" / slug)
    cfg["data"]["train"] = str(paths["data"] / "train.jsonl")
    cfg["data"]["validation"] = str(paths["data"] / "val.jsonl")
    path = work / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tuneforge(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, timeout=timeout, cwd=ROOT)


def gb_on_line(text: str, start: str) -> float:
    line = next((x for x in text.splitlines() if x.startswith(start)), "")
    found = re.findall(r"([\d.]+) (GB|MB)", line)
    return float(found[0][0]) / (1024 if found[0][1] == "MB" else 1) if found else 0.0


def target_share(run_dir: Path) -> float:
    """Target tokens over all tokens of the run's steps (metrics.jsonl: cumulative tokens, per-step targets)."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"targets"' in line]
    return sum(m["targets"] for m in steps) / max(steps[-1]["tokens"], 1)


def estimates(config: Path, overrides: list[str], env: dict, longest: int, share: float, timeout: float) -> dict:
    """The current code's estimates of a row: the command's (config only) and the run's (its real longest
    row and target share, what `tuneforge train` logs). Under a fixed mmap threshold glibc gives freed
    memory back, so those rows compare with the live bytes (the estimate less glibc's slack)."""
    from dataclasses import replace

    from tuneforge.config import load_config
    from tuneforge.models.estimate import skeleton_layout, training_of
    from tuneforge.models.load import load_model_config, resolve_model_path
    from tuneforge.train.estimate import GLIBC_SLACK, estimate, setting_for

    est = tuneforge(["estimate", str(config), "--device", "cpu", *overrides], env, timeout)
    if est.returncode:
        raise RuntimeError(est.stderr.strip().splitlines()[-1])
    cfg = load_config(config, overrides)
    layout = skeleton_layout(load_model_config(resolve_model_path(cfg.model)))
    run = estimate(layout, training_of(layout, cfg.method),
                   replace(setting_for(cfg, "cpu", 1, row=longest), target_share=share))
    config_gb, run_gb = gb_on_line(est.stdout, "peak per process"), run.per_process / 2**30
    if env.get("MALLOC_MMAP_THRESHOLD_"):
        config_gb -= gb_on_line(est.stdout, GLIBC_SLACK)
        run_gb -= run.overhead[GLIBC_SLACK] / 2**30
    return {"estimate_config_gb": round(config_gb, 2), "estimate_run_gb": round(run_gb, 2)}


def run_row(work: Path, paths: dict, name: str, model: str, overrides: list[str], env: dict, timeout: float) -> dict:
    config = row_config(work, paths, name, model)
    overrides = [*overrides, *STEPS]
    t0 = time.time()
    run = tuneforge(["train", str(config), *overrides, "--overwrite"], env, timeout)
    if run.returncode:
        return {"row": name, "error": (run.stderr.strip().splitlines() or ["?"])[-1]}
    run_dir = Path(yaml.safe_load(config.read_text())["output_dir"])
    report = json.loads((run_dir / "report.json").read_text())
    logged = re.search(r"memory estimate: ([\d.]+) GB", run.stdout)
    result = {"row": name, "measured_gb": report["peak_memory_gb"], "trainable": report["trainable_params"],
              "wall_s": round(time.time() - t0), "longest": int(re.search(r"longest (\d+)", run.stdout).group(1)),
              "target_share": round(target_share(run_dir), 4),
              "logged_gb": float(logged.group(1)) if logged else None, "overrides": overrides, "env": env}
    return result | estimates(config, overrides, env, result["longest"], result["target_share"], timeout)


def table(results: list[dict]) -> str:
    def err(est, meas):
        return f"{100 * (est - meas) / meas:+.0f}%" if est and meas else "-"

    lines = ["| row | estimate (config) GB | estimate (run) GB | measured peak RSS GB | error (config) | "
             "error (run) | run s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['row']} | {r['estimate_config_gb']:.2f} | {r['estimate_run_gb'] or 0:.2f} | "
                     f"{r['measured_gb']:.2f} | {err(r['estimate_config_gb'], r['measured_gb'])} | "
                     f"{err(r['estimate_run_gb'], r['measured_gb'])} | {r['wall_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tuneforge-bench-estimate")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--reestimate", type=Path, nargs="+", help="results files of earlier runs: recompute only the "
                                                               "estimates with the current code (the runs stand)")
    args = ap.parse_args()
    wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
    args.work.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.work)
    results = []
    if args.reestimate:  # the last measurement of each row wins
        measured = {r["row"]: r for f in args.reestimate for r in json.loads(f.read_text()) if "error" not in r}
        for name, model, _, env in ROWS:
            if name in measured and (not wanted or name in wanted):
                r = measured[name]
                config = row_config(args.work, paths, name, model)
                results.append(r | estimates(config, r["overrides"], env, r["longest"], r["target_share"],
                                             args.timeout))
    for name, model, overrides, env in [] if args.reestimate else [r for r in ROWS if not wanted or r[0] in wanted]:
        say(f"{name} ...")
        results.append(run_row(args.work, paths, name, model, overrides, env, args.timeout))
        say(json.dumps(results[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "estimate.json").write_text(json.dumps(results, indent=1))
    (args.out / "estimate.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
