"""Instruction fine-tuning: examples -> target cross-entropy on the answers -> before/after on held-out data."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import Config
from tuneforge.data.dataset import account_for, encode_split, load_splits
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir
from tuneforge.eval.before_after import generative_examples, loss_summary, score_generations
from tuneforge.train.losses.target import TargetLoss
from tuneforge.train.loop import validation_loss
from tuneforge.recipes.base import RecipeBase
from tuneforge.train.session import Session


class SFT(RecipeBase):
    name = "sft"
    def run(self, s: Session) -> Path:
        cfg = s.cfg
        s.load_model()
        splits = load_splits(cfg.data, cfg.seed)
        train = encode_split(splits.train, s.tokenizer, cfg.data)
        val = encode_split(splits.val, s.tokenizer, cfg.data)
        account = account_for(splits, train, val)
        if not train.encoded:
            raise UserError(f"data.train: no usable examples in {cfg.data.train} ({account.line()}); "
                            "raise data.max_length or check the data")
        s.log(f"data: {account.line()} (max_length {cfg.data.max_length}, truncation {cfg.data.truncation})")
        for line in account.source_lines():
            s.log(line)
        account.check(cfg.data.max_lost)
        s.start()
        s.prepare(train.encoded)

        def evaluate() -> dict:
            return evaluate_held_out(s, val.examples, val.encoded)

        before = None
        if cfg.eval.before_after and cfg.eval.base:
            before = s.evaluate_once(evaluate, f"evaluating the base model on held-out examples "
                                               f"({cfg.eval.metric})...")
        result = s.fit(train.encoded, val.encoded)
        if s.is_main:
            s.save_artifact()
        summary = s.summary(result) | {
            "train_examples": len(train.encoded), "val_examples": len(val.encoded),
            "truncated_examples": train.truncated + val.truncated, "dropped_examples": account.lost,
            "data": account.as_dict()}
        if s.is_main and cfg.eval.before_after:
            s.log("evaluating the tuned model...")
            after = evaluate()
            if after:
                summary["evaluation"] = before_after(cfg, before, after, val.examples)
        return s.finish(summary)

    def outputs(self, run: Path) -> dict[str, Path]:
        files = RunDir(run)
        return {"artifact": files.artifact(), "report": files.report_md, "loss plot": files.loss_plot}


def evaluate_held_out(s: Session, examples, encoded) -> dict:
    """The eval.metric on held-out data: validation loss, or generation scored against references."""
    cfg = s.cfg
    if cfg.eval.metric == "loss":
        if not encoded:
            return {}
        return loss_summary(validation_loss(TargetLoss(s.model), encoded, cfg.train, s.tokenizer.pad_token_id,
                                            s.device, s.amp))
    chosen = generative_examples(examples, cfg.eval.max_examples)
    if not chosen:
        return {}
    # bf16 autocast re-casts every weight at every decode step: on CPU that makes generation ~3x
    # slower (bench/bench_generate.py), so generation stays in the weights' dtype there.
    bf16 = s.amp is not None and s.device.type == "cuda"
    return score_generations(s.model, s.tokenizer, chosen, cfg.eval, bf16=bf16) | {"n": len(chosen)}


def before_after(cfg: Config, before: dict | None, after: dict, val_examples) -> dict:
    ev = {"metric": cfg.eval.metric, "before": before["score"] if before else None, "after": after["score"],
          "examples": after.get("n", len(val_examples))}
    if before and "predictions" in before:
        examples = generative_examples(val_examples, cfg.eval.max_examples)
        ev["samples"] = [
            {"prompt": e.prompt_segments()[-1].text, "reference": e.reference, "base": b, "tuned": a}
            for e, b, a in list(zip(examples, before["predictions"], after["predictions"]))[:5]
        ]
    return ev
