"""A faster twin of a byte-level BPE tokenizer (GPT-2's kind: SmolLM2, GPT-2), through
tiktoken, for preparing data: the same token ids and character offsets, in about a quarter of the time.

Tokenizing is most of data preparation (docs/performance.md: the Rust tokenizer alone is 16 s of the
30 s a 100k-record build takes on 2 cores). tiktoken runs the same algorithm faster: split the text
with the same pre-tokenizer pattern, then merge byte pairs in priority order. The two give the same
tokens when a merge's priority is its result's id (ids assigned in merge order, each result made by
one merge only), so `twin()` builds the tiktoken encoding with ranks = ids and only after checking
that, and then checks ids and offsets against the tokenizer itself on probe texts and on every
vocabulary entry as a text of its own (where tiktoken could merge a pair the tokenizer has no rule
for, an entry's own text shows it); any mismatch, or
tiktoken missing, and the data path keeps the tokenizer (`twin()` returns None).

Offsets come from the tokens' byte lengths: for ASCII text a byte is a character. Other texts are
left to the tokenizer (its offsets of a character split across tokens follow rules not worth
copying), so they cost what they cost before.
"""

from __future__ import annotations

import json

import numpy as np

# The GPT-2 pre-tokenizer pattern, which the byte-level pre-tokenizer with use_regex applies.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Texts the twin must tokenize exactly as the tokenizer does before it is used: runs of spaces and
# newlines, contractions, digits, punctuation, special tokens inside words.
PROBES = [
    "Hello world!  Two  spaces,\tand a tab.\n\nNew paragraph\n   indented line   \n",
    "It's we're they've I'm you'll he'd 's 't 1234567 3.14159 x=1+2*3 (a) [b] {c} <d> @e #f $g %h",
    "   leading spaces and trailing   ",
    "snake_case camelCase kebab-case URL https://example.com/path?q=1&r=2 e-mail a@b.co",
    "```python\ndef f(x):\n    return x ** 2  # square\n```\n",
    "Thought: call the tool.\nAction: get_weather\nAction Input: {\"city\": \"Paris\", \"days\": 3}\n",
]


class FastBPE:
    """tiktoken under the tokenizer's ids; `encode_batch` gives (ids, offsets) as the tokenizer would."""

    def __init__(self, encoding, byte_length: np.ndarray, lead: np.ndarray, trail: np.ndarray, trim: bool):
        self.encoding = encoding
        self._specials = set(encoding.special_tokens_set)
        core = getattr(encoding, "_core_bpe", None)
        self._encode = core.encode if core is not None else (
            lambda text, specials: encoding.encode(text, allowed_special=specials))
        self.byte_length, self.lead, self.trail, self.trim = byte_length, lead, trail, trim
        self.vocabulary_texts: list[str] = []  # every entry's own text, for the check at load

    def offsets(self, ids: list[int]) -> np.ndarray:
        """[n, 2] character offsets of `ids`, tokens of an ASCII text."""
        return self._offsets(np.asarray(ids, dtype=np.int64), np.zeros(1, dtype=np.int64))

    def _offsets(self, flat: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Offsets of the tokens of several texts at once: `flat` their ids end to end, `starts` where
        each text's tokens begin (a per-text numpy call cost more than tokenizing a short text)."""
        length = self.byte_length[flat]
        end = np.cumsum(length)
        if len(starts) > 1:  # each text counts from 0: take off the bytes of the texts before it
            before = np.concatenate([[0], end[starts[1:] - 1]])
            end -= np.repeat(before, np.diff(np.append(starts, len(flat))))
        start = end - length
        if self.trim:  # the byte-level post-processor leaves a token's leading and trailing spaces out
            start = np.minimum(start + self.lead[flat], end)
            end = np.where(end >= self.trail[flat], np.maximum(end - self.trail[flat], start), end)
        return np.stack([start, end], axis=1)

    def encode_batch(self, texts: list[str], backend) -> list[tuple[list[int], np.ndarray | list]]:
        """(ids, offsets) per text; texts that are not ASCII go through `backend` (the Rust tokenizer)."""
        out: list = [None] * len(texts)
        ascii_at = [i for i, t in enumerate(texts) if t.isascii()]
        others = [i for i, t in enumerate(texts) if not t.isascii()]
        if ascii_at:
            # One call per text into tiktoken's core: its encode_batch hands each text to a thread
            # pool and its encode builds the set of special tokens at every call, and either cost
            # more than tokenizing a short text (measured: 3.2 and 1.0 s against 0.5 s for 97k texts).
            batch = [self._encode(texts[i], self._specials) for i in ascii_at]
            counts = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
            keep = counts > 0
            flat = np.fromiter((t for ids in batch for t in ids), dtype=np.int64, count=int(counts.sum()))
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            offsets = self._offsets(flat, starts[keep]) if len(flat) else np.zeros((0, 2), dtype=np.int64)
            pieces = np.split(offsets, np.cumsum(counts)[:-1])
            for i, ids, piece in zip(ascii_at, batch, pieces):
                out[i] = (ids, piece)
        if others:
            for i, e in zip(others, backend.encode_batch([texts[i] for i in others], add_special_tokens=False)):
                out[i] = (e.ids, e.offsets)
        return out


def _build(backend) -> FastBPE | None:
    """The twin of `backend` (a tokenizers.Tokenizer), untested; None if it is not GPT-2's kind."""
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(backend.to_str())
    model, pre, norm = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    if (model.get("type") != "BPE" or model.get("dropout") or model.get("ignore_merges") or norm
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
            or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True)):
        return None
    added = spec.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") or a.get("normalized") for a in added):
        return None
    special = {a["content"]: a["id"] for a in added}
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # the byte-level alphabet: which byte each of its 256 printable characters stands for
    vocab, decode = model["vocab"], {char: byte for byte, char in bytes_to_unicode().items()}
    # A merge's priority must be its result's id: results in increasing id order, each made once.
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", [])]
    results = [vocab.get(a + b, -1) for a, b in merges]
    if any(r < 0 for r in results) or any(x >= y for x, y in zip(results, results[1:])):
        return None
    if any(vocab.get(a, 1 << 62) >= r or vocab.get(b, 1 << 62) >= r for (a, b), r in zip(merges, results)):
        return None
    ranks, size = {}, max([*vocab.values(), *special.values()]) + 1
    byte_length, lead, trail = (np.zeros(size, dtype=np.int64) for _ in range(3))
    for token, i in vocab.items():
        if token in special:
            continue
        try:
            raw = bytes(decode[c] for c in token)
        except KeyError:
            return None
        ranks[raw] = i
        byte_length[i] = len(raw)
        lead[i] = len(raw) - len(raw.lstrip(b" "))
        trail[i] = len(raw) - len(raw.rstrip(b" "))
    for token, i in special.items():
        byte_length[i] = len(token.encode())
    if len(ranks) + len(special) != len({**vocab, **special}):
        return None
    try:
        encoding = tiktoken.Encoding("tuneforge-twin", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={k: v for k, v in special.items() if k not in ranks})
    except Exception:  # an alphabet or pattern tiktoken does not take: keep the tokenizer
        return None
    fast = FastBPE(encoding, byte_length, lead, trail, trim=False)
    fast.vocabulary_texts = [t for t in (raw.decode("utf-8", "ignore") for raw in ranks) if t]
    return fast


def _agrees(twin: FastBPE, backend, texts: list[str]) -> bool:
    """The same ids for every text, and the same offsets for the ASCII ones (the only ones the twin
    gives offsets for)."""
    expected = backend.encode_batch(texts, add_special_tokens=False)
    for text, e in zip(texts, expected):
        ids = twin._encode(text, twin._specials)
        if ids != e.ids or (text.isascii() and twin.offsets(ids).tolist() != [list(o) for o in e.offsets]):
            return False
    return True


# Per Rust tokenizer (kept here too, so that its id is never another's) and its size: a token added
# later makes a new twin, which knows it.
_TWINS: dict[tuple[int, int], tuple[object, FastBPE | None]] = {}


def twin(tokenizer) -> FastBPE | None:
    """The checked twin of `tokenizer` (a transformers tokenizer), or None: then use the tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    key = (id(backend), backend.get_vocab_size(with_added_tokens=True))
    if key not in _TWINS:
        fast, found = _build(backend), None
        if fast is not None:
            specials = [t for t in (tokenizer.eos_token, tokenizer.bos_token) if t]
            # the probes, and every vocabulary entry as a text of its own: where tiktoken could take
            # a pair the tokenizer has no merge for, some entry's own text shows it (~0.4 s for 49k)
            probes = PROBES + [s.join(["a", " b ", "\n"]) for s in specials] + fast.vocabulary_texts
            for trim in (False, True):  # whether the tokenizer's offsets leave spaces out: find out
                fast.trim = trim
                if _agrees(fast, backend, probes):
                    found = fast
                    break
        _TWINS[key] = (backend, found)
    return _TWINS[key][1]
