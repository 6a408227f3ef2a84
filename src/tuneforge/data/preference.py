"""Preference pairs: records with a prompt, a chosen and a rejected response -> encoded pairs.

Accepted records (JSONL / JSON / CSV / Parquet, anything `read_records` reads):

    {"prompt": "text", "chosen": "text", "rejected": "text", "system": "optional"}
    {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}   # TRL conversational
    {"chosen": [user, ..., assistant], "rejected": [user, ..., assistant]}              # TRL implicit prompt

A message-list response is its last message, which must be the assistant's; messages before it must
be the same in chosen and rejected and continue the prompt (without a `prompt` field they are the prompt).

A pair is encoded as ONE example holding two sequences, [prompt + chosen][prompt + rejected], with
position ids restarting at the second (`Encoded.restarts`), so packing keeps a pair in one row and
the two sequences never attend to each other. `masks` marks each response's tokens. `mask` (the
loop's target mask) marks exactly one token per pair, the first chosen response token: the loop
divides a step's summed loss by the number of target tokens, so the loss it logs and averages is
the DPO loss per pair, and the DPO loss finds each pair's chosen sequence by that token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.config import DataConfig
from tuneforge.data.formats import _ROLE_ALIASES, Segment
from tuneforge.data.render import Encoded, render_text
from tuneforge.data.sources import Record, read_records
from tuneforge.errors import UserError

EXPECTED = ("a preference record needs 'prompt' (text or a list of messages), 'chosen' and 'rejected' (text, "
            "or messages ending with the assistant's response; without 'prompt' the messages before it are "
            "the prompt), and optionally 'system'")


@dataclass
class Pair:
    prompt: list[Segment]  # the conversation the responses answer (system / user / ... turns)
    chosen: str
    rejected: str
    where: str = ""


@dataclass
class PairSplits:
    train: list[Pair]
    val: list[Pair]
    identical: int = 0  # records skipped because chosen == rejected
    identical_where: list[str] = field(default_factory=list)  # the first few of them


@dataclass
class EncodedPairs:
    pairs: list[Pair] = field(default_factory=list)  # aligned with `encoded`
    encoded: list[Encoded] = field(default_factory=list)
    truncated: int = 0


def _message_list(rec: Record, key: str, value) -> list[Segment]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{rec.where}: field '{key}' must be text or a non-empty list of messages")
    segs = []
    for i, m in enumerate(value):
        role_raw = m.get("role", m.get("from")) if isinstance(m, dict) else None
        text = m.get("content", m.get("value")) if isinstance(m, dict) else None
        if role_raw is None or not isinstance(text, str):
            raise UserError(f"{rec.where}: {key}[{i}] must be a message with 'role' and text 'content' "
                            "(or ShareGPT 'from' and 'value')")
        role = _ROLE_ALIASES.get(str(role_raw).lower())
        if role is None:
            raise UserError(f"{rec.where}: {key}[{i}] has unknown role '{role_raw}' "
                            f"(known: {', '.join(sorted(set(_ROLE_ALIASES)))})")
        segs.append(Segment(role, text, False))
    return segs


def _response(rec: Record, key: str) -> tuple[list[Segment], str]:
    """(messages before the response, the response text) of a chosen/rejected field."""
    value = rec.data[key]
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{rec.where}: field '{key}' is empty")
        return [], value
    segs = _message_list(rec, key, value)
    if segs[-1].role != "assistant":
        raise UserError(f"{rec.where}: the last message of '{key}' must be the assistant's response "
                        f"(it is '{segs[-1].role}')")
    return segs[:-1], segs[-1].text


def to_pair(rec: Record, system_prompt: str | None = None) -> Pair:
    missing = [k for k in ("chosen", "rejected") if rec.data.get(k) is None]
    has_prompt = rec.data.get("prompt") is not None
    if not has_prompt and not isinstance(rec.data.get("chosen"), list):
        missing.insert(0, "prompt")
    if missing:
        raise UserError(f"{rec.where}: missing field{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(k) for k in missing)}; {EXPECTED} (fields found: {sorted(rec.data)})")
    before_c, chosen = _response(rec, "chosen")
    before_r, rejected = _response(rec, "rejected")
    if [(s.role, s.text) for s in before_c] != [(s.role, s.text) for s in before_r]:
        raise UserError(f"{rec.where}: 'chosen' and 'rejected' differ before their last message; only the "
                        "final assistant response may differ")
    prompt = rec.data.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{rec.where}: field 'prompt' is empty")
        segs = [Segment("user", prompt, False)]
    elif prompt is None:
        segs = []
    else:
        segs = _message_list(rec, "prompt", prompt)
    segs = segs + before_c
    if not segs:
        raise UserError(f"{rec.where}: the prompt is empty: 'chosen' holds only the response; {EXPECTED}")
    system = rec.data.get("system") or system_prompt
    if system is not None and not isinstance(system, str):
        raise UserError(f"{rec.where}: field 'system' must be text, got {type(system).__name__}")
    if system and segs[0].role != "system":
        segs.insert(0, Segment("system", system, False))
    return Pair(segs, chosen, rejected, rec.where)


def to_pairs(records: list[Record], system_prompt: str | None = None) -> tuple[list[Pair], list[str]]:
    """Pairs, and where the skipped records with identical chosen and rejected responses are."""
    pairs, identical = [], []
    for rec in records:
        pair = to_pair(rec, system_prompt)
        if pair.chosen.strip() == pair.rejected.strip():  # no preference to learn from
            identical.append(rec.where)
        else:
            pairs.append(pair)
    return pairs, identical


def load_pair_splits(cfg: DataConfig, seed: int) -> PairSplits:
    records = read_records(cfg.train, cfg.split)
    if not records:
        raise UserError(f"data.train: {cfg.train} has no records; check the file or the split name")
    train, identical = to_pairs(records, cfg.system_prompt)
    if cfg.validation:
        val_records = read_records(cfg.validation, cfg.split)
        if not val_records:
            raise UserError(f"data.validation: {cfg.validation} has no records")
        val, more = to_pairs(val_records, cfg.system_prompt)
        identical += more
    else:
        from tuneforge.data.dataset import hold_out

        train, val = hold_out(train, cfg.val_ratio, seed)
    if cfg.max_examples:
        train = train[: cfg.max_examples]
    return PairSplits(train, val, len(identical), identical[:5])


def _render_pair_texts(pair: Pair, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts under the chat template: the prompt ends with the assistant
    header, each response holds the reply and the template's end-of-turn."""
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {tokenizer.name_or_path or 'the model'} has no chat template; set "
                        "data.chat_template (a Jinja template or 'chatml')")
    prompt = render_text(tokenizer, pair.prompt, add_generation_prompt=True, where=pair.where)
    responses = []
    for text in (pair.chosen, pair.rejected):
        full = render_text(tokenizer, pair.prompt + [Segment("assistant", text, True)], add_generation_prompt=False,
                       where=pair.where)
        if not full.startswith(prompt):
            raise UserError(f"{pair.where}: the chat template does not render the prompt as a prefix of the "
                            "conversation, so the response cannot be located; set data.chat_template")
        # Whitespace after the end-of-turn token separates turns; it is not part of the reply (as in SFT).
        responses.append(full[len(prompt):].rstrip())
    return prompt, responses[0], responses[1]


def encode_pair(pair: Pair, tokenizer, max_length: int, max_prompt_length: int) -> Encoded:
    """[prompt + chosen][prompt + rejected] as one Encoded (see the module docstring).

    The prompt keeps its last `max_prompt_length` tokens; each response is cut from the right so that
    prompt + response fits `max_length` (per sequence, so a pair is at most 2 x max_length tokens).
    """
    prompt_text, chosen_text, rejected_text = _render_pair_texts(pair, tokenizer)
    tok = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, chosen, rejected = tok(prompt_text), tok(chosen_text), tok(rejected_text)
    keep = min(max_prompt_length, max_length - 1)  # leave room for at least one response token
    room = max_length - min(len(prompt), keep)
    truncated = len(prompt) > keep or len(chosen) > room or len(rejected) > room
    prompt, chosen, rejected = prompt[-keep:], chosen[:room], rejected[:room]
    if not prompt or not chosen or not rejected:
        raise UserError(f"{pair.where}: the prompt or a response renders to no tokens")
    first, second = prompt + chosen, prompt + rejected
    n = len(first) + len(second)
    chosen_mask = [False] * len(prompt) + [True] * len(chosen) + [False] * len(second)
    rejected_mask = [False] * (len(first) + len(prompt)) + [True] * len(rejected)
    mask = [False] * n
    mask[len(prompt)] = True  # the one target of the pair: its first chosen token
    return Encoded(first + second, mask, truncated, masks={"chosen_mask": chosen_mask, "rejected_mask": rejected_mask},
                   restarts=[len(first)])


def encode_pairs(pairs: list[Pair], tokenizer, max_length: int, max_prompt_length: int) -> EncodedPairs:
    out = EncodedPairs()
    for pair in pairs:
        enc = encode_pair(pair, tokenizer, max_length, max_prompt_length)
        out.pairs.append(pair)
        out.encoded.append(enc)
        out.truncated += enc.truncated
    return out
