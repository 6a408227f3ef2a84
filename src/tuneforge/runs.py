"""The run directory: everything a run produces lands here, nothing global is touched.

    run_dir/
      config.yaml        resolved config (what actually ran)
      metrics.jsonl      one JSON object per logged step / evaluation
      checkpoints/       step-NNNNNNN/ (atomic), for --resume
      adapter/ | model/  the artifact: a PEFT adapter folder or an HF model folder
      report.md, report.json, plots/loss.png
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.atomic import make_shareable_dir
from tuneforge.train.checkpoint import latest_checkpoint
from tuneforge.atomic import atomic_write_text


def check_run_dir(path: str | Path, overwrite: bool, resume: bool) -> Path:
    """Refuse early (before any loading) when the run directory is in the way or missing."""
    run = Path(path)
    if resume:
        if not run.is_dir() or latest_checkpoint(run / "checkpoints") is None:
            raise UserError(f"--resume: no checkpoint found in {run}/checkpoints; start without --resume")
    elif run.exists() and any(run.iterdir()) and not overwrite:
        raise UserError(f"run directory {run} already exists; pass --overwrite to replace it "
                        "or --resume to continue it")
    parent = next((p for p in [run, *run.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"cannot create output_dir {run}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to output_dir {run} ({parent} is not writable); choose a writable directory")
    return run


def create_run_dir(run: Path, overwrite: bool, resume: bool) -> Path:
    """Called once config, model and data are known good, so a failed start leaves nothing behind."""
    if resume:
        return run
    if overwrite and run.exists():
        shutil.rmtree(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output_dir {run} ({e.strerror}); choose a writable directory") from None
    return run


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def artifact_path(run: Path) -> Path:
    """Where the trained artifact of a run lives (adapter/ or model/)."""
    run = Path(run)
    for name in ("adapter", "model"):
        if (run / name).is_dir():
            return run / name
    raise UserError(f"{run} has no adapter/ or model/ folder; is it a finished tuneforge run directory?")


def replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temp folder beside `final`; on success it replaces `final`, on any error it vanishes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        make_shareable_dir(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
