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

import json
import random
import time
from pathlib import Path

import torch

from tuneforge.calibration.grade import grade, regrade_with_judge
from tuneforge.calibration.questions import (Graded, Question, is_graded_file, load_graded, load_questions,
                                             question_from_dict)
from tuneforge.calibration.query import answer_messages
from tuneforge.config import Config, dump_config
from tuneforge.errors import UserError
from tuneforge.runs import check_run_dir, create_run_dir, write_json
from tuneforge.atomic import atomic_write_text

STAGES = ("answer", "grade", "tune", "evaluate")


def say(msg: str) -> None:
    print(f"[tuneforge] {msg}", flush=True)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_stage_file(run: Path, name: str, stage: str) -> list[dict]:
    path = run / name
    if not path.is_file():
        raise UserError(f"{path} is missing: run the '{stage}' stage first "
                        f"(tuneforge calibrate CONFIG --stage {stage})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_calibration(cfg: Config, *, overwrite: bool = False, resume: bool = False,
                    stages: tuple[str, ...] = STAGES) -> Path:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if stages[0] == "answer":
        run = check_run_dir(cfg.output_dir, overwrite, resume=False)  # --resume applies to the tune stage
    else:
        run = Path(cfg.output_dir)
        if not run.is_dir():
            raise UserError(f"run directory {run} does not exist: start with the 'answer' stage")
    for stage in stages:
        started = time.time()
        say(f"stage {stage}")
        if stage == "answer":
            answer_stage(cfg, run, overwrite)
        elif stage == "grade":
            grade_stage(cfg, run)
        elif stage == "tune":
            from tuneforge.calibration.tune import tune_stage

            tune_stage(cfg, run, resume)
        else:
            from tuneforge.calibration.evaluate import evaluate_stage

            evaluate_stage(cfg, run)
        say(f"stage {stage} done in {time.time() - started:.0f} s")
    return run


# ---------------------------------------------------------------- answer


def _split(items: list, cfg: Config) -> list[tuple[str, object]]:
    """Seeded train / val / test assignment; test and val shares come from the config."""
    order = list(range(len(items)))
    random.Random(cfg.seed).shuffle(order)
    n_test = max(1, round(cfg.calibration.test_ratio * len(items)))
    n_val = max(1, round(cfg.data.val_ratio * len(items))) if cfg.data.val_ratio > 0 else 0
    if n_test + n_val >= len(items):
        raise UserError(f"data.train: {len(items)} questions are too few for calibration.test_ratio "
                        f"{cfg.calibration.test_ratio} and data.val_ratio {cfg.data.val_ratio}; give more questions")
    names = {i: "test" for i in order[:n_test]} | {i: "val" for i in order[n_test:n_test + n_val]}
    return [(names.get(i, "train"), items[i]) for i in range(len(items))]


def _sample(items: list, limit: int | None, seed: int) -> list:
    if limit and len(items) > limit:
        picked = sorted(random.Random(seed).sample(range(len(items)), limit))
        return [items[i] for i in picked]
    return items


def answer_stage(cfg: Config, run: Path, overwrite: bool) -> None:
    cal = cfg.calibration
    summary: dict = {"source": cfg.data.train, "shift": cal.shift}
    if is_graded_file(cfg.data.train):
        # Already graded elsewhere (ours or the public calibration-tuning format): nothing to answer.
        graded = _sample(load_graded(cfg.data.train), cfg.data.max_examples, cfg.seed)
        rows = [g.to_dict() | {"split": s} for s, g in _split(graded, cfg)]
        if cal.shift:
            rows += [g.to_dict() | {"split": "shift"} for g in _shift_graded(cfg)]
        create_run_dir(run, overwrite, False)
        atomic_write_text(run / "config.yaml", dump_config(cfg))
        write_jsonl(run / "graded.jsonl", rows)
        write_json(run / "answering.json", summary | {"given_graded": True, "questions": len(rows)})
        say(f"{cfg.data.train} is already graded: {len(rows)} items, answering and grading skipped")
        return

    questions, skipped = load_questions(cfg.data.train)
    questions = _sample(questions, cfg.data.max_examples, cfg.seed)
    if skipped:
        say(f"{skipped} questions in {cfg.data.train} have no target and are skipped")
    items = _split(questions, cfg)
    shift: list[Question] = []
    shift_skipped = 0
    if cal.shift:
        if is_graded_file(cal.shift):
            raise UserError(f"calibration.shift: {cal.shift} is a graded file but data.train holds questions; "
                            "give questions for both (they are answered by the same model) or graded files for both")
        shift, shift_skipped = load_questions(cal.shift)
        shift = _sample(shift, cal.shift_max, cfg.seed)
        items += [("shift", q) for q in shift]

    from tuneforge.data.render import setup_chat_template
    from tuneforge.eval.generate import generate
    from tuneforge.models.load import load_model_and_tokenizer

    model, tokenizer, model_path = load_model_and_tokenizer(cfg.model)
    setup_chat_template(tokenizer, cfg.data.chat_template, model_path)
    create_run_dir(run, overwrite, False)
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    shots = few_shot_examples([q for s, q in items if s == "train"], cal.few_shot)
    prompts = [answer_messages(q, shots, cal.instruction_choice, cal.instruction_open) for _, q in items]
    say(f"answering {len(items)} questions with {model_path} ({cal.few_shot}-shot, greedy)...")
    started = time.time()
    answers = generate(model, tokenizer, prompts, max_new_tokens=cal.answer_max_new_tokens,
                       batch_size=cal.batch_size, stop_at_newline=True)
    write_jsonl(run / "answers.jsonl", [q.to_dict() | {"answer": a, "split": s}
                                        for (s, q), a in zip(items, answers)])
    write_json(run / "answering.json", summary | {
        "model": model_path, "questions": len(items), "skipped_without_target": skipped + shift_skipped,
        "empty_answers": sum(not a.strip() for a in answers), "seconds": round(time.time() - started, 1),
        "splits": {s: sum(1 for x, _ in items if x == s) for s in ("train", "val", "test", "shift")}})


def _shift_graded(cfg: Config) -> list[Graded]:
    if not is_graded_file(cfg.calibration.shift):
        raise UserError(f"calibration.shift: data.train is a graded file, so {cfg.calibration.shift} must be one "
                        "too (fields question, answer, correct; or context, target, output, label)")
    return _sample(load_graded(cfg.calibration.shift), cfg.calibration.shift_max, cfg.seed)


def few_shot_examples(train_questions: list[Question], k: int) -> list[Question]:
    """The first k training questions: fixed, so answering and the sampling baseline see the same prompt."""
    return train_questions[:k]


# ---------------------------------------------------------------- grade


def grade_stage(cfg: Config, run: Path) -> None:
    if (run / "graded.jsonl").is_file() and not (run / "answers.jsonl").is_file():
        say("graded.jsonl was given: nothing to grade")
        write_json(run / "grading.json", grading_summary(load_graded(str(run / "graded.jsonl"))))
        return
    rows = read_stage_file(run, "answers.jsonl", "answer")
    cal = cfg.calibration
    graded = []
    for row in rows:
        q = question_from_dict(row)
        g = grade(row["answer"], q, graders=tuple(cal.graders), tolerance=cal.numeric_tolerance)
        g.split = row.get("split", "")
        graded.append(g)
    flipped = 0
    if cal.judge:
        from tuneforge.data.render import setup_chat_template
        from tuneforge.models.load import load_model_and_tokenizer

        judge_name = cfg.model if cal.judge == "base" else cal.judge
        judge, tok, judge_path = load_model_and_tokenizer(judge_name)
        setup_chat_template(tok, cfg.data.chat_template, judge_path)
        say(f"asking the judge {judge_path} about open answers the rules marked wrong...")
        flipped = regrade_with_judge(graded, judge, tok)
    write_jsonl(run / "graded.jsonl", [g.to_dict() for g in graded])
    summary = grading_summary(graded) | {"judge": cal.judge, "judge_flipped_to_correct": flipped}
    write_json(run / "grading.json", summary)
    for split, s in summary["splits"].items():
        say(f"graded {split}: {s['n']} answers, {s['correct']} correct ({s['accuracy']:.1%})")


def grading_summary(graded: list[Graded]) -> dict:
    def block(items: list[Graded]) -> dict:
        n = len(items)
        right = sum(g.correct for g in items)
        return {"n": n, "correct": right, "accuracy": round(right / n, 4) if n else None}

    splits = {s: block([g for g in graded if g.split == s]) for s in dict.fromkeys(g.split for g in graded)}
    graders = {name: sum(1 for g in graded if g.grader == name) for name in dict.fromkeys(g.grader for g in graded)}
    sources = {s: block([g for g in graded if g.question.source == s])
               for s in dict.fromkeys(g.question.source for g in graded)}
    return {"splits": splits, "graders": graders, "sources": sources,
            "empty_answers": sum(not g.answer.strip() for g in graded)}


def load_run_graded(run: Path) -> list[Graded]:
    rows = read_stage_file(run, "graded.jsonl", "grade")
    out = []
    for row in rows:
        g = Graded(question_from_dict(row), row.get("answer", ""), bool(row["correct"]), row.get("grader", ""),
                   row.get("split", ""))
        out.append(g)
    return out
