"""Encoded data kept on disk: render and tokenize once, then every run starts from the cache.

A run's encoded training and validation examples live in an Arrow cache (the `datasets` format,
memory-mapped when read back, so a run's memory does not grow with the data) under a fingerprint of
everything that decides them: the bytes of the data files, the data config, the seed and the
tokenizer with its chat template. A second run, `--resume` and `compare-methods` find the same
fingerprint and skip reading and tokenizing; changing any of those inputs makes a new entry.

One entry is a folder `<cache_dir>/<fingerprint>/` holding `train/` and `validation/` (Arrow:
ids, mask, truncated, length; one row per kept example, a mixture's repeats included),
`val_examples.jsonl` (the held-out examples as segments, for generation-based evaluation) and
`account.json` (the data account and notes). It is written in a scratch folder and renamed into
place whole, so an interrupted build leaves nothing a later run could mistake for a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneforge.atomic import write_json
from tuneforge.config import DataConfig
from tuneforge.data.account import DataAccount
from tuneforge.data.dataset import (ENCODE_CHUNK, KEPT, EncodedSplit, Splits, account_for, encode_split,
                                    load_splits, outcome, tally, unique)
from tuneforge.data.formats import Example, Segment
from tuneforge.data.render import Encoded, encode_many

FORMAT_VERSION = 1  # bump when what an entry holds, or how encoding works, changes
# Data config keys that do not change what is encoded (they only decide where, how fast, or whether to stop).
NOT_FINGERPRINTED = {"max_lost", "cache", "cache_dir", "num_proc", "streaming"}
# Below this many examples, starting worker processes costs more than it saves.
PARALLEL_FROM = 4000


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    from tuneforge.models.embedded import tuneforge_home

    return tuneforge_home() / "data"


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)


def source_digest(source: str) -> str:
    """A file's or a dataset folder's bytes; a hub id by name (the hub's own cache keys its revisions)."""
    h = hashlib.sha256()
    path = Path(source)
    if path.is_file():
        _hash_file(h, path)
    elif path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            _hash_file(h, f)
    else:
        h.update(b"hub:" + source.encode())
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer as it encodes: its full definition, chat template and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.chat_template, tokenizer.eos_token,
                        tokenizer.pad_token, tokenizer.bos_token])
    return hashlib.sha256(definition.encode() + b"\0" + extra.encode()).hexdigest()


def fingerprint_inputs(cfg: DataConfig, seed: int, tokenizer) -> dict:
    """Everything that decides the encoded data (kept in the entry as key.json, for `data cache`)."""
    sources = [cfg.train] if isinstance(cfg.train, str) else [src.path for src in cfg.train]
    sources += [cfg.validation] if cfg.validation else []
    return {"version": FORMAT_VERSION, "seed": seed, "tokenizer": tokenizer_digest(tokenizer),
            "tokenizer_name": getattr(tokenizer, "name_or_path", ""),
            "data": cfg.model_dump(mode="json", exclude=NOT_FINGERPRINTED),
            "sources": {s: source_digest(s) for s in sources}}


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


class TokenStore(Sequence):
    """Encoded examples read from an Arrow folder, memory-mapped: indexing builds one `Encoded` from
    zero-copy views of the token columns; `lengths` is an array, for planning batches."""

    def __init__(self, folder: Path):
        import datasets

        self._chunks = []
        if not any(folder.glob("*.arrow")):  # an empty split: datasets saves no data file and cannot load it
            self._starts, self.lengths, self._truncated = np.zeros(1, np.int64), np.zeros(0, np.int32), None
            return
        table = datasets.load_from_disk(str(folder)).data.table
        for ids, mask in zip(table.column("ids").chunks, table.column("mask").chunks):
            self._chunks.append((ids.offsets.to_numpy(), ids.values.to_numpy(),
                                 mask.offsets.to_numpy(), mask.values.to_numpy()))
        sizes = [len(c[0]) - 1 for c in self._chunks]
        self._starts = np.cumsum([0, *sizes])
        self.lengths = table.column("length").to_numpy()
        self._truncated = table.column("truncated").to_numpy()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        offsets, ids, mask_offsets, mask = self._chunks[c]
        k = i - self._starts[c]
        return Encoded(ids[offsets[k]:offsets[k + 1]].tolist(),
                       mask[mask_offsets[k]:mask_offsets[k + 1]].astype(bool).tolist(), bool(self._truncated[i]))


@dataclass
class PreparedData:
    """What a recipe trains and evaluates on, with the account of every record read."""
    train: Sequence[Encoded]
    val: Sequence[Encoded]
    val_examples: list[Example]
    account: DataAccount
    notes: list[tuple[str, str]] = field(default_factory=list)
    cache: str = ""  # how the data got here, for the log: "cache hit <dir>", "cached in <dir>" or ""


def _encode_rows(batch: dict, tokenizer, max_length: int, truncation: str, train_on_prompt: bool) -> dict:
    """`datasets.map` function: a batch of examples (as JSON) to token columns and an outcome each."""
    examples = [_example(json.loads(text)) for text in batch["example"]]
    ids, masks, truncated, lengths, outcomes = [], [], [], [], []
    for enc in encode_many(examples, tokenizer, max_length, truncation, train_on_prompt):
        outcomes.append(outcome(enc))
        ids.append(enc.ids if enc is not None else [])
        masks.append(np.asarray(enc.mask, dtype=np.uint8) if enc is not None else np.zeros(0, np.uint8))
        truncated.append(enc is not None and enc.truncated)
        lengths.append(len(enc.ids) if enc is not None else 0)
    return {"ids": ids, "mask": masks, "truncated": truncated, "length": lengths, "outcome": outcomes}


def _as_json(ex: Example) -> dict:
    return {"segments": [[s.role, s.text, s.train] for s in ex.segments], "where": ex.where, "meta": ex.meta}


def _example(obj: dict) -> Example:
    return Example([Segment(*s) for s in obj["segments"]], obj["where"], obj["meta"])


def _workers(cfg: DataConfig, n: int) -> int:
    if cfg.num_proc is not None:
        return cfg.num_proc
    return max(1, min(os.cpu_count() or 1, 8)) if n >= PARALLEL_FROM else 1


def _encode_to(folder: Path, work: Path, examples: list[Example], tokenizer, cfg: DataConfig, key: str
               ) -> EncodedSplit:
    """Encode `examples` with `datasets.map` (batched, over `num_proc` processes; its files go in `work`)
    and save the kept rows, repeats included, as an Arrow folder; the split's counts and notes come back."""
    import datasets

    distinct, index = unique(examples)
    table = datasets.Dataset.from_dict({"example": [json.dumps(_as_json(ex), default=str) for ex in distinct]},
                                       features=datasets.Features({"example": datasets.Value("string")}))
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value("int32")),
                                  "mask": datasets.Sequence(datasets.Value("uint8")),
                                  "truncated": datasets.Value("bool"), "length": datasets.Value("int32"),
                                  "outcome": datasets.Value("int8")})
    stored = datasets.Features({k: v for k, v in features.items() if k != "outcome"})

    def save_empty():  # map leaves an empty table without its new columns, and an empty select cannot be read back
        datasets.Dataset.from_dict({k: [] for k in stored}, features=stored).save_to_disk(str(folder))

    if not distinct:
        save_empty()
        return EncodedSplit()
    workers = min(_workers(cfg, len(distinct)), max(1, len(distinct) // ENCODE_CHUNK))
    encoded = table.map(_encode_rows, batched=True, batch_size=ENCODE_CHUNK, num_proc=workers if workers > 1 else None,
                        remove_columns=["example"], features=features, new_fingerprint=f"{key}-{folder.name}",
                        cache_file_name=str(work / f"{folder.name}.arrow"),
                        fn_kwargs={"tokenizer": tokenizer, "max_length": cfg.max_length, "truncation": cfg.truncation,
                                   "train_on_prompt": cfg.train_on_prompt})
    columns = encoded.data.table
    outcomes = columns.column("outcome").to_numpy()
    out = tally(distinct, index, outcomes.tolist(), columns.column("truncated").to_numpy().tolist(),
                columns.column("length").to_numpy().tolist())
    rows = [i for i in index if outcomes[i] == KEPT]
    out.examples = [distinct[i] for i in rows]
    if rows:
        encoded.remove_columns(["outcome"]).select(rows).save_to_disk(str(folder))
    else:
        save_empty()
    return out


def _write_examples(path: Path, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(_as_json(ex), default=str) + "\n")


def _read_examples(path: Path) -> list[Example]:
    with open(path, encoding="utf-8") as f:
        return [_example(json.loads(line)) for line in f]


def prepare(cfg: DataConfig, seed: int, tokenizer) -> PreparedData:
    """The encoded splits for `cfg`: from the cache when an entry with this fingerprint exists, else read,
    encoded, and (with `data.cache` on) stored for the next run."""
    if not cfg.cache:
        return _in_memory(cfg, seed, tokenizer)
    root = cache_root(cfg)
    inputs = fingerprint_inputs(cfg, seed, tokenizer)
    entry = root / fingerprint(inputs)
    if (entry / "account.json").is_file():
        return _load(entry, f"cache hit {entry}")
    splits = load_splits(cfg, seed)
    scratch = root / f".{entry.name}.{os.getpid()}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        import datasets

        datasets.disable_progress_bars()
        work = scratch / "work"
        key = entry.name
        train = _encode_to(scratch / "train", work, splits.train, tokenizer, cfg, key)
        val = _encode_to(scratch / "validation", work, splits.val, tokenizer, cfg, key)
        shutil.rmtree(work)  # map's own files: the saved folders hold the rows
        account = account_for(splits, train, val)
        _write_examples(scratch / "val_examples.jsonl", val.examples)
        write_json(scratch / "key.json", inputs)
        write_json(scratch / "account.json", {"account": account.as_dict(), "notes": _notes(splits, train, val)})
        try:
            scratch.rename(entry)
        except OSError:  # another process finished the same entry first: theirs is as good
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return _load(entry, f"cached in {entry}")


def _notes(splits: Splits, train: EncodedSplit, val: EncodedSplit) -> list[tuple[str, str]]:
    bad = [(reason.split(": ", 1)[0], "malformed or empty: " + reason.split(": ", 1)[-1]) for reason in splits.bad]
    return bad + train.notes + val.notes


def _load(entry: Path, how: str) -> PreparedData:
    saved = json.loads((entry / "account.json").read_text())
    return PreparedData(TokenStore(entry / "train"), TokenStore(entry / "validation"),
                        _read_examples(entry / "val_examples.jsonl"), DataAccount.from_dict(saved["account"]),
                        [tuple(n) for n in saved["notes"]], how)


def _in_memory(cfg: DataConfig, seed: int, tokenizer) -> PreparedData:
    splits = load_splits(cfg, seed)
    train, val = encode_split(splits.train, tokenizer, cfg), encode_split(splits.val, tokenizer, cfg)
    return PreparedData(train.encoded, val.encoded, val.examples, account_for(splits, train, val),
                        _notes(splits, train, val))


@dataclass
class CacheEntry:
    path: Path
    bytes: int
    sources: list[str]
    max_length: int | None
    tokenizer: str
    account: str


def list_entries(root: Path) -> list[CacheEntry]:
    """The complete entries under `root`, newest first (scratch folders of builds under way are skipped)."""
    out = []
    for entry in sorted((p for p in root.glob("*") if (p / "account.json").is_file()),
                        key=lambda p: -(p / "account.json").stat().st_mtime):
        key = json.loads((entry / "key.json").read_text()) if (entry / "key.json").is_file() else {}
        account = DataAccount.from_dict(json.loads((entry / "account.json").read_text())["account"])
        out.append(CacheEntry(entry, sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()),
                              list(key.get("sources", {})), key.get("data", {}).get("max_length"),
                              key.get("tokenizer_name", ""), account.line()))
    return out
