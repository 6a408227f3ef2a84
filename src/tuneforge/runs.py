"""Creating and writing the run directory: everything a run produces lands there, nothing global is
touched. Its layout, and how it is read back, is tuneforge.run_dir."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tuneforge.atomic import atomic_write_text, make_shareable_dir
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


def read_metrics(run: Path) -> list[dict]:
    return RunDir(run).metrics()


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def artifact_path(run: Path) -> Path:
    """Where the trained artifact of a run lives (adapter/ or model/)."""
    return RunDir(run).artifact()


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
