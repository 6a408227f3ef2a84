"""Instruction fine-tuning: data -> encoded examples -> the loop -> artifact -> before/after report.

The recipe decides which data, which examples and what to evaluate; the loop is shared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tuneforge.config import Config, dump_config
from tuneforge.data.dataset import encode_split, load_splits
from tuneforge.data.render import setup_chat_template
from tuneforge.errors import UserError
from tuneforge.eval.before_after import generative_examples, loss_summary, score_generations
from tuneforge.models.load import load_model_and_tokenizer
from tuneforge.models.methods import METHODS, apply_method, count_parameters
from tuneforge.report import plot_loss, write_report
from tuneforge.runs import atomic_dir, check_run_dir, create_run_dir, write_json
from tuneforge.atomic import atomic_write_text
from tuneforge.train.forward import compile_blocks
from tuneforge.train.loop import train_loop, validation_loss
from tuneforge.train.precision import resolve_precision


def _say(msg: str) -> None:
    print(f"[tuneforge] {msg}", flush=True)


def _evaluate(model, tokenizer, val_examples, val_encoded, cfg: Config, device, amp) -> dict:
    if cfg.eval.metric == "loss":
        if not val_encoded:
            return {}
        from tuneforge.train.forward import TargetLoss

        return loss_summary(validation_loss(TargetLoss(model), val_encoded, cfg.train,
                                            tokenizer.pad_token_id, device, amp))
    examples = generative_examples(val_examples, cfg.eval.max_examples)
    if not examples:
        return {}
    # bf16 autocast re-casts every weight at every decode step: on CPU that makes generation ~3x
    # slower (bench/bench_generate.py), so generation stays in the weights' dtype there.
    bf16 = amp is not None and device.type == "cuda"
    return score_generations(model, tokenizer, examples, cfg.eval, bf16=bf16) | {"n": len(examples)}


def run_sft(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> Path:
    from accelerate.utils import set_seed

    started = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_seed(cfg.seed)
    run = check_run_dir(cfg.output_dir, overwrite, resume)

    model, tokenizer, model_path = load_model_and_tokenizer(cfg.model, cfg.train.dropout)
    setup_chat_template(tokenizer, cfg.data.chat_template, model_path)
    splits = load_splits(cfg.data, cfg.seed)
    train = encode_split(splits.train, tokenizer, cfg.data)
    val = encode_split(splits.val, tokenizer, cfg.data)
    if not train.encoded:
        raise UserError(f"data.train: no usable examples in {cfg.data.train} "
                        f"({train.dropped} dropped as too long, {train.no_target} without answer tokens); "
                        "raise data.max_length or check the data")
    _say(f"data: {len(train.encoded)} train / {len(val.encoded)} validation examples, "
         f"{train.truncated + val.truncated} truncated, {train.dropped + val.dropped} dropped (max_length "
         f"{cfg.data.max_length})")

    if METHODS[cfg.method.name].virtual_tokens and cfg.train.packing:
        _say(f"packing off for method {cfg.method.name}: its virtual tokens go in front of each example")
        cfg.train.packing = False
    create_run_dir(run, overwrite, resume)
    atomic_write_text(run / "config.yaml", dump_config(cfg))  # after every adjustment: what actually runs

    accelerator, device, amp = prepare_model(model, cfg, train.encoded)
    _say(f"model: {model_path} on {device}, compute {'bf16 autocast' if amp else 'fp32'}, method {cfg.method.name}")

    before_path = run / "eval_before.json"
    before = None
    if cfg.eval.before_after and cfg.eval.base and accelerator.is_main_process:
        if before_path.is_file():
            before = json.loads(before_path.read_text())
        else:
            _say(f"evaluating the base model on held-out examples ({cfg.eval.metric})...")
            before = _evaluate(model, tokenizer, val.examples, val.encoded, cfg, device, amp)
            write_json(before_path, before)

    model, result, trainable, total = train_method(model, tokenizer, train.encoded, val.encoded, cfg, run,
                                                   accelerator, amp, resume)

    summary = {
        "model": model_path, "method": cfg.method.name, "trainable_params": trainable, "total_params": total,
        "steps": result.steps, "train_examples": len(train.encoded), "val_examples": len(val.encoded),
        "truncated_examples": train.truncated + val.truncated, "dropped_examples": train.dropped + val.dropped,
        **loop_summary(result, device),
    }
    if accelerator.is_main_process:
        artifact = save_artifact(model, tokenizer, run, cfg.method.name)
        summary |= artifact_summary(artifact)
        if cfg.eval.before_after:
            _say("evaluating the tuned model...")
            after = _evaluate(model, tokenizer, val.examples, val.encoded, cfg, device, amp)
            if after:
                summary["evaluation"] = _before_after(cfg, before, after, val.examples)
        summary["wall_time_s"] = round(time.time() - started, 1)
        plot_loss(run)
        write_report(run, summary)
    accelerator.wait_for_everyone()
    return run


def prepare_model(model, cfg: Config, train_encoded) -> tuple:
    """Accelerator, device and compute dtype; the model moved there with the attention kernel chosen."""
    from tuneforge.train.distributed import make_accelerator

    accelerator = make_accelerator(cfg.train)  # DDP, FSDP or DeepSpeed under a multi-process launcher
    device = accelerator.device
    amp = resolve_precision(cfg.train.precision, device)
    model.to(device)
    model.set_attn_implementation(choose_attention(cfg.train.attention, device,
                                                   max(len(e.ids) for e in train_encoded)))
    if amp is not None and METHODS[cfg.method.name].adapter and cfg.train.frozen_base_dtype == "auto":
        # The frozen base never gets an optimizer update, so it needs no fp32 master copy: storing it
        # in the compute dtype halves its memory and spares autocast a weight cast every forward.
        model.to(amp)
    return accelerator, device, amp


def train_method(model, tokenizer, train_encoded, val_encoded, cfg: Config, run: Path, accelerator, amp,
                 resume: bool = False, loss_model_factory=None, log=_say):
    """Apply the method, run the loop; returns (model, LoopResult, trainable, total parameters)."""
    model = apply_method(model, cfg.method)
    if cfg.train.activation_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works under PEFT too.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    if should_compile(cfg.train.compile, accelerator.device, total):
        log("compiling the decoder blocks (torch.compile; the first steps pay for it)")
        compile_blocks(model)
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    loss_model = loss_model_factory(model) if loss_model_factory else None
    result = train_loop(model, train_encoded, val_encoded, cfg.train, run_dir=run, seed=cfg.seed,
                        pad_id=tokenizer.pad_token_id, accelerator=accelerator, amp_dtype=amp, resume=resume,
                        log=log, loss_model=loss_model)
    return model, result, trainable, total


def loop_summary(result, device) -> dict:
    """The report fields every recipe on the loop shares."""
    return {
        "final_train_loss": round(result.train_loss, 4),
        "best_val_loss": round(result.best_val_loss, 4) if result.best_val_loss is not None else None,
        "stopped_early": result.stopped_early,
        "train_tokens_per_s": round(result.tokens / result.seconds, 1) if result.seconds else None,
        "peak_memory_gb": round(peak_memory_gb(device), 2),
    }


def artifact_summary(artifact: Path) -> dict:
    return {"artifact": str(artifact),
            "artifact_mb": round(sum(f.stat().st_size for f in artifact.rglob("*.safetensors")) / 2**20, 4)}


def choose_attention(setting: str, device, row_length: int) -> str:
    if setting != "auto":
        return setting
    # Measured on a 2-core AMX CPU with SmolLM2-135M (bench/bench_levers.py and docs/performance.md):
    # rows of ~80 tokens train 2x faster with eager attention (the CPU SDPA backward with a packed
    # mask is slow), rows of ~640 tokens 1.35x faster with SDPA. 256 is the cut between the two
    # measurements. GPUs use SDPA.
    return "eager" if device.type == "cpu" and row_length <= 256 else "sdpa"


def should_compile(setting: str, device, n_params: int) -> bool:
    if setting != "auto":
        return setting == "true"
    import shutil

    # Compiling costs ~20-30 s here and pays from a few dozen steps on for real models; tiny
    # models gain nothing. On CPU, inductor needs a C++ compiler.
    has_compiler = device.type == "cuda" or any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    return n_params >= 50_000_000 and has_compiler


def peak_memory_gb(device) -> float:
    """Peak resident memory of this process (CPU), or peak allocated GPU memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _before_after(cfg: Config, before: dict | None, after: dict, val_examples) -> dict:
    ev = {"metric": cfg.eval.metric, "before": before["score"] if before else None, "after": after["score"],
          "examples": after.get("n", len(val_examples))}
    if before and "predictions" in before:
        examples = generative_examples(val_examples, cfg.eval.max_examples)
        ev["samples"] = [
            {"prompt": e.prompt_segments()[-1].text, "reference": e.reference, "base": b, "tuned": a}
            for e, b, a in list(zip(examples, before["predictions"], after["predictions"]))[:5]
        ]
    return ev


def save_artifact(model, tokenizer, run: Path, method: str) -> Path:
    """PEFT adapter folder for adapter methods, a standalone HF model folder otherwise; written atomically."""
    final = run / ("adapter" if METHODS[method].adapter else "model")
    with atomic_dir(final) as tmp:
        if method == "bottleneck":
            from tuneforge.models.bottleneck import save_bottleneck

            save_bottleneck(model, None, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return final
