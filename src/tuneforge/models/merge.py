"""Load a run's artifact for inference, and fold a LoRA adapter into a standalone model folder."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.model_card import carry_card
from tuneforge.models.load import (SAFE, LoadPolicy, check_weights_format, load_model, load_model_config, load_tokenizer,
                                   resolve_model_path)
from tuneforge.models.bottleneck import is_bottleneck_dir, read_bottleneck_config
from tuneforge.models.methods import METHODS, artifact_method
from tuneforge.models.quantize import check_backend, dequantize_base, quantized_load_args, run_quantize
from tuneforge.models.rope import run_rope_scaling
from tuneforge.atomic import atomic_dir
from tuneforge.run_dir import RunDir


def _run_method(found: Path) -> str | None:
    """The method recorded in the run's config.yaml, when `found` sits in a run directory."""
    import yaml

    cfg = RunDir(found.parent).config
    if not cfg.is_file():
        return None
    method = (yaml.safe_load(cfg.read_text()) or {}).get("method") or {}
    return method.get("name") if isinstance(method, dict) else method


def locate_artifact(path: str | Path) -> Path:
    """A run directory (its adapter/ or model/), an adapter folder or a model folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist; give a run directory, an adapter folder or a model folder")
    if RunDir(p).has_artifact():
        return RunDir(p).artifact()
    if (p / "adapter_config.json").is_file() or (p / "config.json").is_file() or is_bottleneck_dir(p):
        return p
    raise UserError(f"{p} is not a tuneforge run, PEFT adapter or HF model folder")


def adapter_base(adapter_dir: Path) -> str:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}/adapter_config.json does not name its base model")
    return base


def check_adapter_fits(adapter_dir: Path, base_path: str, policy: LoadPolicy = SAFE) -> None:
    """Refuse an adapter trained for another architecture or size, naming both, before PEFT hits a shape error."""
    trained_for = adapter_base(adapter_dir)
    try:
        want = load_model_config(resolve_model_path(trained_for), policy)
    except UserError:
        return  # the original base is not available here: nothing to compare against
    have = load_model_config(base_path, policy)

    def shape(c):
        return (c.model_type, getattr(c, "hidden_size", None), getattr(c, "num_hidden_layers", None))

    if shape(want) != shape(have):
        w, h = shape(want), shape(have)
        raise UserError(f"adapter {adapter_dir} was trained for {trained_for} ({w[0]}, hidden {w[1]} x {w[2]} layers) "
                        f"but the base {base_path} is {h[0]}, hidden {h[1]} x {h[2]} layers")


def _load_base(found: Path, base_path: str, policy: LoadPolicy, dequantize: bool):
    """The base as the run trained over it. A run with method.quantize gets its base quantized the same
    way (the adapter learned to correct those weights, and the memory it saves is why QLoRA was chosen);
    `dequantize` turns those weights back into plain fp32 Linear layers for merging."""
    kind = run_quantize(found)
    quantization = None
    if kind:
        check_backend(kind)
        quantization = quantized_load_args(kind)
    # An adapter folder holds no base config: a context stretch the run trained with is applied again.
    model = load_model(base_path, policy=policy, rope_scaling=run_rope_scaling(found), quantization=quantization)
    return dequantize_base(model) if kind and dequantize else model


def load_for_inference(path: str | Path, base: str | None = None, policy: LoadPolicy = SAFE,
                       dequantize: bool = False):
    """(model, tokenizer) ready for generation; an adapter is loaded onto its base by its method's loader.
    `dequantize`: a quantized base comes back as plain fp32 weights (for merging and export)."""
    found = locate_artifact(path)
    method = artifact_method(found)
    if method is None:
        model = load_model(str(found), policy=policy)
    else:
        if is_bottleneck_dir(found):
            base_path = resolve_model_path(base or read_bottleneck_config(found).base_model)
        else:
            check_weights_format(found, "adapter folder", policy)
            base_path = resolve_model_path(base or adapter_base(found))
            if base:
                check_adapter_fits(found, base_path, policy)
        model = method.load(_load_base(found, base_path, policy, dequantize), found)
    tok = load_tokenizer(str(found), policy)
    model.eval()
    return model, tok


def merge_run(path: str | Path, out: str | Path, base: str | None = None, policy: LoadPolicy = SAFE,
              log=print) -> Path:
    found = locate_artifact(path)
    method = "bottleneck" if is_bottleneck_dir(found) else _run_method(found)
    if method and not METHODS[method].mergeable and METHODS[method].why_not_mergeable:
        raise UserError(f"cannot merge a {method} run: {METHODS[method].why_not_mergeable}")
    if not (found / "adapter_config.json").is_file():
        raise UserError(f"{found} is already a full model folder (no adapter to merge); use it directly")
    peft_type = json.loads((found / "adapter_config.json").read_text()).get("peft_type", "")
    if peft_type in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"):
        name = "prefix" if peft_type == "PREFIX_TUNING" else "prompt"
        raise UserError(f"cannot merge a {name} adapter: {METHODS[name].why_not_mergeable}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output {out} already exists and is not empty; choose a new folder")
    kind = run_quantize(found)
    if kind:  # folding into quantized layers would round the merged weights to the quantization grid again
        log(f"merge: the run trained over its base quantized to {kind}; that base is dequantized to fp32 (the weights "
            "the adapter was trained against) and the adapter folded in, so the merged model computes what the "
            "trained one did; its weights carry the quantization error, not the original full-precision values")
    model, tok = load_for_inference(found, base, policy, dequantize=True)
    merged = model.merge_and_unload()
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        dequantized = f" (its {kind} base dequantized to fp32 first)" if kind else ""
        carry_card(found, tmp, f"Merged by `tuneforge merge`: the adapter of {found} folded into its base"
                               f"{dequantized}; this folder is a whole model.", merged=True)
    return out
