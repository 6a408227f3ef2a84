"""Render Examples with the tokenizer's chat template into token ids and a per-token loss mask.

The mask comes from character spans: each trained assistant turn is located by rendering the
conversation up to it (with and without the turn), so whatever the template adds around a turn
(role headers, end-of-turn tokens) is attributed correctly. The end-of-turn token belongs to the
assistant span and is therefore always trained: a model that never learns to stop is a known
failure of tools that mask it.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from tuneforge.data.fast_bpe import twin
from tuneforge.data.formats import Example, Segment
from tuneforge.errors import UserError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # True where the token is a prediction target
    truncated: bool = False
    weight: float = 1.0  # loss weight of this example's targets (class balancing)
    aux_mask: list[bool] | None = None  # extra positions a loss may use (calibration: the proposed answer)
    # More named position masks a loss may ask for (data.pack.collate emits any requested name), e.g.
    # the chosen / rejected response tokens of a preference pair.
    masks: dict[str, list[bool]] | None = None
    # Offsets where position ids restart at 0: one Encoded holding several sequences that must not
    # attend to each other (a preference pair: [prompt + chosen][prompt + rejected]).
    restarts: list[int] | None = None

    @property
    def n_targets(self) -> int:
        return sum(self.mask)

    def named_mask(self, name: str) -> list[bool] | None:
        """The position mask called `name` ("aux_mask" or a key of `masks`); None if this example has none."""
        if name == "aux_mask":
            return self.aux_mask
        return (self.masks or {}).get(name)


def setup_chat_template(tokenizer, template: str | None, source: str) -> None:
    if template:
        template = CHATML if template == "chatml" else template
        import jinja2

        try:  # a syntax error in the config's template is the user's: say so before any work
            jinja2.Environment().parse(template)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"data.chat_template is not a valid Jinja template (line {e.lineno}: {e.message})") from None
        tokenizer.chat_template = template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def _messages(segs: list[Segment]) -> list[dict]:
    return [{"role": s.role, "content": s.text} for s in segs]


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    """The tokenizer's chat template compiled as transformers compiles it (sandboxed, its extensions
    and filters), cached; None where this transformers lacks the function (then apply_chat_template)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    return _compile_jinja_template(template)


def _template_tokens(tokenizer) -> dict:
    """The special tokens apply_chat_template passes to a template (bos_token, eos_token, ...), as strings."""
    return {k: [str(t) for t in v] if isinstance(v, (list, tuple)) else str(v)
            for k, v in tokenizer.special_tokens_map.items()}


def render_text(tokenizer, segs: list[Segment], add_generation_prompt: bool, where: str = "") -> str:
    import jinja2

    template = tokenizer.chat_template
    compiled = _compiled(template) if isinstance(template, str) else None
    try:
        if compiled is None:
            return tokenizer.apply_chat_template(_messages(segs), tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
        # What apply_chat_template renders, without its per-call copying and checks of rich message
        # objects (ours are plain strings): about 40% of a render, which is most of preparing data.
        return compiled.render(messages=_messages(segs), tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **_template_tokens(tokenizer))
    except jinja2.TemplateError as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{where + ': ' if where else ''}the chat template failed on this conversation ({msg}); "
                        "fix the data or set data.chat_template") from None


def _char_spans(example: Example, tokenizer, train_on_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    segs = example.segments
    if segs and segs[0].role == "text":
        # Plain text: no template; the whole text and a closing EOS are trained.
        text = "".join(s.text for s in segs) + (tokenizer.eos_token or "")
        return text, [(0, len(text))]
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {tokenizer.name_or_path or 'the model'} has no chat template; set "
                        "data.chat_template (a Jinja template or 'chatml') or use plain-text data (data.format: text)")
    full = render_text(tokenizer, segs, add_generation_prompt=False, where=example.where)
    if train_on_prompt:
        return full, [(0, len(full))]
    spans = []
    for i, seg in enumerate(segs):
        if not (seg.role == "assistant" and seg.train):
            continue
        before = render_text(tokenizer, segs[:i], add_generation_prompt=True, where=example.where) if i else ""
        # the last turn's prefix is the whole conversation, already rendered (saves a render per example)
        upto = full if i == len(segs) - 1 else render_text(tokenizer, segs[: i + 1], add_generation_prompt=False,
                                                             where=example.where)
        if not full.startswith(upto) or not upto.startswith(before):
            raise UserError(f"{example.where}: the chat template does not render conversations "
                            "prefix-consistently, so assistant turns cannot be located; set data.chat_template")
        # Whitespace the template puts after the end-of-turn token (ChatML's "\n") is a separator
        # before the next turn, not something the assistant says: it carries no loss.
        end = len(upto)
        while end > len(before) and upto[end - 1].isspace():
            end -= 1
        spans.append((len(before), end))
    return full, spans


def _span_mask(offsets: list[tuple[int, int]] | np.ndarray, spans: list[tuple[int, int]]) -> list[bool]:
    """True for each token whose characters lie wholly inside one of the (sorted, disjoint) spans."""
    if not spans or not len(offsets):
        return [False] * len(offsets)
    starts = np.array([a for a, _ in spans])
    ends = np.array([b for _, b in spans])
    if isinstance(offsets, np.ndarray):
        tok = offsets
    else:  # fromiter over the flattened pairs: several times faster than asarray on a list of tuples
        tok = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64,
                          count=2 * len(offsets)).reshape(-1, 2)
    k = np.searchsorted(starts, tok[:, 0], side="right") - 1  # the last span starting at or before the token
    inside = (k >= 0) & (tok[:, 1] <= ends[np.maximum(k, 0)]) & (tok[:, 1] > tok[:, 0])
    return inside.tolist()


def _encode_whole(example: Example, tokenizer, train_on_prompt: bool) -> tuple[list[int], list[bool]]:
    text, spans = _char_spans(example, tokenizer, train_on_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], _span_mask(enc["offset_mapping"], spans)


def _fit_prompt(example: Example, tokenizer, max_length: int, train_on_prompt: bool, whole_length: int
                ) -> tuple[list[int], list[bool]] | None:
    """`example` shortened on its prompt side to fit `max_length`, its last assistant turn whole: the
    oldest turns go first (whole turns, up to the next user message, after any system message), then
    the start of the last user message. None when even an empty last user message does not fit."""
    segs = example.segments
    answer = max((i for i, s in enumerate(segs) if s.role == "assistant"), default=None)
    if answer is None:
        return None
    last_user = max((i for i in range(answer) if segs[i].role == "user"), default=answer)
    first = 1 if segs and segs[0].role == "system" else 0
    head, middle, tail = segs[:first], segs[first:last_user], segs[last_user:]

    def encoded(middle, tail):
        return _encode_whole(Example(head + middle + tail, example.where, example.meta), tokenizer, train_on_prompt)

    length = whole_length
    while middle:  # drop the oldest turn: up to the next user message
        middle = middle[next((i for i in range(1, len(middle)) if middle[i].role == "user"), len(middle)):]
        ids, mask = encoded(middle, tail)
        length = len(ids)
        if length <= max_length:
            return ids, mask
    if tail[0].role != "user":
        return None
    text = tail[0].text
    starts = [a for a, _ in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    cut = 0
    while length > max_length:  # cut as many tokens as are too many (merges may shift one), until it fits
        if cut >= len(starts):
            return None
        cut = min(len(starts), cut + length - max_length)
        rest = text[starts[cut]:] if cut < len(starts) else ""
        ids, mask = encoded([], [Segment(tail[0].role, rest, tail[0].train), *tail[1:]])
        length = len(ids)
    return ids, mask


def encode(example: Example, tokenizer, max_length: int, truncation: str = "prompt",
           train_on_prompt: bool = False) -> Encoded | None:
    """Token ids and loss mask for one example; None if it is dropped by the truncation policy.

    Too long for `max_length`: "drop" leaves it out; "prompt" shortens the prompt side and keeps the
    whole answer (the part that trains) where the answer alone fits, else cuts the end as "right" does;
    "right" keeps the first `max_length` tokens."""
    return encode_many([example], tokenizer, max_length, truncation, train_on_prompt)[0]


def encode_many(examples: list[Example], tokenizer, max_length: int, truncation: str = "prompt",
                train_on_prompt: bool = False) -> list[Encoded | None]:
    """`encode` of each example, the texts tokenized in one batched call (the tokenizer's per-call cost
    is most of the time for short examples)."""
    rendered = [_char_spans(ex, tokenizer, train_on_prompt) for ex in examples]
    if not rendered:
        return []
    texts = [text for text, _ in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = twin(tokenizer)
    if fast is not None:  # the same ids and offsets, faster (data/fast_bpe.py)
        ids_offsets = fast.encode_batch(texts, backend)
    elif backend is not None:  # the Rust tokenizer itself: what tokenizer(...) calls, without its per-example conversion
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        ids_offsets = [(e.ids, e.offsets) for e in encodings]
    else:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        ids_offsets = list(zip(enc["input_ids"], enc["offset_mapping"]))
    return [_fit(ex, ids, _span_mask(offsets, spans), tokenizer, max_length, truncation, train_on_prompt)
            for ex, (_, spans), (ids, offsets) in zip(examples, rendered, ids_offsets)]


def _fit(example: Example, ids: list[int], mask: list[bool], tokenizer, max_length: int, truncation: str,
         train_on_prompt: bool) -> Encoded | None:
    truncated = len(ids) > max_length
    if truncated:
        if truncation == "drop":
            return None
        fitted = None
        if truncation == "prompt" and not (example.segments and example.segments[0].role == "text"):
            fitted = _fit_prompt(example, tokenizer, max_length, train_on_prompt, len(ids))
        ids, mask = fitted if fitted else (ids[:max_length], mask[:max_length])
    # Labels are shifted: token t is predicted from position t-1, so the first token is never a target.
    if mask:
        mask[0] = False
    return Encoded(ids, mask, truncated)
