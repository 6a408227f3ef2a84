"""The evaluate stage: every confidence method on the held-out split and the shifted set.

All methods score the same graded answers, so answer accuracy is shared and only the confidence
differs. Baselines run on the untuned model (the adapter switched off, or the base loaded anew for
full/freeze runs); the tuned model and its temperature come from the tune stage.
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.atomic import atomic_write_text, write_json
from tuneforge.calibration.artifact import CalibrationModels, load_calibration_info
from tuneforge.calibration.baselines import sampling_confidence, verbalized_confidence
from tuneforge.calibration.fit import Probe
from tuneforge.calibration.query import (QuerySpec, answer_messages, margin_to_confidence, platt_confidence,
                                         query_text, score_queries)
from tuneforge.errors import UserError
from tuneforge.eval.uncertainty import (comparison_chart, markdown_table, reliability_diagram, reliability_grid,
                                       summarize)
from tuneforge.eval.uncertainty_stats import reference_predictors, split_statistics, statistics_markdown
from tuneforge.recipes.calibration.answer import few_shot_examples
from tuneforge.recipes.calibration.files import load_run_graded
from tuneforge.run_dir import RunDir
from tuneforge.train.precision import resolve_precision
from tuneforge.train.session import Session

SPLITS = ("test", "shift")
TUNED = "calibration-tuned"


def evaluate_stage(session: Session) -> dict:
    cfg, run, say = session.cfg, session.run, session.log
    cal = cfg.calibration
    info = load_calibration_info(run)
    graded = load_run_graded(run)
    spec = QuerySpec.from_dict(info)
    models = CalibrationModels(run, info, session.policy)
    tok = models.tokenizer
    device = next(models.tuned.parameters()).device
    amp = resolve_precision(cfg.train.precision, device)
    shots = few_shot_examples([g.question for g in graded if g.split == "train"], cal.few_shot)
    probe = Probe.load(run / info["probe"]) if info.get("probe") else None

    results: dict[str, dict[str, dict]] = {}
    extras: dict[str, dict] = {}
    for split in SPLITS:
        items = [g for g in graded if g.split == split]
        if not items:
            continue
        say(f"evaluating on {split}: {len(items)} answers")
        correct = [g.correct for g in items]
        questions = [g.question for g in items]
        answers = [g.answer for g in items]
        texts = [query_text(tok, g.question, g.answer, spec) for g in items]
        conf: dict[str, list[float]] = {}
        timing: dict[str, float] = {}
        with models.base() as base:
            if "zero_shot" in cal.baselines:
                t = time.time()
                margins, hidden = score_queries(base, tok, texts, spec, cal.batch_size, amp)
                conf["zero-shot classifier"] = margin_to_confidence(margins)
                timing["zero-shot classifier"] = time.time() - t
            if "verbalized" in cal.baselines:
                t = time.time()
                verbal = verbalized_confidence(base, tok, questions, answers, cal.verbalized_max_new_tokens,
                                               cal.batch_size)
                conf["verbalized"] = verbal.confidence
                timing["verbalized"] = time.time() - t
                extras.setdefault(split, {})["verbalized_unparsed"] = verbal.unparsed
                extras[split]["verbalized_examples"] = verbal.replies[:5]
                if verbal.unparsed:
                    say(f"verbalized: {verbal.unparsed} of {len(items)} replies had no usable number (scored 0.5)")
            if "sampling" in cal.baselines:
                t = time.time()
                prompts = [answer_messages(q, shots, cal.instruction_choice, cal.instruction_open) for q in questions]
                conf["sampling"] = sampling_confidence(
                    base, tok, prompts, answers, questions, cal.samples, cal.sample_temperature,
                    cal.answer_max_new_tokens, cal.batch_size, seed=cfg.seed)
                timing["sampling"] = time.time() - t
            if probe is not None:
                _, hidden = score_queries(base, tok, texts, spec, cal.batch_size, amp, want_hidden=True)
                conf["probe"] = margin_to_confidence(probe.margin(hidden))
        t = time.time()
        margins, _ = score_queries(models.tuned, tok, texts, spec, cal.batch_size, amp)
        conf[TUNED] = margin_to_confidence(margins)
        timing[TUNED] = time.time() - t
        if info.get("temperature", 1.0) != 1.0:
            conf[f"{TUNED} + temperature"] = margin_to_confidence(margins, info["temperature"])
        if info.get("platt"):
            conf[f"{TUNED} + Platt"] = platt_confidence(margins, info["platt"]["scale"], info["platt"]["bias"])
        # Trivial predictors fitted on the training answers: what a method must beat to have learned anything.
        train = [g for g in graded if g.split == "train"]
        conf |= reference_predictors([g.correct for g in train], [g.question.source for g in train],
                                     [q.source for q in questions])
        results[split] = {name: summarize(c, correct) for name, c in conf.items()}
        extras.setdefault(split, {})["seconds"] = {k: round(v, 1) for k, v in timing.items()}
        reference = [name for name in conf if name.startswith(TUNED)][-1]  # the scaled one, if fitted
        extras[split]["statistics"] = split_statistics(conf, correct, [q.source for q in questions], reference,
                                                       seed=cfg.seed)
        _plots(run, split, conf, correct, results[split])

    if not results:
        raise UserError(f"{run}/graded.jsonl has no 'test' or 'shift' answers to evaluate on")
    out = {"results": results, "details": extras, "temperature": info.get("temperature"),
           "train": info.get("train"), "method": info.get("method")}
    write_json(RunDir(run).calibration_results, out)
    atomic_write_text(RunDir(run).calibration_md, _report(run, out))
    say(f"results: {RunDir(run).calibration_md}")
    print(markdown_table(results))
    return out


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-").replace("--", "-")


def _plots(run: Path, split: str, conf: dict[str, list[float]], correct: list[bool], summary: dict) -> None:
    for name, c in conf.items():
        reliability_diagram(c, correct, RunDir(run).plots / f"reliability-{split}-{_slug(name)}.png", f"{name} ({split})")
    reliability_grid(conf, correct, RunDir(run).plots / f"calibration-reliability-{split}.png",
                     f"Reliability on the {split} split (n={len(correct)})")
    comparison_chart(summary, RunDir(run).plots / f"calibration-{split}.png",
                     f"Confidence methods on the {split} split (n={len(correct)})")


def _report(run: Path, out: dict) -> str:
    train = out.get("train") or {}
    lines = ["# Calibration tuning results", "",
             f"Method: {out.get('method')}; trained on {train.get('queries')} graded answers "
             f"({train.get('share_correct', 0):.1%} correct, balance: {train.get('balance')}); "
             f"temperature {out.get('temperature')}.", "",
             "Answer accuracy is the same for every method (they score the same answers); ECE uses 10 "
             "equal-width bins over the top-label confidence.", "",
             markdown_table(out["results"]), ""]
    for split in out["results"]:
        stats = out["details"].get(split, {}).get("statistics")
        if stats:
            lines += [statistics_markdown(stats, split)]
        lines += [f"![{split}](plots/calibration-{split}.png)", "",
                  f"![reliability, {split}](plots/calibration-reliability-{split}.png)", ""]
        unparsed = out["details"].get(split, {}).get("verbalized_unparsed")
        if unparsed is not None:
            lines += [f"- {split}: {unparsed} verbalized replies had no usable number and were scored 0.5", ""]
    return "\n".join(lines)
