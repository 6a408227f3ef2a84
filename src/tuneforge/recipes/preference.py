"""Preference tuning (DPO): pairs -> encoded pairs -> the shared loop with the DPO loss -> artifact -> report.

The artifact is a normal adapter or model folder, so generate / eval / merge work on it. The report
shows how the model ranks chosen over rejected responses before and after training, on train and
validation pairs: the likelihood accuracy (log p(chosen) > log p(rejected)) and, after training, the
implicit DPO rewards beta * (log p_tuned - log p_reference). Before training the model is its own
reference, so its rewards are 0 and its reward accuracy 0 by definition.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.atomic import atomic_write_text
from tuneforge.config import Config
from tuneforge.data.preference import encode_pairs, load_pair_splits
from tuneforge.errors import UserError
from tuneforge.models.methods import METHODS
from tuneforge.report import write_report
from tuneforge.run_dir import RunDir
from tuneforge.train.losses.dpo import DPOLoss, evaluate_pairs
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
        s.start()
        s.prepare(train.encoded)
        limit = cfg.eval.max_examples
        eval_sets = {"train": train.encoded[:limit], "val": val.encoded[:limit]}
        pad_id = s.tokenizer.pad_token_id

        before = {}
        if cfg.eval.before_after and cfg.eval.base:
            before = s.evaluate_once(lambda: {
                name: evaluate_pairs(s.model, enc, cfg.train, pad_id, s.device, s.amp, beta=pref.beta,
                                         kind=pref.loss, gamma=pref.gamma)
                for name, enc in eval_sets.items() if enc}, "scoring the pairs with the starting model...") or {}

        result = s.fit(train.encoded, val.encoded,
                       loss=lambda m: DPOLoss(m, pref.beta, pref.label_smoothing, pref.reference, pref.loss,
                                              pref.gamma))
        if s.is_main:
            s.save_artifact()
        summary = s.summary(result) | {
            "preference_loss": pref.loss, "beta": pref.beta, "gamma": pref.gamma if pref.loss == "simpo" else None,
            "label_smoothing": pref.label_smoothing, "reference": s.loss.reference,
            "train_pairs": len(train.encoded), "val_pairs": len(val.encoded),
            "skipped_identical": splits.identical, "skipped_identical_where": splits.identical_where,
            "truncated_pairs": train.truncated + val.truncated}
        if s.is_main and cfg.eval.before_after:
            s.log("scoring the pairs with the tuned model...")
            summary["preference_eval"] = {
                name: {"before": before.get(name),
                       "after": evaluate_pairs(s.model, enc, cfg.train, pad_id, s.device, s.amp, dpo=s.loss)}
                for name, enc in eval_sets.items() if enc}
        return s.finish(summary, write=_write_preference_report)

    def outputs(self, run: Path) -> dict[str, Path]:
        return {"report": RunDir(run).report_md}


ROWS = (("reward_accuracy", "reward accuracy (chosen reward > rejected)"),
        ("reward_margin", "mean reward margin"), ("chosen_reward", "mean chosen reward"),
        ("rejected_reward", "mean rejected reward"), ("loss", "loss"),
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
             f"- **loss**: {summary.get('preference_loss', 'sigmoid')}, **beta**: {summary['beta']}, "
             f"**label_smoothing**: {summary['label_smoothing']}, **reference**: {summary['reference']}", "",
             ("The loss is the preference loss per pair. Rewards are beta * the mean log p per response token "
              "(no reference model)." if summary.get("preference_loss") in ("simpo", "orpo") else
              "The loss is the preference loss per pair. Rewards are beta * (log p tuned - log p reference); "
              "before training the model is its own reference, so its rewards are 0."), ""]
    for name, ev in summary.get("preference_eval", {}).items():
        b, a = ev["before"] or {}, ev["after"]
        lines += [f"### {name} pairs ({a['pairs']})", "", "| metric | before | after |", "|---|---|---|"]
        lines += [f"| {label} | {b.get(key, '-')} | {a[key]} |" for key, label in ROWS]
        lines.append("")
    text = path.read_text()
    marker = "![loss]"
    at = text.index(marker) if marker in text else len(text)
    atomic_write_text(path, text[:at] + "\n".join(lines) + "\n" + text[at:])
