"""Load a causal LM and its tokenizer from the embedded default, a local folder or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tuneforge.errors import UserError


def quiet_transformers() -> None:
    # Loading progress bars and advisory warnings drown the run's own output.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


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


def _from_pretrained(cls, name: str, **kwargs):
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as e:
        offline = " (the hub is unreachable: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise UserError(f"could not load '{name}'{offline}: {str(e).splitlines()[0]}") from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = _from_pretrained(AutoTokenizer, name)
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dropout: float | None = None, dtype: torch.dtype = torch.float32):
    """fp32 master weights by default; compute runs in bf16 under autocast when the hardware has it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    config = _from_pretrained(AutoConfig, name)
    if dropout is not None:
        for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                    "dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    return _from_pretrained(AutoModelForCausalLM, name, config=config, dtype=dtype)


def load_model_and_tokenizer(name: str | None, dropout: float | None = None):
    path = resolve_model_path(name)
    return load_model(path, dropout), load_tokenizer(path), path


def decoder_and_head(model):
    """The transformer body and the output projection, under any PEFT or DDP wrapping.

    Training calls the body and applies the head only where loss is taken.
    """
    inner = model
    while hasattr(inner, "module"):  # DDP
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return getattr(inner, inner.base_model_prefix), inner.get_output_embeddings()
