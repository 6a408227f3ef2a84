"""The parameter arithmetic of `tuneforge estimate`: a causal LM's layout from its config.json alone,
and what each method trains on it (LoRA/DoRA `r x (in + out)` per targeted linear, IA3 vectors, prefix
and prompt tokens, bottleneck adapters, freeze's top blocks), without loading a weight.

The layout is read from a meta-device instance (shapes, no storage) or from a loaded model; the counts
equal `methods.count_parameters` after `apply_method` (tests/test_estimate.py, every method on Llama,
Qwen2 and GPT-2). train/estimate.py turns them into memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tuneforge.errors import UserError
from tuneforge.models.anatomy import ATTN_NAMES, FFN_NAMES, child, find_blocks, unwrap

# ---------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Linear:
    name: str  # full module name, e.g. model.layers.0.self_attn.q_proj
    fan_in: int
    fan_out: int


@dataclass(frozen=True)
class Layout:
    """A causal LM's parameter shapes and the widths of its decoder block."""

    model_type: str
    params: dict[str, int]  # parameter name -> elements; tied weights once
    linears: tuple[Linear, ...]  # every Linear / Conv1D of the model
    embeddings: tuple[tuple[str, int, int], ...]  # (name, rows, width) of every nn.Embedding
    head: str  # module name of the output projection
    blocks: str  # module name of the decoder blocks' list, e.g. model.layers
    layers: int
    attn_in: tuple[str, ...]  # block-relative linears reading the attention norm (q, k, v)
    attn_out: str  # block-relative output projection of attention (o_proj)
    ffn_in: tuple[str, ...]  # block-relative linears reading the feed-forward norm (gate, up)
    ffn_out: str  # block-relative down projection
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    config: dict = field(default_factory=dict, compare=False)

    @property
    def total(self) -> int:
        return sum(self.params.values())

    @property
    def attn_width(self) -> int:  # heads x head_dim: the width of q, and of k and v repeated to every head
        return self.heads * self.head_dim

    @property
    def ffn_width(self) -> int:
        return self.linear(f"{self.blocks}.0.{self.ffn_out}").fan_in

    @property
    def gated(self) -> bool:  # gate and up projections (Llama, Qwen) rather than one (GPT-2)
        return len(self.ffn_in) >= 2

    def linear(self, name: str) -> Linear:
        return next(lin for lin in self.linears if lin.name == name)

    def block_prefix(self, i: int) -> str:
        return f"{self.blocks}.{i}."


def _linear_shape(name: str, module: nn.Module) -> Linear | None:
    if isinstance(module, nn.Linear):
        return Linear(name, module.in_features, module.out_features)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2's transposed linear
        return Linear(name, module.weight.shape[0], module.nf)
    return None


def _config_int(config, *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    if default is None:
        raise UserError(f"model config has none of {', '.join(keys)}: the estimate cannot size this architecture")
    return default


def layout_of(model: nn.Module) -> Layout:
    """The layout of a (plain, not yet adapted) transformers causal LM, real or on the meta device."""
    inner = unwrap(model)
    blocks = find_blocks(inner)
    names = {id(m): n for n, m in inner.named_modules()}
    linears = tuple(s for n, m in inner.named_modules() if (s := _linear_shape(n, m)) is not None)
    embeddings = tuple((n, m.num_embeddings, m.embedding_dim) for n, m in inner.named_modules()
                       if isinstance(m, nn.Embedding))
    attn_name, attn = child(blocks[0], ATTN_NAMES)
    ffn_name, ffn = child(blocks[0], FFN_NAMES)
    # In registration order the last linear of each sublayer is its output projection (o_proj, down_proj,
    # c_proj); the others read the sublayer's normed input.
    attn_linears = [f"{attn_name}.{n}" for n, m in attn.named_modules() if _linear_shape(n, m)]
    ffn_linears = [f"{ffn_name}.{n}" for n, m in ffn.named_modules() if _linear_shape(n, m)]
    if len(attn_linears) < 2 or len(ffn_linears) < 2:
        raise UserError(f"cannot read the attention and feed-forward projections of {type(inner).__name__}: "
                        "the estimate knows Llama-, Qwen- and GPT-2-style blocks")
    params = {n: p.numel() for n, p in inner.named_parameters()}
    for lin in linears:  # a quantized weight stores its values packed: count the weights it stands for
        if f"{lin.name}.weight" in params:
            params[f"{lin.name}.weight"] = lin.fan_in * lin.fan_out
    config = inner.config
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model")
    heads = _config_int(config, "num_attention_heads", "n_head")
    head = inner.get_output_embeddings()
    return Layout(
        model_type=str(getattr(config, "model_type", type(inner).__name__)),
        params=params,
        linears=linears, embeddings=embeddings, head=names.get(id(head), "lm_head"),
        blocks=names[id(blocks)], layers=len(blocks),
        attn_in=tuple(attn_linears[:-1]), attn_out=attn_linears[-1],
        ffn_in=tuple(ffn_linears[:-1]), ffn_out=ffn_linears[-1],
        hidden=hidden, heads=heads, kv_heads=_config_int(config, "num_key_value_heads", default=heads),
        head_dim=_config_int(config, "head_dim", default=hidden // heads),
        vocab=_config_int(config, "vocab_size"), config=config.to_dict(),
    )


def skeleton_layout(model_config, trust_remote_code: bool = False) -> Layout:
    """The layout from config.json alone: the model is built on the meta device, so no weight exists."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    return layout_of(model)


# ---------------------------------------------------------------------------------------- methods


@dataclass
class Training:
    """What a method trains, in the terms the memory arithmetic needs."""

    trainable: int  # parameters the optimizer updates
    tensors: list[int]  # elements of each trainable tensor (its gradient and AdamW states are alike)
    added: int = 0  # parameters the method adds to the base (adapters)
    trained: frozenset[str] = frozenset()  # base parameters that train, by name
    lora: frozenset[str] = frozenset()  # linears with a LoRA/DoRA adapter, by full name
    lora_r: int = 0
    lora_dropout: float = 0.0
    dora: bool = False
    ia3: dict[str, bool] = field(default_factory=dict)  # IA3 linear -> scales its input (feed-forward)
    bottleneck: tuple[int, int] = (0, 0)  # (sites per block, width)
    virtual_tokens: int = 0  # prompt/prefix: tokens PEFT adds in front of every row
    prompt_learning: str = ""  # "prompt" or "prefix"

    def frozen(self, layout: Layout) -> int:
        return layout.total - sum(layout.params[n] for n in self.trained)


def _matches(name: str, keys) -> bool:
    # PEFT's rule for a list of target modules: the full name, or its last dotted parts
    return any(name == k or name.endswith("." + k) for k in keys)


def _lora_targets(layout: Layout, targets) -> list[tuple[str, int, int]]:
    """(name, fan_in, fan_out) of every module PEFT puts a LoRA adapter on."""
    modules = [(lin.name, lin.fan_in, lin.fan_out) for lin in layout.linears]
    if targets == "all-linear":  # every linear but the output layer, matched by short name (PEFT)
        keys = {lin.name.rsplit(".", 1)[-1] for lin in layout.linears if lin.name != layout.head}
        return [m for m in modules if _matches(m[0], keys)]
    # Embeddings take LoRA too: A is r x rows, B is width x r, the same r*(in+out) count.
    found = [m for m in modules + [(n, rows, width) for n, rows, width in layout.embeddings] if _matches(m[0], targets)]
    if not found:
        short = sorted({lin.name.rsplit(".", 1)[-1] for lin in layout.linears})
        raise UserError(f"method.target_modules: none of {list(targets)} names a linear layer of this model; "
                        f"its linear layers are {', '.join(short)}, or use all-linear")
    return found


def _full(layout: Layout, m) -> Training:
    return Training(layout.total, list(layout.params.values()), trained=frozenset(layout.params))


def _freeze(layout: Layout, m) -> Training:
    if m.trainable_layers > layout.layers:
        raise UserError(f"method.trainable_layers={m.trainable_layers} but the model has {layout.layers} blocks")
    top = [layout.block_prefix(i) for i in range(layout.layers - m.trainable_layers, layout.layers)]
    trained = {n for n in layout.params if any(n.startswith(p) for p in top)}
    trained |= {n for n in layout.params if any(pattern in n for pattern in m.trainable_modules)}
    missing = [p for p in m.trainable_modules if not any(p in n for n in layout.params)]
    if missing:
        raise UserError(f"method.trainable_modules: no parameter name contains {missing}")
    if not trained:
        raise UserError("method 'freeze' leaves nothing to train; raise trainable_layers or add trainable_modules")
    return Training(sum(layout.params[n] for n in trained), [layout.params[n] for n in trained],
                    trained=frozenset(trained))


def _lora(layout: Layout, m) -> Training:
    targets = _lora_targets(layout, m.target_modules)
    tensors = [x for _, fan_in, fan_out in targets for x in (m.r * fan_in, m.r * fan_out)]
    if m.name == "dora":  # a magnitude vector per output feature
        tensors += [fan_out for _, _, fan_out in targets]
    return Training(sum(tensors), tensors, sum(tensors), lora=frozenset(n for n, _, _ in targets), lora_r=m.r,
                    lora_dropout=m.dropout, dora=m.name == "dora")


def _ia3(layout: Layout, m) -> Training:
    from peft.utils import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
                            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS)

    def pick(value, mapping, key):
        if value != "auto":
            return value
        if layout.model_type not in mapping:
            raise UserError(f"method.{key}: PEFT has no IA3 default for model type {layout.model_type}; list the "
                            "modules, e.g. target_modules: [k_proj, v_proj, down_proj]")
        return mapping[layout.model_type]

    targets = pick(m.target_modules, TARGETS, "target_modules")
    feedforward = pick(m.feedforward_modules, FEEDFORWARD, "feedforward_modules")
    scaled = {lin.name: _matches(lin.name, feedforward) for lin in layout.linears if _matches(lin.name, targets)}
    if not scaled:
        raise UserError(f"method.target_modules: none of {list(targets)} names a linear layer of this model")
    # A feed-forward target scales its input (a vector of fan_in), any other its output (fan_out).
    tensors = [lin.fan_in if scaled[lin.name] else lin.fan_out for lin in layout.linears if lin.name in scaled]
    return Training(sum(tensors), tensors, sum(tensors), ia3=scaled)


def _prefix_token_dim(layout: Layout) -> int:
    # PEFT sizes the prefixes by the key/value width, which grouped-query attention makes narrower.
    if "num_key_value_heads" in layout.config:
        return layout.head_dim * layout.kv_heads
    return layout.hidden


def _prefix(layout: Layout, m) -> Training:
    dim, n, per_token = _prefix_token_dim(layout), m.num_virtual_tokens, 2 * layout.layers * _prefix_token_dim(layout)
    if m.projection:  # embedding, then Linear(dim, hidden) - tanh - Linear(hidden, per_token), with biases
        h = m.projection_hidden_size
        tensors = [n * dim, dim * h, h, h * per_token, per_token]
    else:
        tensors = [n * per_token]
    return Training(sum(tensors), tensors, sum(tensors), virtual_tokens=n, prompt_learning="prefix")


def _prompt(layout: Layout, m) -> Training:
    added = m.num_virtual_tokens * layout.hidden
    return Training(added, [added], added, virtual_tokens=m.num_virtual_tokens, prompt_learning="prompt")


def _bottleneck(layout: Layout, m) -> Training:
    width = m.size or max(1, layout.hidden // m.reduction_factor)
    sites = 2 if m.placement == "houlsby" else 1  # after attention and feed-forward, or feed-forward only
    tensors = [layout.hidden * width, width, width * layout.hidden, layout.hidden] * (layout.layers * sites)
    return Training(sum(tensors), tensors, sum(tensors), bottleneck=(sites, width))  # down and up, with biases


TRAINING = {"full": _full, "freeze": _freeze, "lora": _lora, "dora": _lora, "ia3": _ia3, "prefix": _prefix,
            "prompt": _prompt, "bottleneck": _bottleneck}


def training_of(layout: Layout, method) -> Training:
    """What `method` (a config.method section) trains on this layout: counts and where gradients flow."""
    return TRAINING[method.name](layout, method)
