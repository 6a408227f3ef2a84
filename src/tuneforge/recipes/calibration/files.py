"""The files calibration stages hand each other inside the run folder, read and written in one place."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.atomic import atomic_write_text
from tuneforge.calibration.questions import Graded, question_from_dict
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_stage_file(path: Path, stage: str) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path} is missing: run the '{stage}' stage first "
                        f"(tuneforge calibrate CONFIG --stage {stage})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run_graded(run: Path) -> list[Graded]:
    rows = read_stage_file(RunDir(run).graded, "grade")
    out = []
    for row in rows:
        g = Graded(question_from_dict(row), row.get("answer", ""), bool(row["correct"]), row.get("grader", ""),
                   row.get("split", ""))
        out.append(g)
    return out
