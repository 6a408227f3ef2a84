"""The launch form: example configs to start from, the config check as you type, start and stop."""

from __future__ import annotations

import yaml
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from tuneforge.ui.config_check import check
from tuneforge.ui.http import RUN_NAME, Fail, read_body
from tuneforge.ui.state import UIState, ui_state

router = APIRouter()


@router.get("/api/examples")
def examples(ui: UIState = Depends(ui_state)):
    files = sorted(ui.examples_dir.glob("*.yaml")) if ui.examples_dir.is_dir() else []
    return [{"name": f.stem, "yaml": f.read_text(encoding="utf-8")} for f in files]


@router.post("/api/validate")
async def validate(request: Request, ui: UIState = Depends(ui_state)):
    data = await read_body(request)
    _, errors = check(data.get("yaml"), data.get("name"), ui.runs_dir)
    return {"ok": not errors, "errors": errors}


@router.post("/api/launch")
async def launch(request: Request, ui: UIState = Depends(ui_state)):
    data = await read_body(request)
    name = str(data.get("name") or "")
    if data.get("resume"):
        if not RUN_NAME.match(name):
            raise Fail(400, "name: not a launched run")
        return ui.launcher.start(name, None, resume=True)
    raw, errors = check(data.get("yaml"), name, ui.runs_dir)
    if errors:
        return JSONResponse({"ok": False, "errors": errors}, status_code=400)
    raw["output_dir"] = str((ui.runs_dir / name).resolve())
    return ui.launcher.start(name, yaml.safe_dump(raw, sort_keys=False))


@router.post("/api/launch/{name}/stop")
def stop(name: str, ui: UIState = Depends(ui_state)):
    return ui.launcher.stop(name)
