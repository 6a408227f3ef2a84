"""What the routes share, kept on the app (`app.state.ui`): the runs folder, the key, the launched
trainings, the chat models and the feedback store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from tuneforge.run_dir import RunDir
from tuneforge.serve.store import FeedbackStore
from tuneforge.ui.chat_models import ChatModels
from tuneforge.ui.http import Fail
from tuneforge.ui.launcher import Launcher


@dataclass
class UIState:
    runs_dir: Path
    key: bytes | None
    serve_dir: Path
    examples_dir: Path
    launcher: Launcher
    chat_models: ChatModels
    _store: FeedbackStore | None = None

    def store(self) -> FeedbackStore:
        # Opened on the first chat, so a dashboard nobody chats in leaves no serve folder behind.
        if self._store is None:
            self._store = FeedbackStore(self.serve_dir)
        return self._store

    def run_path(self, name: str) -> Path:
        """The run folder called `name`, refused (404) outside the runs folder or when it is no run."""
        root = self.runs_dir.resolve()
        path = (self.runs_dir / name).resolve()
        if name in self.launcher.procs:  # launched here: listed before `train` writes its config.yaml
            return path
        if not (path == root or root in path.parents) or not RunDir(path).is_run():
            raise Fail(404, f"no run named '{name}' under {self.runs_dir}")
        return path


def ui_state(request: Request) -> UIState:
    return request.app.state.ui
