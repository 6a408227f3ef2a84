"""The tuned uncertainty model as a run saves it: calibration.json (query, options, temperature, where the
artifact is), the artifact folder, and the optional probe. Read by the evaluate stage and by
`generate --confidence` / the server alike."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from tuneforge.data.render import setup_chat_template
from tuneforge.errors import UserError
from tuneforge.models.adapters import adapter_disabled, has_adapter
from tuneforge.models.load import SAFE, LoadPolicy, load_model
from tuneforge.models.merge import load_for_inference
from tuneforge.run_dir import RunDir


def load_calibration_info(run: Path) -> dict:
    path = RunDir(run).calibration_json
    if not path.is_file():
        raise UserError(f"{path} is missing: run the 'tune' stage first (tuneforge calibrate CONFIG --stage tune)")
    return json.loads(path.read_text())


class CalibrationModels:
    """The tuned model and a way to get the untuned one (same weights with the adapter off, if possible)."""

    def __init__(self, run: Path, info: dict, policy: LoadPolicy = SAFE):
        self.tuned, self.tokenizer = load_for_inference(run / info["artifact"], policy=policy)
        setup_chat_template(self.tokenizer, info.get("chat_template"), info["model"])
        self._base = None if has_adapter(self.tuned) else load_model(info["model"], policy=policy).eval()

    def base(self):
        return adapter_disabled(self.tuned) if self._base is None else contextlib.nullcontext(self._base)
