"""Creating and writing the run directory: everything a run produces lands there, nothing global is
touched. Its layout, and how it is read back, is tuneforge.run_dir."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir


def check_run_dir(path: str | Path, overwrite: bool, resume: bool) -> Path:
    """Refuse early (before any loading) when the run directory is in the way or missing."""
    run = Path(path)
    if resume:
        if RunDir(run).latest_checkpoint() is None:
            raise UserError(f"--resume: no checkpoint found in {RunDir(run).checkpoints}; start without --resume")
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
