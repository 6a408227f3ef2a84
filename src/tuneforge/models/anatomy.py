"""Where things are inside a causal LM, under any wrapping: one place that knows the model's layout.

Wrappers stack: DDP (and accelerate's) put the model under `.module`, PEFT under `get_base_model()`.
Every caller that needs the plain transformers model, its decoder blocks, or its body and head
goes through here, so a new wrapper or architecture is taught once.
"""

from __future__ import annotations

from torch import nn

from tuneforge.errors import UserError

ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
FFN_NAMES = ("mlp", "feed_forward", "ffn")


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / accelerate / PEFT wrappers."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, nn.Module):  # DDP
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return inner


def child(block: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """The first submodule of `block` found under one of `names`, with the name it was found under."""
    for name in names:
        sub = getattr(block, name, None)
        if isinstance(sub, nn.Module):
            return name, sub
    return None


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the longest ModuleList whose elements all have an attention and a feed-forward
    submodule (the longest ModuleList alone can be something else, e.g. a list of per-layer norms)."""
    best: nn.ModuleList | None = None
    for _, mod in unwrap(model).named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            if all(child(b, ATTN_NAMES) and child(b, FFN_NAMES) for b in mod):
                if best is None or len(mod) > len(best):
                    best = mod
    if best is None:
        raise UserError(
            f"cannot find the decoder blocks of {type(model).__name__} "
            f"(a ModuleList of blocks with an attention ({'/'.join(ATTN_NAMES)}) and a feed-forward "
            f"({'/'.join(FFN_NAMES)}) submodule)"
        )
    return best


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body and the output projection. Training calls the body and applies the head
    only where loss is taken."""
    inner = unwrap(model)
    return getattr(inner, inner.base_model_prefix), inner.get_output_embeddings()
