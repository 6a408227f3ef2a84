"""`tuneforge train` subprocesses started from the page, by run name; their configs and logs live in
RUNS/.launch/, and training keeps running when the UI stops."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tuneforge.models.policy import SAFE, LoadPolicy
from tuneforge.ui.http import Fail

STOP_GRACE_S = 60


class Launcher:
    def __init__(self, runs_dir: Path, policy: LoadPolicy = SAFE):
        self.runs_dir = runs_dir
        self.policy = policy  # handed to each training it starts, as the CLI's flags
        self.dir = runs_dir / ".launch"
        self.procs: dict[str, dict] = {}
        self._lock = threading.Lock()

    def config_path(self, name: str) -> Path:
        return self.dir / f"{name}.yaml"

    def alive(self, name: str) -> bool | None:
        """Whether the training launched as `name` is running; None when it was not launched here."""
        entry = self.procs.get(name)
        return None if entry is None else entry["proc"].poll() is None

    def stopped(self, name: str) -> bool:
        return bool(self.procs.get(name, {}).get("stopped"))

    def start(self, name: str, yaml_text: str | None, resume: bool = False) -> dict:
        with self._lock:
            if self.alive(name):
                raise Fail(409, f"run '{name}' is already running")
            cfg = self.config_path(name)
            if resume:
                if not cfg.is_file():
                    raise Fail(404, f"no launch config for '{name}'; resume it with `tuneforge train CONFIG --resume`")
            else:
                if (self.runs_dir / name).exists():
                    raise Fail(409, f"run directory {self.runs_dir / name} already exists; choose another name")
                self.dir.mkdir(parents=True, exist_ok=True)
                cfg.write_text(yaml_text or "", encoding="utf-8")
            log = self.dir / f"{name}.log"
            cmd = [sys.executable, "-m", "tuneforge", *self.policy.cli_flags(), "train", str(cfg), *(["--resume"] if resume else [])]
            with open(log, "ab") as out:
                # A session of its own: Ctrl-C on the UI does not stop training.
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs[name] = {"proc": proc, "log": log, "config": cfg, "started": time.time(), "stopped": False}
            return {"name": name, "pid": proc.pid, "config": str(cfg), "log": str(log)}

    def stop(self, name: str) -> dict:
        with self._lock:
            entry = self.procs.get(name)
            if not entry or entry["proc"].poll() is not None:
                raise Fail(404, f"run '{name}' is not running from this UI")
            entry["stopped"] = True
            entry["proc"].send_signal(signal.SIGTERM)
        try:
            # SIGTERM lets training finish its step and write a checkpoint (train/stop.py): a CPU step of a
            # real model takes seconds. Past this, killing it still leaves the last checkpoint whole.
            entry["proc"].wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            entry["proc"].kill()
        return {"name": name, "stopped": True}

    def info(self, name: str) -> dict | None:
        entry = self.procs.get(name)
        if entry is None:
            return None
        tail = ""
        try:
            tail = entry["log"].read_text(encoding="utf-8", errors="replace")[-2000:]
        except OSError:
            pass
        return {"pid": entry["proc"].pid, "returncode": entry["proc"].poll(), "stopped": entry["stopped"],
                "log_tail": tail, "resume_command": f"tuneforge train {entry['config']} --resume"}
