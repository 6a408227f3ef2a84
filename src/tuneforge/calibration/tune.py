"""The tune stage: graded answers -> uncertainty queries -> the shared training loop -> calibration.json.

The training examples are the query about each graded answer with the right option ("yes" when the
answer was correct) as the only target. A skewed graded set is balanced (loss weights or upsampling)
because a model that always says "yes" to a 70%-correct set already gets a low loss and learns nothing.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from tuneforge.calibration.fit import fit_probe, fit_temperature
from tuneforge.calibration.loss import CalibrationLoss
from tuneforge.calibration.questions import Graded
from tuneforge.calibration.query import QuerySpec, encode_query, make_query_spec, query_text, score_queries
from tuneforge.config import Config
from tuneforge.data.render import Encoded
from tuneforge.errors import UserError
from tuneforge.runs import write_json

CALIBRATION_FILE = "calibration.json"
PROBE_FILE = "probe.safetensors"


def check_both_classes(labels: list[bool], where: str) -> tuple[int, int]:
    right = sum(labels)
    wrong = len(labels) - right
    if not labels:
        raise UserError(f"{where}: no graded answers in the train split; give more questions")
    if right == 0 or wrong == 0:
        only = "correct" if wrong == 0 else "wrong"
        raise UserError(f"{where}: all {len(labels)} training answers are {only}, so there is nothing to tell apart; "
                        "calibration tuning needs both right and wrong answers: use questions of mixed "
                        "difficulty for this model (or more of them)")
    return right, wrong


def balance(encoded: list[Encoded], labels: list[bool], mode: str, seed: int) -> list[Encoded]:
    """Weight (inverse class frequency, mean weight 1) or upsample the rarer class to parity."""
    right = sum(labels)
    wrong = len(labels) - right
    if mode == "weight":
        w = {True: len(labels) / (2 * right), False: len(labels) / (2 * wrong)}
        for e, y in zip(encoded, labels):
            e.weight = w[y]
        return encoded
    if mode == "upsample":
        minority = [e for e, y in zip(encoded, labels) if y == (right < wrong)]
        extra = abs(right - wrong)
        rng = random.Random(seed)
        return encoded + [minority[rng.randrange(len(minority))] for _ in range(extra)]
    return encoded


def encode_items(items: list[Graded], tokenizer, spec: QuerySpec, max_length: int) -> tuple[list[Encoded], list[bool], int]:
    encoded, labels, dropped = [], [], 0
    for g in items:
        e = encode_query(tokenizer, g.question, g.answer, g.correct, spec, max_length)
        if e is None:
            dropped += 1
            continue
        encoded.append(e)
        labels.append(g.correct)
    return encoded, labels, dropped


def tune_stage(cfg: Config, run: Path, resume: bool = False) -> dict:
    from accelerate.utils import set_seed

    from tuneforge.data.render import setup_chat_template
    from tuneforge.models.load import load_model_and_tokenizer
    from tuneforge.recipes.calibration import load_run_graded, say
    from tuneforge.recipes.sft import prepare_model, save_artifact, train_method

    cal = cfg.calibration
    set_seed(cfg.seed)
    graded = load_run_graded(run)
    train_items = [g for g in graded if g.split == "train"]
    val_items = [g for g in graded if g.split == "val"]
    right, wrong = check_both_classes([g.correct for g in train_items], f"{run}/graded.jsonl")
    skew = right / len(train_items)
    say(f"graded train split: {right} correct / {wrong} wrong ({skew:.1%} correct); balance: {cal.balance}")

    model, tokenizer, model_path = load_model_and_tokenizer(cfg.model, cfg.train.dropout)
    setup_chat_template(tokenizer, cfg.data.chat_template, model_path)
    spec = make_query_spec(tokenizer, cal.query, cal.options)
    train, labels, dropped = encode_items(train_items, tokenizer, spec, cfg.data.max_length)
    val, _, val_dropped = encode_items(val_items, tokenizer, spec, cfg.data.max_length)
    if dropped + val_dropped:
        say(f"{dropped + val_dropped} queries longer than data.max_length {cfg.data.max_length} dropped")
    check_both_classes(labels, f"{run}/graded.jsonl (after dropping queries over data.max_length)")
    train = balance(train, labels, cal.balance, cfg.seed)

    accelerator, device, amp = prepare_model(model, cfg, train)

    probe_info = None
    if cal.probe:
        # The probe reads the untuned model, so fit it before the method changes anything.
        say("fitting the linear probe on the frozen model's hidden states...")
        texts = [query_text(tokenizer, g.question, g.answer, spec) for g in train_items]
        _, hidden = score_queries(model, tokenizer, texts, spec, cal.batch_size, amp, want_hidden=True)
        y = torch.tensor([g.correct for g in train_items])
        fit_probe(hidden, y, balanced=cal.balance != "none", seed=cfg.seed).save(run / PROBE_FILE)
        probe_info = PROBE_FILE

    say(f"tuning {cfg.method.name} on {len(train)} queries")
    started = time.time()
    model, result, trainable, _ = train_method(
        model, tokenizer, train, val, cfg, run, accelerator, amp, resume, log=say,
        loss_model_factory=lambda m: CalibrationLoss(m, spec.token_ids, cal.regularizer, cal.regularizer_weight))
    artifact = save_artifact(model, tokenizer, run, cfg.method.name)

    temperature = 1.0
    if cal.temperature_scaling and val_items:
        texts = [query_text(tokenizer, g.question, g.answer, spec) for g in val_items]
        margins, _ = score_queries(model, tokenizer, texts, spec, cal.batch_size, amp)
        if len({g.correct for g in val_items}) == 2:
            temperature = fit_temperature(margins, torch.tensor([g.correct for g in val_items]))
            say(f"temperature fitted on {len(val_items)} validation answers: T = {temperature:.3f}")
        else:
            say("temperature scaling skipped: the validation answers are all of one class")
    info = {
        "model": model_path, "method": cfg.method.name, "artifact": artifact.name, **spec.to_dict(),
        "temperature": round(temperature, 5), "probe": probe_info,
        "instruction_choice": cal.instruction_choice, "instruction_open": cal.instruction_open,
        "answer_max_new_tokens": cal.answer_max_new_tokens, "chat_template": cfg.data.chat_template,
        "train": {"queries": len(train_items), "correct": right, "wrong": wrong, "share_correct": round(skew, 4),
                  "balance": cal.balance, "dropped_too_long": dropped + val_dropped, "steps": result.steps,
                  "final_loss": round(result.train_loss, 4),
                  "best_val_loss": round(result.best_val_loss, 4) if result.best_val_loss is not None else None,
                  "regularizer": cal.regularizer, "regularizer_weight": cal.regularizer_weight,
                  "trainable_params": trainable, "seconds": round(time.time() - started, 1)},
    }
    write_json(run / CALIBRATION_FILE, info)
    return info
