"""Training budgets the α-UMi way: stages in epochs, a warmup that a short stage cannot round away, and
each trained model ending on its best validation weights."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_config
from tuneforge.config import StageTrain, TrainConfig, load_config
from tuneforge.data.dataset import encode_split, load_splits
from tuneforge.data.pack import plan_micro_batches
from tuneforge.recipes.agent import stage_config
from tuneforge.train import loop as loop_module
from tuneforge.train.loop import make_optimizer, make_scheduler
from tuneforge.train.session import Session


def test_a_short_stage_keeps_its_warmup():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    for steps in (2, 4, 10):
        cfg = TrainConfig(lr=1e-3, warmup_ratio=0.05, schedule="linear")
        sched = make_scheduler(make_optimizer([param], cfg, torch.device("cpu")), cfg, steps)
        assert sched.get_last_lr()[0] < cfg.lr, steps  # int(0.05 * steps) would be 0: no warmup at all
    cfg = TrainConfig(lr=1e-3, warmup_ratio=0.0, schedule="constant")
    sched = make_scheduler(make_optimizer([param], cfg, torch.device("cpu")), cfg, 4)
    assert sched.get_last_lr()[0] == cfg.lr  # none asked, none given


def _session(tmp_path, tiny_llama, dates_data, **train):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run",
                                   data={"val_ratio": 0.2, "max_examples": 40}, method={"name": "lora", "r": 4},
                                   train={"batch_tokens": 512, **train}, eval={"before_after": False}), [])
    return cfg


def _prepared(cfg):
    """A Session ready to fit, with the config's train and validation examples."""
    s = Session(cfg)
    s.load_model()
    splits = load_splits(cfg.data, cfg.seed)
    train = encode_split(splits.train, s.tokenizer, cfg.data).encoded
    val = encode_split(splits.val, s.tokenizer, cfg.data).encoded
    s.start()
    s.prepare(train)
    return s, train, val


def test_a_stage_in_epochs_runs_that_many_passes(tmp_path, tiny_llama, dates_data):
    cfg = _session(tmp_path, tiny_llama, dates_data)
    staged = stage_config(cfg, StageTrain(epochs=2))
    assert staged.train.max_steps is None and staged.train.epochs == 2
    s, train, val = _prepared(staged)
    lengths = [len(e.ids) for e in train]
    per_epoch = len(plan_micro_batches(lengths, staged.train.batch_tokens, max(lengths), True, seed=staged.seed))
    result = s.fit(train, val)
    assert result.steps == math.ceil(2 * max(1, per_epoch // staged.train.grad_accum))


def test_keep_best_ends_on_the_best_validation_weights(tmp_path, tiny_llama, dates_data, monkeypatch):
    cfg = _session(tmp_path, tiny_llama, dates_data, max_steps=4, eval_every=1, keep_best=True, save_every=1,
                   keep_last=10, lr=1e-2, warmup_ratio=0)
    losses = iter([1.0, 0.5, 0.9, 0.8])  # the best validation loss is at step 2
    monkeypatch.setattr(loop_module, "validation_loss", lambda *a, **k: next(losses))
    s, train, val = _prepared(cfg)
    result = s.fit(train, val)
    assert result.steps == 4 and result.best_step == 2 and result.best_val_loss == pytest.approx(0.5)
    best = load_file(str(tmp_path / "run" / "checkpoints" / "step-0000002" / "trainable.safetensors"))
    last = load_file(str(tmp_path / "run" / "checkpoints" / "step-0000004" / "trainable.safetensors"))
    now = {n: p.detach() for n, p in s.model.named_parameters() if p.requires_grad}
    assert best.keys() == now.keys()
    for name, value in best.items():
        torch.testing.assert_close(now[name], value, rtol=0, atol=0)
    assert any(not torch.equal(last[n], best[n]) for n in best)  # training did move on after step 2


def test_keep_best_needs_evaluations(tmp_path, tiny_llama, dates_data):
    from tuneforge.errors import UserError

    with pytest.raises(UserError, match="keep_best needs train.eval_every"):
        _session(tmp_path, tiny_llama, dates_data, keep_best=True)


def test_pack_length_caps_the_rows_the_loop_plans(tmp_path, tiny_llama, dates_data, monkeypatch):
    asked = []

    def planning(lengths, batch_tokens, row_length, packing, seed):
        asked.append((max(lengths), row_length))
        return plan_micro_batches(lengths, batch_tokens, row_length, packing, seed)

    monkeypatch.setattr(loop_module, "plan_micro_batches", planning)
    s, train, val = _prepared(_session(tmp_path, tiny_llama, dates_data, max_steps=1, pack_length=16))
    s.fit(train, val)
    longest = max(len(e.ids) for e in train)
    assert longest > 16 and asked and all(row == 16 for _, row in asked)


def test_a_stage_stops_early_on_the_best_weights_a_full_run_would_keep(tmp_path, tiny_llama, dates_data,
                                                                       monkeypatch):
    """Patience ends a stage once validation stops improving; up to the stop it trains as the full stage
    (same schedule, same batches), so on a curve that never improves again it keeps bit for bit the
    weights the full stage keeps, in fewer steps."""
    cfg = _session(tmp_path, tiny_llama, dates_data, max_steps=6, eval_every=1, lr=1e-2, warmup_ratio=0)
    curve = [1.0, 0.5, 0.9, 0.8, 0.7, 0.6]  # best at step 2, never beaten afterwards

    def fit(stage: StageTrain, run_dir):
        staged = stage_config(cfg, stage).model_copy(update={"output_dir": str(run_dir)})
        losses = iter(curve)
        monkeypatch.setattr(loop_module, "validation_loss", lambda *a, **k: next(losses))
        s, train, val = _prepared(staged)
        result = s.fit(train, val)
        return result, {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}

    full, full_weights = fit(StageTrain(keep_best=True), tmp_path / "full")
    early, early_weights = fit(StageTrain(keep_best=True, early_stopping_patience=2), tmp_path / "early")
    assert full.steps == 6 and not full.stopped_early and full.best_step == 2
    assert early.steps == 4 and early.stopped_early and early.best_step == 2
    assert early.tokens < full.tokens
    assert early_weights.keys() == full_weights.keys()
    for name, value in full_weights.items():
        torch.testing.assert_close(early_weights[name], value, rtol=0, atol=0)


def test_stage_patience_needs_evaluations(tmp_path, tiny_llama, dates_data):
    from tuneforge.errors import UserError

    with pytest.raises(UserError, match="agent.local_stage.early_stopping_patience needs eval_every"):
        load_config(write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run",
                                 recipe="agent", agent={"local_stage": {"early_stopping_patience": 2}}), [])


def test_the_report_says_what_an_early_stopped_stage_was_offered_and_kept():
    from tuneforge.agent.report import training_sizes

    layout = {"tokens": {"global": 1000, "local": 4000, "trained on": 1500},
              "steps": {"global": 10, "local": 30, "trained on": 12}, "best_step": {"trained on": 6},
              "offered_steps": {"trained on": 40}}
    assert training_sizes(layout) == (
        "global 1,000 tokens, local 4,000 tokens, trained on 1,500 tokens (offered 40 steps, stopped early at "
        "step 12: no better validation loss after step 6, whose weights it keeps)")
