"""From the data section of the config to encoded train/validation examples, with counts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tuneforge.config import DataConfig
from tuneforge.data.formats import Example, to_examples
from tuneforge.data.render import Encoded, encode
from tuneforge.data.sources import read_records
from tuneforge.errors import UserError


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]


@dataclass
class EncodedSplit:
    examples: list[Example] = field(default_factory=list)  # kept examples, aligned with `encoded`
    encoded: list[Encoded] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    no_target: int = 0


def hold_out(items: list, ratio: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded `ratio` share held out (at least one item), train in file order."""
    if ratio <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(ratio * len(items))))
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in order[:n_val]]


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    records = read_records(cfg.train, cfg.split)
    if not records:
        raise UserError(f"data.train: {cfg.train} has no records; check the file or the split name")
    train = to_examples(records, cfg.format, cfg.system_prompt)
    if cfg.validation:
        val_records = read_records(cfg.validation, cfg.split)
        if not val_records:
            raise UserError(f"data.validation: {cfg.validation} has no records")
        val = to_examples(val_records, cfg.format, cfg.system_prompt)
    else:
        train, val = hold_out(train, cfg.val_ratio, seed)
    if cfg.max_examples:
        train = train[: cfg.max_examples]
    return Splits(train, val)


def encode_split(examples: list[Example], tokenizer, cfg: DataConfig) -> EncodedSplit:
    out = EncodedSplit()
    for ex in examples:
        enc = encode(ex, tokenizer, cfg.max_length, cfg.truncation, cfg.train_on_prompt)
        if enc is None:
            out.dropped += 1
            continue
        if enc.n_targets == 0:  # e.g. truncated before the answer: nothing to learn from it
            out.no_target += 1
            continue
        out.truncated += enc.truncated
        out.examples.append(ex)
        out.encoded.append(enc)
    return out
