"""The dashboard behind `tuneforge ui`: one page (static/index.html) over a JSON API on a runs folder.

The map of routes (everything under /api needs the API key when the UI has one: `Authorization:
Bearer KEY`, or the cookie that POST /api/login sets for the page):

    guard.py    POST /api/login                  the key -> a cookie for the page
    runs.py     GET  /api/runs                   every run: recipe, method, model, data, status, steps, best val, wall time
                GET  /api/runs/NAME              one run: config (YAML text), report, calibration and agent results, plots
                GET  /api/runs/NAME/metrics      {"train": [{step, loss, lr, tokens_per_s}], "val": [{step, val_loss}]}
                GET  /api/runs/NAME/plots/FILE   a PNG from the run's plots/
                GET  /api/runs/NAME/traces/FILE  agent episodes (hallucinated calls flagged)
    chat.py     POST /api/chat                   {run, messages} -> server-sent events {"delta"} ... {"done", "id", "confidence"}
                POST /api/feedback               {id, rating, preferred} into the same FeedbackStore as `tuneforge serve`
    launch.py   GET  /api/examples               examples/*.yaml, to pre-fill the launch form
                POST /api/validate               {yaml, name} -> {"ok", "errors": [{"key", "message"}]} (the config schema)
                POST /api/launch                 {yaml, name, resume} -> `tuneforge train` in a subprocess writing RUNS/NAME
                POST /api/launch/NAME/stop       terminate it (resume later with the button or `tuneforge train CFG --resume`)

Status of a run: tuneforge.run_dir (the same rule as `tuneforge runs list`), plus what only the UI
knows about the trainings it launched (ui/runs.py). Who may call what: ui/guard.py.
"""

from __future__ import annotations

from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tuneforge.errors import UserError
from tuneforge.models.policy import SAFE, LoadPolicy
from tuneforge.serve.auth import resolve_api_key
from tuneforge.ui.chat_models import ChatModels
from tuneforge.ui import chat, guard, launch, runs
from tuneforge.ui.http import Fail, fail_response, user_error_response
from tuneforge.ui.launcher import Launcher
from tuneforge.ui.state import UIState

STATIC = Path(__file__).parent / "static"


def page():
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


def create_ui_app(runs_dir: str | Path, api_key: str | None = None, serve_dir: str | Path | None = None,
                  examples_dir: str | Path = "examples", policy: LoadPolicy = SAFE) -> FastAPI:
    """The dashboard over `runs_dir`. Feedback from the chat goes to `serve_dir` (default RUNS/../serve),
    the store `tuneforge serve` writes and `tuneforge feedback export` reads."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="tuneforge ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = UIState(runs_dir=runs_dir, key=api_key.encode() if api_key else None,
                           serve_dir=Path(serve_dir) if serve_dir else runs_dir.resolve().parent / "serve",
                           examples_dir=Path(examples_dir), launcher=Launcher(runs_dir, policy),
                           chat_models=ChatModels(policy))
    app.middleware("http")(guard.guard)
    app.add_exception_handler(Fail, fail_response)
    app.add_exception_handler(UserError, user_error_response)
    app.add_api_route("/", page, methods=["GET"], response_class=HTMLResponse)
    for module in (guard, runs, chat, launch):
        app.include_router(module.router)
    return app


def run_ui(runs_dir: Path, host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None,
           serve_dir: Path | None = None, policy: LoadPolicy = SAFE) -> None:
    """`tuneforge ui`: the same key rule as `tuneforge serve` (beyond loopback a key is required)."""
    key = resolve_api_key(api_key, host)
    app = create_ui_app(runs_dir, api_key=key, serve_dir=serve_dir, policy=policy)
    print(f"tuneforge ui on http://{host}:{port}/ (runs: {runs_dir})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
