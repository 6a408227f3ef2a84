"""From the data section of the config to encoded train/validation examples, with counts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tuneforge.config import DataConfig
from tuneforge.data.account import DataAccount
from tuneforge.data.formats import Example, to_examples
from tuneforge.data.render import Encoded, encode_many
from tuneforge.data.sources import read_records
from tuneforge.errors import UserError


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    account: DataAccount = field(default_factory=DataAccount)  # what reading lost (encoding adds the rest)
    bad: list[str] = field(default_factory=list)  # why each malformed record was left out (on_bad_record: skip)


@dataclass
class EncodedSplit:
    examples: list[Example] = field(default_factory=list)  # kept examples, aligned with `encoded`
    encoded: list[Encoded] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0  # too long, under truncation: drop
    cut_before_answer: int = 0  # truncation left no trained token
    no_answer: int = 0  # no trained token even whole
    repeats: int = 0  # kept copies of an example kept before (a mixture's repeats): encoded once, counted once
    notes: list[tuple[str, str]] = field(default_factory=list)  # (where, what happened) for each one not kept whole

    @property
    def no_target(self) -> int:
        return self.cut_before_answer + self.no_answer


def hold_out(items: list, ratio: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded `ratio` share held out (at least one item), train in file order."""
    if ratio <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(ratio * len(items))))
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in order[:n_val]]


def _examples(source: str, cfg: DataConfig, key: str, account: DataAccount, bad: list[str]) -> list[Example]:
    """The examples of one source; malformed records stop the run, or are counted, skipped and their
    reasons appended to `bad`."""
    skip = bad if cfg.on_bad_record == "skip" else None
    start = len(bad)
    records = read_records(source, cfg.split, skip)
    if not records and len(bad) == start:
        raise UserError(f"data.{key}: {source} has no records; check the file or the split name")
    account.read += len(records) + len(bad) - start  # unreadable lines count as read (and as bad)
    examples = to_examples(records, cfg.format, cfg.system_prompt, skip)
    account.bad += len(bad) - start
    account.first_bad = account.first_bad or (bad[start] if len(bad) > start else None)
    return examples


def _without_duplicates(examples: list[Example], seen: set) -> tuple[list[Example], int]:
    """Examples whose roles and texts are in `seen` (which grows) are left out: (kept, number left out)."""
    kept = []
    for ex in examples:
        key = tuple((s.role, s.text, s.train) for s in ex.segments)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, len(examples) - len(kept)


def _take(items: list, n: int, rng: random.Random) -> list:
    """`n` items: whole passes over `items`, then a seeded sample of the rest without repeats."""
    passes, rest = divmod(n, len(items)) if items else (0, 0)
    return items * passes + rng.sample(items, rest)


def _mixture(cfg: DataConfig, seed: int, account: DataAccount, bad: list[str]) -> tuple[list[Example], list[Example]]:
    """(train, validation) of a mixture: each source read with its own format, held out on its own
    (so validation follows the sources' natural shares), then its training examples taken by weight
    (the mixture keeps the sources' total size) or by epochs (passes over the source)."""
    rng = random.Random(seed)
    account.sources = {}
    parts = []
    for k, src in enumerate(cfg.train):
        own = cfg.model_copy(update={"format": src.format, "split": src.split})
        read, n_bad = account.read, account.bad
        examples = _examples(src.path, own, f"train[{k}]", account, bad)
        for ex in examples:
            ex.meta["source"] = src.path
        account.sources[src.path] = {"read": account.read - read, "bad": account.bad - n_bad,
                                     "unsampled": 0, "train": 0, "validation": 0}
        parts.append(examples)
    if cfg.drop_duplicates:
        seen: set = set()
        for k, examples in enumerate(parts):
            parts[k], dropped = _without_duplicates(examples, seen)
            account.duplicates += dropped
    if cfg.validation:
        read, n_bad = account.read, account.bad
        val = _examples(cfg.validation, cfg, "validation", account, bad)
        for ex in val:
            ex.meta["source"] = cfg.validation
        account.sources[cfg.validation] = {"read": account.read - read, "bad": account.bad - n_bad,
                                           "unsampled": 0, "train": 0, "validation": 0}
        held = parts
    else:
        held, val = [], []
        for k, examples in enumerate(parts):
            tr, va = hold_out(examples, cfg.val_ratio, seed + k)
            held.append(tr)
            val += va
    weights = [src.weight for src in cfg.train]
    total = sum(len(p) for p in held)
    train = []
    for src, examples in zip(cfg.train, held):
        n = round(src.weight / sum(weights) * total) if src.weight is not None else round((src.epochs or 1) * len(examples))
        taken = _take(examples, n, rng)
        unsampled = len(examples) - len({id(ex) for ex in taken})
        account.unsampled += unsampled
        account.sources[src.path]["unsampled"] = unsampled
        train += taken
    rng.shuffle(train)  # sources interleave in file order too (max_examples takes a mixed head)
    return train, val


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    account, bad = DataAccount(), []
    if not isinstance(cfg.train, str):
        train, val = _mixture(cfg, seed, account, bad)
        return _finish(cfg, train, val, account, bad)
    train = _examples(cfg.train, cfg, "train", account, bad)
    if cfg.validation:
        val = _examples(cfg.validation, cfg, "validation", account, bad)
    else:
        val = []
    if cfg.drop_duplicates:  # before the hold-out, and validation first: no copy of a validation example trains
        seen: set = set()
        val, in_val = _without_duplicates(val, seen)
        train, in_train = _without_duplicates(train, seen)
        account.duplicates = in_val + in_train
    if not cfg.validation:
        train, val = hold_out(train, cfg.val_ratio, seed)
    return _finish(cfg, train, val, account, bad)


def _finish(cfg: DataConfig, train: list[Example], val: list[Example], account: DataAccount, bad: list[str]
            ) -> Splits:
    if cfg.max_examples and len(train) > cfg.max_examples:
        # counted once per example: a mixture's repeated example may be both kept and cut
        account.beyond_max_examples = len({id(ex) for ex in train}) - len({id(ex) for ex in train[: cfg.max_examples]})
        train = train[: cfg.max_examples]
    if not train:
        raise UserError(f"data.train: no usable records in {cfg.train} ({account.line()})")
    return Splits(train, val, account, bad)


# Examples are encoded this many at a time: one batched tokenizer call each.
ENCODE_CHUNK = 256

# What encoding did with an example (the cache stores it as a small integer per example).
KEPT, TOO_LONG, CUT_BEFORE_ANSWER, NO_ANSWER = 0, 1, 2, 3


def outcome(enc: Encoded | None) -> int:
    if enc is None:
        return TOO_LONG
    if enc.n_targets == 0:  # nothing to learn from it
        return CUT_BEFORE_ANSWER if enc.truncated else NO_ANSWER
    return KEPT


def unique(examples: list[Example]) -> tuple[list[Example], list[int]]:
    """(distinct Example objects in first-seen order, each example's index among them): a mixture
    repeats the same object, which is encoded and counted once."""
    first: dict[int, int] = {}
    distinct, index = [], []
    for ex in examples:
        if id(ex) not in first:
            first[id(ex)] = len(distinct)
            distinct.append(ex)
        index.append(first[id(ex)])
    return distinct, index


def tally(examples: list[Example], index: list[int], outcomes: list[int], truncated: list[bool],
          lengths: list[int]) -> EncodedSplit:
    """The counts and notes (in file order) of a split from each distinct example's outcome, whether it
    was truncated and its encoded length; `examples` and `encoded` are left for the caller to fill."""
    out = EncodedSplit()
    for ex, what, cut, n in zip(examples, outcomes, truncated, lengths):
        if what == TOO_LONG:
            out.dropped += 1
            out.notes.append((ex.where, "too long: dropped"))
        elif what == CUT_BEFORE_ANSWER:
            out.cut_before_answer += 1
            out.notes.append((ex.where, "cut before its answer: dropped"))
        elif what == NO_ANSWER:
            out.no_answer += 1
            out.notes.append((ex.where, "no answer tokens: dropped"))
        elif cut:
            out.truncated += 1
            out.notes.append((ex.where, f"truncated to {n} tokens"))
    kept = [i for i in index if outcomes[i] == KEPT]
    out.repeats = len(kept) - len(set(kept))
    return out


def encode_split(examples: list[Example], tokenizer, cfg: DataConfig) -> EncodedSplit:
    """Every example encoded in memory (small data, and recipes that keep Python objects); counted."""
    distinct, index = unique(examples)
    encoded: list[Encoded | None] = []
    for start in range(0, len(distinct), ENCODE_CHUNK):
        encoded += encode_many(distinct[start:start + ENCODE_CHUNK], tokenizer, cfg.max_length, cfg.truncation,
                               cfg.train_on_prompt)
    outcomes = [outcome(e) for e in encoded]
    out = tally(distinct, index, outcomes, [e is not None and e.truncated for e in encoded],
                [len(e.ids) if e is not None else 0 for e in encoded])
    for i in index:
        if outcomes[i] == KEPT:
            out.examples.append(distinct[i])
            out.encoded.append(encoded[i])
    return out


def account_for(splits: Splits, train: EncodedSplit, val: EncodedSplit) -> DataAccount:
    """The whole account of a run's data: what reading lost (splits) plus what encoding kept and lost."""
    account = splits.account
    account.train, account.validation = len(train.examples), len(val.examples)
    account.truncated = train.truncated + val.truncated
    account.too_long = train.dropped + val.dropped
    account.cut_before_answer = train.cut_before_answer + val.cut_before_answer
    account.no_answer = train.no_answer + val.no_answer
    account.repeats = train.repeats + val.repeats
    if account.sources is not None:
        for name, split in (("train", train), ("validation", val)):
            for ex in split.examples:
                account.sources[ex.meta["source"]][name] += 1
    return account
