"""Extend the context window of a RoPE model: the config's `rope_scaling:` section written into the model's
transformers config before the weights load.

Written into the config (not patched into modules), the scaling travels with the model: training,
generation and evaluation see it, and a saved model folder's config.json carries it, so transformers,
vLLM or llama.cpp load the stretched model as it was trained. An adapter folder holds no base config;
`run_rope_scaling` reads the scaling back from the run's config.yaml so the base is stretched again.

transformers (5.x) keeps RoPE settings in `config.rope_parameters` ({rope_type, rope_theta, factor, ...}).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from tuneforge.config import RopeScalingConfig
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir


def has_rope(config) -> bool:
    """True when the architecture rotates queries and keys (Llama, Qwen2, Mistral...); GPT-2 learns positions."""
    return bool(getattr(config, "rope_parameters", None)) or getattr(config, "rope_theta", None) is not None


def trained_context(config) -> int:
    """The context the model was trained at, before any scaling its config already carries (so applying
    the same scaling to an already stretched model folder changes nothing)."""
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("original_max_position_embeddings"):
        return int(params["original_max_position_embeddings"])
    if params.get("rope_type") == "linear" and params.get("factor"):
        return round(config.max_position_embeddings / params["factor"])
    return int(config.max_position_embeddings)


def extended_context(scaling: RopeScalingConfig, config) -> int:
    original = scaling.original_max_position_embeddings or trained_context(config)
    return int(original * scaling.factor)


def check_rope_scaling(config, scaling: RopeScalingConfig, max_length: int | None, model: str) -> int:
    """The trained context; refuses a model without RoPE, per-layer RoPE, and a factor too small for max_length."""
    arch = getattr(config, "model_type", "?")
    if not has_rope(config):
        raise UserError(f"rope_scaling: {model} ({arch}) has no rotary position embeddings (RoPE) to scale; "
                        "remove the rope_scaling section or use a RoPE model (Llama, Qwen2, Mistral, ...)")
    params = getattr(config, "rope_parameters", None) or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise UserError(f"rope_scaling: {model} ({arch}) has RoPE settings per layer type, which tuneforge "
                        "does not scale; remove the rope_scaling section")
    original = scaling.original_max_position_embeddings or trained_context(config)
    reach = int(original * scaling.factor)
    if max_length and reach < max_length:
        raise UserError(f"rope_scaling.factor: {scaling.factor:g} x the trained context {original} = {reach} "
                        f"tokens does not reach data.max_length {max_length}; raise the factor to at least "
                        f"{math.ceil(max_length / original)} or lower data.max_length")
    return original


def apply_rope_scaling(config, scaling: RopeScalingConfig, max_length: int | None = None,
                       model: str = "the model") -> None:
    """Write the scaling into a transformers config (in place), after the checks above."""
    original = check_rope_scaling(config, scaling, max_length, model)
    old = getattr(config, "rope_parameters", None) or {}
    theta = old.get("rope_theta", getattr(config, "rope_theta", None))
    params = {"rope_type": scaling.type, "factor": float(scaling.factor), "rope_theta": theta}
    if "partial_rotary_factor" in old:
        params["partial_rotary_factor"] = old["partial_rotary_factor"]
    if scaling.type == "yarn":
        params["original_max_position_embeddings"] = original
    config.rope_parameters = params
    # Dynamic NTK reads max_position_embeddings as the trained length (it rescales only beyond it);
    # linear and yarn are told the extended length, which is then the model's declared context.
    config.max_position_embeddings = original if scaling.type == "dynamic" else int(original * scaling.factor)


def run_rope_scaling(artifact: Path) -> RopeScalingConfig | None:
    """The rope_scaling of the run an artifact folder (adapter/, model/) belongs to, from its config.yaml."""
    path = RunDir(Path(artifact).parent).config
    if not path.is_file():
        return None
    raw = (yaml.safe_load(path.read_text()) or {}).get("rope_scaling")
    return RopeScalingConfig.model_validate(raw) if raw else None


def shared_rope_scaling(artifacts: list[Path]) -> RopeScalingConfig | None:
    """The one rope_scaling of adapters that will share a base; refused when their runs differ."""
    found = {str(a): run_rope_scaling(a) for a in artifacts}
    if len({s.model_dump_json() if s else "none" for s in found.values()}) > 1:
        said = ", ".join(f"{a}: {s.type + ' x' + format(s.factor, 'g') if s else 'none'}" for a, s in found.items())
        raise UserError(f"these adapters were trained with different rope_scaling ({said}) and cannot share one "
                        "base; load them in separate processes")
    return next(iter(found.values()), None)
