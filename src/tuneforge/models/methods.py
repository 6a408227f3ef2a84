"""The method registry: name -> how to make a model trainable and how to save the result.

The loop never asks which method it runs; it trains whatever parameters require grad. A new
method plugs in by adding one `Method` entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from tuneforge.errors import UserError


@dataclass
class Method:
    apply: Callable  # (model, method_cfg) -> model with only the trainable parameters requiring grad
    adapter: bool  # True: the result is an adapter folder over an unchanged base
    mergeable: bool = False  # can `tuneforge merge` fold it into the base weights?
    virtual_tokens: bool = False  # prefix/prompt: PEFT's own forward adds virtual tokens; no packing
    why_not_mergeable: str = ""


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


def _peft(model, peft_config):
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except (ValueError, KeyError) as e:
        raise UserError(f"method: PEFT refused this model/method combination ({str(e).splitlines()[0]})") from None


def _apply_dora(model, cfg):
    from peft import LoraConfig

    return _peft(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                   target_modules=cfg.target_modules, use_dora=True, task_type="CAUSAL_LM"))


def _apply_ia3(model, cfg):
    from peft import IA3Config

    auto = lambda v: None if v == "auto" else v  # noqa: E731 - None lets PEFT pick per model type
    return _peft(model, IA3Config(target_modules=auto(cfg.target_modules),
                                  feedforward_modules=auto(cfg.feedforward_modules), task_type="CAUSAL_LM"))


def _apply_prefix(model, cfg):
    from peft import PrefixTuningConfig

    return _peft(model, PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens,
                                           prefix_projection=cfg.projection,
                                           encoder_hidden_size=cfg.projection_hidden_size, task_type="CAUSAL_LM"))


def _apply_prompt(model, cfg, tokenizer_path: str | None = None):
    from peft import PromptTuningConfig, PromptTuningInit

    kwargs = {}
    if cfg.init_text:
        kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg.init_text,
                      tokenizer_name_or_path=tokenizer_path or model.name_or_path)
    return _peft(model, PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM", **kwargs))


def _apply_bottleneck(model, cfg):
    from tuneforge.models.bottleneck import BottleneckConfig, attach_bottleneck

    bcfg = BottleneckConfig(size=cfg.size, reduction_factor=cfg.reduction_factor, placement=cfg.placement,
                            activation=cfg.activation, scale=cfg.scale, base_model=model.name_or_path)
    return attach_bottleneck(model, bcfg)


_VIRTUAL = "it adds learned virtual tokens in front of every input; there are no weights to fold it into. " \
           "Serve the adapter folder instead (tuneforge generate RUN, or PeftModel.from_pretrained)"
METHODS: dict[str, Method] = {
    "full": Method(_apply_full, adapter=False),
    "freeze": Method(_apply_freeze, adapter=False),
    "lora": Method(_apply_lora, adapter=True, mergeable=True),
    "dora": Method(_apply_dora, adapter=True, mergeable=True),
    "ia3": Method(_apply_ia3, adapter=True, mergeable=True),
    "prefix": Method(_apply_prefix, adapter=True, virtual_tokens=True,
                     why_not_mergeable="prefix tuning adds learned key/value prefixes at every layer, not a weight "
                                       "delta. Serve the adapter folder instead (tuneforge generate RUN, or "
                                       "PeftModel.from_pretrained)"),
    "prompt": Method(_apply_prompt, adapter=True, virtual_tokens=True, why_not_mergeable=f"prompt tuning: {_VIRTUAL}"),
    "bottleneck": Method(_apply_bottleneck, adapter=True,
                         why_not_mergeable="bottleneck adapters add new nonlinear modules (down-project, activation, "
                                           "up-project) that no weight of the base can absorb. Serve the run "
                                           "instead (tuneforge generate RUN --adapter ...)"),
}


def apply_method(model, method_cfg):
    if method_cfg.name not in METHODS:
        raise UserError(f"unknown method '{method_cfg.name}'; available: {', '.join(METHODS)}")
    return METHODS[method_cfg.name].apply(model, method_cfg)


def count_parameters(model) -> tuple[int, int]:
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
