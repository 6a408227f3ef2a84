"""Many task adapters on one base, switched per call without reloading the base.

PEFT adapters (LoRA, DoRA, IA3; or prefix/prompt ones) are loaded under their names into one
PeftModel; `use(name)` activates one, `use(None)` runs the untouched base.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.load import load_model, load_tokenizer, resolve_model_path
from tuneforge.models.merge import _locate, adapter_base, check_adapter_fits


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
    def __init__(self, base: str, adapters: dict[str, Path]):
        self.base_path = resolve_model_path(base)
        self.model = load_model(self.base_path)
        self.tokenizer = load_tokenizer(self.base_path)
        self.names: list[str] = []
        for name, path in adapters.items():
            self.add(name, path)
        self.model.eval()

    def add(self, name: str, path: Path) -> None:
        from peft import PeftModel

        found = _locate(path)
        if not (found / "adapter_config.json").is_file():
            raise UserError(f"--adapter {name}={path}: not a PEFT adapter folder (no adapter_config.json)")
        check_adapter_fits(found, self.base_path)
        if not self.names:
            self.model = PeftModel.from_pretrained(self.model, found, adapter_name=name)
        else:
            self.model.load_adapter(found, adapter_name=name)
        self.names.append(name)

    @contextlib.contextmanager
    def use(self, name: str | None):
        """Activate one adapter (or none: the base model) for the duration of the block."""
        if name in (None, "base"):
            ctx = self.model.disable_adapter() if self.names else contextlib.nullcontext()
            with ctx:
                yield self.model
            return
        if name not in self.names:
            raise UserError(f"--use {name}: no such adapter; loaded: {', '.join(['base', *self.names])}")
        self.model.set_adapter(name)
        yield self.model
