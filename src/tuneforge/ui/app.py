"""The dashboard behind `tuneforge ui`: one page (static/index.html) over a JSON API on a runs folder.

Routes (everything under /api needs the API key when the UI has one: `Authorization: Bearer KEY`, or
the cookie that POST /api/login sets for the page):

- GET  /api/runs                      every run: recipe, method, model, data, status, steps, best val, wall time
- GET  /api/runs/NAME                 one run: config (YAML text), report, calibration and agent results, plots
- GET  /api/runs/NAME/metrics         {"train": [{step, loss, lr, tokens_per_s}], "val": [{step, val_loss}]}
- GET  /api/runs/NAME/plots/FILE      a PNG from the run's plots/
- GET  /api/runs/NAME/traces/FILE     agent episodes (hallucinated calls flagged)
- POST /api/chat                      {run, messages} -> server-sent events {"delta"} ... {"done", "id", "confidence"}
- POST /api/feedback                  {id, rating, preferred} into the same FeedbackStore as `tuneforge serve`
- GET  /api/examples                  examples/*.yaml, to pre-fill the launch form
- POST /api/validate                  {yaml, name} -> {"ok", "errors": [{"key", "message"}]} (the config schema)
- POST /api/launch                    {yaml, name, resume} -> `tuneforge train` in a subprocess writing RUNS/NAME
- POST /api/launch/NAME/stop          terminate it (resume later with the button or `tuneforge train CFG --resume`)

Status of a run: finished (report.json, calibration_results.json or agent.json), running (a process
started here is alive, or metrics/config were written in the last RUNNING_WINDOW_S seconds),
interrupted (stale, checkpoints but no report), failed (stale, nothing to resume from).

Every POST needs the header `X-Tuneforge-UI: 1` (a cross-site page cannot send it without a CORS
preflight, which is never granted); without an API key only loopback Host headers are answered
(no DNS rebinding). Launched training keeps running when the UI stops; configs and logs of
launched runs live in RUNS/.launch/.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from tuneforge.errors import UserError

RUNNING_WINDOW_S = 60.0
COOKIE = "tuneforge_ui_key"
STATIC = Path(__file__).parent / "static"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


class _Fail(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---- reading runs ----------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _rows(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash, or being written
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _metric_files(run: Path) -> list[Path]:
    """metrics.jsonl of the run, then of its parts (agent runs: global/, single/, roles/*/)."""
    files = [run / "metrics.jsonl"] + sorted(run.glob("*/metrics.jsonl")) + sorted(run.glob("*/*/metrics.jsonl"))
    return [f for f in files if f.is_file() and "checkpoints" not in f.parts]


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _has_checkpoints(run: Path) -> bool:
    return any(any(c.iterdir()) for c in [run / "checkpoints", *run.glob("*/checkpoints"), *run.glob("*/*/checkpoints")]
               if c.is_dir())


def _finished(run: Path) -> bool:
    return any((run / n).is_file() for n in ("report.json", "calibration_results.json", "agent.json"))


def run_status(run: Path, launched: dict | None = None, now: float | None = None) -> str:
    """finished | running | interrupted | failed (see the module docstring)."""
    if _finished(run):
        return "finished"
    if launched is not None and launched["proc"].poll() is None:
        return "running"
    now = time.time() if now is None else now
    stamps = [m for m in (_mtime(f) for f in [run / "config.yaml", *_metric_files(run)]) if m is not None]
    if launched is None and stamps and now - max(stamps) < RUNNING_WINDOW_S:
        return "running"
    if launched is not None and launched.get("stopped"):
        return "interrupted"
    return "interrupted" if _has_checkpoints(run) else "failed"


def _wall_time(run: Path, report: dict) -> float | None:
    if isinstance(report.get("wall_time_s"), (int, float)):
        return float(report["wall_time_s"])
    cal = _read_json(run / "calibration_results.json") or {}
    secs = (cal.get("train") or {}).get("seconds") if isinstance(cal, dict) else None
    if isinstance(secs, (int, float)):
        return float(secs)
    start = _mtime(run / "config.yaml")
    ends = [m for m in (_mtime(f) for f in _metric_files(run)) if m is not None]
    return round(max(ends) - start, 1) if start and ends and max(ends) > start else None


def _best_val(run: Path, report: dict) -> float | None:
    vals = [r["val_loss"] for f in _metric_files(run)[:1] for r in _rows(f)
            if isinstance(r.get("val_loss"), (int, float))]
    if vals:
        return min(vals)
    v = report.get("best_val_loss")
    return v if isinstance(v, (int, float)) else None


# ---- launched training -----------------------------------------------------------------------

class Launcher:
    """`tuneforge train` subprocesses started from the page, by run name."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir
        self.dir = runs_dir / ".launch"
        self.procs: dict[str, dict] = {}
        self._lock = threading.Lock()

    def config_path(self, name: str) -> Path:
        return self.dir / f"{name}.yaml"

    def start(self, name: str, yaml_text: str | None, resume: bool = False) -> dict:
        with self._lock:
            current = self.procs.get(name)
            if current and current["proc"].poll() is None:
                raise _Fail(409, f"run '{name}' is already running")
            cfg = self.config_path(name)
            if resume:
                if not cfg.is_file():
                    raise _Fail(404, f"no launch config for '{name}'; resume it with `tuneforge train CONFIG --resume`")
            else:
                if (self.runs_dir / name).exists():
                    raise _Fail(409, f"run directory {self.runs_dir / name} already exists; choose another name")
                self.dir.mkdir(parents=True, exist_ok=True)
                cfg.write_text(yaml_text or "", encoding="utf-8")
            log = self.dir / f"{name}.log"
            cmd = [sys.executable, "-m", "tuneforge", "train", str(cfg), *(["--resume"] if resume else [])]
            with open(log, "ab") as out:
                # A session of its own: Ctrl-C on the UI does not stop training.
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs[name] = {"proc": proc, "log": log, "config": cfg, "started": time.time(), "stopped": False}
            return {"name": name, "pid": proc.pid, "config": str(cfg), "log": str(log)}

    def stop(self, name: str) -> dict:
        with self._lock:
            entry = self.procs.get(name)
            if not entry or entry["proc"].poll() is not None:
                raise _Fail(404, f"run '{name}' is not running from this UI")
            entry["stopped"] = True
            entry["proc"].send_signal(signal.SIGTERM)
        try:
            entry["proc"].wait(10)
        except subprocess.TimeoutExpired:
            entry["proc"].kill()
        return {"name": name, "stopped": True}

    def info(self, name: str) -> dict | None:
        entry = self.procs.get(name)
        if entry is None:
            return None
        code = entry["proc"].poll()
        tail = ""
        try:
            tail = entry["log"].read_text(encoding="utf-8", errors="replace")[-2000:]
        except OSError:
            pass
        return {"pid": entry["proc"].pid, "returncode": code, "stopped": entry["stopped"], "log_tail": tail,
                "resume_command": f"tuneforge train {entry['config']} --resume"}


# ---- chat models -----------------------------------------------------------------------------

class ChatModels:
    """One model per run, loaded on first use; generation one at a time (torch on a few cores)."""

    def __init__(self):
        self._models: dict[Path, tuple] = {}
        self._lock = threading.Lock()

    def answer(self, run: Path, messages: list[dict], max_tokens: int) -> tuple[str, float | None]:
        with self._lock:
            if run not in self._models:
                if (run / "calibration_results.json").is_file() or (run / "calibration.json").is_file():
                    from tuneforge.calibration.confidence import ConfidenceModel

                    self._models[run] = ("confidence", ConfidenceModel(run))
                else:
                    from tuneforge.models.merge import load_for_inference

                    self._models[run] = ("plain", *load_for_inference(run))
            kind, *loaded = self._models[run]
            if kind == "confidence":
                question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
                answer, p = loaded[0].answer(question, max_new_tokens=max_tokens)
                return answer, float(p)
            from tuneforge.eval.generate import generate

            model, tok = loaded
            return generate(model, tok, [messages], max_new_tokens=max_tokens)[0], None


# ---- the app ---------------------------------------------------------------------------------

def _config_errors(raw, name: str | None, runs_dir: Path) -> list[dict]:
    """The config schema's verdict, one {"key", "message"} per problem (the same checks as `train`)."""
    from pydantic import ValidationError

    from tuneforge.config import Config, _describe, require_data

    if not isinstance(raw, dict):
        return [{"key": "(top level)", "message": "the top level must be a mapping of keys (model:, data:, train:, ...)"}]
    errors = []
    if name is not None and not _NAME.match(name):
        errors.append({"key": "name", "message": "run name: letters, digits, '_', '-', '.' (no slashes)"})
    raw = {**raw, "output_dir": str(runs_dir / (name or "run"))}
    try:
        require_data(Config.model_validate(raw))
    except ValidationError as e:
        for err in e.errors():
            text = _describe(err, raw)
            key, _, msg = text.partition(": ")
            errors.append({"key": key if msg and " " not in key else "(config)", "message": text})
    except UserError as e:
        errors.append({"key": "data", "message": str(e).removeprefix("config: ")})
    return errors


def create_ui_app(runs_dir: str | Path, api_key: str | None = None, serve_dir: str | Path | None = None,
                  examples_dir: str | Path = "examples") -> FastAPI:
    """The dashboard over `runs_dir`. Feedback from the chat goes to `serve_dir` (default RUNS/../serve),
    the store `tuneforge serve` writes and `tuneforge feedback export` reads."""
    from tuneforge.runs_index import _key_metric, list_runs, run_info
    from tuneforge.serve.store import FeedbackStore, UnknownCompletion

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    root = runs_dir.resolve()
    serve_dir = Path(serve_dir) if serve_dir else runs_dir.resolve().parent / "serve"
    examples_dir = Path(examples_dir)
    key = api_key.encode() if api_key else None
    launcher = Launcher(runs_dir)
    chat_models = ChatModels()
    state: dict = {}

    def store() -> FeedbackStore:
        if "store" not in state:
            state["store"] = FeedbackStore(serve_dir)
        return state["store"]

    app = FastAPI(title="tuneforge ui", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if key is None and request.url.hostname not in _LOOPBACK_HOSTS:
            return JSONResponse({"error": "this UI answers loopback addresses only"}, status_code=403)
        if request.method == "POST" and request.headers.get("x-tuneforge-ui") != "1":
            return JSONResponse({"error": "missing X-Tuneforge-UI header"}, status_code=403)
        if key is not None and path.startswith("/api") and path != "/api/login":
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), key):
                return JSONResponse({"error": "API key required"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(_Fail)
    async def _fail(request: Request, exc: _Fail):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    def run_path(name: str) -> Path:
        path = (runs_dir / name).resolve()
        if name in launcher.procs:  # launched here: listed before `train` writes its config.yaml
            return path
        if not (path == root or root in path.parents) or not (path / "config.yaml").is_file():
            raise _Fail(404, f"no run named '{name}' under {runs_dir}")
        return path

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise _Fail(400, "the body must be JSON") from None
        if not isinstance(data, dict):
            raise _Fail(400, "the body must be a JSON object")
        return data

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.post("/api/login")
    async def login(request: Request):
        given = str((await body(request)).get("key", ""))
        if key is None or not hmac.compare_digest(given.encode(), key):
            raise _Fail(401, "wrong API key")
        response = JSONResponse({"ok": True})
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return response

    @app.get("/api/runs")
    def runs():
        out = []
        now = time.time()
        for info in list_runs(runs_dir):
            path = Path(info["path"])
            report = info["report"]
            out.append({k: info[k] for k in ("name", "recipe", "method", "model", "data", "steps", "max_steps",
                                                 "date", "key_metric")}
                       | {"status": run_status(path, launcher.procs.get(info["name"]), now),
                          "best_val": _best_val(path, report), "wall_time_s": _wall_time(path, report),
                          "launched": info["name"] in launcher.procs,
                          "chat": (path / "adapter").is_dir() or (path / "model").is_dir()})
        for name in set(launcher.procs) - {r["name"] for r in out}:
            out.append(_starting(name) | {"status": run_status(runs_dir / name, launcher.procs[name], now)})
        return out

    def _starting(name: str) -> dict:
        """A launched run whose `train` has not written its run directory yet (loading, or failed early)."""
        return {"name": name, "recipe": "-", "method": "-", "model": "-", "data": None, "steps": None,
                "max_steps": None, "date": "-", "key_metric": "-", "best_val": None, "wall_time_s": None,
                "launched": True, "chat": False}

    @app.get("/api/runs/{name:path}/metrics")
    def metrics(name: str, source: str | None = None):
        run = run_path(name)
        files = _metric_files(run)
        pick = next((f for f in files if f.parent.relative_to(run).as_posix() == source), None) if source else None
        pick = pick or (files[0] if files else None)
        rows = _rows(pick) if pick else []
        train = [{k: r.get(k) for k in ("step", "loss", "lr", "tokens_per_s", "grad_norm", "memory_gb")}
                 for r in rows if isinstance(r.get("loss"), (int, float))]
        val = [{"step": r.get("step"), "val_loss": r["val_loss"]} for r in rows if isinstance(r.get("val_loss"), (int, float))]
        return {"source": pick.parent.relative_to(run).as_posix() if pick else None,
                "sources": [f.parent.relative_to(run).as_posix() for f in files], "train": train, "val": val}

    @app.get("/api/runs/{name:path}/plots/{file}")
    def plot(name: str, file: str):
        path = run_path(name) / "plots" / file
        if not _FILE.match(file) or not file.endswith(".png") or not path.is_file():
            raise _Fail(404, f"no plot {file}")
        return FileResponse(path, media_type="image/png")

    @app.get("/api/runs/{name:path}/traces/{file}")
    def trace(name: str, file: str, limit: int = 50):
        path = run_path(name) / "traces" / file
        if not _FILE.match(file) or not path.is_file():
            raise _Fail(404, f"no trace file {file}")
        episodes = _rows(path)[:max(1, min(limit, 500))]
        for ep in episodes:
            tools = set(ep.get("tools") or [])
            for step in ep.get("trace") or []:
                call = step.get("call")
                if isinstance(call, dict):
                    call["hallucinated"] = bool(call.get("name")) and call.get("name") not in tools
        return episodes

    @app.get("/api/runs/{name:path}")
    def run(name: str):
        path = run_path(name)
        if not (path / "config.yaml").is_file():
            return _starting(name) | {
                "status": run_status(path, launcher.procs.get(name)), "metrics": {}, "report": {},
                "config_yaml": launcher.config_path(name).read_text(encoding="utf-8", errors="replace"),
                "calibration": None, "agent": None, "plots": [], "traces": [], "launch": launcher.info(name),
                "confidence": False}
        info = run_info(path)
        report = info["report"]
        cal = _read_json(path / "calibration_results.json")
        agent = _read_json(path / "agent_results.json")
        plots = sorted(p.name for p in (path / "plots").glob("*.png")) if (path / "plots").is_dir() else []
        traces = sorted(p.name for p in (path / "traces").glob("*.jsonl")) if (path / "traces").is_dir() else []
        return {
            "name": name, "path": str(path), "recipe": info["recipe"], "method": info["method"], "model": info["model"],
            "data": info["data"], "steps": info["steps"], "max_steps": info["max_steps"],
            "status": run_status(path, launcher.procs.get(name)), "key_metric": _key_metric(info),
            "metrics": info["metrics"], "config_yaml": (path / "config.yaml").read_text(encoding="utf-8", errors="replace"),
            "report": report, "best_val": _best_val(path, report), "wall_time_s": _wall_time(path, report),
            "calibration": cal if isinstance(cal, dict) else None,
            "agent": {Path(k).stem: v for k, v in agent.items()} if isinstance(agent, dict) else None,
            "plots": plots, "traces": traces, "launch": launcher.info(name),
            "chat": (path / "adapter").is_dir() or (path / "model").is_dir(),
            "confidence": cal is not None or (path / "calibration.json").is_file(),
        }

    @app.post("/api/chat")
    async def chat(request: Request):
        data = await body(request)
        run = run_path(str(data.get("run", "")))
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
                for m in messages):
            raise _Fail(400, "messages: a list of {role: system|user|assistant, content: text}")
        max_tokens = data.get("max_tokens", 64)
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 1024:
            raise _Fail(400, "max_tokens: an integer from 1 to 1024")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        text, confidence = await run_in_threadpool(chat_models.answer, run, messages, max_tokens)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        store().record_completion(completion_id, f"ui:{data['run']}", messages, text, endpoint="chat")

        async def events():
            for piece in re.findall(r"\s*\S+\s*", text) or [text]:
                yield f"data: {json.dumps({'delta': piece})}\n\n"
                await asyncio.sleep(0.02)
            yield f"data: {json.dumps({'done': True, 'id': completion_id, 'confidence': confidence})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/api/feedback")
    async def feedback(request: Request):
        data = await body(request)
        rating = data.get("rating")
        preferred = data.get("preferred") or None
        if preferred is not None and not isinstance(preferred, str):
            raise _Fail(400, "preferred: text")
        try:
            fid = store().record_feedback(str(data.get("id", "")), rating=rating, preferred=preferred)
        except UnknownCompletion as e:
            raise _Fail(404, str(e)) from None
        except ValueError as e:
            raise _Fail(400, str(e)) from None
        return {"ok": True, "feedback_id": fid}

    @app.get("/api/examples")
    def examples():
        files = sorted(examples_dir.glob("*.yaml")) if examples_dir.is_dir() else []
        return [{"name": f.stem, "yaml": f.read_text(encoding="utf-8")} for f in files]

    def parse_yaml(text) -> tuple[object, list[dict]]:
        import yaml

        if not isinstance(text, str):
            return None, [{"key": "(yaml)", "message": "yaml: the config text is missing"}]
        try:
            return yaml.safe_load(text) or {}, []
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            return None, [{"key": "(yaml)", "message": f"not valid YAML{where}: {getattr(e, 'problem', e)}"}]

    @app.post("/api/validate")
    async def validate(request: Request):
        data = await body(request)
        raw, errors = parse_yaml(data.get("yaml"))
        if not errors:
            errors = _config_errors(raw, data.get("name"), runs_dir)
        return {"ok": not errors, "errors": errors}

    @app.post("/api/launch")
    async def launch(request: Request):
        import yaml

        data = await body(request)
        name = str(data.get("name") or "")
        if data.get("resume"):
            if not _NAME.match(name):
                raise _Fail(400, "name: not a launched run")
            return launcher.start(name, None, resume=True)
        raw, errors = parse_yaml(data.get("yaml"))
        if not errors:
            errors = _config_errors(raw, name, runs_dir)
        if errors:
            return JSONResponse({"ok": False, "errors": errors}, status_code=400)
        raw["output_dir"] = str((runs_dir / name).resolve())
        return launcher.start(name, yaml.safe_dump(raw, sort_keys=False))

    @app.post("/api/launch/{name}/stop")
    def stop(name: str):
        return launcher.stop(name)

    return app


def run_ui(runs_dir: Path, host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None,
           serve_dir: Path | None = None) -> None:
    """`tuneforge ui`: the same key rule as `tuneforge serve` (beyond loopback a key is required)."""
    import uvicorn

    from tuneforge.serve.app import resolve_api_key

    key = resolve_api_key(api_key, host)
    app = create_ui_app(runs_dir, api_key=key, serve_dir=serve_dir)
    print(f"tuneforge ui on http://{host}:{port}/ (runs: {runs_dir})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
