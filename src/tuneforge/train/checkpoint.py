"""Atomic checkpoints: trainable weights, optimizer, scheduler, RNG and data position.

A checkpoint is written into a temporary folder and renamed into place, so a crash at any moment
leaves either the previous complete checkpoint or the new complete one, never a half-written one;
old ones are renamed away before they are deleted, for the same reason. Tensors are stored whole
(gathered from FSDP shards), so a checkpoint resumes under any number of processes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from tuneforge.atomic import make_shareable_dir
from tuneforge.errors import UserError
from tuneforge.run_dir import CHECKPOINT_PREFIX, PROGRESS, RunDir
from tuneforge.train.distributed import copy_full_into, load_optimizer_state

PREFIX = CHECKPOINT_PREFIX  # the checkpoint folder names are the run folder's (run_dir.py)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write(path: Path, write) -> None:
    """Python file I/O, so a full disk is an OSError with its errno (not a library's own exception)."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    """Rename out of the checkpoint namespace first: a crash mid-delete must not leave a half checkpoint."""
    doomed = path.with_name(f".tmp-old-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(ckpt_root: Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict,
                    scheduler_state: dict, rng_states: list[dict], progress: dict, keep_last: int) -> Path:
    """Write checkpoint `step` (whole tensors; rng_states: one per rank). Raises UserError when the disk
    is full or unwritable, or when a weight is not finite; the previous checkpoint stays as it was."""
    final = ckpt_root / f"{PREFIX}{step:07d}"
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:  # a corrupted checkpoint would poison every resume: refuse it
        raise UserError(f"refusing to write checkpoint {final}: non-finite values in {', '.join(bad[:3])}; "
                        "lower train.lr or check the data")
    tmp = None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob(".tmp-*"):  # left by a process killed mid-save; never a valid checkpoint
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.", dir=ckpt_root))
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        _write(tmp / "trainable.safetensors", lambda f: f.write(save(tensors)))
        _write(tmp / "optimizer.pt", lambda f: torch.save(optimizer_state, f))
        _write(tmp / "scheduler.pt", lambda f: torch.save(scheduler_state, f))
        _write(tmp / "rng.pt", lambda f: torch.save(rng_states, f))
        # progress.json is written last: its presence marks a complete checkpoint.
        _write(tmp / PROGRESS, lambda f: f.write(json.dumps(progress, indent=1).encode()))
        _fsync_dir(tmp)
        make_shareable_dir(tmp)
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(ckpt_root)
        raise UserError(f"cannot write checkpoint {final} ({e.filename or final}: {e.strerror or e}); "
                        f"{'the previous checkpoint ' + str(previous) + ' is intact' if previous else 'no checkpoint saved'}"
                        "; free disk space or make output_dir writable, then rerun with --resume") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        try:
            _remove(old)
        except OSError:
            pass  # an old checkpoint we could not delete is still a valid one
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; RunDir holds the rule for "complete"."""
    return RunDir(ckpt_root.parent).checkpoint_list()


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    return RunDir(ckpt_root.parent).latest_checkpoint()


def read_progress(path: Path) -> dict:
    return json.loads((path / PROGRESS).read_text())


def load_checkpoint(path: Path, params: dict[str, torch.Tensor], optimizer, scheduler, rank: int = 0,
                    world: int = 1) -> dict:
    """Restore into the given (maybe sharded) parameters, optimizer and scheduler; returns the progress dict."""
    weights = load_file(str(path / "trainable.safetensors"))
    missing = [k for k in weights if k not in params]
    if missing:
        raise RuntimeError(f"checkpoint {path} has parameters the model lacks: {missing[:3]}")
    for k, v in weights.items():
        copy_full_into(params[k], v)
    load_optimizer_state(optimizer, torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rngs = torch.load(path / "rng.pt", weights_only=True)
    if isinstance(rngs, dict):  # written by a version that kept one state
        rngs = [rngs]
    # The same number of processes continues every rank's own random stream; another one starts all from rank 0's.
    set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
    return read_progress(path)
