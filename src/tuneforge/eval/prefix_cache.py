"""Generation that reuses the attention keys and values of prompts it has already read.

Agent prompts repeat themselves: every step of a task starts with the same tool list and task, and
the prompt of step k+1 is the prompt of step k plus one more turn. Reading (prefilling) a prompt is
about half of a generation's time, so most of that work is redone for nothing.

A :class:`PrefixCache` keeps the keys and values of prompts read earlier (per model: the caller
keeps one per model or adapter, since another model's cache means nothing). For a new prompt it
takes the stored prompt with the longest common prefix, keeps that many positions (in a causal
model they depend on those tokens only) and reads just the rest, one prompt at a time (prefill
needs no batching to run fast, and unbatched it wastes nothing on padding). The prompts of a batch
are then decoded together from a static cache, which also avoids the dynamic cache's copy of every
layer's keys and values at every new token.

Outputs are the same as plain batched generation (tested token for token in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [1, heads, positions, head_dim]


@dataclass(eq=False)  # entries are removed by identity, never compared by value
class _Entry:
    tokens: np.ndarray
    kv: KV
    nbytes: int
    used: int = field(default=0)


class PrefixCache:
    """Keys and values of prompts read before, for one model; the least recently used go first once
    `max_bytes` is passed. An entry that a newer prompt extends is replaced by it (the newer one holds
    all it held)."""

    def __init__(self, max_bytes: int = 4 << 30):
        self.max_bytes = max_bytes
        self._entries: list[_Entry] = []
        self._clock = 0
        self.read_tokens = 0  # prompt tokens computed
        self.reused_tokens = 0  # prompt tokens taken from the cache

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, tokens: np.ndarray) -> tuple[int, _Entry | None]:
        """The entry sharing the longest prefix with `tokens`, and that length."""
        best, best_n = None, 0
        for e in self._entries:
            m = min(len(e.tokens), len(tokens))
            if m <= best_n:
                continue
            same = e.tokens[:m] == tokens[:m]
            n = m if same.all() else int(np.argmin(same))
            if n > best_n:
                best, best_n = e, n
        return best_n, best

    def add(self, tokens: np.ndarray, kv: KV, replaces: _Entry | None = None) -> None:
        if replaces is not None and len(replaces.tokens) <= len(tokens) and replaces in self._entries \
                and np.array_equal(replaces.tokens, tokens[:len(replaces.tokens)]):
            self._entries.remove(replaces)
        nbytes = sum(k.nbytes + v.nbytes for k, v in kv)
        self._clock += 1
        self._entries.append(_Entry(tokens, kv, nbytes, self._clock))
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.remove(min(self._entries, key=lambda e: e.used))

    def touch(self, entry: _Entry) -> None:
        self._clock += 1
        entry.used = self._clock

    def clear(self) -> None:
        self._entries.clear()


def supports_prefix_cache(model) -> bool:
    """Only models whose every layer attends to all earlier positions (no sliding windows, no
    recurrent state): for those, a cache cut at any position is a valid cache of that prefix."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False  # prefix and prompt tuning put their own virtual tokens in front of every prompt
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - an architecture transformers cannot build a cache for
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def read_prompt(model, ids: list[int], cache: PrefixCache) -> KV:
    """Keys and values of every token of `ids` but the last (generation reads that one, so each row
    of a batch has at least one token to feed), reusing and then extending `cache`."""
    from transformers.cache_utils import DynamicCache

    tokens = np.asarray(ids[:-1], dtype=np.int64)
    n, entry = cache.longest(tokens)
    if entry is not None:
        cache.touch(entry)
    kv = [(k[:, :, :n], v[:, :, :n]) for k, v in entry.kv] if entry is not None and n else None
    cache.reused_tokens += n
    if n < len(tokens):
        dynamic = DynamicCache(config=model.config)
        if kv is not None:
            for layer, (k, v) in enumerate(kv):
                dynamic.update(k, v, layer)
        device = next(model.parameters()).device
        rest = torch.as_tensor(tokens[n:], device=device).unsqueeze(0)
        model(input_ids=rest, position_ids=torch.arange(n, len(tokens), device=device).unsqueeze(0),
              past_key_values=dynamic, use_cache=True)
        kv = [(layer.keys, layer.values) for layer in dynamic.layers]
        cache.read_tokens += len(tokens) - n
        cache.add(tokens, kv, replaces=entry)
    return kv


def generate_batch(model, rows: list[list[int]], cache: PrefixCache, gen_config, pad_id: int, **extra
                   ) -> torch.Tensor:
    """Generate for token-id prompts (each ≥ 2 tokens) as one batch; returns the new tokens only."""
    from transformers.cache_utils import StaticCache

    kvs = [read_prompt(model, ids, cache) for ids in rows]
    width = max(len(ids) for ids in rows)
    device = next(model.parameters()).device
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, ids in enumerate(rows):
        input_ids[r, width - len(ids):] = torch.as_tensor(ids, device=device)
        mask[r, width - len(ids):] = 1
    static = StaticCache(config=model.config, max_cache_len=width + gen_config.max_new_tokens)
    for layer in range(len(kvs[0])):
        k0, v0 = kvs[0][layer][0], kvs[0][layer][1]
        keys = k0.new_zeros((len(rows), k0.shape[1], width - 1, k0.shape[3]))
        values = v0.new_zeros((len(rows), v0.shape[1], width - 1, v0.shape[3]))
        for r, ids in enumerate(rows):  # left-padded like the token ids; the mask hides the zeros
            keys[r, :, width - len(ids):] = kvs[r][layer][0][0]
            values[r, :, width - len(ids):] = kvs[r][layer][1][0]
        static.update(keys, values, layer)
    out = model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=static,
                         generation_config=gen_config, **extra)
    return out[:, width:]
