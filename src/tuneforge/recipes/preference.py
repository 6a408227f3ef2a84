"""Preference tuning: pairs (DPO, IPO, SimPO, ORPO) or labelled completions (KTO) -> encoded -> the shared
loop with the preference loss -> artifact -> report.

The artifact is a normal adapter or model folder, so generate / eval / merge work on it. The report
shows how the model ranks chosen over rejected responses before and after training, on train and
validation pairs: the likelihood accuracy (log p(chosen) > log p(rejected)) and, after training, the
implicit DPO rewards beta * (log p_tuned - log p_reference). Before training the model is its own
reference, so its rewards are 0 and its reward accuracy 0 by definition.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import Config
from tuneforge.data.kto import encode_rated, load_rated_splits
from tuneforge.data.preference import encode_pairs, load_pair_splits
from tuneforge.errors import UserError
from tuneforge.models.methods import METHODS
from tuneforge.report import insert_section, write_report
from tuneforge.run_dir import RunDir
from tuneforge.train.losses.dpo import DPOLoss, evaluate_pairs
from tuneforge.train.losses.kto import KTOLoss, evaluate_rated
from tuneforge.recipes.base import RecipeBase
from tuneforge.train.session import Session


class Preference(RecipeBase):
    name = "preference"
    def check(self, cfg: Config) -> None:
        if cfg.preference.reference == "adapter_disabled" and not METHODS[cfg.method.name].adapter:
            raise UserError(f"preference.reference: adapter_disabled needs an adapter method; method "
                            f"{cfg.method.name} has none: use reference: copy (or auto)")

    def run(self, s: Session) -> Path:
        cfg, pref = s.cfg, s.cfg.preference
        s.load_model()
        data = _kto_data(s) if pref.loss == "kto" else _pair_data(s)
        s.start()
        s.prepare(data["train"])
        limit = cfg.eval.max_examples
        eval_sets = {"train": data["train"][:limit], "val": data["val"][:limit]}
        pad_id = s.tokenizer.pad_token_id
        score = evaluate_rated if pref.loss == "kto" else evaluate_pairs

        before = {}
        if cfg.eval.before_after and cfg.eval.base:
            extra = {} if pref.loss == "kto" else {"kind": pref.loss, "gamma": pref.gamma}
            before = s.evaluate_once(lambda: {
                name: score(s.model, enc, cfg.train, pad_id, s.device, s.amp, beta=pref.beta, **extra)
                for name, enc in eval_sets.items() if enc}, "scoring with the starting model...") or {}

        result = s.fit(data["train"], data["val"], loss=data["loss"])
        if s.is_main:
            s.save_artifact()
        summary = s.summary(result) | data["summary"] | {
            "preference_loss": pref.loss, "beta": pref.beta, "gamma": pref.gamma if pref.loss == "simpo" else None,
            "label_smoothing": pref.label_smoothing, "reference": s.loss.reference}
        if s.is_main and cfg.eval.before_after:
            s.log("scoring with the tuned model...")
            tuned = {"kto": s.loss} if pref.loss == "kto" else {"dpo": s.loss}
            summary["preference_eval"] = {
                name: {"before": before.get(name),
                       "after": score(s.model, enc, cfg.train, pad_id, s.device, s.amp, **tuned)}
                for name, enc in eval_sets.items() if enc}
        return s.finish(summary, write=_write_preference_report)

    def outputs(self, run: Path) -> dict[str, Path]:
        return {"report": RunDir(run).report_md}


def _pair_data(s: Session) -> dict:
    """Preference pairs for DPO, IPO, SimPO, ORPO."""
    cfg, pref = s.cfg, s.cfg.preference
    splits = load_pair_splits(cfg.data, cfg.seed)
    if splits.identical:
        s.log(f"skipped {splits.identical} records whose chosen and rejected responses are identical "
              f"(e.g. {', '.join(splits.identical_where)})")
    if not splits.train:
        raise UserError(f"data.train: no usable preference pairs in {cfg.data.train} "
                        f"({splits.identical} skipped as identical)")
    train = encode_pairs(splits.train, s.tokenizer, cfg.data.max_length, pref.max_prompt_length)
    val = encode_pairs(splits.val, s.tokenizer, cfg.data.max_length, pref.max_prompt_length)
    s.log(f"data: {len(train.encoded)} train / {len(val.encoded)} validation pairs, "
          f"{train.truncated + val.truncated} truncated (max_prompt_length {pref.max_prompt_length}, "
          f"max_length {cfg.data.max_length} per sequence)")
    return {"train": train.encoded, "val": val.encoded,
            "loss": lambda m: DPOLoss(m, pref.beta, pref.label_smoothing, pref.reference, pref.loss, pref.gamma),
            "summary": {"train_pairs": len(train.encoded), "val_pairs": len(val.encoded),
                        "skipped_identical": splits.identical, "skipped_identical_where": splits.identical_where,
                        "truncated_pairs": train.truncated + val.truncated}}


def _kto_data(s: Session) -> dict:
    """Labelled completions for KTO, each with a mismatched completion for the KL estimate."""
    cfg, pref = s.cfg, s.cfg.preference
    train_items, val_items = load_rated_splits(cfg.data, cfg.seed)
    train = encode_rated(train_items, s.tokenizer, cfg.data.max_length, pref.max_prompt_length, cfg.seed)
    val = encode_rated(val_items, s.tokenizer, cfg.data.max_length, pref.max_prompt_length, cfg.seed + 1)
    s.log(f"data: {len(train.encoded)} train completions ({train.desirable} desirable, {train.undesirable} "
          f"undesirable) / {len(val.encoded)} validation, {train.truncated + val.truncated} truncated")
    return {"train": train.encoded, "val": val.encoded,
            "loss": lambda m: KTOLoss(m, pref.beta, pref.reference, pref.desirable_weight, pref.undesirable_weight),
            "summary": {"train_completions": len(train.encoded), "val_completions": len(val.encoded),
                        "desirable": train.desirable, "undesirable": train.undesirable,
                        "truncated_completions": train.truncated + val.truncated}}


KTO_ROWS = (("reward_accuracy", "reward on the label's side of the KL reference point"),
            ("reward_margin", "mean reward margin (desirable - undesirable)"),
            ("desirable_reward", "mean desirable reward"), ("undesirable_reward", "mean undesirable reward"),
            ("kl", "KL estimate z0"), ("loss", "loss"))

ROWS = (("reward_accuracy", "reward accuracy (chosen reward > rejected)"),
        ("reward_margin", "mean reward margin"), ("chosen_reward", "mean chosen reward"),
        ("rejected_reward", "mean rejected reward"), ("loss", "loss"),
        ("logp_accuracy", "likelihood accuracy (log p chosen > rejected)"),
        ("logp_margin", "mean log p margin (chosen - rejected)"))


def _write_preference_report(run: Path, summary: dict) -> None:
    """The shared report (report.json, the run facts) plus the preference section in report.md."""
    path = write_report(run, summary)
    kto = summary.get("preference_loss") == "kto"
    if kto:
        lines = ["## Labelled completions (KTO)", "",
                 f"- **train_completions**: {summary['train_completions']} ({summary['desirable']} desirable, "
                 f"{summary['undesirable']} undesirable), **val_completions**: {summary['val_completions']}, "
                 f"**truncated**: {summary['truncated_completions']}"]
    else:
        lines = ["## Preference pairs", "",
                 f"- **train_pairs**: {summary['train_pairs']}, **val_pairs**: {summary['val_pairs']}, "
                 f"**truncated_pairs**: {summary['truncated_pairs']}",
                 f"- **skipped_identical**: {summary['skipped_identical']}"
                 + (f" (e.g. {', '.join(summary['skipped_identical_where'])})" if summary["skipped_identical"] else "")]
    free = summary.get("preference_loss") in ("simpo", "orpo")
    lines += [f"- **loss**: {summary.get('preference_loss', 'sigmoid')}, **beta**: {summary['beta']}, "
              f"**label_smoothing**: {summary['label_smoothing']}, **reference**: {summary['reference']}", "",
              "Rewards are beta * the mean log p per response token (no reference model)." if free else
              "Rewards are beta * (log p tuned - log p reference); before training the model is its own "
              "reference, so its rewards are 0.", ""]
    for name, ev in summary.get("preference_eval", {}).items():
        b, a = ev["before"] or {}, ev["after"]
        count = f"{a['completions']} completions" if kto else f"{a['pairs']} pairs"
        lines += [f"### {name} ({count})", "", "| metric | before | after |", "|---|---|---|"]
        lines += [f"| {label} | {b.get(key, '-')} | {a[key]} |" for key, label in (KTO_ROWS if kto else ROWS)]
        lines.append("")
    insert_section(path, lines)
