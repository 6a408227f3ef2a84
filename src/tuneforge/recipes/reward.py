"""Reward modelling: preference pairs -> a Bradley-Terry score head on the base (LoRA or full) through
the shared loop -> pairwise accuracy on held-out pairs before and after -> `RUN/reward_model/`, a
folder `AutoModelForSequenceClassification.from_pretrained` loads as it is (`tuneforge score` reads it).

Data and encoding are the preference recipe's (prompt / chosen / rejected records, `preference.max_prompt_length`).
Before training the head is freshly initialised, so "before" is the untrained reward model: about
chance, which is the baseline a reward model has to beat.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.data.preference import encode_pairs, load_pair_splits
from tuneforge.errors import UserError
from tuneforge.models.reward_head import attach_score_head, save_reward_model, sequence_classification_class
from tuneforge.recipes.base import RecipeBase
from tuneforge.report import insert_section, write_report
from tuneforge.run_dir import RunDir
from tuneforge.train.losses.reward import RewardLoss, evaluate_reward_pairs
from tuneforge.train.session import Session

REWARD_MODEL = "reward_model"


class Reward(RecipeBase):
    name = "reward"

    def run(self, s: Session) -> Path:
        cfg = s.cfg
        s.load_model()
        sequence_classification_class(s.model.config)  # refuse an architecture without one before any work
        attach_score_head(s.model)
        splits = load_pair_splits(cfg.data, cfg.seed)
        if not splits.train:
            raise UserError(f"data.train: no usable preference pairs in {cfg.data.train} "
                            f"({splits.identical} skipped as identical)")
        train = encode_pairs(splits.train, s.tokenizer, cfg.data.max_length, cfg.preference.max_prompt_length)
        val = encode_pairs(splits.val, s.tokenizer, cfg.data.max_length, cfg.preference.max_prompt_length)
        s.log(f"data: {len(train.encoded)} train / {len(val.encoded)} validation pairs, "
              f"{train.truncated + val.truncated} truncated, {splits.identical} skipped as identical")
        s.start()
        s.prepare(train.encoded)
        limit = cfg.eval.max_examples
        eval_sets = {"train": train.encoded[:limit], "val": val.encoded[:limit]}
        pad_id = s.tokenizer.pad_token_id

        def score_all() -> dict:
            return {name: evaluate_reward_pairs(s.model, enc, cfg.train, pad_id, s.device, s.amp)
                    for name, enc in eval_sets.items() if enc}

        before = {}
        if cfg.eval.before_after and cfg.eval.base:
            before = s.evaluate_once(score_all, "scoring pairs with the untrained reward head...") or {}
        result = s.fit(train.encoded, val.encoded, loss=lambda m: RewardLoss(m, pad_id))
        summary = s.summary(result) | {
            "train_pairs": len(train.encoded), "val_pairs": len(val.encoded),
            "truncated_pairs": train.truncated + val.truncated, "skipped_identical": splits.identical}
        if s.is_main:
            folder = save_reward_model(s.model, s.tokenizer, s.run / REWARD_MODEL)
            summary |= {"reward_model": str(folder)}
            if cfg.eval.before_after:
                s.log("scoring pairs with the trained reward model...")
                after = score_all()
                summary["reward_eval"] = {name: {"before": before.get(name), "after": after[name]} for name in after}
        return s.finish(summary, write=_write_reward_report)

    def outputs(self, run: Path) -> dict[str, Path]:
        return {"reward model": run / REWARD_MODEL, "report": RunDir(run).report_md}


ROWS = (("accuracy", "pairwise accuracy (chosen scored higher)"), ("margin", "mean margin (chosen - rejected)"),
        ("chosen_reward", "mean chosen reward"), ("rejected_reward", "mean rejected reward"), ("loss", "loss"))


def _write_reward_report(run: Path, summary: dict) -> None:
    path = write_report(run, summary)
    lines = ["## Reward model (Bradley-Terry)", "",
             f"- **train_pairs**: {summary['train_pairs']}, **val_pairs**: {summary['val_pairs']}, "
             f"**truncated_pairs**: {summary['truncated_pairs']}, **skipped_identical**: {summary['skipped_identical']}",
             f"- saved as `{REWARD_MODEL}/` (`AutoModelForSequenceClassification`); score rows with "
             f"`tuneforge score {run} FILE`", "",
             "Before training the score head is freshly initialised: accuracy near 0.5 is the untrained baseline.", ""]
    for name, ev in summary.get("reward_eval", {}).items():
        b, a = ev["before"] or {}, ev["after"]
        lines += [f"### {name} ({a['pairs']} pairs)", "", "| metric | before | after |", "|---|---|---|"]
        lines += [f"| {label} | {b.get(key, '-')} | {a[key]} |" for key, label in ROWS]
        lines.append("")
    insert_section(path, lines)
