"""Instruction fine-tuning: examples -> target cross-entropy on the answers -> before/after on held-out data."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import Config
from tuneforge.data.account import DataAccount
from tuneforge.data.dataset import EncodedSplit, account_for, encode_split, load_splits
from tuneforge.data.stream import STREAM_WINDOW, TokenStream, check_streaming
from tuneforge.data.token_cache import PreparedData, prepare as prepare_data
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir
from tuneforge.eval.before_after import compare, generative_examples, loss_summary, score_generations
from tuneforge.train.losses.target import TargetLoss
from tuneforge.train.loop import validation_loss
from tuneforge.recipes.base import RecipeBase
from tuneforge.train.session import Session


class SFT(RecipeBase):
    name = "sft"
    def run(self, s: Session) -> Path:
        cfg = s.cfg
        if cfg.data.streaming:
            check_streaming(cfg)
        s.load_model()
        data = sft_data(s)
        s.start()
        s.prepare(data.train)

        def evaluate(limit: int | None = None) -> dict:
            return evaluate_held_out(s, data.val_examples, data.val, limit)

        before = None
        if cfg.eval.before_after and cfg.eval.base:
            before = s.evaluate_once(evaluate, f"evaluating the base model on held-out examples "
                                               f"({cfg.eval.metric})...")
        result = s.fit(data.train, data.val)
        if s.is_main:
            s.save_artifact()
        account = data.account
        if cfg.data.streaming:  # the records the stream read (its first pass, or as far as the run got) + validation
            account = data.train.account.plus(data.account)
            s.log(f"data: {account.line()} (streamed{'' if data.train.first_pass_done else ', part of the file'})")
        summary = s.summary(result) | {
            "train_examples": account.train, "val_examples": len(data.val),
            "truncated_examples": account.truncated, "dropped_examples": account.lost, "data": account.as_dict()}
        if s.is_main and cfg.eval.before_after:
            s.log("evaluating the tuned model...")
            after = evaluate(before.get("n") if before else None)  # the items the base was scored on
            if after:
                summary["evaluation"] = before_after(cfg, before, after, data.val_examples)
        return s.finish(summary)

    def outputs(self, run: Path) -> dict[str, Path]:
        files = RunDir(run)
        return {"artifact": files.artifact(), "report": files.report_md, "loss plot": files.loss_plot}


def sft_data(s: Session) -> PreparedData:
    """The encoded data (the cache, or a stream with its validation file), logged with its account."""
    cfg = s.cfg
    if cfg.data.streaming:
        data = streamed_data(cfg, s.tokenizer)
        s.log(f"data: streaming {cfg.data.train} in windows of {STREAM_WINDOW} records, shuffled within each "
              f"(max_length {cfg.data.max_length}, truncation {cfg.data.truncation}); "
              + (f"validation {cfg.data.validation}: {data.account.line()}" if cfg.data.validation else
                 "no validation set (give data.validation: a hold-out needs the whole file)"))
        return data
    data = prepare_data(cfg.data, cfg.seed, s.tokenizer)
    if data.cache:
        s.log(f"data: {data.cache}")
    if not data.train:
        raise UserError(f"data.train: no usable examples in {cfg.data.train} ({data.account.line()}); "
                        "raise data.max_length or check the data")
    s.log(f"data: {data.account.line()} (max_length {cfg.data.max_length}, truncation {cfg.data.truncation})")
    for line in data.account.source_lines():
        s.log(line)
    data.account.check(cfg.data.max_lost)
    return data


def streamed_data(cfg: Config, tokenizer) -> PreparedData:
    """The training stream, and the validation file (if any) encoded whole, in memory: its account is
    the validation's (the stream keeps its own)."""
    stream = TokenStream(cfg.data, tokenizer, cfg.seed, cfg.train.batch_tokens, cfg.train.pack_length,
                         cfg.train.packing)
    if not cfg.data.validation:
        return PreparedData(stream, [], [], DataAccount())
    own = cfg.data.model_copy(update={"train": cfg.data.validation, "validation": None, "val_ratio": 0})
    splits = load_splits(own, cfg.seed)
    val = encode_split(splits.train, tokenizer, own)
    account = account_for(splits, val, EncodedSplit())
    account.validation, account.train = account.train, 0
    return PreparedData(stream, val.encoded, val.examples, account)


def evaluate_held_out(s: Session, examples, encoded, limit: int | None = None) -> dict:
    """The eval.metric on held-out data: validation loss, or generation scored against references.
    `limit`: score the first `limit` examples (those an earlier evaluation scored), with no time budget."""
    cfg = s.cfg
    if cfg.eval.metric == "loss":
        if not encoded:
            return {}
        return loss_summary(validation_loss(TargetLoss(s.model), encoded, cfg.train, s.tokenizer.pad_token_id,
                                            s.device, s.amp))
    chosen = generative_examples(examples, cfg.eval.max_examples)
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        return {}
    # bf16 autocast re-casts every weight at every decode step: on CPU that makes generation ~3x
    # slower (bench/bench_generate.py), so generation stays in the weights' dtype there.
    bf16 = s.amp is not None and s.device.type == "cuda"
    budget = cfg.eval.time_budget_s if limit is None else None
    return score_generations(s.model, s.tokenizer, chosen, cfg.eval, bf16=bf16, time_budget_s=budget, log=s.log)


def before_after(cfg: Config, before: dict | None, after: dict, val_examples) -> dict:
    ev = {"metric": cfg.eval.metric, "before": before["score"] if before else None, "after": after["score"],
          "examples": after.get("n", len(val_examples))}
    if before and "predictions" in before:
        examples = generative_examples(val_examples, cfg.eval.max_examples)[:len(after["predictions"])]
        if len(before["predictions"]) == len(after["predictions"]):
            ev |= compare(cfg.eval.metric, before["predictions"], after["predictions"],
                          [e.reference for e in examples])
        ev["samples"] = [
            {"prompt": e.prompt_segments()[-1].text, "reference": e.reference, "base": b, "tuned": a}
            for e, b, a in list(zip(examples, before["predictions"], after["predictions"]))[:5]
        ]
    return ev
