"""The run folder format: every file name a run holds, its one metrics reader and its one status rule.

    run/
      config.yaml            resolved config (what actually ran); a folder holding one is a run
      metrics.jsonl          one JSON object per logged step / evaluation (appended while training)
      checkpoints/step-N/    for --resume; complete once its progress.json is there
      adapter/ | model/      the artifact: a PEFT adapter folder or an HF model folder
      eval_before.json       the base model's score, kept so --resume does not score it again
      report.md, report.json, plots/loss.png                       sft, preference (last: report.json)
      tensorboard/, mlruns/, wandb/, trackers.json                 train.report_to (train/trackers.py)
      answers.jsonl, answering.json, graded.jsonl, grading.json,
      calibration.json, probe.safetensors, calibration_results.json, calibration.md   calibration stages
      data_report.json, global/ (merged/), roles/NAME/, single/,
      agent.json, agent_results.json, agent.md, traces/            agent (global/, roles/*, single/ are
                                                                    parts shaped like a training run)
      NAME.yaml, NAME/, methods.json, methods.md, methods.png      compare-methods (each NAME/ is an sft run)

Status (`RunDir.status`), the same for `tuneforge runs list` and the UI:

- finished:    the recipe's last file is there (report.json, calibration_results.json, methods.json, or
               agent.json; an agent.json that names test files also needs agent_results.json)
- running:     not finished, and a process is known to be writing it, or (when nobody knows) one of its
               progress files changed in the last RUNNING_WINDOW_S seconds
- interrupted: stopped part way with work on disk to keep: a checkpoint (of the run or a part), an
               artifact, or a finished calibration stage
- failed:      stopped with nothing to keep
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tuneforge.errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step-"
PROGRESS = "progress.json"  # written last into a checkpoint: its presence marks a complete one
ADAPTER = "adapter"
MODEL = "model"
EVAL_BEFORE = "eval_before.json"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
PLOTS = "plots"
LOSS_PLOT = "loss.png"
TRACES = "traces"
EVAL_PARTS = "eval_parts"  # agent evaluation: one finished system per file, reused by a rerun
# calibration stages
ANSWERS = "answers.jsonl"
ANSWERING = "answering.json"
GRADED = "graded.jsonl"
GRADING = "grading.json"
CALIBRATION_JSON = "calibration.json"
PROBE = "probe.safetensors"
CALIBRATION_RESULTS = "calibration_results.json"
CALIBRATION_MD = "calibration.md"
# agent
DATA_REPORT = "data_report.json"
GLOBAL = "global"
MERGED = "merged"
ROLES = "roles"
SINGLE = "single"
AGENT_JSON = "agent.json"
AGENT_RESULTS = "agent_results.json"
AGENT_MD = "agent.md"
# compare-methods
METHODS_JSON = "methods.json"
METHODS_MD = "methods.md"
METHODS_PNG = "methods.png"

# Folders a run writes that never hold a training of their own.
_OUTPUT_DIRS = frozenset({CHECKPOINTS, ADAPTER, MODEL, PLOTS, TRACES, MERGED})
# Folders inside a run that are never runs themselves (`runs list` does not descend into them).
NOT_RUNS = _OUTPUT_DIRS | {ROLES, "eval"}

STATUSES = ("running", "finished", "interrupted", "failed")
RUNNING_WINDOW_S = 60.0

_FINISHED = (REPORT_JSON, CALIBRATION_RESULTS, METHODS_JSON)
# Files a finished calibration stage leaves: the next stage starts from them.
_STAGE_FILES = (ANSWERS, GRADED, CALIBRATION_JSON)
# Files written as a run makes progress, beside the metrics logs.
_PROGRESS_FILES = (CONFIG, EVAL_BEFORE, DATA_REPORT, ANSWERS, ANSWERING, GRADED, GRADING, CALIBRATION_JSON,
                   AGENT_JSON)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a .jsonl file; a line cut by a killed writer, or not an object, is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_json(path: str | os.PathLike):
    """The parsed file, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _subdirs(path: Path) -> list[Path]:
    """Sub-folders that may hold a training: not hidden (being written), not a run's own outputs."""
    try:
        children = sorted(path.iterdir())
    except OSError:
        return []
    return [c for c in children if c.is_dir() and not c.name.startswith(".") and c.name not in _OUTPUT_DIRS]


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class RunDir:
    """One run folder. Reading never fails on a missing or half-written file; only `artifact` raises."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ---- where things are --------------------------------------------------------------------

    config = property(lambda self: self.path / CONFIG)
    metrics_file = property(lambda self: self.path / METRICS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    adapter = property(lambda self: self.path / ADAPTER)
    model = property(lambda self: self.path / MODEL)
    eval_before = property(lambda self: self.path / EVAL_BEFORE)
    report_md = property(lambda self: self.path / REPORT_MD)
    report_json = property(lambda self: self.path / REPORT_JSON)
    plots = property(lambda self: self.path / PLOTS)
    loss_plot = property(lambda self: self.path / PLOTS / LOSS_PLOT)
    traces = property(lambda self: self.path / TRACES)
    eval_parts = property(lambda self: self.path / EVAL_PARTS)
    answers = property(lambda self: self.path / ANSWERS)
    answering = property(lambda self: self.path / ANSWERING)
    graded = property(lambda self: self.path / GRADED)
    grading = property(lambda self: self.path / GRADING)
    calibration_json = property(lambda self: self.path / CALIBRATION_JSON)
    probe = property(lambda self: self.path / PROBE)
    calibration_results = property(lambda self: self.path / CALIBRATION_RESULTS)
    calibration_md = property(lambda self: self.path / CALIBRATION_MD)
    data_report = property(lambda self: self.path / DATA_REPORT)
    global_part = property(lambda self: RunDir(self.path / GLOBAL))
    merged = property(lambda self: self.path / GLOBAL / MERGED)
    roles = property(lambda self: self.path / ROLES)
    single_part = property(lambda self: RunDir(self.path / SINGLE))
    agent_json = property(lambda self: self.path / AGENT_JSON)
    agent_results = property(lambda self: self.path / AGENT_RESULTS)
    agent_md = property(lambda self: self.path / AGENT_MD)
    methods_json = property(lambda self: self.path / METHODS_JSON)
    methods_md = property(lambda self: self.path / METHODS_MD)
    methods_png = property(lambda self: self.path / METHODS_PNG)

    def role(self, name: str) -> RunDir:
        return RunDir(self.path / ROLES / name)

    def is_run(self) -> bool:
        return self.config.is_file()

    def parts(self) -> list[RunDir]:
        """Trainings inside this run, each shaped like a run (global/, roles/NAME/, single/ of an agent
        run; one folder per method of compare-methods): the folders one or two levels down holding a
        metrics log or checkpoints."""
        found = []
        for child in _subdirs(self.path):
            for d in [child, *_subdirs(child)]:
                if (d / METRICS).is_file() or (d / CHECKPOINTS).is_dir():
                    found.append(RunDir(d))
        return found

    # ---- reading ---------------------------------------------------------------------------

    def metrics(self) -> list[dict]:
        """This run's metrics.jsonl, one dict per line, tolerant of a cut last line or a garbage line."""
        return read_jsonl(self.metrics_file)

    def metrics_files(self) -> list[Path]:
        """The run's own metrics.jsonl, then its parts' (see `parts`), those that exist."""
        return [r.metrics_file for r in [self, *self.parts()] if r.metrics_file.is_file()]

    def report(self) -> dict | None:
        data = read_json(self.report_json)
        return data if isinstance(data, dict) else None

    def artifact(self) -> Path:
        """Where the trained artifact lives (adapter/ or model/)."""
        for path in (self.adapter, self.model):
            if path.is_dir():
                return path
        raise UserError(f"{self.path} has no {ADAPTER}/ or {MODEL}/ folder; "
                        "is it a finished tuneforge run directory?")

    def has_artifact(self) -> bool:
        return self.adapter.is_dir() or self.model.is_dir()

    def checkpoint_list(self) -> list[Path]:
        """This run's complete checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        done = [p for p in self.checkpoints.iterdir()
                if p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
                and (p / PROGRESS).is_file()]
        return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoint_list()
        return found[-1] if found else None

    def has_checkpoints(self) -> bool:
        """A complete checkpoint of the run or of one of its parts."""
        return any(r.latest_checkpoint() is not None for r in [self, *self.parts()])

    def last_written(self) -> float | None:
        """The newest modification time among the files a run writes as it makes progress."""
        files = [self.path / n for n in _PROGRESS_FILES] + self.metrics_files()
        stamps = [m for m in map(_mtime, files) if m is not None]
        return max(stamps) if stamps else None

    # ---- status ------------------------------------------------------------------------------

    def finished(self) -> bool:
        if any((self.path / n).is_file() for n in _FINISHED) or self.agent_results.is_file():
            return True
        layout = read_json(self.agent_json)
        # An agent run evaluates after writing agent.json when it was given test files.
        return isinstance(layout, dict) and not layout.get("test")

    def status(self, now: float | None = None, alive: bool | None = None) -> str:
        """finished | running | interrupted | failed (see the module docstring).

        `alive`: whether a process writing this run is known to be alive (True / False), or None when
        nobody knows, and recent writes decide."""
        if self.finished():
            return "finished"
        if alive:
            return "running"
        if alive is None:
            last = self.last_written()
            now = time.time() if now is None else now
            if last is not None and now - last < RUNNING_WINDOW_S:
                return "running"
        if self.has_checkpoints() or self.has_artifact() or any(r.has_artifact() for r in self.parts()) \
                or any((self.path / n).is_file() for n in _STAGE_FILES):
            return "interrupted"
        return "failed"
