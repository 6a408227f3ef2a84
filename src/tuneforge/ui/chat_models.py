"""The models the chat talks to: one per run, loaded on first use; generation one at a time (torch on a
few cores)."""

from __future__ import annotations

import threading
from pathlib import Path

from tuneforge.models.policy import SAFE, LoadPolicy
from tuneforge.run_dir import RunDir


def has_confidence(run: RunDir) -> bool:
    """A calibration run: its answers come with a confidence."""
    return run.calibration_results.is_file() or run.calibration_json.is_file()


class ChatModels:
    def __init__(self, policy: LoadPolicy = SAFE):
        self.policy = policy
        self._models: dict[Path, tuple] = {}
        self._lock = threading.Lock()

    def answer(self, run: Path, messages: list[dict], max_tokens: int) -> tuple[str, float | None]:
        with self._lock:
            if run not in self._models:
                self._models[run] = self._load(run)
            kind, *loaded = self._models[run]
            if kind == "confidence":
                question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
                answer, p = loaded[0].answer(question, max_new_tokens=max_tokens)
                return answer, float(p)
            # torch and transformers load on the first chat, not when the dashboard starts.
            from tuneforge.eval.generate import generate

            model, tok = loaded
            return generate(model, tok, [messages], max_new_tokens=max_tokens)[0], None

    def _load(self, run: Path) -> tuple:
        # torch and transformers load on the first chat, not when the dashboard starts.
        if has_confidence(RunDir(run)):
            from tuneforge.calibration.confidence import ConfidenceModel

            return "confidence", ConfidenceModel(run, self.policy)
        from tuneforge.models.merge import load_for_inference

        return ("plain", *load_for_inference(run, policy=self.policy))
