"""Train one task with every method on the same data and step budget; one table and one chart to choose from.

Each method runs in its own process, so peak memory is that method's alone.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import yaml

from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.atomic import atomic_write_text, write_json
from tuneforge.models.load import SAFE, LoadPolicy
from tuneforge.models.methods import METHODS
from tuneforge.run_dir import RunDir

# Learning rates that suit each method on small models (soft prompts and IA3 need far larger steps
# than weight deltas); a config's own train.lr is used for the method it names.
DEFAULT_LR = {"full": 5e-5, "freeze": 1e-4, "lora": 1e-3, "dora": 1e-3, "ia3": 1e-2, "prefix": 1e-2,
              "prompt": 3e-2, "bottleneck": 1e-3}
METHOD_OPTIONS = {"freeze": {"trainable_layers": 4}, "prefix": {"num_virtual_tokens": 16},
                  "prompt": {"num_virtual_tokens": 16}, "bottleneck": {"size": 64}}


def method_configs(cfg: Config, methods: list[str], out: Path) -> dict[str, dict]:
    base = cfg.model_dump(mode="json")
    runs = {}
    for i, name in enumerate(methods):
        raw = copy.deepcopy(base)
        raw["method"] = {"name": name, **METHOD_OPTIONS.get(name, {})} if name != cfg.method.name \
            else base["method"]
        raw["train"]["lr"] = cfg.train.lr if name == cfg.method.name else DEFAULT_LR[name]
        raw["train"]["save_every"] = None
        raw["output_dir"] = str(out / name)
        raw["eval"]["base"] = i == 0  # the base model is scored once, in the first run
        runs[name] = raw
    return runs


def compare_methods(cfg: Config, methods: list[str], out: Path, overwrite: bool = False,
                    policy: LoadPolicy = SAFE) -> Path:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {unknown}; available: {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, raw in method_configs(cfg, methods, out).items():
        cfg_path = out / f"{name}.yaml"
        atomic_write_text(cfg_path, yaml.safe_dump(raw, sort_keys=False))
        print(f"[tuneforge] compare-methods: training {name}...", flush=True)
        cmd = [sys.executable, "-c", "from tuneforge.cli import main; main()", *policy.cli_flags(),
               "train", str(cfg_path)]
        if overwrite or (out / name).exists():
            cmd.append("--overwrite")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"[tuneforge] {name} failed: {last}", flush=True)
            rows.append({"method": name, "error": last})
            continue
        report = RunDir(out / name).report()
        if report is None:
            print(f"[tuneforge] {name} failed: it wrote no report", flush=True)
            rows.append({"method": name, "error": "no report written"})
            continue
        rows.append(_row(name, report))
    folder = RunDir(out)
    write_json(folder.methods_json, rows)
    atomic_write_text(folder.methods_md, markdown_table(rows, cfg))
    plot_methods(rows, folder.methods_png)
    print(markdown_table(rows, cfg))
    return out


def _row(name: str, report: dict) -> dict:
    ev = report.get("evaluation") or {}
    return {"method": name, "trainable_params": report["trainable_params"],
            "trainable_pct": 100 * report["trainable_params"] / report["total_params"],
            "peak_memory_gb": report["peak_memory_gb"], "tokens_per_s": report["train_tokens_per_s"],
            "artifact_mb": report["artifact_mb"], "val_loss": report["best_val_loss"],
            "metric": ev.get("metric"), "score": ev.get("after"), "base_score": ev.get("before")}


def markdown_table(rows: list[dict], cfg: Config) -> str:
    base = next((r["base_score"] for r in rows if r.get("base_score") is not None), None)
    metric = next((r["metric"] for r in rows if r.get("metric")), cfg.eval.metric)
    lines = [f"| method | trainable params | % of total | peak memory (GB) | tokens/s | artifact (MB) | "
             f"val loss | {metric} |", "|---|---|---|---|---|---|---|---|"]
    if base is not None:
        lines.append(f"| base (untuned) | 0 | 0 | | | | | {base:.3f} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | |")
            continue
        fmt = lambda v, f: format(v, f) if v is not None else "n/a"  # noqa: E731
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_pct']:.3f} | "
                     f"{fmt(r['peak_memory_gb'], '.2f')} | {fmt(r['tokens_per_s'], ',.0f')} | "
                     f"{fmt(r['artifact_mb'], '.3f')} | {fmt(r['val_loss'], '.4f')} | {fmt(r['score'], '.3f')} |")
    return "\n".join(lines) + "\n"


def plot_methods(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=110)
    names = [r["method"] for r in ok]
    panels = [("score", f"{ok[0].get('metric') or 'metric'} (higher is better)"),
              ("tokens_per_s", "training tokens/s"), ("trainable_pct", "trainable parameters (% of total, log)")]
    for ax, (key, title) in zip(axes, panels):
        ax.bar(names, [r[key] or 0 for r in ok], color="#4C72B0")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        if key == "trainable_pct":
            ax.set_yscale("log")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
