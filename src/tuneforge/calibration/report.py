"""Put an evaluated calibration run's results into a markdown document (docs/calibration.md for
`make calibration-demo`): the run's calibration.md (every method with intervals, the noise floor,
paired differences, the reliability diagrams) replaces the document's calibration results block."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.docs_block import copy_images, shift_headings, write_block
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir


def publish(run: Path, doc: Path, images: Path, command: str, wall_seconds: float | None = None) -> Path:
    files = RunDir(run)
    if not files.calibration_md.is_file():
        raise UserError(f"{files.calibration_md} is missing: run the calibration recipe's evaluate stage first")
    body = files.calibration_md.read_text(encoding="utf-8")
    body = body.split("\n", 1)[1] if body.startswith("# ") else body
    pngs = sorted(files.plots.glob("calibration-*.png"))  # the comparison charts and the reliability grids
    body = copy_images(body, pngs, run.name, images, doc)
    grading = json.loads(files.grading.read_text()) if files.grading.is_file() else {}
    splits = ", ".join(f"{k} {v['n']} ({v['accuracy']:.0%} correct)" for k, v in grading.get("splits", {}).items())
    return write_block(doc, "calibration", shift_headings(body, 1), command, wall_seconds,
                       f"Graded answers: {splits}." if splits else "")
