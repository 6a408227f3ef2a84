"""Write a run as one GGUF file (llama.cpp, Ollama, LM Studio), with an Ollama Modelfile beside it.

The adapter is folded into its base first. Weights, tokenizer (tokens, types, merges, special ids)
and chat template go into the file the way llama.cpp's own converter lays them out for the
Llama architecture: tensor names `blk.N.attn_q.weight` ..., the query and key projections permuted
from Hugging Face's rotate-half order to llama.cpp's interleaved one, norms kept in f32, a tied
output head left out (llama.cpp then reads the embedding). Other architectures are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from tuneforge.errors import UserError
from tuneforge.model_card import carry_card
from tuneforge.models.load import SAFE, LoadPolicy
from tuneforge.models.merge import load_for_inference, locate_artifact

LLAMA_FAMILY = ("LlamaForCausalLM",)
QUANTS = ("f32", "f16", "q8_0")
# llama.cpp names its pre-tokenizers (how text is split before BPE); a file must say which one its
# tokenizer needs. Known here: SmolLM/SmolLM2 (the embedded model), by its pre-tokenizer as the hub
# ships it, or by its vocabulary (a tokenizer converted from GGUF has lost the former), and GPT-2's
# byte-level split. Others get "default", which llama.cpp loads with a warning and may split text
# differently from transformers (tests/test_export_gguf.py compares the two with llama.cpp itself).
KNOWN_PRE = {"smollm": ("Digits", "ByteLevel")}
KNOWN_VOCAB = {"6dae5ca0dff9573b1c5a7d6ab32c3498f4af9d3e3dc582f234af80ffc8c2543d": "smollm"}  # sha256 of the tokens

_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's tensor name for a Hugging Face Llama weight (None: not stored, e.g. rotary buffers)."""
    name = hf_name.removeprefix("model.")
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    if name.startswith("layers."):
        _, index, rest = name.split(".", 2)
        part, _, kind = rest.rpartition(".")
        if part in _LAYER:
            return f"blk.{index}.{_LAYER[part]}.{kind}"
    return None


def permute_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a query/key projection from Hugging Face's rotate-half layout to llama.cpp's interleaved pairs."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _pre_tokenizer(spec: dict) -> str:
    parts = (spec.get("pretokenizers") or [spec]) if spec else []
    kinds = tuple(p.get("type") for p in parts)
    if kinds == ("ByteLevel",) and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own split (its regex inside ByteLevel): llama.cpp's "gpt-2"
    return next((name for name, known in KNOWN_PRE.items() if kinds == known), "default")


def _tokenizer_fields(tok) -> dict:
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type')}")
    size = max(len(tok), max(model["vocab"].values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # llama.cpp: 1 normal, 3 control, 4 user-defined, 5 unused
    for text, i in model["vocab"].items():
        tokens[i], types[i] = text, 1
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = 3 if added.get("special") else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    by_vocab = KNOWN_VOCAB.get(hashlib.sha256(json.dumps(tokens).encode()).hexdigest())
    return {"tokens": tokens, "types": types, "merges": merges,
            "pre": by_vocab or _pre_tokenizer(spec.get("pre_tokenizer") or {})}


def _tensor(weight: torch.Tensor, quant: str, gguf):
    """(array, raw dtype or None) as the writer wants it: 1-D weights stay f32 (llama.cpp's rule)."""
    data = weight.detach().float().cpu().numpy()
    if data.ndim == 1 or quant == "f32":
        return data.astype(np.float32), None
    if quant == "f16":
        return data.astype(np.float16), None
    if data.shape[-1] % 32:  # Q8_0 blocks are 32 values along a row
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def modelfile(gguf_file: str, chat_template: str | None, eos: str | None) -> str:
    """An Ollama Modelfile: the file, a ChatML template when the model speaks ChatML, and its stop token."""
    lines = [f"FROM ./{gguf_file}"]
    if chat_template and "<|im_start|>" in chat_template:
        lines += ['TEMPLATE """{{- if .System }}<|im_start|>system', "{{ .System }}<|im_end|>",
                  "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}", "{{ .Content }}<|im_end|>",
                  '{{ end }}<|im_start|>assistant', '"""']
    else:
        lines.append("# no TEMPLATE: Ollama reads the chat template stored in the GGUF file")
    if eos:
        lines.append(f'PARAMETER stop "{eos}"')
    return "\n".join(lines) + "\n"


def export_gguf(path: str | Path, out: str | Path, quant: str = "f16", base: str | None = None,
                policy: LoadPolicy = SAFE) -> Path:
    """OUT/model-QUANT.gguf, OUT/Modelfile and the model card, written atomically; returns the GGUF path."""
    import gguf

    if quant not in QUANTS:
        raise UserError(f"--quant {quant}: use one of {', '.join(QUANTS)}")
    found = locate_artifact(path)
    model, tok = load_for_inference(found, base, policy)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    cfg = model.config
    arch = (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    if arch not in LLAMA_FAMILY:
        raise UserError(f"GGUF export supports the Llama architecture ({', '.join(LLAMA_FAMILY)}); {found} is {arch}: "
                        "merge it (`tuneforge merge`) and convert with llama.cpp's convert_hf_to_gguf.py")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"{found} uses rope scaling {rope.get('rope_type')}, which this GGUF export does not write yet")
    theta = rope.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"model-{quant}.gguf"
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=out)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(Path(path).name)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(theta)
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
        fields = _tokenizer_fields(tok)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(fields["pre"])
        writer.add_token_list(fields["tokens"])
        writer.add_token_types(fields["types"])
        writer.add_token_merges(fields["merges"])
        for add, token_id in ((writer.add_bos_token_id, tok.bos_token_id), (writer.add_eos_token_id, tok.eos_token_id),
                              (writer.add_pad_token_id, tok.pad_token_id), (writer.add_unk_token_id, tok.unk_token_id)):
            if token_id is not None:
                add(token_id)
        writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
        if tok.chat_template:
            writer.add_chat_template(tok.chat_template)
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        for name, weight in model.state_dict().items():
            target_name = gguf_name(name)
            if target_name is None or (tied and target_name == "output.weight"):
                continue
            if target_name.endswith("attn_q.weight"):
                weight = permute_rotary(weight, cfg.num_attention_heads)
            elif target_name.endswith("attn_k.weight"):
                weight = permute_rotary(weight, cfg.num_key_value_heads)
            data, raw = _tensor(weight, quant, gguf)
            writer.add_tensor(target_name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    (out / "Modelfile").write_text(modelfile(target.name, tok.chat_template, tok.eos_token))
    carry_card(found, out, f"Exported by `tuneforge export --format gguf --quant {quant}`: {target.name} "
                           "(adapter folded into its base).", merged=True)
    return target
