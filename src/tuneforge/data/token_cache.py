"""Encoded data kept on disk: render and tokenize once, then every run starts from the cache.

A run's encoded training and validation examples live in an Arrow cache (the `datasets` format,
memory-mapped when read back, so a run's memory does not grow with the data) under a fingerprint of
everything that decides them: the bytes of the data files, the data config, the seed and the
tokenizer with its chat template. A second run, `--resume` and `compare-methods` find the same
fingerprint and skip reading and tokenizing; changing any of those inputs makes a new entry.

One entry is a folder `<cache_dir>/<fingerprint>/` holding `train/` and `validation/` (Arrow:
ids, mask, truncated, length; one row per kept example, a mixture's repeats included; validation
also keeps each example as JSON, for generation-based evaluation), `key.json` (what the fingerprint
hashed) and `account.json` (the data account and notes). cache_build.py writes it, in worker
processes, in a scratch folder that is renamed into place whole, so an interrupted build leaves
nothing a later run could mistake for a cache.
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
from tuneforge.data.cache_build import build
from tuneforge.data.dataset import EncodedSplit, Splits, account_for, encode_split, load_splits
from tuneforge.data.formats import Example, Segment
from tuneforge.data.render import Encoded

FORMAT_VERSION = 2  # bump when what an entry holds, or how encoding works, changes
# Data config keys that do not change what is encoded (they only decide where, how fast, or whether to stop).
NOT_FINGERPRINTED = {"max_lost", "cache", "cache_dir", "num_proc", "streaming"}


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


def _position(i: int, n: int) -> int:
    """A list index (negative from the end) as a position in 0..n-1; IndexError outside."""
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(i)
    return i


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
        i = _position(i, len(self))
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
    val_examples: Sequence[Example]
    account: DataAccount
    notes: list[tuple[str, str]] = field(default_factory=list)
    cache: str = ""  # how the data got here, for the log: "cache hit <dir>", "cached in <dir>" or ""


class StoredExamples(Sequence):
    """The held-out examples of a cache entry, decoded from their JSON column one at a time (generation-
    based evaluation reads only the first eval.max_examples of them)."""

    def __init__(self, folder: Path):
        import datasets

        has_rows = any(folder.glob("*.arrow"))
        self._column = datasets.load_from_disk(str(folder)).data.table.column("example") if has_rows else []

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = _position(i, len(self))
        obj = json.loads(self._column[i].as_py())
        return Example([Segment(*seg) for seg in obj["segments"]], obj["where"], obj["meta"])


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
    scratch = root / f".{entry.name}.{os.getpid()}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        import datasets

        datasets.disable_progress_bars()
        built = build(cfg, seed, tokenizer, scratch, entry.name)
        shutil.rmtree(scratch / "work")  # the workers' rows: the saved folders hold the chosen ones
        write_json(scratch / "key.json", inputs)
        write_json(scratch / "account.json", {"account": built.account.as_dict(), "notes": built.notes})
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
                        StoredExamples(entry / "validation"), DataAccount.from_dict(saved["account"]),
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
