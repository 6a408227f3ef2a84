"""THE training loop. Every recipe hands it encoded examples; it does the rest.

Read top to bottom: plan the batches, build optimizer and schedule, maybe resume, then for each
optimizer step run `grad_accum` packed micro-batches per process, weighting every micro-batch's loss
by the number of target tokens of the whole step (so accumulation and N processes equal one big
batch), skip the step if the loss or gradient is not finite, clip, step, log, evaluate, checkpoint.
Under several processes (DDP or FSDP, train/distributed.py) every rank plans the same batches and
runs its own share of each step.
"""

from __future__ import annotations

import json
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from tuneforge.config import TrainConfig
from tuneforge.data.pack import collate, is_online, lengths_of, plan_micro_batches
from tuneforge.data.render import Encoded
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir
from tuneforge.train.checkpoint import latest_checkpoint, load_checkpoint, read_progress, rng_state, save_checkpoint
from tuneforge.train.distributed import (broadcast_object, copy_full_into, full, full_optimizer_state,
                                         gather_object, local_numel, no_sync, parallel_strategy, shard,
                                         unshard_into)
from tuneforge.train.losses.target import TargetLoss
from tuneforge.train.stop import StopRequests, StoppedBySignal
from tuneforge.train.precision import autocast


@dataclass
class LoopResult:
    steps: int
    train_loss: float
    best_val_loss: float | None
    stopped_early: bool
    seconds: float = 0.0  # wall time of the optimizer steps run in this process (no eval, no checkpoints)
    tokens: int = 0  # non-padding tokens of those steps
    best_step: int | None = None  # the step whose weights the model ends with, when keep_best restored them


def _param_groups(params, weight_decay: float):
    # No decay on biases and norm weights (1-D tensors): the usual AdamW practice.
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(params, cfg: TrainConfig, device: torch.device):
    """AdamW over `params`: an iterable of parameters, or a model."""
    groups = _param_groups(params.parameters() if isinstance(params, torch.nn.Module) else params,
                           cfg.weight_decay)
    # The fused kernel exists for CPU and CUDA in recent torch; it is bit-for-bit a normal AdamW step.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type in ("cpu", "cuda"))


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    # A warmup asked for is never rounded away: a short stage (a few steps) still starts gently.
    warmup = max(1, int(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 and total_steps > 1 else 0
    if cfg.schedule == "cosine" and cfg.min_lr_ratio > 0:
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup,
                             num_training_steps=total_steps, scheduler_specific_kwargs={"min_lr_rate": cfg.min_lr_ratio})
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


BUDGET_PROBE_STEP = 3  # a time budget is checked after this step, from the pace of steps 2 to 3


def steps_within(budget_s: float, elapsed_s: float, step_times: list[float], done: int, total: int) -> int:
    """How many steps in all fit in `budget_s`, `elapsed_s` already spent, at the mean of `step_times`."""
    pace = sum(step_times) / max(len(step_times), 1)
    return max(done, min(total, done + int(max(0.0, budget_s - elapsed_s) // max(pace, 1e-9))))


# A validation token costs about half a training token: measured 0.46 for SmolLM2-135M LoRA in fp32
# (2026-12-02, AMD EPYC: 15,558 validation tokens in 85 s against 4,030-token steps of 48 s).
VALIDATION_TOKEN_SHARE = 0.5


def final_validation_seconds(val_lengths: list[int], step_times: list[float], step_tokens: list[int]) -> float:
    """About how long one validation pass takes, from the pace of the training steps measured so far."""
    seconds_per_token = sum(step_times) / max(sum(step_tokens), 1)
    return sum(val_lengths) * seconds_per_token * VALIDATION_TOKEN_SHARE


def _agreed_stop(signum: int | None, accelerator) -> int | None:
    """The signal that stops the run, agreed by every rank (a signal may reach only some of them, or
    reach them during different steps): all ranks stop after the same step."""
    if accelerator.num_processes == 1:
        return signum
    import torch.distributed as dist

    flag = torch.tensor([signum or 0], device=accelerator.device)  # one integer per step, not a pickled object
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def row_length(lengths: list[int], cfg: TrainConfig) -> int:
    """How long a packed row may be: the longest example, or `pack_length` when that is shorter."""
    return min(max(lengths), cfg.pack_length or max(lengths))


def planned_steps(train: list[Encoded], cfg: TrainConfig, world: int = 1) -> int:
    """About the optimizer steps a fresh run of `train` takes (the packing plan, and so the count, varies
    a little with the seed)."""
    if is_online(train):
        return cfg.max_steps
    lengths = lengths_of(train)
    plan = plan_micro_batches(lengths, cfg.batch_tokens, row_length(lengths, cfg), cfg.packing, seed=0)
    return cfg.max_steps or math.ceil(cfg.epochs * max(1, len(plan) // (cfg.grad_accum * world)))


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # compiled blocks would recompile for inference mode
def validation_loss(loss_model: TargetLoss, encoded: list[Encoded], cfg: TrainConfig, pad_id: int,
                    device, amp_dtype, extra_fields: tuple[str, ...] = ()) -> float:
    was_training = loss_model.training
    loss_model.eval()
    lengths = lengths_of(encoded)
    total, targets = 0.0, 0
    for rows in plan_micro_batches(lengths, cfg.batch_tokens, row_length(lengths, cfg), cfg.packing, seed=0):
        batch = {k: v.to(device) for k, v in collate(rows, encoded, pad_id, extra_fields).items()}
        with autocast(device, amp_dtype):
            total += float(loss_model(**batch))
        targets += int(batch["target_mask"].sum())
    loss_model.train(was_training)
    return total / max(targets, 1)


def train_loop(model, train: list[Encoded], val: list[Encoded], cfg: TrainConfig, *, run_dir: Path, seed: int,
               pad_id: int, accelerator, amp_dtype, resume: bool = False, log=print,
               loss_model: torch.nn.Module | None = None, observe=None, on_record=None) -> LoopResult:
    """`loss_model` (default: TargetLoss) maps a collated batch to a summed loss over its targets; it may
    ask for more batch fields with an `extra_fields` attribute (see data.pack.collate). `observe`, if
    given, is called on every rank with one dict per event (the plan, each step's examples, each save):
    what tests of the distributed and resume behaviour compare. `on_record`, if given, gets each
    metrics.jsonl entry once it is written, on the main process only (train/trackers.py)."""
    device = accelerator.device
    # An online source (data.streaming, RL rollouts: data.pack.is_online) gives its batches as it is read
    stream = train if is_online(train) else None
    lengths = lengths_of(train) if stream is None else []
    rows_of = row_length(lengths, cfg) if stream is None else stream.row_length
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    strategy = parallel_strategy(cfg, accelerator)
    say = log if main else (lambda *_: None)

    def trace(**event):
        if observe is not None:
            observe(event)

    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = RunDir(run_dir).checkpoints
    metrics_path = RunDir(run_dir).metrics_file
    resume_from = latest_checkpoint(ckpt_root) if resume else None
    saved = read_progress(resume_from) if resume_from else {}

    # A step is `micro_per_step` micro-batches whatever the number of processes; a run resumed under
    # another number keeps its global batch by changing grad_accum.
    micro_per_step = saved.get("micro_per_step", cfg.grad_accum * world)
    if micro_per_step % world:
        raise UserError(f"this run takes {micro_per_step} micro-batches per step, which {world} processes "
                        "cannot split evenly; resume with a number of processes that divides it")
    grad_accum = micro_per_step // world
    if grad_accum != cfg.grad_accum:
        say(f"{world} processes: grad_accum {grad_accum} keeps the run's {micro_per_step} micro-batches per step")

    def epoch_plan(epoch: int) -> list[list[list[int]]]:
        return plan_micro_batches(lengths, cfg.batch_tokens, rows_of, cfg.packing, seed=seed + epoch)

    # planned once here; later epochs are planned as they start (a stream plans each window as it reads it)
    plan, plan_epoch = (epoch_plan(0), 0) if stream is None else ([], 0)
    steps_per_epoch = max(1, len(plan) // micro_per_step)
    # A run whose schedule a time budget shortened keeps that length when resumed (a config's own
    # max_steps or epochs may change between runs: a resume follows the config, as always). A stream's
    # length is unknown, so it runs max_steps (data/stream.py checks it is set).
    total_steps = saved.get("budget_steps") or cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    loss_model = loss_model if loss_model is not None else TargetLoss(model)
    extra_fields = tuple(getattr(loss_model, "extra_fields", ()))
    # What the batch source and the loss report about each step (RL: rewards, KL, time spent generating);
    # taken before any wrapper (DDP, FSDP) hides the loss module's own attributes.
    reporters = [r for r in (stream, loss_model) if hasattr(r, "step_metrics")]
    if strategy == "fsdp":  # a sharded twin trains; `model` gets its weights back at the end
        loss_model, params = shard(loss_model, model)
    else:
        params = dict(model.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    optimizer = make_optimizer(trainable.values(), cfg, device)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    if strategy != "fsdp":
        loss_model, optimizer = accelerator.prepare(loss_model, optimizer)  # DDP or DeepSpeed when launched so

    progress = {"step": 0, "epoch": 0, "micro_index": 0, "best_val_loss": None, "bad_evals": 0, "tokens": 0,
                "nonfinite_skips": 0, "micro_per_step": micro_per_step}
    if resume_from:
        progress |= load_checkpoint(resume_from, trainable, optimizer, scheduler, rank, world)
        say(f"resumed from {resume_from.name} (step {progress['step']}/{total_steps})")
        if main:
            _truncate_metrics(metrics_path, progress["step"])
        if stream is not None and "stream" in progress:
            stream.restore(progress["stream"])
    best_state = None

    def checkpoint():
        # Every rank helps gather whole tensors (FSDP shards, per-rank RNG); rank 0 alone writes.
        weights = {n: full(p.detach()) for n, p in trainable.items()}
        optimizer_state = full_optimizer_state(optimizer)
        rngs = gather_object(rng_state(), accelerator)
        error = None
        if main:
            try:
                save_checkpoint(ckpt_root, progress["step"], weights, optimizer_state, scheduler.state_dict(), rngs,
                                progress, cfg.keep_last)
                trace(saved=progress["step"])
            except UserError as e:
                error = str(e)
        error = broadcast_object(error, accelerator)  # a failed save stops every rank, with the same message
        if error:
            stop(error)

    def record(entry: dict):
        if main:
            try:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(entry) + "\n")
            except OSError as e:
                stop(f"cannot write {metrics_path} ({e.strerror}); free disk space or make output_dir "
                     "writable, then rerun with --resume")
            if on_record is not None:
                on_record(entry)

    trace(strategy=strategy, world=world, numel=local_numel(params.values()),
          dropped=[i for rows in plan[steps_per_epoch * micro_per_step:] for row in rows for i in row])
    loss_model.train()
    bar = tqdm(total=total_steps, initial=progress["step"], desc="train", unit="step",
               disable=not main, dynamic_ncols=True)
    note = bar.write if main else (lambda *_: None)

    def stop(message: str):
        bar.close()  # the error line comes after the progress bar, not under it
        raise UserError(message)

    def step_reports(seconds: float) -> dict:
        return {k: v for r in reporters for k, v in r.step_metrics(seconds).items()}

    recent_losses: list[float] = []
    step_seconds: list[float] = []  # this process's steps; the first pays for compiling and warm-up
    step_token_counts: list[int] = []
    loop_start = time.perf_counter()
    stopped_early = False
    train_seconds, train_tokens = 0.0, 0
    # Ctrl-C or SIGTERM (preemption, the UI's Stop) ends the step in flight, then checkpoints and stops.
    with StopRequests(note) as stops:
        while progress["step"] < total_steps:
            t_step = time.perf_counter()  # a step's time: collation, forward, backward, update (not eval, saves)
            if stream is not None:  # the next micro-batches as read; its position goes into the checkpoint
                streamed = [stream.next_micro_batch() for _ in range(micro_per_step)]
                progress["epoch"], progress["stream"] = stream.epoch, stream.state()
                batches = [collate(rows, window, pad_id, extra_fields) for rows, window in streamed]
                step_tokens = sum(len(window[i].ids) for rows, window in streamed for row in rows for i in row)
            else:
                if plan_epoch != progress["epoch"]:
                    plan, plan_epoch = epoch_plan(progress["epoch"]), progress["epoch"]
                start = progress["micro_index"]
                group = plan[start:start + micro_per_step]
                if len(group) < micro_per_step:  # epoch exhausted: the remainder is dropped, like drop_last
                    progress["epoch"] += 1
                    progress["micro_index"] = 0
                    continue
                batches = [collate(rows, train, pad_id, extra_fields) for rows in group]
                step_tokens = sum(sum(lengths[i] for i in row) for rows in group for row in rows)
                trace(step=progress["step"] + 1,
                      examples=[i for rows in group[rank::world] for row in rows for i in row])
            step_targets = sum(int(b["target_mask"].sum()) for b in batches)
            mine = batches[rank::world]  # every rank planned the same group; each runs its own share
            loss_sum = 0.0
            for k, batch in enumerate(mine):
                batch = {key: v.to(device) for key, v in batch.items()}
                with no_sync(accelerator, loss_model, last=k == len(mine) - 1):
                    with autocast(device, amp_dtype):
                        loss = loss_model(**batch)
                    # DDP/FSDP average gradients over ranks, so scale by world to get the global token mean.
                    accelerator.backward(loss * world / step_targets)
                loss_sum += float(loss.detach())
            loss_value = float(accelerator.reduce(torch.tensor(loss_sum, device=device), "sum")) / step_targets
            # Always measured (clipping at infinity when off): a non-finite gradient is caught like a non-finite loss.
            grad_norm = accelerator.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm or math.inf)
            grad_norm = float(full(grad_norm)) if grad_norm is not None else None

            progress["micro_index"] += micro_per_step
            if not math.isfinite(loss_value) or (grad_norm is not None and not math.isfinite(grad_norm)):
                # Caught before the optimizer could write it into the weights. Every rank sees the same summed
                # loss and global norm, so all ranks skip (or stop) together.
                optimizer.zero_grad(set_to_none=True)
                progress["nonfinite_skips"] += 1
                what = f"loss {loss_value}" if not math.isfinite(loss_value) else f"gradient norm {grad_norm}"
                record({"step": progress["step"] + 1, "skipped": what, "nonfinite_skips": progress["nonfinite_skips"]}
                       | step_reports(time.perf_counter() - t_step))
                if cfg.nonfinite == "stop" or progress["nonfinite_skips"] > cfg.max_nonfinite_skips:
                    stop(_nonfinite_error(what, progress, cfg, latest_checkpoint(ckpt_root)))
                note(f"step {progress['step'] + 1}: non-finite {what}; batch skipped "
                     f"({progress['nonfinite_skips']} of at most {cfg.max_nonfinite_skips})")
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            progress["step"] += 1
            progress["tokens"] += step_tokens
            recent_losses.append(loss_value)
            now = time.perf_counter()
            tok_s = step_tokens / max(now - t_step, 1e-9)
            train_seconds += now - t_step
            train_tokens += step_tokens
            step_seconds.append(now - t_step)
            step_token_counts.append(step_tokens)
            reported = step_reports(now - t_step)  # every step, so each report covers one step
            step = progress["step"]
            if cfg.time_budget_s and step == BUDGET_PROBE_STEP and not resume_from:
                # The validation pass that ends the run is part of the budget too.
                final_eval_s = (final_validation_seconds(lengths_of(val), step_seconds[1:], step_token_counts[1:])
                                if val and cfg.eval_every else 0.0)
                fitted = broadcast_object(steps_within(cfg.time_budget_s - final_eval_s,
                                                       time.perf_counter() - loop_start,
                                                       step_seconds[1:], step, total_steps), accelerator)
                if fitted < total_steps:
                    note(f"time budget {cfg.time_budget_s:.0f} s: {total_steps} steps at "
                         f"{sum(step_seconds[1:]) / len(step_seconds[1:]):.1f} s/step would not fit; training "
                         f"{fitted} steps, the learning-rate schedule shortened to end there"
                         + (f" (~{final_eval_s:.0f} s kept for the final validation)" if final_eval_s else ""))
                    total_steps = progress["budget_steps"] = fitted
                    scheduler = make_scheduler(optimizer, cfg, total_steps)
                    with warnings.catch_warnings():  # "step() before optimizer.step()": catching up is the point
                        warnings.simplefilter("ignore", UserWarning)
                        for _ in range(step):  # the new schedule, caught up to this step
                            scheduler.step()
                    bar.total = total_steps
            if step % cfg.log_every == 0 or step == total_steps:
                record({"step": step, "epoch": progress["epoch"], "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm, "tokens": progress["tokens"], "tokens_per_s": tok_s,
                        "targets": step_targets} | reported)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            bar.update(1)

            if val and cfg.eval_every and (step % cfg.eval_every == 0 or step == total_steps):
                # Every rank computes the same validation loss, so every rank takes the same decisions.
                vloss = validation_loss(loss_model, val, cfg, pad_id, device, amp_dtype, extra_fields)
                record({"step": step, "val_loss": vloss})
                note(f"step {step}: val_loss {vloss:.4f}")
                best = progress["best_val_loss"]
                if best is None or vloss < best:
                    progress["best_val_loss"], progress["bad_evals"] = vloss, 0
                    if cfg.early_stopping_patience or cfg.keep_best:
                        best_state = {n: full(p.detach()).clone() for n, p in trainable.items()}
                        progress["best_step"] = step
                else:
                    progress["bad_evals"] += 1
                    if cfg.early_stopping_patience and progress["bad_evals"] >= cfg.early_stopping_patience:
                        note(f"early stopping at step {step}: no val_loss improvement in "
                             f"{progress['bad_evals']} evaluations; restoring the best weights")
                        stopped_early = True
            if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps or stopped_early:
                checkpoint()
            if stopped_early:
                break
            signum = _agreed_stop(stops.signum, accelerator)
            if signum is not None:
                saved = (cfg.save_every and step % cfg.save_every == 0) or step == total_steps
                if not saved:
                    checkpoint()
                record({"step": step, "stopped_by": signal.Signals(signum).name})
                bar.close()
                raise StoppedBySignal(signum, step, total_steps)
    bar.close()
    if (stopped_early or cfg.keep_best) and best_state is not None:
        # Only a best seen in this process can be restored: after --resume, one from before the
        # interruption is known by its loss (progress.json) but its weights are not kept.
        if cfg.keep_best and not stopped_early and progress.get("best_step") != progress["step"]:
            note(f"keeping the best validation weights, from step {progress['best_step']}")
        for n, v in best_state.items():
            copy_full_into(trainable[n], v)
    if strategy == "fsdp":
        unshard_into(model, params)  # the recipe's model, whole on every rank, for its evaluation and artifact
    tail = recent_losses[-max(1, len(recent_losses) // 10):] if recent_losses else [float("nan")]
    return LoopResult(progress["step"], sum(tail) / len(tail), progress["best_val_loss"], stopped_early,
                      train_seconds, train_tokens, progress.get("best_step") if best_state is not None else None)


def _nonfinite_error(what: str, progress: dict, cfg: TrainConfig, last: Path | None) -> str:
    return (f"non-finite {what} at step {progress['step'] + 1} (skipped batches: {progress['nonfinite_skips']}, "
            f"train.nonfinite: {cfg.nonfinite}, train.max_nonfinite_skips: {cfg.max_nonfinite_skips}); no weights "
            f"were updated with it{f' and {last} is intact' if last else ''}. Lower train.lr, use precision: fp32 "
            "or check the data, then --resume continues from the last checkpoint")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from, so the log has no duplicates."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))
