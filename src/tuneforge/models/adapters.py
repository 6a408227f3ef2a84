"""Adapters on a base: switching them off (the base's view), and many task adapters on one base,
switched per call without reloading the base.

PEFT adapters (LoRA, DoRA, IA3; or prefix/prompt ones) are loaded under their names into one
PeftModel; one bottleneck adapter can sit beside them (its modules are switched on and off).
`use(name)` activates one, `use(None)` runs the untouched base.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.load import SAFE, LoadPolicy, check_weights_format, load_model, load_tokenizer, resolve_model_path
from tuneforge.models.bottleneck import (is_bottleneck_dir, is_bottleneck_model, load_bottleneck,
                                         set_bottleneck_enabled)
from tuneforge.models.merge import locate_artifact, check_adapter_fits
from tuneforge.models.rope import shared_rope_scaling


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model's view of an adapter model (PEFT or bottleneck), restored on exit. Used as the
    frozen reference (DPO, the calibration regulariser) and the untuned baseline, with no second copy."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    elif is_bottleneck_model(model):
        set_bottleneck_enabled(model, False)
        try:
            yield model
        finally:
            set_bottleneck_enabled(model, True)
    else:
        raise ValueError("the model has no adapter to switch off")


def has_adapter(model) -> bool:
    return hasattr(model, "disable_adapter") or is_bottleneck_model(model)


def parse_adapter_flags(flags: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for flag in flags:
        name, sep, path = flag.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter '{flag}' must look like NAME=PATH")
        if name in adapters:
            raise UserError(f"--adapter name '{name}' given twice")
        if name == "base":
            raise UserError("--adapter name 'base' is reserved for the model without adapters")
        adapters[name] = Path(path)
    return adapters


class AdapterSet:
    def __init__(self, base: str, adapters: dict[str, Path], policy: LoadPolicy = SAFE):
        self.policy = policy
        self.base_path = resolve_model_path(base)
        # One base serves every adapter: a context stretch they were trained with is applied to it (the same one).
        rope = shared_rope_scaling([locate_artifact(p) for p in adapters.values()])
        self.model = load_model(self.base_path, policy=policy, rope_scaling=rope)
        self.tokenizer = load_tokenizer(self.base_path, policy)
        self.names: list[str] = []  # PEFT adapters
        self.bottleneck: str | None = None
        self._base_model = self.model
        for name, path in adapters.items():
            self.add(name, path)
        self.model.eval()

    def add(self, name: str, path: Path) -> None:
        from peft import PeftModel

        found = locate_artifact(path)
        if is_bottleneck_dir(found):
            if self.bottleneck:
                raise UserError(f"--adapter {name}: only one bottleneck adapter at a time "
                                f"('{self.bottleneck}' is loaded); load the others in another process")
            load_bottleneck(self._base_model, found)  # checks architecture and size, names both on mismatch
            set_bottleneck_enabled(self._base_model, False)
            self.bottleneck = name
            return
        if not (found / "adapter_config.json").is_file():
            raise UserError(f"--adapter {name}={path}: not a PEFT adapter folder (no adapter_config.json)")
        check_weights_format(found, f"--adapter {name}: adapter folder", self.policy)
        check_adapter_fits(found, self.base_path, self.policy)
        if not self.names:
            self.model = PeftModel.from_pretrained(self.model, found, adapter_name=name)
        else:
            self.model.load_adapter(found, adapter_name=name)
        self.names.append(name)

    @property
    def available(self) -> list[str]:
        return ["base", *self.names, *([self.bottleneck] if self.bottleneck else [])]

    @contextlib.contextmanager
    def use(self, name: str | None):
        """Activate one adapter (or none: the base model) for the duration of the block."""
        if name not in (None, *self.available):
            raise UserError(f"--use {name}: no such adapter; loaded: {', '.join(self.available)}")
        if name in self.names:
            self.model.set_adapter(name)
            yield self.model
            return
        peft_off = self.model.disable_adapter() if self.names else contextlib.nullcontext()
        with peft_off:
            if name and name == self.bottleneck:
                set_bottleneck_enabled(self._base_model, True)
            try:
                yield self.model
            finally:
                if self.bottleneck:
                    set_bottleneck_enabled(self._base_model, False)
