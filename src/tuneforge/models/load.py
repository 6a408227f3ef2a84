"""Load a causal LM and its tokenizer from the embedded default, a local folder or a hub id."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch

from tuneforge.config import RopeScalingConfig
from tuneforge.errors import UserError
from tuneforge.models.policy import SAFE, LoadPolicy
from tuneforge.models.rope import apply_rope_scaling

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_weights_format(folder: str | Path, what: str = "model folder", policy: LoadPolicy = SAFE) -> None:
    """Refuse a local folder whose weights exist only as pickle files unless --allow-pickle was given:
    unpickling runs whatever code the file carries. Folders with safetensors weights always pass."""
    folder = Path(folder)
    if policy.allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise UserError(f"{what} {folder} has only pickle weights ({', '.join(pickles[:3])}), which can run "
                        "code when loaded; convert them to safetensors, or pass --allow-pickle "
                        "(tuneforge --allow-pickle COMMAND ...) if you trust where they came from")


def quiet_transformers() -> None:
    # Loading progress bars and advisory warnings drown the run's own output.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _no_packed_kernel_advice(record: logging.LogRecord) -> bool:
    # bitsandbytes, imported by transformers, asks on AVX512-BF16 CPUs for a hub kernel that speeds up
    # its packed bf16 inference path; tuneforge keeps that path off (models/quantize.py), so the
    # advice would only mislead. Set when this module is imported, before any model loads.
    return "gemm_4bit_forward" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_no_packed_kernel_advice)


def resolve_model_path(name: str | None) -> str:
    """A local folder (checked) or a hub id (left for from_pretrained); None means the embedded default."""
    if not name:
        from tuneforge.models.embedded import ensure_default_model

        return str(ensure_default_model())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json; point `model:` at an HF model folder")
        return str(path)
    looks_local = name.startswith((".", "/", "~")) or path.suffix or name.count("/") > 1
    if looks_local or path.exists():
        raise UserError(f"model path {name} does not exist; give an existing HF model folder or a hub id")
    return name  # an HF hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"


def _from_pretrained(cls, name: str, policy: LoadPolicy, weights: bool = False, **kwargs):
    """cls.from_pretrained with the loading-safety defaults: no remote code unless --trust-remote-code,
    and for model weights (`weights`) safetensors only unless --allow-pickle."""
    kwargs.setdefault("trust_remote_code", policy.trust_remote_code)
    if weights and not policy.allow_pickle:
        check_weights_format(name, policy=policy)
        kwargs.setdefault("use_safetensors", True)
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as e:
        offline = " (the hub is unreachable: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        hint = "; only safetensors weights are loaded unless --allow-pickle is given" \
            if kwargs.get("use_safetensors") and "safetensors" in str(e) else ""
        raise UserError(f"could not load '{name}'{offline}: {(str(e).splitlines() or [type(e).__name__])[0]}"
                        f"{hint}") from None
    except pickle.UnpicklingError as e:  # even with --allow-pickle, torch unpickles weights only, never code
        raise UserError(f"could not load '{name}': its pickle weights hold more than tensors, which torch's "
                        f"weights-only loader refuses ({(str(e).splitlines() or ['?'])[0][:160]})") from None


def load_model_config(name: str, policy: LoadPolicy = SAFE):
    """The model's AutoConfig (remote code only with --trust-remote-code)."""
    from transformers import AutoConfig

    quiet_transformers()
    return _from_pretrained(AutoConfig, name, policy)


def load_tokenizer(name: str, policy: LoadPolicy = SAFE):
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = _from_pretrained(AutoTokenizer, name, policy)
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dropout: float | None = None, dtype: torch.dtype = torch.float32,
               policy: LoadPolicy = SAFE, rope_scaling: RopeScalingConfig | None = None,
               max_length: int | None = None, quantization: dict | None = None):
    """fp32 master weights by default; compute runs in bf16 under autocast when the hardware has it.
    `rope_scaling` stretches the context before the weights load (checked to reach `max_length`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    config = _from_pretrained(AutoConfig, name, policy)
    if rope_scaling is not None:
        apply_rope_scaling(config, rope_scaling, max_length, name)
    if dropout is not None:
        for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                    "dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    # quantization: from_pretrained arguments that quantize the frozen base (models/quantize.py)
    model = _from_pretrained(AutoModelForCausalLM, name, policy, weights=True, config=config, dtype=dtype,
                             **(quantization or {}))
    if quantization:
        from tuneforge.models.quantize import keep_weights_unpacked

        keep_weights_unpacked(model)
    return model


def load_model_and_tokenizer(name: str | None, dropout: float | None = None, policy: LoadPolicy = SAFE,
                             rope_scaling: RopeScalingConfig | None = None, max_length: int | None = None,
                             quantization: dict | None = None):
    path = resolve_model_path(name)
    model = load_model(path, dropout, policy=policy, rope_scaling=rope_scaling, max_length=max_length,
                       quantization=quantization)
    return model, load_tokenizer(path, policy), path
