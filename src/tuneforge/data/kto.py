"""Unpaired preference data for KTO: a prompt, one completion and whether it was good.

Accepted records (TRL's unpaired format; `tuneforge feedback export --format kto` writes it from the
server's thumbs up and down):

    {"prompt": "text" or [messages], "completion": "text" or [assistant message], "label": true | false}

KTO needs, besides each completion's own log-ratio against the reference, an estimate of the KL
between policy and reference: the log-ratio of a completion that does NOT belong to the prompt. So
each example is encoded as a preference "pair" (data/preference.py) [prompt + completion][prompt +
another example's completion], the other chosen by a seeded derangement, and its label rides in the
`desirable_mask` at the pair's one target token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tuneforge.config import DataConfig
from tuneforge.data.preference import Pair, encode_pair, to_pair
from tuneforge.data.render import Encoded
from tuneforge.data.sources import Record, read_records
from tuneforge.errors import UserError


@dataclass
class Rated:
    prompt: Pair  # the prompt, and the completion as `chosen`
    desirable: bool
    where: str = ""


@dataclass
class EncodedRated:
    encoded: list[Encoded] = field(default_factory=list)
    desirable: int = 0
    undesirable: int = 0
    truncated: int = 0


def to_rated(rec: Record, system_prompt: str | None = None) -> Rated:
    label = rec.data.get("label")
    if not isinstance(label, bool):
        raise UserError(f"{rec.where}: a KTO record needs 'label' true or false (got {label!r}), with 'prompt' "
                        "and 'completion'")
    if rec.data.get("completion") is None:
        raise UserError(f"{rec.where}: missing field 'completion'; a KTO record has 'prompt', 'completion', 'label'")
    # The pair reader parses prompt and response; the completion stands in for both responses.
    data = {k: v for k, v in rec.data.items() if k not in ("completion", "label")}
    pair = to_pair(Record(data | {"chosen": rec.data["completion"], "rejected": rec.data["completion"]}, rec.where),
                   system_prompt)
    return Rated(pair, label, rec.where)


def _rated(source: str, cfg: DataConfig, key: str) -> list[Rated]:
    records = read_records(source, cfg.split)
    if not records:
        raise UserError(f"data.{key}: {source} has no records; check the file or the split name")
    return [to_rated(r, cfg.system_prompt) for r in records]


def load_rated_splits(cfg: DataConfig, seed: int) -> tuple[list[Rated], list[Rated]]:
    train = _rated(cfg.train, cfg, "train")
    labels = {r.desirable for r in train}
    if len(labels) < 2:
        raise UserError(f"data.train: every record of {cfg.train} is labelled {next(iter(labels))}; KTO weighs "
                        "desirable against undesirable completions and needs both")
    if cfg.validation:
        val = _rated(cfg.validation, cfg, "validation")
    else:
        from tuneforge.data.dataset import hold_out

        train, val = hold_out(train, cfg.val_ratio, seed)
    if cfg.max_examples:
        train = train[: cfg.max_examples]
    return train, val


def encode_rated(items: list[Rated], tokenizer, max_length: int, max_prompt_length: int, seed: int) -> EncodedRated:
    """Each item with a mismatched completion for the KL estimate (never its own; one item: itself)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    other = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # a cycle: no fixed points
    out = EncodedRated()
    for i, item in enumerate(items):
        pair = Pair(item.prompt.prompt, item.prompt.chosen, items[other[i]].prompt.chosen, item.where)
        enc = encode_pair(pair, tokenizer, max_length, max_prompt_length)
        enc.masks["desirable_mask"] = list(enc.mask) if item.desirable else [False] * len(enc.mask)
        out.encoded.append(enc)
        out.desirable += item.desirable
        out.undesirable += not item.desirable
        out.truncated += enc.truncated
    return out
