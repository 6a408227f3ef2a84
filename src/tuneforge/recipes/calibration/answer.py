"""The answer stage: the model answers every question greedily (first line), with its split."""

from __future__ import annotations

import random
import time

from tuneforge.atomic import write_json
from tuneforge.calibration.questions import Graded, Question, is_graded_file, load_graded, load_questions
from tuneforge.calibration.query import answer_messages
from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.eval.generate import generate
from tuneforge.recipes.calibration.files import write_jsonl
from tuneforge.run_dir import RunDir
from tuneforge.train.session import Session


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


def answer_stage(session: Session) -> None:
    cfg, say, files = session.cfg, session.log, RunDir(session.run)
    cal = cfg.calibration
    summary: dict = {"source": cfg.data.train, "shift": cal.shift}
    if is_graded_file(cfg.data.train):
        # Already graded elsewhere (ours or the public calibration-tuning format): nothing to answer.
        graded = _sample(load_graded(cfg.data.train), cfg.data.max_examples, cfg.seed)
        rows = [g.to_dict() | {"split": s} for s, g in _split(graded, cfg)]
        if cal.shift:
            rows += [g.to_dict() | {"split": "shift"} for g in _shift_graded(cfg)]
        session.start()
        write_jsonl(files.graded, rows)
        write_json(files.answering, summary | {"given_graded": True, "questions": len(rows)})
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

    session.load_model(training=False)
    model, tokenizer, model_path = session.model, session.tokenizer, session.model_path
    session.start()
    shots = few_shot_examples([q for s, q in items if s == "train"], cal.few_shot)
    prompts = [answer_messages(q, shots, cal.instruction_choice, cal.instruction_open) for _, q in items]
    say(f"answering {len(items)} questions with {model_path} ({cal.few_shot}-shot, greedy)...")
    started = time.time()
    answers = generate(model, tokenizer, prompts, max_new_tokens=cal.answer_max_new_tokens,
                       batch_size=cal.batch_size, stop_at_newline=True)
    write_jsonl(files.answers, [q.to_dict() | {"answer": a, "split": s}
                                        for (s, q), a in zip(items, answers)])
    write_json(files.answering, summary | {
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
