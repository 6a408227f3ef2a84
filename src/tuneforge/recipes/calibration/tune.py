"""The tune stage: graded answers -> uncertainty queries -> THE loop with the calibration loss -> calibration.json.

The training examples are the query about each graded answer with the right option ("yes" when the
answer was correct) as the only target.
"""

from __future__ import annotations

import time

import torch
from accelerate.utils import set_seed

from tuneforge.atomic import write_json
from tuneforge.calibration.balance import balance, check_both_classes, encode_items
from tuneforge.calibration.fit import fit_platt, fit_probe, fit_temperature
from tuneforge.calibration.query import answer_messages, make_query_spec, query_text, score_queries
from tuneforge.models.methods import METHODS
from tuneforge.recipes.calibration.files import load_run_graded
from tuneforge.run_dir import PROBE, RunDir
from tuneforge.train.losses.calibration import CalibrationLoss
from tuneforge.train.session import Session


def tune_stage(session: Session) -> dict:
    cfg, run, say = session.cfg, session.run, session.log
    cal = cfg.calibration
    set_seed(cfg.seed)
    graded = load_run_graded(run)
    train_items = [g for g in graded if g.split == "train"]
    val_items = [g for g in graded if g.split == "val"]
    right, wrong = check_both_classes([g.correct for g in train_items], f"{run}/graded.jsonl")
    skew = right / len(train_items)
    say(f"graded train split: {right} correct / {wrong} wrong ({skew:.1%} correct); balance: {cal.balance}")

    session.load_model()
    tokenizer = session.tokenizer
    spec = make_query_spec(tokenizer, cal.query, cal.options)
    regularizer = cal.regularizer if METHODS[cfg.method.name].adapter else "none"  # the base is the adapter off
    answering = None
    if regularizer != "none" and cal.regularizer_on == "answer_prompt":
        def answering(g):  # the prompt the answer stage asked with (few-shot examples left out)
            return answer_messages(g.question, [], cal.instruction_choice, cal.instruction_open)
    train, labels, dropped = encode_items(train_items, tokenizer, spec, cfg.data.max_length, answering)
    val, _, val_dropped = encode_items(val_items, tokenizer, spec, cfg.data.max_length, answering)
    if dropped + val_dropped:
        say(f"{dropped + val_dropped} queries longer than data.max_length {cfg.data.max_length} dropped")
    check_both_classes(labels, f"{run}/graded.jsonl (after dropping queries over data.max_length)")
    train = balance(train, labels, cal.balance, cfg.seed)

    session.prepare(train)
    amp = session.amp

    probe_info = None
    if cal.probe:
        # The probe reads the untuned model, so fit it before the method changes anything.
        say("fitting the linear probe on the frozen model's hidden states...")
        texts = [query_text(tokenizer, g.question, g.answer, spec) for g in train_items]
        _, hidden = score_queries(session.model, tokenizer, texts, spec, cal.batch_size, amp, want_hidden=True)
        y = torch.tensor([g.correct for g in train_items])
        fit_probe(hidden, y, balanced=cal.balance != "none", seed=cfg.seed).save(RunDir(run).probe)
        probe_info = PROBE

    say(f"tuning {cfg.method.name} on {len(train)} queries; regulariser: {regularizer}"
        + (f" on the answer under its {cal.regularizer_on.replace('_', ' ')}" if regularizer != "none" else ""))
    started = time.time()
    result = session.fit(train, val, loss=lambda m: CalibrationLoss(m, spec.token_ids, regularizer,
                                                                    cal.regularizer_weight))
    artifact = session.save_artifact()
    model = session.model

    temperature, platt = 1.0, None
    if (cal.temperature_scaling or cal.platt_scaling) and val_items:
        texts = [query_text(tokenizer, g.question, g.answer, spec) for g in val_items]
        margins, _ = score_queries(model, tokenizer, texts, spec, cal.batch_size, amp)
        y = torch.tensor([g.correct for g in val_items])
        if len({g.correct for g in val_items}) < 2:
            say("temperature and Platt scaling skipped: the validation answers are all of one class")
        else:
            if cal.temperature_scaling:
                temperature = fit_temperature(margins, y)
                say(f"temperature fitted on {len(val_items)} validation answers: T = {temperature:.3f}")
            if cal.platt_scaling:
                a, b = fit_platt(margins, y)
                platt = {"scale": round(a, 5), "bias": round(b, 5)}
                say(f"Platt scaling fitted on {len(val_items)} validation answers: sigmoid({a:.3f} * margin "
                    f"{b:+.3f})")
    info = {
        "model": session.model_path, "method": cfg.method.name, "artifact": artifact.name, **spec.to_dict(),
        "temperature": round(temperature, 5), "platt": platt, "probe": probe_info,
        "instruction_choice": cal.instruction_choice, "instruction_open": cal.instruction_open,
        "answer_max_new_tokens": cal.answer_max_new_tokens, "chat_template": cfg.data.chat_template,
        "train": {"queries": len(train_items), "correct": right, "wrong": wrong, "share_correct": round(skew, 4),
                  "balance": cal.balance, "dropped_too_long": dropped + val_dropped, "steps": result.steps,
                  "final_loss": round(result.train_loss, 4),
                  "best_val_loss": round(result.best_val_loss, 4) if result.best_val_loss is not None else None,
                  "regularizer": regularizer, "regularizer_on": cal.regularizer_on,
                  "regularizer_weight": cal.regularizer_weight,
                  "trainable_params": session.trainable, "seconds": round(time.time() - started, 1)},
    }
    write_json(RunDir(run).calibration_json, info)
    session.release()  # the evaluate stage loads the tuned artifact afresh
    return info
