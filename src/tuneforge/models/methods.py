"""The method registry: name -> how to make a model trainable, how to save and load the result, and
which recipes it serves.

The loop never asks which method it runs; it trains whatever parameters require grad. A new
method plugs in by adding one `Method` entry here; nothing else names methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from tuneforge.errors import UserError
from tuneforge.models.anatomy import find_blocks
from tuneforge.models.bottleneck import (BottleneckConfig, attach_bottleneck, is_bottleneck_dir, load_bottleneck,
                                         save_bottleneck)


def _save_pretrained(model: nn.Module, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def _load_peft(base: nn.Module, folder: Path) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder)


@dataclass
class Method:
    apply: Callable  # (model, method_cfg) -> model with only the trainable parameters requiring grad
    adapter: bool  # True: the result is an adapter folder over an unchanged base
    mergeable: bool = False  # can `tuneforge merge` fold it into the base weights?
    virtual_tokens: bool = False  # prefix/prompt: PEFT's own forward adds virtual tokens; no packing
    why_not_mergeable: str = ""
    save: Callable[[nn.Module, Path], None] = _save_pretrained  # the trained model -> its artifact folder
    # (base model, adapter folder) -> the adapted model; None for methods whose artifact is a whole model
    load: Callable[[nn.Module, Path], nn.Module] | None = None
    refuses: dict[str, str] = field(default_factory=dict)  # recipe -> why this method cannot serve it


def _apply_full(model, cfg):
    model.requires_grad_(True)
    return model


def _apply_freeze(model, cfg):
    model.requires_grad_(False)
    blocks = find_blocks(model)
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

    bcfg = BottleneckConfig(size=cfg.size, reduction_factor=cfg.reduction_factor, placement=cfg.placement,
                            activation=cfg.activation, scale=cfg.scale, base_model=model.name_or_path)
    return attach_bottleneck(model, bcfg)


_VIRTUAL = "it adds learned virtual tokens in front of every input; there are no weights to fold it into. " \
           "Serve the adapter folder instead (tuneforge generate RUN, or PeftModel.from_pretrained)"
# Why a method cannot serve a recipe; the registry is the one place that decides it.
_VIRTUAL_REFUSES = {
    "preference": "its virtual tokens go in front of each sequence, which breaks the packed chosen/rejected pair",
    "calibration": "the query's option logits are read at one position, which virtual tokens shift",
    "agent": "stage 1 is merged into the base the roles share, and this adapter cannot be merged",
    "reward": "the reward model is saved merged, as a sequence-classification model, and this adapter cannot be merged",
}
_UNMERGEABLE_REFUSES = {"agent": _VIRTUAL_REFUSES["agent"], "reward": _VIRTUAL_REFUSES["reward"]}


def _save_bottleneck(model: nn.Module, folder: Path) -> None:
    save_bottleneck(model, None, folder)


METHODS: dict[str, Method] = {
    "full": Method(_apply_full, adapter=False),
    "freeze": Method(_apply_freeze, adapter=False),
    "lora": Method(_apply_lora, adapter=True, mergeable=True, load=_load_peft),
    "dora": Method(_apply_dora, adapter=True, mergeable=True, load=_load_peft),
    "ia3": Method(_apply_ia3, adapter=True, mergeable=True, load=_load_peft),
    "prefix": Method(_apply_prefix, adapter=True, virtual_tokens=True, load=_load_peft, refuses=_VIRTUAL_REFUSES,
                     why_not_mergeable="prefix tuning adds learned key/value prefixes at every layer, not a weight "
                                       "delta. Serve the adapter folder instead (tuneforge generate RUN, or "
                                       "PeftModel.from_pretrained)"),
    "prompt": Method(_apply_prompt, adapter=True, virtual_tokens=True, load=_load_peft, refuses=_VIRTUAL_REFUSES,
                     why_not_mergeable=f"prompt tuning: {_VIRTUAL}"),
    "bottleneck": Method(_apply_bottleneck, adapter=True, save=_save_bottleneck, load=load_bottleneck,
                         refuses=_UNMERGEABLE_REFUSES,
                         why_not_mergeable="bottleneck adapters add new nonlinear modules (down-project, activation, "
                                           "up-project) that no weight of the base can absorb. Serve the run "
                                           "instead (tuneforge generate RUN --adapter ...)"),
}


def check_serves(method: str, recipe: str) -> None:
    """Refuse, before anything loads, a method the recipe cannot use, naming the ones it can."""
    why = METHODS[method].refuses.get(recipe)
    if why:
        usable = ", ".join(name for name, m in METHODS.items() if recipe not in m.refuses)
        raise UserError(f"method: {method} is not supported by recipe: {recipe} ({why}); use one of {usable}")


def artifact_method(folder: Path) -> Method | None:
    """The method whose loader reads this artifact folder; None for a whole model folder."""
    if is_bottleneck_dir(folder):
        return METHODS["bottleneck"]
    if (folder / "adapter_config.json").is_file():
        return METHODS["lora"]  # every PEFT adapter folder loads the same way
    return None


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
