"""`tuneforge runs list|show|compare`: what is in the runs folder, one run in detail, runs side by side.

A run is any directory holding a config.yaml (tuneforge.run_dir has the layout and the status rule).
Everything is read from the files the recipes write (config.yaml, report.json,
calibration_results.json, agent_results.json, metrics.jsonl); a run that is unfinished or
half-written is listed, not fatal.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import yaml

from tuneforge.errors import UserError
from tuneforge.run_dir import NOT_RUNS, RunDir, read_json

MAX_DEPTH = 3  # runs/<group>/<name>/config.yaml at most


def _read_yaml(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _cell(v) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def _short(path) -> str | None:
    if not path:
        return None
    p = str(path)
    return Path(p).name if ("/" in p and Path(p).exists()) or p.startswith(("/", ".", "~")) else p


# ---------------------------------------------------------------------------------------------
# Reading one run


def _calibration_metrics(run: RunDir) -> dict:
    data = read_json(run.calibration_results)
    results = (data or {}).get("results") or {}
    out = {}
    for split in ("test", "shift"):
        methods = results.get(split) or {}
        tuned = methods.get("calibration-tuned + temperature") or methods.get("calibration-tuned") or {}
        for key in ("accuracy", "ece", "auroc", "brier"):
            if _is_number(tuned.get(key)):
                out[f"calibration {split} {key}"] = tuned[key]
    return out


def _agent_metrics(run: RunDir) -> dict:
    data = read_json(run.agent_results)
    out = {}
    if not isinstance(data, dict):
        return out
    for test_file, per_file in data.items():
        if not isinstance(per_file, dict):
            continue
        systems = per_file.get("systems", per_file)  # runs from before the intervals held systems directly
        stem = Path(test_file).stem
        for system, metrics in systems.items():
            if not isinstance(metrics, dict):
                continue
            for key in ("success_rate", "plan_accuracy", "action_em"):
                if _is_number(metrics.get(key)):
                    out[f"agent {stem} {system} {key}"] = metrics[key]
    return out


def _eval_metrics(report: dict) -> dict:
    out = {}
    ev = report.get("evaluation")
    if isinstance(ev, dict) and ev.get("metric"):
        out[f"{ev['metric']} before"] = ev.get("before")
        out[f"{ev['metric']} after"] = ev.get("after")
    for key in ("best_val_loss", "final_train_loss"):
        if _is_number(report.get(key)):
            out[key] = report[key]
    return out


def _date(run: RunDir) -> str:
    files = [run.report_json, run.calibration_results, run.agent_results, run.config]
    stamp = max((f.stat().st_mtime for f in files if f.is_file()), default=None)
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M") if stamp else "-"


def run_info(run: str | Path) -> dict:
    """Summary of one run directory: config essentials, key metrics, status and date."""
    run = RunDir(run)
    if not run.is_run():
        raise UserError(f"{run.path} is not a tuneforge run directory (no config.yaml)")
    cfg = _read_yaml(run.config) or {}
    report = run.report()
    method = cfg.get("method")
    method = method.get("name") if isinstance(method, dict) else method
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    steps = (report or {}).get("steps")
    if steps is None:
        rows = [r for r in run.metrics() if "step" in r]
        steps = rows[-1]["step"] if rows else None
    metrics = {**_eval_metrics(report or {}), **_calibration_metrics(run), **_agent_metrics(run)}
    return {
        "name": run.path.name, "path": str(run.path), "recipe": cfg.get("recipe", "sft"), "method": method or "lora",
        "model": _short((report or {}).get("model") or cfg.get("model")) or "default",
        "data": _short(data.get("train")), "steps": steps, "max_steps": train.get("max_steps"),
        "status": run.status(), "date": _date(run),
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "config": cfg, "report": report or {},
    }


# ---------------------------------------------------------------------------------------------
# list


def find_runs(root: str | Path = "runs") -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs folder {root} does not exist; pass the folder holding your run directories")
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if RunDir(d).is_run():
            found.append(d)
        if depth >= MAX_DEPTH:
            return
        for child in sorted(d.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and child.name not in NOT_RUNS:
                walk(child, depth + 1)

    walk(root, 0)
    return found


def key_metric(info: dict) -> str:
    """The one figure that says how a run did, as a short text (before -> after, ECE, success rate, loss)."""
    m = info["metrics"]
    ev = (info["report"] or {}).get("evaluation") or {}
    if ev.get("metric") and _is_number(ev.get("after")):
        before = ev.get("before")
        b = _fmt(before) if _is_number(before) else "?"
        return f"{ev['metric']} {b} -> {_fmt(ev['after'])}"
    for key in ("calibration test ece", "calibration test auroc"):
        if key in m:
            return f"{key.removeprefix('calibration ')} {_fmt(m[key])}"
    agent = next((k for k in m if k.startswith("agent ") and k.endswith("success_rate")), None)
    if agent:
        return f"{agent.removeprefix('agent ')} {_fmt(m[agent])}"
    if "best_val_loss" in m:
        return f"val loss {_fmt(m['best_val_loss'])}"
    if "final_train_loss" in m:
        return f"train loss {_fmt(m['final_train_loss'])}"
    return "-"


def list_runs(root: str | Path = "runs") -> list[dict]:
    """Every run under root (newest first), each a run_info dict plus "key_metric" (a short text)."""
    root = Path(root)
    infos = []
    for run in find_runs(root):
        info = run_info(run)
        rel = run.relative_to(root).as_posix()
        info["name"] = rel if rel != "." else run.resolve().name
        info["key_metric"] = key_metric(info)
        infos.append(info)
    infos.sort(key=lambda i: i["date"], reverse=True)
    return infos


def format_run_list(runs: list[dict]) -> str:
    if not runs:
        return "no runs found\n"
    cols = ("name", "recipe", "method", "model", "data", "steps", "status", "key_metric", "date")
    lines = ["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in runs:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# show


_REPORT_SKIP = {"evaluation", "artifact"}


def show_run(path: str | Path) -> str:
    """A run in Markdown: setup, report figures, evaluation, calibration and agent results."""
    info = run_info(path)
    cfg, report = info["config"], info["report"]
    lines = [f"# {info['name']}", "", f"{info['path']} ({info['status']}, {info['date']})", "",
             "| setting | value |", "|---|---|"]
    method = cfg.get("method") if isinstance(cfg.get("method"), dict) else {"name": info["method"]}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    setting = {"recipe": info["recipe"], "model": cfg.get("model") or "default (embedded)",
               "data": (cfg.get("data") or {}).get("train") if isinstance(cfg.get("data"), dict) else None,
               **{f"method.{k}": v for k, v in method.items()},
               **{f"train.{k}": train.get(k) for k in ("max_steps", "epochs", "lr", "batch_tokens", "schedule")
                  if k in train}}
    lines += [f"| {k} | {_cell(v)} |" for k, v in setting.items()]
    figures = {k: v for k, v in report.items() if k not in _REPORT_SKIP and not isinstance(v, (dict, list))}
    if figures:
        lines += ["", "## Report", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in figures.items()]
    ev = report.get("evaluation")
    if isinstance(ev, dict) and ev.get("metric"):
        lines += ["", f"## Before / after ({ev['metric']}, {ev.get('examples', '?')} examples)", "",
                  "| model | score |", "|---|---:|", f"| base | {_cell(ev.get('before'))} |",
                  f"| tuned | {_cell(ev.get('after'))} |"]
    other = {k: v for k, v in info["metrics"].items() if k.startswith(("calibration ", "agent "))}
    if other:
        lines += ["", "## Results", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in other.items()]
    rows = RunDir(path).metrics()
    losses = [r for r in rows if _is_number(r.get("loss"))]
    if losses:
        lines += ["", f"Training log: {len(losses)} logged steps, loss {_fmt(losses[0]['loss'])} -> "
                      f"{_fmt(losses[-1]['loss'])} (step {losses[-1].get('step', '?')})"]
    if RunDir(path).has_artifact():
        lines += ["", f"Artifact: {RunDir(path).artifact()}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# compare


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_COMPARE_SKIP = {"output_dir"}  # always differs, says nothing


def compare_runs(paths: list[str | Path]) -> str:
    """Markdown table, one column per run: setup, metrics, then every config key that differs."""
    if len(paths) < 2:
        raise UserError("runs compare needs at least two run directories")
    infos = [run_info(p) for p in paths]
    names = [i["name"] for i in infos]
    if len(set(names)) < len(names):
        names = [i["path"] for i in infos]
    lines = ["| | " + " | ".join(_cell(n) for n in names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, values: list) -> None:
        lines.append(f"| {_cell(label)} | " + " | ".join(_cell(v) for v in values) + " |")

    for key in ("recipe", "method", "model", "data", "steps", "status", "date"):
        row(key, [i[key] for i in infos])
    for key in ("trainable_params", "wall_time_s", "train_tokens_per_s", "peak_memory_gb", "artifact_mb"):
        if any(key in i["report"] for i in infos):
            row(key, [i["report"].get(key) for i in infos])
    metric_keys: list[str] = []
    for i in infos:
        metric_keys += [k for k in i["metrics"] if k not in metric_keys]
    for key in metric_keys:
        row(f"**{key}**", [i["metrics"].get(key) for i in infos])
    flat = [_flatten(i["config"]) for i in infos]
    keys = sorted({k for f in flat for k in f} - _COMPARE_SKIP)
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    for key in differing:
        row(f"config: {key}", [f.get(key) for f in flat])
    if not differing:
        lines.append("| config | " + " | ".join("(identical)" for _ in infos) + " |")
    return "\n".join(lines) + "\n"
