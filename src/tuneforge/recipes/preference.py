"""Preference tuning (DPO): pairs -> encoded pairs -> the shared loop with the DPO loss -> artifact -> report.

The artifact is a normal adapter or model folder, so generate / eval / merge work on it. The report
shows how the model ranks chosen over rejected responses before and after training, on train and
validation pairs: the likelihood accuracy (log p(chosen) > log p(rejected)) and, after training, the
implicit DPO rewards beta * (log p_tuned - log p_reference). Before training the model is its own
reference, so its rewards are 0 and its reward accuracy 0 by definition.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tuneforge.config import Config, dump_config
from tuneforge.data.preference import encode_pairs, load_pair_splits
from tuneforge.data.render import setup_chat_template
from tuneforge.errors import UserError
from tuneforge.models.load import load_model_and_tokenizer
from tuneforge.models.methods import METHODS
from tuneforge.recipes.sft import artifact_summary, loop_summary, prepare_model, save_artifact, train_method
from tuneforge.report import plot_loss, write_report
from tuneforge.runs import check_run_dir, create_run_dir, write_json
from tuneforge.atomic import atomic_write_text
from tuneforge.train.dpo import DPOLoss, evaluate_pairs


def _say(msg: str) -> None:
    print(f"[tuneforge] {msg}", flush=True)


def check_preference_config(cfg: Config) -> None:
    method = METHODS[cfg.method.name]
    if method.virtual_tokens:
        raise UserError(f"method: {cfg.method.name} is not supported by recipe: preference (its virtual tokens "
                        "go in front of each sequence, which breaks the packed chosen/rejected pair); use lora, "
                        "dora, ia3, bottleneck, freeze or full")
    if cfg.preference.reference == "adapter_disabled" and not method.adapter:
        raise UserError(f"preference.reference: adapter_disabled needs an adapter method; method "
                        f"{cfg.method.name} has none: use reference: copy (or auto)")


def run_preference(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> Path:
    from accelerate.utils import set_seed

    started = time.time()
    check_preference_config(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_seed(cfg.seed)
    run = check_run_dir(cfg.output_dir, overwrite, resume)
    pref = cfg.preference

    model, tokenizer, model_path = load_model_and_tokenizer(cfg.model, cfg.train.dropout)
    setup_chat_template(tokenizer, cfg.data.chat_template, model_path)
    splits = load_pair_splits(cfg.data, cfg.seed)
    if splits.identical:
        _say(f"skipped {splits.identical} records whose chosen and rejected responses are identical "
             f"(e.g. {', '.join(splits.identical_where)})")
    if not splits.train:
        raise UserError(f"data.train: no usable preference pairs in {cfg.data.train} "
                        f"({splits.identical} skipped as identical)")
    train = encode_pairs(splits.train, tokenizer, cfg.data.max_length, pref.max_prompt_length)
    val = encode_pairs(splits.val, tokenizer, cfg.data.max_length, pref.max_prompt_length)
    _say(f"data: {len(train.encoded)} train / {len(val.encoded)} validation pairs, "
         f"{train.truncated + val.truncated} truncated (max_prompt_length {pref.max_prompt_length}, "
         f"max_length {cfg.data.max_length} per sequence)")

    create_run_dir(run, overwrite, resume)
    atomic_write_text(run / "config.yaml", dump_config(cfg))

    accelerator, device, amp = prepare_model(model, cfg, train.encoded)
    _say(f"model: {model_path} on {device}, compute {'bf16 autocast' if amp else 'fp32'}, method {cfg.method.name}")
    limit = cfg.eval.max_examples
    eval_sets = {"train": train.encoded[:limit], "val": val.encoded[:limit]}
    pad_id = tokenizer.pad_token_id

    before_path = run / "eval_before.json"
    before = {}
    if cfg.eval.before_after and cfg.eval.base and accelerator.is_main_process:
        if before_path.is_file():
            before = json.loads(before_path.read_text())
        else:
            _say("scoring the pairs with the starting model...")
            before = {name: evaluate_pairs(model, enc, cfg.train, pad_id, device, amp, beta=pref.beta)
                      for name, enc in eval_sets.items() if enc}
            write_json(before_path, before)

    made: dict[str, DPOLoss] = {}

    def dpo_factory(m):
        made["dpo"] = DPOLoss(m, pref.beta, pref.label_smoothing, pref.reference)
        return made["dpo"]

    model, result, trainable, total = train_method(model, tokenizer, train.encoded, val.encoded, cfg, run,
                                                   accelerator, amp, resume, loss_model_factory=dpo_factory)
    dpo = made["dpo"]

    summary = {
        "model": model_path, "method": cfg.method.name, "trainable_params": trainable, "total_params": total,
        "steps": result.steps, "beta": pref.beta, "label_smoothing": pref.label_smoothing,
        "reference": dpo.reference, "train_pairs": len(train.encoded), "val_pairs": len(val.encoded),
        "skipped_identical": splits.identical, "skipped_identical_where": splits.identical_where,
        "truncated_pairs": train.truncated + val.truncated,
        **loop_summary(result, device),
    }
    if accelerator.is_main_process:
        artifact = save_artifact(model, tokenizer, run, cfg.method.name)
        summary |= artifact_summary(artifact)
        if cfg.eval.before_after:
            _say("scoring the pairs with the tuned model...")
            summary["preference_eval"] = {
                name: {"before": before.get(name), "after": evaluate_pairs(model, enc, cfg.train, pad_id, device,
                                                                           amp, dpo=dpo)}
                for name, enc in eval_sets.items() if enc}
        summary["wall_time_s"] = round(time.time() - started, 1)
        plot_loss(run)
        _write_preference_report(run, summary)
    accelerator.wait_for_everyone()
    return run


ROWS = (("reward_accuracy", "reward accuracy (chosen reward > rejected)"),
        ("reward_margin", "mean reward margin"), ("chosen_reward", "mean chosen reward"),
        ("rejected_reward", "mean rejected reward"), ("loss", "DPO loss"),
        ("logp_accuracy", "likelihood accuracy (log p chosen > rejected)"),
        ("logp_margin", "mean log p margin (chosen - rejected)"))


def _write_preference_report(run: Path, summary: dict) -> None:
    """The shared report (report.json, the run facts) plus the preference section in report.md."""
    path = write_report(run, summary)
    lines = ["## Preference pairs", "",
             f"- **train_pairs**: {summary['train_pairs']}, **val_pairs**: {summary['val_pairs']}, "
             f"**truncated_pairs**: {summary['truncated_pairs']}",
             f"- **skipped_identical**: {summary['skipped_identical']}"
             + (f" (e.g. {', '.join(summary['skipped_identical_where'])})" if summary["skipped_identical"] else ""),
             f"- **beta**: {summary['beta']}, **label_smoothing**: {summary['label_smoothing']}, "
             f"**reference**: {summary['reference']}", "",
             "The loss is the DPO loss per pair. Rewards are beta * (log p tuned - log p reference); before "
             "training the model is its own reference, so its rewards are 0.", ""]
    for name, ev in summary.get("preference_eval", {}).items():
        b, a = ev["before"] or {}, ev["after"]
        lines += [f"### {name} pairs ({a['pairs']})", "", "| metric | before | after |", "|---|---|---|"]
        lines += [f"| {label} | {b.get(key, '-')} | {a[key]} |" for key, label in ROWS]
        lines.append("")
    text = path.read_text()
    marker = "![loss]"
    at = text.index(marker) if marker in text else len(text)
    atomic_write_text(path, text[:at] + "\n".join(lines) + "\n" + text[at:])
