"""Generation that reuses the attention keys and values of prompts it has already read.

Agent prompts repeat themselves: every step of a task starts with the same tool list and task, and
the prompt of step k+1 is the prompt of step k plus one more turn. Reading (prefilling) a prompt is
about half of a generation's time, so most of that work is redone for nothing.

A :class:`PrefixCache` keeps the keys and values of prompts read earlier (per model: the caller
keeps one per model or adapter, since another model's cache means nothing). For a new prompt it
takes the stored prompt with the longest common prefix, keeps that many positions (in a causal
model they depend on those tokens only) and reads just the rest, one prompt at a time (through the
decoder body only, as no logits of a prompt's positions are needed; read together, right-padded with a
4D mask, prompts took longer, measured in docs/agent.md). The prompts of a batch are then decoded
together. Greedy decoding, what evaluation uses, runs its own loop
(`greedy_decode`): keys and values go into one buffer per layer allocated once, attention reads only
the positions filled so far, and a row that ends leaves the batch at once (a live row from the end
moves into its place, so only moved rows are copied). On a 2-core AMX CPU decoding is
bound by reading keys and values; a static cache read its unfilled positions at every token, and a
batch kept computing its finished rows until its longest reply ended (agent replies average ~24
tokens against a batch's longest ~60). Other decoding (sampling, stop strings, processors that
change the greedy choice) goes through transformers' `generate` from a static cache.

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


def _decoder(model):
    """The model without its output head: reading a prompt needs keys and values, not logits (the head
    over every position of an ~800-token prompt was a fifth of the reading, measured on SmolLM2-135M)."""
    try:
        decoder = model.get_decoder()
    except Exception:  # noqa: BLE001 - an architecture without a findable decoder: the whole model works too
        return model
    return decoder if decoder is not model and isinstance(decoder, torch.nn.Module) else model


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
        _decoder(model)(input_ids=rest, position_ids=torch.arange(n, len(tokens), device=device).unsqueeze(0),
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
    if not extra and plain_greedy(gen_config):
        return greedy_decode(model, rows, kvs, gen_config.max_new_tokens, _as_list(gen_config.eos_token_id),
                             pad_id)
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


# Settings that change which token greedy decoding picks, at the values that leave it alone: with any
# other value, decoding goes through transformers' generate, which applies them.
_GREEDY_NEUTRAL = {
    "do_sample": (False, None), "num_beams": (1, None), "repetition_penalty": (1.0, None),
    "no_repeat_ngram_size": (0, None), "bad_words_ids": (None,), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "sequence_bias": (None,), "min_new_tokens": (0, None), "min_length": (0, None),
    "encoder_repetition_penalty": (1.0, None), "exponential_decay_length_penalty": (None,),
    "stop_strings": (None,), "guidance_scale": (1.0, None), "watermarking_config": (None,),
    "max_time": (None,), "num_return_sequences": (1, None), "constraints": (None,),
    "force_words_ids": (None,), "assistant_model": (None,), "prompt_lookup_num_tokens": (None,),
}


def plain_greedy(gen_config) -> bool:
    """Whether `gen_config` asks for greedy decoding with nothing that changes the argmax."""
    if not gen_config.max_new_tokens:
        return False
    return all(getattr(gen_config, key, None) in allowed for key, allowed in _GREEDY_NEUTRAL.items())


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """One layer's keys and values in a buffer allocated once, [rows, heads, positions, head_dim]:
        a new position is written in place, and attention gets a view of the live rows and of the
        positions from `start` to those filled so far (a dynamic layer copies all earlier positions at
        every token; a static one hands attention every position, filled or not)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
            super().__init__()
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self.key_buffer, self.value_buffer = keys, values
            self.rows, self.start, self.filled = keys.shape[0], 0, filled
            self._view()

        def _view(self):
            self.keys = self.key_buffer[:self.rows, :, self.start:self.filled]
            self.values = self.value_buffer[:self.rows, :, self.start:self.filled]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.filled + key_states.shape[-2]
            self.key_buffer[:self.rows, :, self.filled:end] = key_states
            self.value_buffer[:self.rows, :, self.filled:end] = value_states
            self.filled = end
            self._view()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.filled - self.start

        def compact(self, holes: torch.Tensor, donors: torch.Tensor, rows: int, start: int) -> None:
            """Rows `donors` (live, at or past `rows`) move into `holes` (ended rows before `rows`); then
            only the first `rows` rows, from `start` on, are attended to. Only the moved rows are copied
            (copying every live row at each drop cost as much as several decode steps at 64 rows)."""
            if len(holes):
                span = slice(self.start, self.filled)
                self.key_buffer[holes, :, span] = self.key_buffer[donors, :, span]
                self.value_buffer[holes, :, span] = self.value_buffer[donors, :, span]
            self.rows, self.start = rows, self.start + start
            self._view()

    return GrowingLayer


def greedy_decode(model, rows: list[list[int]], kvs: list[KV], max_new_tokens: int, eos_ids: list[int],
                  pad_id: int) -> torch.Tensor:
    """Greedy continuation of token-id prompts whose keys and values (all positions but the last) are
    `kvs`; returns the new tokens, [rows, steps], `pad_id` after a row's end of sequence. Token for token
    what transformers' greedy `generate` gives for the left-padded batch (tested in fp32)."""
    from transformers.cache_utils import Cache

    device = next(model.parameters()).device
    n = len(rows)
    cached = [len(ids) - 1 for ids in rows]
    width = max(cached)
    size = width + max_new_tokens
    layer_class = _growing_layer_class()
    layers = []
    for layer in range(len(kvs[0])):
        k0 = kvs[0][layer][0]
        keys = k0.new_zeros((n, k0.shape[1], size, k0.shape[3]))
        values = k0.new_zeros((n, kvs[0][layer][1].shape[1], size, kvs[0][layer][1].shape[3]))
        for r, c in enumerate(cached):  # left-padded; the attention mask hides the zeros
            keys[r, :, width - c:width] = kvs[r][layer][0][0]
            values[r, :, width - c:width] = kvs[r][layer][1][0]
        layers.append(layer_class(keys, values, width))
    cache = Cache(layers=layers)
    mask = torch.zeros((n, size), dtype=torch.long, device=device)
    for r, c in enumerate(cached):
        mask[r, width - c:] = 1
    position = torch.as_tensor(cached, device=device)  # of the token fed next: each row's last prompt token
    token = torch.as_tensor([ids[-1] for ids in rows], device=device)
    row_of = torch.arange(n, device=device)  # the original row of each row still in the batch
    ended = torch.zeros(n, dtype=torch.bool, device=device)
    eos = torch.as_tensor(eos_ids or [-1], device=device)
    out = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    steps = 0
    for step in range(max_new_tokens):
        filled = cache.get_seq_length()
        logits = model(input_ids=token[:, None], attention_mask=mask[:, :filled + 1],
                       position_ids=position[:, None], past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        token = torch.where(ended, pad_id, logits.argmax(-1))
        out[row_of, step] = token
        steps = step + 1
        ended |= torch.isin(token, eos)
        live = ~ended
        count = int(live.sum())
        if count == 0:
            break
        position = position + 1
        if count < len(ended):  # drop the ended rows: live rows from the end take their places
            holes = ended[:count].nonzero().squeeze(1)
            donors = live[count:].nonzero().squeeze(1) + count
            order = torch.arange(count, device=device)
            order[holes] = donors
            # positions that are padding for every remaining row go too
            start = int((mask[order, :filled + 1] == 0).sum(1).min())
            for layer in cache.layers:
                layer.compact(holes, donors, count, start)
            mask, position, token = mask[order, start:], position[order], token[order]
            row_of, ended = row_of[order], ended[order]
    return out[:, :steps]
