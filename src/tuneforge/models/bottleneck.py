"""Bottleneck adapters (Houlsby / Pfeiffer), which PEFT does not provide.

An adapter is a small residual MLP ``x + scale * up(act(down(x)))`` applied to the output of a
sublayer of each decoder block. The adapters are registered as child modules of the blocks (so
they appear in ``named_parameters``/``state_dict`` and move with ``.to()``), and are applied with a
forward hook on the sublayer, so calling the transformer body directly (as the training loop does)
goes through them. Nothing in the library's source is patched.

The up-projection starts at zero, so a freshly attached model computes exactly what the base does.
Adapter parameters are kept in fp32 whatever the base's dtype; the hook casts in and out.

Placements:
  * ``houlsby``  - after the attention sublayer and after the feed-forward sublayer of each block;
  * ``pfeiffer`` - after the feed-forward sublayer only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.errors import UserError
from tuneforge.models.anatomy import ATTN_NAMES, FFN_NAMES, child, find_blocks, unwrap

CONFIG_NAME = "bottleneck_config.json"
WEIGHTS_NAME = "bottleneck_model.safetensors"

PLACEMENTS = ("houlsby", "pfeiffer")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
ADAPTER_ATTRS = {"attn": "bottleneck_attn", "ffn": "bottleneck_ffn"}
_CONFIG_ATTR = "_bottleneck_config"


# --------------------------------------------------------------------------------------------- config


@dataclass
class BottleneckConfig:
    """What to attach. ``size`` or ``reduction_factor`` (hidden // factor), never both; neither means size 64.

    ``base_model``, ``model_type``, ``hidden_size``, ``num_layers`` and ``bottleneck_dim`` are filled in
    when the adapters are attached / saved, and checked when they are loaded.
    """

    size: int | None = None
    reduction_factor: int | None = None
    placement: str = "houlsby"
    activation: str = "relu"
    scale: float = 1.0
    # recorded
    base_model: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    bottleneck_dim: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None and self.reduction_factor is not None:
            raise UserError("bottleneck: give either `size` or `reduction_factor`, not both")
        if self.size is None and self.reduction_factor is None:
            self.size = 64
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise UserError(f"bottleneck: `size` must be a positive integer, got {self.size!r}")
        if self.reduction_factor is not None and (
            isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int)
            or self.reduction_factor < 1
        ):
            raise UserError(f"bottleneck: `reduction_factor` must be a positive integer, got {self.reduction_factor!r}")
        if self.placement not in PLACEMENTS:
            raise UserError(f"bottleneck: unknown placement '{self.placement}': choose one of {', '.join(PLACEMENTS)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"bottleneck: unknown activation '{self.activation}': choose one of {', '.join(ACTIVATIONS)}"
            )
        try:
            self.scale = float(self.scale)
        except (TypeError, ValueError):
            raise UserError(f"bottleneck: `scale` must be a number, got {self.scale!r}") from None
        if not math.isfinite(self.scale):
            raise UserError(f"bottleneck: `scale` must be finite, got {self.scale!r}")

    def resolve_dim(self, hidden_size: int) -> int:
        if self.size is not None:
            return self.size
        dim = hidden_size // self.reduction_factor
        if dim < 1:
            raise UserError(
                f"bottleneck: reduction_factor {self.reduction_factor} leaves no units of hidden size {hidden_size}"
            )
        return dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BottleneckConfig:
        if not isinstance(d, dict):
            raise UserError(f"bottleneck: config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"bottleneck: unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)


# --------------------------------------------------------------------------------------------- module


class BottleneckAdapter(nn.Module):
    """``x + scale * up(act(down(x)))``, fp32 parameters, identity at initialisation."""

    def __init__(self, hidden_size: int, bottleneck_dim: int, activation: str = "relu", scale: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"bottleneck: unknown activation '{activation}': choose one of {', '.join(ACTIVATIONS)}")
        self.hidden_size = hidden_size
        self.bottleneck_dim = bottleneck_dim
        self.scale = float(scale)
        self.enabled = True
        self.down = nn.Linear(hidden_size, bottleneck_dim, device=device, dtype=dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_dim, hidden_size, device=device, dtype=dtype)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        in_dtype = x.dtype
        h = x.to(self.down.weight.dtype)
        h = h + self.scale * self.up(self.act(self.down(h)))
        return h.to(in_dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, enabled={self.enabled}"


class _AdapterHook:
    """Forward hook applying ``adapter`` to a sublayer's output (first element of a tuple output).

    A plain object (not a closure), so ``copy.deepcopy(model)`` rebinds it to the copied adapter.
    """

    def __init__(self, adapter: BottleneckAdapter):
        self.adapter = adapter

    def __call__(self, module: nn.Module, args, output):
        adapter = self.adapter
        if not adapter.enabled:
            return None
        if isinstance(output, torch.Tensor):
            return adapter(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (adapter(output[0]),) + tuple(output[1:])
        if isinstance(output, list) and output and isinstance(output[0], torch.Tensor):
            return [adapter(output[0]), *output[1:]]
        raise TypeError(f"bottleneck: cannot adapt output of type {type(output).__name__} from {type(module).__name__}")


# --------------------------------------------------------------------------------------------- locating


def _hidden_size(model: nn.Module) -> int:
    config = getattr(unwrap(model), "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise UserError(f"bottleneck: cannot tell the hidden size of {type(model).__name__} (no config.hidden_size)")


def _model_type(model: nn.Module) -> str:
    config = getattr(unwrap(model), "config", None)
    return str(getattr(config, "model_type", None) or type(unwrap(model)).__name__)


def _base_name(model: nn.Module) -> str | None:
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_name_or_path", None) or None


def _block_device(block: nn.Module) -> torch.device | None:
    for p in block.parameters():
        return p.device
    for b in block.buffers():
        return b.device
    return None


def bottleneck_modules(model: nn.Module) -> dict[str, BottleneckAdapter]:
    """All attached adapters, by name relative to the blocks list (``"{i}.bottleneck_ffn"``)."""
    if not is_bottleneck_model(model):
        return {}
    found = {}
    for i, block in enumerate(find_blocks(model)):
        for attr in ADAPTER_ATTRS.values():
            mod = getattr(block, attr, None)
            if isinstance(mod, BottleneckAdapter):
                found[f"{i}.{attr}"] = mod
    return found


def is_bottleneck_model(model: nn.Module) -> bool:
    return getattr(unwrap(model), _CONFIG_ATTR, None) is not None


def get_bottleneck_config(model: nn.Module) -> BottleneckConfig | None:
    """The config the attached adapters were built with (recorded fields filled in), or None."""
    cfg = getattr(unwrap(model), _CONFIG_ATTR, None)
    return dataclasses.replace(cfg) if cfg is not None else None


def bottleneck_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, keyed relative to the blocks list, independent of wrappers."""
    out = {}
    for name, adapter in bottleneck_modules(model).items():
        for key, tensor in adapter.state_dict().items():
            out[f"{name}.{key}"] = tensor
    return out


# --------------------------------------------------------------------------------------------- attach


def attach_bottleneck(model: nn.Module, cfg: BottleneckConfig | dict | None = None) -> nn.Module:
    """Freeze the base and add adapters inside each decoder block; returns the same model object."""
    if cfg is None:
        cfg = BottleneckConfig()
    elif isinstance(cfg, dict):
        cfg = BottleneckConfig.from_dict(cfg)
    if is_bottleneck_model(model):
        raise UserError("bottleneck: adapters are already attached to this model; detach_bottleneck() first")
    blocks = find_blocks(model)
    hidden = _hidden_size(model)
    dim = cfg.resolve_dim(hidden)
    record = dataclasses.replace(
        cfg, base_model=cfg.base_model or _base_name(model), model_type=_model_type(model),
        hidden_size=hidden, num_layers=len(blocks), bottleneck_dim=dim,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    sites = ("attn", "ffn") if record.placement == "houlsby" else ("ffn",)
    for block in blocks:
        device = _block_device(block)
        for site in sites:
            _, sub = child(block, ATTN_NAMES if site == "attn" else FFN_NAMES)
            adapter = BottleneckAdapter(hidden, dim, record.activation, record.scale, device=device)
            block.add_module(ADAPTER_ATTRS[site], adapter)
            sub.register_forward_hook(_AdapterHook(adapter))
    object.__setattr__(unwrap(model), _CONFIG_ATTR, record)
    return model


def detach_bottleneck(model: nn.Module) -> nn.Module:
    """Remove the hooks and adapter modules; the base computes exactly what it did before attaching.

    Base parameters stay frozen (attach froze them); call ``requires_grad_(True)`` to train the base.
    """
    if not is_bottleneck_model(model):
        return model
    for block in find_blocks(model):
        for names in (ATTN_NAMES, FFN_NAMES):
            found = child(block, names)
            if found is None:
                continue
            hooks = found[1]._forward_hooks
            for hook_id in [k for k, h in hooks.items() if isinstance(h, _AdapterHook)]:
                del hooks[hook_id]
                for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
                    getattr(found[1], extra, {}).pop(hook_id, None)
        for attr in ADAPTER_ATTRS.values():
            if attr in block._modules:
                del block._modules[attr]
    object.__setattr__(unwrap(model), _CONFIG_ATTR, None)
    return model


def set_bottleneck_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the adapters off (base behaviour, bit for bit) or back on, without removing them."""
    for adapter in bottleneck_modules(model).values():
        adapter.enabled = bool(enabled)
    return model


# --------------------------------------------------------------------------------------------- save/load


def is_bottleneck_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save_bottleneck(model: nn.Module, cfg: BottleneckConfig | None, out_dir: str | Path) -> Path:
    """Write ``bottleneck_config.json`` and ``bottleneck_model.safetensors`` (adapter weights only).

    A new folder appears whole (temp dir + rename); into an existing folder each file is replaced
    atomically, weights first, so a folder with a config always has matching weights.
    """
    from safetensors.torch import save_file

    attached = get_bottleneck_config(model)
    if attached is None:
        raise UserError("bottleneck: the model has no adapters attached; nothing to save")
    if cfg is None:
        record = attached
    else:
        record = dataclasses.replace(
            cfg, base_model=cfg.base_model or attached.base_model, model_type=attached.model_type,
            hidden_size=attached.hidden_size, num_layers=attached.num_layers, bottleneck_dim=attached.bottleneck_dim,
        )
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in bottleneck_state_dict(model).items()}
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = not out_dir.exists()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if fresh else out_dir))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "tuneforge": "bottleneck"})
        (tmp / CONFIG_NAME).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        if fresh:
            from tuneforge.atomic import make_shareable_dir

            make_shareable_dir(tmp)
            os.replace(tmp, out_dir)
        else:
            os.replace(tmp / WEIGHTS_NAME, out_dir / WEIGHTS_NAME)
            os.replace(tmp / CONFIG_NAME, out_dir / CONFIG_NAME)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_bottleneck_config(path: str | Path) -> BottleneckConfig:
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME):
        path = path.parent
    if not is_bottleneck_dir(path):
        raise UserError(f"{path} is not a bottleneck adapter folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        data = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path / CONFIG_NAME}: {e}") from None
    return BottleneckConfig.from_dict(data)


def load_bottleneck(model: nn.Module, path: str | Path) -> nn.Module:
    """Attach the adapters saved at ``path`` to ``model`` (replacing any attached) and load their weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME):
        path = path.parent
    cfg = read_bottleneck_config(path)
    blocks = find_blocks(model)
    have = (_model_type(model), _hidden_size(model), len(blocks))
    want = (cfg.model_type, cfg.hidden_size, cfg.num_layers)
    if any(w is not None and w != h for w, h in zip(want, have)):
        base = _base_name(model) or type(unwrap(model)).__name__
        raise UserError(
            f"adapter at {path} was trained for {want[0]} hidden {want[1]} x {want[2]} layers; "
            f"base {base} is {have[0]} hidden {have[1]} x {have[2]} layers"
        )
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {path / WEIGHTS_NAME}: {e}") from None
    detach_bottleneck(model)
    attach_bottleneck(model, cfg)
    expected = bottleneck_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or bad:
        detach_bottleneck(model)
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad)) if keys
        )
        raise UserError(f"adapter weights at {path} do not match its config ({detail})")
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(tensors[k])
    return model
