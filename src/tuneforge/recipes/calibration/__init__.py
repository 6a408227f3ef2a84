"""Calibration tuning: answer -> grade -> tune -> evaluate, each stage a file in the run directory.

    answers.jsonl     the model's greedy answer to every question, with its split
    graded.jsonl      + correct / grader (also the input format for users who graded elsewhere)
    grading.json      accuracy and class skew per split, grader and source
    adapter/|model/   the tuned uncertainty model; calibration.json: query, options, temperature
    calibration.md    ECE / AUROC / Brier / selective accuracy of every method, with plots/

A stage reads only the previous stage's file, so any stage can be rerun alone
(`tuneforge calibrate CONFIG --stage tune`).
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.models.load import LoadPolicy
from tuneforge.models.methods import METHODS
from tuneforge.recipes.base import RecipeBase
from tuneforge.recipes.calibration.answer import answer_stage
from tuneforge.recipes.calibration.evaluate import evaluate_stage
from tuneforge.recipes.calibration.grade import grade_stage
from tuneforge.recipes.calibration.tune import tune_stage
from tuneforge.run_dir import RunDir
from tuneforge.runs import check_run_dir
from tuneforge.train.session import Session

STAGES = {"answer": answer_stage, "grade": grade_stage, "tune": tune_stage, "evaluate": evaluate_stage}


class Calibration(RecipeBase):
    name = "calibration"
    resumable = False
    resume_hint = "rerun the unfinished stage instead, e.g. tuneforge calibrate CONFIG --stage tune --resume"

    def __init__(self, stages: tuple[str, ...] = tuple(STAGES)):
        self.stages = stages

    def check(self, cfg: Config) -> None:
        # Only a regulariser asked for by name is refused; the default one is left out without an adapter.
        if "regularizer" in cfg.calibration.model_fields_set and cfg.calibration.regularizer != "none" \
                and not METHODS[cfg.method.name].adapter:
            raise UserError(f"calibration.regularizer needs an adapter method (the base model is the "
                            f"adapter switched off); method {cfg.method.name} has none: use lora, dora, "
                            "ia3 or bottleneck, or set calibration.regularizer: none")

    def session(self, cfg: Config, *, overwrite: bool, resume: bool, policy: LoadPolicy) -> Session:
        if self.stages[0] == "answer":
            check_run_dir(cfg.output_dir, overwrite, resume=False)  # --resume applies to the tune stage
        elif not Path(cfg.output_dir).is_dir():
            raise UserError(f"run directory {cfg.output_dir} does not exist: start with the 'answer' stage")
        return Session(cfg, overwrite=overwrite, resume=resume, policy=policy, check_run=False)

    def run(self, session: Session) -> Path:
        for stage in self.stages:
            started = time.time()
            session.log(f"stage {stage}")
            STAGES[stage](session)
            session.log(f"stage {stage} done in {time.time() - started:.0f} s")
        return session.run

    def outputs(self, run: Path) -> dict[str, Path]:
        files = RunDir(run)
        wanted = (files.graded, files.grading, files.calibration_json, files.calibration_md)
        return {path.name: path for path in wanted if path.is_file()}
