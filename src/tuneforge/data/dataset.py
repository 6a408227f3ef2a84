"""From the data section of the config to encoded train/validation examples, with counts."""

from __future__ import annotations

import random
from pathlib import Path
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuneforge.config import DataConfig
from tuneforge.data.account import DataAccount
from tuneforge.data.formats import Example, to_examples
from tuneforge.data.render import Encoded, encode_many
from tuneforge.data.sources import iter_jsonl, read_records, source_kind
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
    kept: int = 0  # examples kept, repeats included (len(encoded) where they are held in Python)
    by_source: dict[str, int] = field(default_factory=dict)  # a mixture's kept examples per source path

    @property
    def no_target(self) -> int:
        return self.cut_before_answer + self.no_answer


def source_specs(cfg: DataConfig) -> list[tuple[str, str, DataConfig]]:
    """(config key, path, the config it is read with) of each source, in reading order: the training
    source(s), then data.validation. A mixture's sources are read with their own format and split."""
    if isinstance(cfg.train, str):
        specs = [("train", cfg.train, cfg)]
    else:
        specs = [(f"train[{k}]", src.path, cfg.model_copy(update={"format": src.format, "split": src.split}))
                 for k, src in enumerate(cfg.train)]
    return specs + ([("validation", cfg.validation, cfg)] if cfg.validation else [])


@dataclass
class SourceRows:
    """One source as read, for `plan`: a duplicate key per readable example (file order) and what
    reading lost. Examples are numbered across sources in reading order."""
    label: str  # its config key, e.g. "train[1]"
    path: str
    keys: Sequence  # hashable; equal keys mean equal roles, texts and trained flags
    read: int = 0  # records read, the malformed ones included
    bad: int = 0
    first_bad: str | None = None


def example_key(ex: Example) -> tuple:
    return tuple((s.role, s.text, s.train) for s in ex.segments)


def hold_out(items: list, ratio: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded `ratio` share held out (at least one item), train in file order."""
    if ratio <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(ratio * len(items))))
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in order[:n_val]]


def _without_duplicates(items: list[int], keys: list, seen: set) -> tuple[list[int], int]:
    """Items whose key is in `seen` (which grows) are left out: (kept, number left out)."""
    kept = []
    for i in items:
        if keys[i] not in seen:
            seen.add(keys[i])
            kept.append(i)
    return kept, len(items) - len(kept)


def _take(items: list, n: int, rng: random.Random) -> list:
    """`n` items: whole passes over `items`, then a seeded sample of the rest without repeats."""
    passes, rest = divmod(n, len(items)) if items else (0, 0)
    return items * passes + rng.sample(items, rest)


def plan(cfg: DataConfig, seed: int, sources: list[SourceRows]) -> tuple[list[int], list[int], DataAccount]:
    """Which examples train and which validate, as example numbers (a mixture repeats numbers), and the
    account of what reading and choosing lost. `sources` as `source_specs` orders them. The one place
    that decides duplicates, the hold-out, a mixture's shares and max_examples, for data read into
    Python and for the cache's build alike."""
    account = DataAccount(read=sum(s.read for s in sources), bad=sum(s.bad for s in sources),
                          first_bad=next((s.first_bad for s in sources if s.first_bad), None))
    for src in sources:
        if src.read == 0:
            raise UserError(f"data.{src.label}: {src.path} has no records; check the file or the split name")
    keys, parts = [], []
    for src in sources:
        parts.append(list(range(len(keys), len(keys) + len(src.keys))))
        keys += src.keys
    val_part = parts.pop() if cfg.validation else None
    if isinstance(cfg.train, str):
        train, val = parts[0], val_part or []
        if cfg.drop_duplicates:  # before the hold-out, and validation first: no copy of a validation example trains
            seen: set = set()
            val, in_val = _without_duplicates(val, keys, seen)
            train, in_train = _without_duplicates(train, keys, seen)
            account.duplicates = in_val + in_train
        if not cfg.validation:
            train, val = hold_out(train, cfg.val_ratio, seed)
    else:
        train, val = _mixture(cfg, seed, sources, parts, val_part, keys, account)
    if cfg.max_examples and len(train) > cfg.max_examples:
        # counted once per example: a mixture's repeated example may be both kept and cut
        account.beyond_max_examples = len(set(train)) - len(set(train[: cfg.max_examples]))
        train = train[: cfg.max_examples]
    if not train:
        raise UserError(f"data.train: no usable records in {cfg.train} ({account.line()})")
    return train, val, account


def _mixture(cfg: DataConfig, seed: int, sources: list[SourceRows], parts: list[list[int]],
             val_part: list[int] | None, keys: list, account: DataAccount) -> tuple[list[int], list[int]]:
    """(train, validation) of a mixture: each source held out on its own (so validation follows the
    sources' natural shares), then its training examples taken by weight (the mixture keeps the
    sources' total size) or by epochs (passes over the source)."""
    rng = random.Random(seed)
    account.sources = {src.path: {"read": src.read, "bad": src.bad, "unsampled": 0, "train": 0, "validation": 0}
                       for src in sources}
    if cfg.drop_duplicates:
        seen: set = set()
        for k, items in enumerate(parts):
            parts[k], dropped = _without_duplicates(items, keys, seen)
            account.duplicates += dropped
    if val_part is not None:
        held, val = parts, val_part
    else:
        held, val = [], []
        for k, items in enumerate(parts):
            tr, va = hold_out(items, cfg.val_ratio, seed + k)
            held.append(tr)
            val += va
    weights = [src.weight for src in cfg.train]
    total = sum(len(p) for p in held)
    train = []
    for src, items in zip(cfg.train, held):
        n = round(src.weight / sum(weights) * total) if src.weight is not None else round((src.epochs or 1) * len(items))
        taken = _take(items, n, rng)
        unsampled = len(items) - len(set(taken))
        account.unsampled += unsampled
        account.sources[src.path]["unsampled"] = unsampled
        train += taken
    rng.shuffle(train)  # sources interleave in file order too (max_examples takes a mixed head)
    return train, val


def _read_source(label: str, path: str, cfg: DataConfig, bad: list[str]) -> tuple[SourceRows, list[Example]]:
    """The examples of one source; malformed records stop the run, or are counted, skipped and their
    reasons appended to `bad`."""
    skip = bad if cfg.on_bad_record == "skip" else None
    start = len(bad)
    # JSONL is converted line by line as it is read, so the reasons in `bad` stay in file order
    records = iter_jsonl(Path(path), skip) if source_kind(path) == "jsonl" else read_records(path, cfg.split, skip)
    examples, n_records, n_unconvertible = [], 0, 0
    for record in records:
        n_records += 1
        one = to_examples([record], cfg.format, cfg.system_prompt, skip)
        examples += one
        n_unconvertible += not one
    n_bad = len(bad) - start
    return SourceRows(label, path, [example_key(ex) for ex in examples], read=n_records + n_bad - n_unconvertible,
                      bad=n_bad, first_bad=bad[start] if n_bad else None), examples


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """The examples read into Python and split (small data, and recipes that keep Python objects)."""
    bad: list[str] = []
    sources, examples = [], []
    mixture = not isinstance(cfg.train, str)
    for label, path, own in source_specs(cfg):
        src, read = _read_source(label, path, own, bad)
        if mixture:
            for ex in read:
                ex.meta["source"] = path
        sources.append(src)
        examples += read
    train, val, account = plan(cfg, seed, sources)
    return Splits([examples[i] for i in train], [examples[i] for i in val], account, bad)


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


def tally(where: Sequence[str], index: list[int], outcomes: Sequence[int], truncated: Sequence[bool],
          lengths: Sequence[int]) -> EncodedSplit:
    """The counts and notes (in file order) of a split from each distinct example's place in its file
    (read only for those not kept whole), outcome, whether it was truncated and its encoded length;
    `index` numbers each example of the split among the distinct ones. `examples` and `encoded` are
    left for the caller to fill."""
    out = EncodedSplit()
    for i, (what, cut) in enumerate(zip(outcomes, truncated)):
        if what == TOO_LONG:
            out.dropped += 1
            out.notes.append((where[i], "too long: dropped"))
        elif what == CUT_BEFORE_ANSWER:
            out.cut_before_answer += 1
            out.notes.append((where[i], "cut before its answer: dropped"))
        elif what == NO_ANSWER:
            out.no_answer += 1
            out.notes.append((where[i], "no answer tokens: dropped"))
        elif cut:
            out.truncated += 1
            out.notes.append((where[i], f"truncated to {lengths[i]} tokens"))
    kept = [i for i in index if outcomes[i] == KEPT]
    out.kept, out.repeats = len(kept), len(kept) - len(set(kept))
    return out


def encode_split(examples: list[Example], tokenizer, cfg: DataConfig) -> EncodedSplit:
    """Every example encoded in memory (small data, and recipes that keep Python objects); counted."""
    distinct, index = unique(examples)
    encoded: list[Encoded | None] = []
    for start in range(0, len(distinct), ENCODE_CHUNK):
        encoded += encode_many(distinct[start:start + ENCODE_CHUNK], tokenizer, cfg.max_length, cfg.truncation,
                               cfg.train_on_prompt)
    outcomes = [outcome(e) for e in encoded]
    out = tally([ex.where for ex in distinct], index, outcomes, [e is not None and e.truncated for e in encoded],
                [len(e.ids) if e is not None else 0 for e in encoded])
    for i in index:
        if outcomes[i] == KEPT:
            out.examples.append(distinct[i])
            out.encoded.append(encoded[i])
            if "source" in distinct[i].meta:
                out.by_source[distinct[i].meta["source"]] = out.by_source.get(distinct[i].meta["source"], 0) + 1
    return out


def account_for(splits: Splits, train: EncodedSplit, val: EncodedSplit) -> DataAccount:
    """The whole account of a run's data: what reading lost (splits) plus what encoding kept and lost."""
    return add_encoding(splits.account, train, val)


def add_encoding(account: DataAccount, train: EncodedSplit, val: EncodedSplit) -> DataAccount:
    """`account` (what reading and choosing lost) completed with what encoding kept and lost."""
    account.train, account.validation = train.kept, val.kept
    account.truncated = train.truncated + val.truncated
    account.too_long = train.dropped + val.dropped
    account.cut_before_answer = train.cut_before_answer + val.cut_before_answer
    account.no_answer = train.no_answer + val.no_answer
    account.repeats = train.repeats + val.repeats
    if account.sources is not None:
        for name, split in (("train", train), ("validation", val)):
            for path, n in split.by_source.items():
                account.sources[path][name] += n
    return account
