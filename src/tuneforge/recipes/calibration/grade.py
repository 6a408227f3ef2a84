"""The grade stage: rules (and optionally a judge model) mark each answer right or wrong."""

from __future__ import annotations

from tuneforge.atomic import write_json
from tuneforge.calibration.grade import grade, regrade_with_judge
from tuneforge.calibration.questions import Graded, load_graded, question_from_dict
from tuneforge.recipes.calibration.files import read_stage_file, write_jsonl
from tuneforge.run_dir import RunDir
from tuneforge.train.session import Session


def grade_stage(session: Session) -> None:
    cfg, run, say = session.cfg, session.run, session.log
    files = RunDir(run)
    if files.graded.is_file() and not files.answers.is_file():
        say("graded.jsonl was given: nothing to grade")
        write_json(files.grading, grading_summary(load_graded(str(files.graded))))
        return
    rows = read_stage_file(files.answers, "answer")
    cal = cfg.calibration
    graded = []
    for row in rows:
        q = question_from_dict(row)
        g = grade(row["answer"], q, graders=tuple(cal.graders), tolerance=cal.numeric_tolerance)
        g.split = row.get("split", "")
        graded.append(g)
    flipped = 0
    if cal.judge:
        session.load_model(cfg.model if cal.judge == "base" else cal.judge, training=False)
        say(f"asking the judge {session.model_path} about open answers the rules marked wrong...")
        flipped = regrade_with_judge(graded, session.model, session.tokenizer)
    write_jsonl(files.graded, [g.to_dict() for g in graded])
    summary = grading_summary(graded) | {"judge": cal.judge, "judge_flipped_to_correct": flipped}
    write_json(files.grading, summary)
    for split, s in summary["splits"].items():
        say(f"graded {split}: {s['n']} answers, {s['correct']} correct ({s['accuracy']:.1%})")
    near = [f"{name} ({s['accuracy']:.0%}, chance {s['chance']:.0%})" for name, s in summary["sources"].items()
            if s["near_chance"]]
    if near:
        say(f"within {NEAR_CHANCE:.0%} of chance, where a right answer is mostly a lucky guess and nothing can "
            f"tell right from wrong: {', '.join(near)}; consider leaving these sources out")


NEAR_CHANCE = 0.15  # a source must beat guessing by this much for its right answers to carry a signal


def chance_of(q) -> float:
    """What guessing scores: one over the options of a multiple-choice question; 0 for an open one
    (graded exactly, a guess is almost never right)."""
    return 1 / len(q.options) if q.options else 0.0


def grading_summary(graded: list[Graded]) -> dict:
    def block(items: list[Graded]) -> dict:
        n = len(items)
        right = sum(g.correct for g in items)
        return {"n": n, "correct": right, "accuracy": round(right / n, 4) if n else None}

    def with_chance(items: list[Graded]) -> dict:
        out = block(items)
        chance = sum(chance_of(g.question) for g in items) / len(items)
        return out | {"chance": round(chance, 4), "near_chance": out["accuracy"] < chance + NEAR_CHANCE}

    splits = {s: block([g for g in graded if g.split == s]) for s in dict.fromkeys(g.split for g in graded)}
    graders = {name: sum(1 for g in graded if g.grader == name) for name in dict.fromkeys(g.grader for g in graded)}
    sources = {s: with_chance([g for g in graded if g.question.source == s])
               for s in dict.fromkeys(g.question.source for g in graded)}
    return {"splits": splits, "graders": graders, "sources": sources,
            "empty_answers": sum(not g.answer.strip() for g in graded)}
