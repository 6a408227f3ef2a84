"""Load a run's artifact for inference, and fold a LoRA adapter into a standalone model folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.load import load_model, load_tokenizer, resolve_model_path
from tuneforge.runs import replace_dir


def _locate(path: str | Path) -> Path:
    """A run directory (its adapter/ or model/), an adapter folder or a model folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist; give a run directory, an adapter folder or a model folder")
    for name in ("adapter", "model"):
        if (p / name).is_dir():
            return p / name
    if (p / "adapter_config.json").is_file() or (p / "config.json").is_file():
        return p
    raise UserError(f"{p} is not a tuneforge run, PEFT adapter or HF model folder")


def adapter_base(adapter_dir: Path) -> str:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}/adapter_config.json does not name its base model")
    return base


def load_for_inference(path: str | Path, base: str | None = None):
    """(model, tokenizer) ready for generation; adapters are loaded onto their base with PEFT."""
    found = _locate(path)
    if (found / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = resolve_model_path(base or adapter_base(found))
        model = PeftModel.from_pretrained(load_model(base_path), found)
    else:
        model = load_model(str(found))
    tok = load_tokenizer(str(found))
    model.eval()
    return model, tok


def merge_run(path: str | Path, out: str | Path, base: str | None = None) -> Path:
    found = _locate(path)
    if not (found / "adapter_config.json").is_file():
        raise UserError(f"{found} is already a full model folder (no adapter to merge); use it directly")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output {out} already exists and is not empty; choose a new folder")
    model, tok = load_for_inference(found, base)
    merged = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
