"""Batched generation for evaluation, chat, agents and calibration.

Batching is only worth it if it changes nothing: greedy outputs here match calling
``model.generate`` one prompt at a time (in fp32). Left padding plus the attention mask lets
transformers derive correct position ids, and sorting by length keeps padding (wasted compute)
small.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from tuneforge.eval.prefix_cache import PrefixCache, generate_batch, supports_prefix_cache

Prompt = str | list[dict]


def render_prompt(tokenizer, prompt: Prompt, system: str | None = None, continue_final: bool = False) -> str:
    """Render a prompt (a plain string is one user message) ready for the assistant's reply, or, with
    `continue_final`, ready to continue its last message, an assistant turn left open."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    if continue_final and not (messages and messages[-1].get("role") == "assistant"):
        raise ValueError("continue_final: the prompt's last message must be the assistant turn to continue")
    if not getattr(tokenizer, "chat_template", None):
        # Base models without a template: plain concatenation is the best we can do.
        return "\n".join(m["content"] for m in messages)
    if continue_final:
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def generation_autocast(device: torch.device, enabled: bool):
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def generation_config(model, tokenizer, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                      stop: list[str] | None = None):
    """The model's generation config with our sampling settings: greedy at temperature 0, no hidden top_k."""
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    gen_config = copy.deepcopy(model.generation_config)
    sample = temperature > 0
    gen_config.update(
        max_new_tokens=max_new_tokens, max_length=None, min_new_tokens=None, min_length=0,
        do_sample=sample, num_beams=1,
        temperature=temperature if sample else None, top_p=top_p if sample else None,
        top_k=None,  # top_p is the only truncation we expose; a hidden top_k=50 would surprise
        eos_token_id=eos_ids, pad_token_id=pad_id, use_cache=True,
        stop_strings=stop or None,
    )
    return gen_config


def seeded(seed: int | None, device: torch.device):
    if seed is None:
        return contextlib.nullcontext()
    # Fork so a seeded eval does not reset the caller's (e.g. the trainer's) RNG stream.
    devices = [device.index or 0] if device.type == "cuda" else []
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=devices))
    torch.manual_seed(seed)
    return stack


def generate(
    model,
    tokenizer,
    prompts: list[Prompt],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_at_newline: bool = False,
    seed: int | None = None,
    system: str | None = None,
    autocast_bf16: bool = False,
    prefix_cache: PrefixCache | None = None,
    continue_final: bool = False,
) -> list[str]:
    """Generate a reply for each prompt; returns only the new text, in the prompts' order.
    `continue_final`: each prompt ends in an assistant turn left open, and the reply continues it.

    `prefix_cache` (one per model): reuse what earlier prompts of this model already read (see
    eval/prefix_cache.py); the prompts are then taken in token order, so a prompt that another one
    extends is read right before it."""
    if not prompts:
        return []
    has_template = bool(getattr(tokenizer, "chat_template", None))
    texts = [render_prompt(tokenizer, p, system, continue_final) for p in prompts]
    # Rendered templates already contain their special tokens; adding more would shift outputs.
    encoded = [tokenizer(t, add_special_tokens=not has_template)["input_ids"] for t in texts]
    # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    if prefix_cache is not None and not supports_prefix_cache(model):
        prefix_cache = None
    if prefix_cache is not None:
        # In token order (lexicographic): a prompt comes right after the prompts it extends and beside
        # those sharing its start, so each reuses what was just read and the cache needs to hold only
        # a window of recent prompts, however many there are (shortest-first needed them all: with 160
        # agent tasks the cache overflowed and every prompt was read again).
        order = sorted(range(len(prompts)), key=lambda i: encoded[i])

    gen_config = generation_config(model, tokenizer, max_new_tokens, temperature, top_p,
                                   ["\n"] if stop_at_newline else None)
    extra = {"tokenizer": tokenizer} if stop_at_newline else {}  # stop strings need it

    device = next(model.parameters()).device
    was_training = model.training
    saved_side = tokenizer.padding_side
    saved_pad = tokenizer.pad_token
    results: list[str] = [""] * len(prompts)
    try:
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # force_eager: blocks compiled for training would otherwise recompile for the KV-cache path.
        with torch.inference_mode(), generation_autocast(device, autocast_bf16), seeded(seed, device), \
                torch.compiler.set_stance("force_eager"):
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                if prefix_cache is not None and all(len(encoded[i]) >= 2 for i in idx):
                    new = generate_batch(model, [encoded[i] for i in idx], prefix_cache, gen_config,
                                         gen_config.pad_token_id, **extra)
                else:
                    batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                    batch = {k: v.to(device) for k, v in batch.items()}
                    out = model.generate(**batch, generation_config=gen_config, **extra)
                    new = out[:, batch["input_ids"].shape[1]:]
                for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                    results[i] = text.split("\n", 1)[0] if stop_at_newline else text
    finally:
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)
    return results
