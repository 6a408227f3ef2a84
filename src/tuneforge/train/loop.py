"""THE training loop. Every recipe hands it encoded examples; it does the rest.

Read top to bottom: plan the batches, build optimizer and schedule, maybe resume, then for each
optimizer step run `grad_accum` packed micro-batches, weighting every micro-batch's loss by the
number of target tokens of the whole step (so accumulation equals one big batch), clip, step,
log, evaluate, checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from tuneforge.config import TrainConfig
from tuneforge.data.pack import collate, plan_micro_batches
from tuneforge.data.render import Encoded
from tuneforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tuneforge.train.forward import TargetLoss
from tuneforge.train.precision import autocast


@dataclass
class LoopResult:
    steps: int
    train_loss: float
    best_val_loss: float | None
    stopped_early: bool
    seconds: float = 0.0  # wall time of the optimizer steps run in this process (no eval, no checkpoints)
    tokens: int = 0  # non-padding tokens of those steps


def _param_groups(model, weight_decay: float):
    # No decay on biases and norm weights (1-D tensors): the usual AdamW practice.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, cfg: TrainConfig, device: torch.device):
    groups = _param_groups(model, cfg.weight_decay)
    # The fused kernel exists for CPU and CUDA in recent torch; it is bit-for-bit a normal AdamW step.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type in ("cpu", "cuda"))


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    warmup = int(cfg.warmup_ratio * total_steps)
    if cfg.schedule == "cosine" and cfg.min_lr_ratio > 0:
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup,
                             num_training_steps=total_steps, scheduler_specific_kwargs={"min_lr_rate": cfg.min_lr_ratio})
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # compiled blocks would recompile for inference mode
def validation_loss(loss_model: TargetLoss, encoded: list[Encoded], cfg: TrainConfig, pad_id: int,
                    device, amp_dtype, extra_fields: tuple[str, ...] = ()) -> float:
    was_training = loss_model.training
    loss_model.eval()
    lengths = [len(e.ids) for e in encoded]
    total, targets = 0.0, 0
    for rows in plan_micro_batches(lengths, cfg.batch_tokens, max(lengths), cfg.packing, seed=0):
        batch = {k: v.to(device) for k, v in collate(rows, encoded, pad_id, extra_fields).items()}
        with autocast(device, amp_dtype):
            total += float(loss_model(**batch))
        targets += int(batch["target_mask"].sum())
    loss_model.train(was_training)
    return total / max(targets, 1)


def train_loop(model, train: list[Encoded], val: list[Encoded], cfg: TrainConfig, *, run_dir: Path, seed: int,
               pad_id: int, accelerator, amp_dtype, resume: bool = False, log=print,
               loss_model: torch.nn.Module | None = None) -> LoopResult:
    """`loss_model` (default: TargetLoss) maps a collated batch to a summed loss over its targets; it may
    ask for more batch fields with an `extra_fields` attribute (see data.pack.collate)."""
    device = accelerator.device
    row_length = max(len(e.ids) for e in train)
    lengths = [len(e.ids) for e in train]
    world, rank = accelerator.num_processes, accelerator.process_index

    def epoch_plan(epoch: int) -> list[list[list[int]]]:
        return plan_micro_batches(lengths, cfg.batch_tokens, row_length, cfg.packing, seed=seed + epoch)

    micro_per_step = cfg.grad_accum * world
    plan, plan_epoch = epoch_plan(0), 0  # planned once here; later epochs are planned as they start
    steps_per_epoch = max(1, len(plan) // micro_per_step)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    loss_model = loss_model if loss_model is not None else TargetLoss(model)
    extra_fields = tuple(getattr(loss_model, "extra_fields", ()))
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    loss_model, optimizer = accelerator.prepare(loss_model, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]

    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    progress = {"step": 0, "epoch": 0, "micro_index": 0, "best_val_loss": None, "bad_evals": 0, "tokens": 0}
    if resume and (ckpt := latest_checkpoint(ckpt_root)):
        progress = load_checkpoint(ckpt, model, optimizer, scheduler)
        log(f"resumed from {ckpt.name} (step {progress['step']}/{total_steps})")
        _truncate_metrics(metrics_path, progress["step"])
    best_state = None

    def checkpoint():
        if accelerator.is_main_process:
            save_checkpoint(ckpt_root, progress["step"], {n: p for n, p in model.named_parameters() if p.requires_grad},
                            optimizer, scheduler, progress, cfg.keep_last)
        accelerator.wait_for_everyone()

    def record(entry: dict):
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    loss_model.train()
    bar = tqdm(total=total_steps, initial=progress["step"], desc="train", unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    recent_losses: list[float] = []
    stopped_early = False
    train_seconds, train_tokens = 0.0, 0
    while progress["step"] < total_steps:
        t_step = time.perf_counter()  # a step's time: collation, forward, backward, update (not eval, saves)
        if plan_epoch != progress["epoch"]:
            plan, plan_epoch = epoch_plan(progress["epoch"]), progress["epoch"]
        start = progress["micro_index"]
        group = plan[start:start + micro_per_step]
        if len(group) < micro_per_step:  # epoch exhausted: the remainder is dropped, like drop_last
            progress["epoch"] += 1
            progress["micro_index"] = 0
            continue
        batches = [collate(rows, train, pad_id, extra_fields) for rows in group]
        step_targets = sum(int(b["target_mask"].sum()) for b in batches)
        step_tokens = sum(sum(len(train[i].ids) for i in row) for rows in group for row in rows)
        loss_sum = 0.0
        for batch in batches[rank::world]:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, amp_dtype):
                loss = loss_model(**batch)
            # DDP averages gradients over ranks, so scale by world to get the global token mean.
            accelerator.backward(loss * world / step_targets)
            loss_sum += float(loss.detach())
        grad_norm = (accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                     if cfg.max_grad_norm else None)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        progress["step"] += 1
        progress["micro_index"] += micro_per_step
        progress["tokens"] += step_tokens
        loss_value = float(accelerator.reduce(torch.tensor(loss_sum, device=device), "sum")) / step_targets
        recent_losses.append(loss_value)
        now = time.perf_counter()
        tok_s = step_tokens / max(now - t_step, 1e-9)
        train_seconds += now - t_step
        train_tokens += step_tokens
        step = progress["step"]
        if step % cfg.log_every == 0 or step == total_steps:
            record({"step": step, "epoch": progress["epoch"], "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tokens": progress["tokens"], "tokens_per_s": tok_s, "targets": step_targets})
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
        bar.update(1)

        if val and cfg.eval_every and (step % cfg.eval_every == 0 or step == total_steps):
            vloss = validation_loss(loss_model, val, cfg, pad_id, device, amp_dtype, extra_fields)
            record({"step": step, "val_loss": vloss})
            bar.write(f"step {step}: val_loss {vloss:.4f}")
            best = progress["best_val_loss"]
            if best is None or vloss < best:
                progress["best_val_loss"], progress["bad_evals"] = vloss, 0
                if cfg.early_stopping_patience:
                    best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            else:
                progress["bad_evals"] += 1
                if cfg.early_stopping_patience and progress["bad_evals"] >= cfg.early_stopping_patience:
                    bar.write(f"early stopping at step {step}: no val_loss improvement in "
                              f"{progress['bad_evals']} evaluations; restoring the best weights")
                    stopped_early = True
        if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps or stopped_early:
            checkpoint()
        if stopped_early:
            break
    bar.close()
    if stopped_early and best_state is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in best_state.items():
                params[n].copy_(v)
    tail = recent_losses[-max(1, len(recent_losses) // 10):] if recent_losses else [float("nan")]
    return LoopResult(progress["step"], sum(tail) / len(tail), progress["best_val_loss"], stopped_early,
                      train_seconds, train_tokens)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from, so the log has no duplicates."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))
