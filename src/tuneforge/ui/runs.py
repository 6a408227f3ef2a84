"""The runs pages' data: every run with its status and headline figures, one run in detail, its
metrics curves, plots and agent traces.

Status is RunDir.status (the rule `tuneforge runs list` uses too); the UI adds only what it alone
knows: whether a training it launched is alive, and that one it stopped was stopped on purpose.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from tuneforge.run_dir import RunDir, read_json, read_jsonl
from tuneforge.runs_index import key_metric, list_runs, run_info
from tuneforge.ui.chat_models import has_confidence
from tuneforge.ui.http import FILE_NAME, Fail
from tuneforge.ui.launcher import Launcher
from tuneforge.ui.state import UIState, ui_state

router = APIRouter()

_SUMMARY_KEYS = ("name", "recipe", "method", "model", "data", "steps", "max_steps", "date", "key_metric")
_TRAIN_KEYS = ("step", "loss", "lr", "tokens_per_s", "grad_norm", "memory_gb")


def run_status(run: Path, launcher: Launcher | None = None, name: str | None = None, now: float | None = None) -> str:
    status = RunDir(run).status(now=now, alive=launcher.alive(name) if launcher else None)
    if status == "failed" and launcher is not None and launcher.stopped(name):
        return "interrupted"
    return status


def wall_time(run: RunDir, report: dict) -> float | None:
    if isinstance(report.get("wall_time_s"), (int, float)):
        return float(report["wall_time_s"])
    cal = read_json(run.calibration_results)
    secs = (cal.get("train") or {}).get("seconds") if isinstance(cal, dict) else None
    if isinstance(secs, (int, float)):
        return float(secs)
    try:
        start = run.config.stat().st_mtime
    except OSError:
        return None
    end = run.last_written()
    return round(end - start, 1) if end and end > start else None


def best_val(run: RunDir, report: dict) -> float | None:
    files = run.metrics_files()
    vals = [r["val_loss"] for r in (read_jsonl(files[0]) if files else []) if isinstance(r.get("val_loss"), (int, float))]
    if vals:
        return min(vals)
    v = report.get("best_val_loss")
    return v if isinstance(v, (int, float)) else None


def _starting(name: str) -> dict:
    """A launched run whose `train` has not written its run directory yet (loading, or failed early)."""
    return {"name": name, "recipe": "-", "method": "-", "model": "-", "data": None, "steps": None,
            "max_steps": None, "date": "-", "key_metric": "-", "best_val": None, "wall_time_s": None,
            "launched": True, "chat": False}


@router.get("/api/runs")
def runs(ui: UIState = Depends(ui_state)):
    out = []
    now = time.time()
    for info in list_runs(ui.runs_dir):
        run, report = RunDir(info["path"]), info["report"]
        out.append({k: info[k] for k in _SUMMARY_KEYS}
                   | {"status": run_status(run.path, ui.launcher, info["name"], now),
                      "best_val": best_val(run, report), "wall_time_s": wall_time(run, report),
                      "launched": info["name"] in ui.launcher.procs, "chat": run.has_artifact()})
    for name in set(ui.launcher.procs) - {r["name"] for r in out}:
        out.append(_starting(name) | {"status": run_status(ui.runs_dir / name, ui.launcher, name, now)})
    return out


@router.get("/api/runs/{name:path}/metrics")
def metrics(name: str, source: str | None = None, ui: UIState = Depends(ui_state)):
    run = RunDir(ui.run_path(name))
    sources = {f.parent.relative_to(run.path).as_posix(): f for f in run.metrics_files()}
    pick = source if source in sources else next(iter(sources), None)
    rows = read_jsonl(sources[pick]) if pick is not None else []
    train = [{k: r.get(k) for k in _TRAIN_KEYS} for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [{"step": r.get("step"), "val_loss": r["val_loss"]} for r in rows
           if isinstance(r.get("val_loss"), (int, float))]
    return {"source": pick, "sources": list(sources), "train": train, "val": val}


@router.get("/api/runs/{name:path}/plots/{file}")
def plot(name: str, file: str, ui: UIState = Depends(ui_state)):
    path = RunDir(ui.run_path(name)).plots / file
    if not FILE_NAME.match(file) or not file.endswith(".png") or not path.is_file():
        raise Fail(404, f"no plot {file}")
    return FileResponse(path, media_type="image/png")


@router.get("/api/runs/{name:path}/traces/{file}")
def trace(name: str, file: str, limit: int = 50, ui: UIState = Depends(ui_state)):
    path = RunDir(ui.run_path(name)).traces / file
    if not FILE_NAME.match(file) or not path.is_file():
        raise Fail(404, f"no trace file {file}")
    episodes = read_jsonl(path)[:max(1, min(limit, 500))]
    for ep in episodes:
        tools = set(ep.get("tools") or [])
        for step in ep.get("trace") or []:
            call = step.get("call")
            if isinstance(call, dict):
                call["hallucinated"] = bool(call.get("name")) and call.get("name") not in tools
    return episodes


@router.get("/api/runs/{name:path}")
def run(name: str, ui: UIState = Depends(ui_state)):
    run = RunDir(ui.run_path(name))
    status = run_status(run.path, ui.launcher, name)
    if not run.is_run():
        return _starting(name) | {
            "status": status, "metrics": {}, "report": {},
            "config_yaml": ui.launcher.config_path(name).read_text(encoding="utf-8", errors="replace"),
            "calibration": None, "agent": None, "plots": [], "traces": [], "launch": ui.launcher.info(name),
            "confidence": False}
    info = run_info(run.path)
    report = info["report"]
    cal = read_json(run.calibration_results)
    agent = read_json(run.agent_results)
    return {
        **{k: info[k] for k in ("recipe", "method", "model", "data", "steps", "max_steps", "metrics")},
        "name": name, "path": str(run.path), "status": status, "key_metric": key_metric(info),
        "config_yaml": run.config.read_text(encoding="utf-8", errors="replace"),
        "report": report, "best_val": best_val(run, report), "wall_time_s": wall_time(run, report),
        "calibration": cal if isinstance(cal, dict) else None,
        # Point estimates per system (the intervals are in agent.md); older runs held systems directly.
        "agent": {Path(k).stem: (v.get("systems", v) if isinstance(v, dict) else v) for k, v in agent.items()}
        if isinstance(agent, dict) else None,
        "plots": sorted(p.name for p in run.plots.glob("*.png")),
        "traces": sorted(p.name for p in run.traces.glob("*.jsonl")),
        "launch": ui.launcher.info(name), "chat": run.has_artifact(), "confidence": has_confidence(run),
    }
