"""The method registry: name -> how to make a model trainable and how to save the result.

The loop never asks which method it runs; it trains whatever parameters require grad. A new
method plugs in by adding one `Method` entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tuneforge.errors import UserError


@dataclass
class Method:
    apply: Callable  # (model, method_cfg) -> model with only the trainable parameters requiring grad
    adapter: bool  # True: the result is an adapter folder over an unchanged base


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: the longest ModuleList in the model (layers, h, blocks, ...)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise UserError("cannot find the transformer blocks of this model for method 'freeze'")
    return max(lists, key=len)


def _apply_full(model, cfg):
    model.requires_grad_(True)
    return model


def _apply_freeze(model, cfg):
    model.requires_grad_(False)
    blocks = transformer_blocks(model)
    if cfg.trainable_layers > len(blocks):
        raise UserError(f"method.trainable_layers={cfg.trainable_layers} but the model has {len(blocks)} blocks")
    for block in list(blocks)[len(blocks) - cfg.trainable_layers:]:
        block.requires_grad_(True)
    matched = set()
    for name, p in model.named_parameters():
        for pattern in cfg.trainable_modules:
            if pattern in name:
                p.requires_grad_(True)
                matched.add(pattern)
    missing = [p for p in cfg.trainable_modules if p not in matched]
    if missing:
        raise UserError(f"method.trainable_modules: no parameter name contains {missing}")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("method 'freeze' leaves nothing to train; raise trainable_layers or add trainable_modules")
    return model


def _apply_lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
        task_type="CAUSAL_LM", bias="none",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise UserError(f"method.target_modules: {e}") from None


METHODS: dict[str, Method] = {
    "full": Method(_apply_full, adapter=False),
    "freeze": Method(_apply_freeze, adapter=False),
    "lora": Method(_apply_lora, adapter=True),
}


def apply_method(model, method_cfg):
    if method_cfg.name not in METHODS:
        raise UserError(f"unknown method '{method_cfg.name}'; available: {', '.join(METHODS)}")
    return METHODS[method_cfg.name].apply(model, method_cfg)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model) -> tuple[int, int]:
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def save_final(model, tokenizer, out: Path, method_name: str) -> None:
    """The artifact others load: a PEFT adapter folder, or an HF model folder for full/freeze."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
