"""Building a cache entry at scale: read, convert, render and tokenize in worker processes, straight
into Arrow, so neither the records nor the examples are ever all held in Python.

The sources are cut into shards (byte ranges of a JSONL file on line boundaries, row ranges of a
dataset); `datasets.map` runs the shards over `num_proc` processes, each returning one row per
record read: its outcome (kept, or lost and why; malformed records included), its
tokens, a duplicate key and the example as JSON. The main process then reads only the small columns
(source, outcome, key) to decide duplicates, the hold-out and a mixture's shares through the same
`plan` as data read into Python, and writes the chosen rows. Every record therefore costs the
same work whether it ends up in training, validation or neither (duplicates are encoded once each
and then left out: a small waste that keeps the choice in one place).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import itertools
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.config import DataConfig
from tuneforge.data.account import DataAccount
from tuneforge.data.dataset import (ENCODE_CHUNK, KEPT, EncodedSplit, SourceRows, add_encoding, outcome, plan,
                                    source_specs, tally)
from tuneforge.data.formats import Example, to_examples
from tuneforge.data.render import encode_many
from tuneforge.data.sources import Record, jsonl_record, open_dataset, read_records, row_where, source_kind
from tuneforge.errors import UserError

BAD = 4  # outcome of a record that could not be read or converted (data.on_bad_record: skip)
SHARD_BYTES = 8 << 20  # a JSONL shard: small enough to balance the workers, large enough to be cheap
SHARD_ROWS = 20_000  # a dataset shard
# Below this many records, starting worker processes costs more than it saves.
PARALLEL_FROM = 4000

STORED = ("ids", "mask", "truncated", "length")  # the columns a split's folder keeps (validation adds "example")


FEATURES = ("source", "order", "outcome", "where", "reason", "key", "example", "ids", "mask", "truncated", "length")


def features():
    import datasets

    return datasets.Features({
        "source": datasets.Value("int16"), "order": datasets.Value("int64"), "outcome": datasets.Value("int8"),
        "where": datasets.Value("string"), "reason": datasets.Value("string"), "key": datasets.Value("binary"),
        "example": datasets.Value("string"), "ids": datasets.Sequence(datasets.Value("int32")),
        "mask": datasets.Sequence(datasets.Value("uint8")), "truncated": datasets.Value("bool"),
        "length": datasets.Value("int32")})


def as_json(ex: Example) -> dict:
    return {"segments": [[s.role, s.text, s.train] for s in ex.segments], "where": ex.where, "meta": ex.meta}


def digest_key(ex: Example) -> bytes:
    """`example_key` as 16 bytes: equal for equal roles, texts and trained flags."""
    return hashlib.blake2b(json.dumps([[s.role, s.text, s.train] for s in ex.segments]).encode(),
                           digest_size=16).digest()


# ---- shards: cut in the main process, read in the workers ----

def _universal_lines(data: bytes, cr_before: bool) -> int:
    """Line breaks in `data` as universal newlines count them (\\n, \\r\\n and a lone \\r);
    `cr_before`: the byte before `data` was \\r (so a leading \\n ends no new line)."""
    n = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return n - 1 if cr_before and data[:1] == b"\n" else n


def jsonl_shards(path: Path, source: int) -> tuple[list[dict], int]:
    """Byte ranges of `path` ending on line boundaries, each with its first line number, and the
    number of lines. Reading it once here also checks it is UTF-8, so a worker never meets a
    decoding error (the message names the line, as reading the whole file would)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    shards, start, first_line, lines, pos, cr = [], 0, 1, 0, 0, False
    with open(path, "rb") as f:
        while chunk := f.read(SHARD_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                at = pos + e.start
                with open(path, "rb") as g:
                    line = g.read(at).count(b"\n") + 1
                raise UserError(f"{path}:{line}: not UTF-8 text (byte {chunk[e.start]:#04x} at offset {at}); "
                                "save the file as UTF-8") from None
            cut = chunk.rfind(b"\n") + 1  # end the shard after this chunk's last line break
            if cut and pos + cut - start >= SHARD_BYTES:
                lines += _universal_lines(chunk[:cut], cr)
                shards.append({"source": source, "kind": "jsonl", "path": str(path), "start": start,
                               "stop": pos + cut, "line": first_line})
                start, first_line = pos + cut, lines + 1
                lines += _universal_lines(chunk[cut:], False)
            else:
                lines += _universal_lines(chunk, cr)
            cr = chunk.endswith(b"\r")
            pos += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text (the file ends inside a character); save the file as UTF-8") from None
    if pos > start:
        shards.append({"source": source, "kind": "jsonl", "path": str(path), "start": start, "stop": pos,
                       "line": first_line})
    return shards, lines


def source_shards(source: int, path: str, cfg: DataConfig) -> tuple[list[dict], int]:
    """The shards of one source and about how many records it holds (for choosing the workers)."""
    kind = source_kind(path)
    if kind == "jsonl":
        return jsonl_shards(Path(path), source)
    if kind == "json":  # one JSON document: read here (it has to be parsed whole), handed out in slices
        records = read_records(path, cfg.split)
        return ([{"source": source, "kind": "records", "start": a, "records": records[a:a + SHARD_ROWS]}
                 for a in range(0, len(records), SHARD_ROWS)], len(records))
    n = len(open_dataset(kind, path, cfg.split))
    return ([{"source": source, "kind": kind, "path": path, "split": cfg.split, "start": a,
              "stop": min(n, a + SHARD_ROWS)} for a in range(0, n, SHARD_ROWS)], n)


def _shard_records(shard: dict, bad: list[str]):
    """(order, record or None) for each record of a shard; a None's reason is appended to `bad`."""
    kind = shard["kind"]
    if kind == "jsonl":
        with open(shard["path"], "rb") as f:
            f.seek(shard["start"])
            data = f.read(shard["stop"] - shard["start"])
        text = data.decode("utf-8-sig" if shard["start"] == 0 else "utf-8")
        for lineno, line in enumerate(io.StringIO(text, newline=None), shard["line"]):
            n_bad = len(bad)
            record = jsonl_record(line, f"{shard['path']}:{lineno}", bad)
            if record is not None or len(bad) > n_bad:  # a blank line is no record
                yield lineno, record
    elif kind == "records":
        for i, record in enumerate(shard["records"], shard["start"]):
            yield i, record
    else:
        ds = open_dataset(kind, shard["path"], shard["split"])
        for i in range(shard["start"], shard["stop"]):
            yield i, Record(dict(ds[i]), row_where(kind, shard["path"], i))


def _columns(shard: dict, tokenizer, settings: dict) -> dict[str, list]:
    """One row per record of `shard`, in file order, as columns. With on_bad_record: error, the shard
    stops at its first malformed record (the main process raises the first of all shards)."""
    source, fmt = shard["source"], settings["formats"][shard["source"]]
    out: dict[str, list] = {name: [] for name in FEATURES}
    pending: list[tuple[int, Example]] = []

    def add(order, where, what, reason="", key=b"", example="", enc=None):
        for name, value in (("source", source), ("order", order), ("outcome", what), ("where", where),
                            ("reason", reason), ("key", key), ("example", example)):
            out[name].append(value)
        out["ids"].append(enc.ids if enc is not None else [])
        out["mask"].append(enc.mask if enc is not None else [])
        out["truncated"].append(enc is not None and enc.truncated)
        out["length"].append(len(enc.ids) if enc is not None else 0)

    def flush():
        encoded = encode_many([ex for _, ex in pending], tokenizer, settings["max_length"], settings["truncation"],
                              settings["train_on_prompt"])
        for (order, ex), enc in zip(pending, encoded):
            add(order, ex.where, outcome(enc), key=digest_key(ex), example=json.dumps(as_json(ex), default=str),
                enc=enc)
        pending.clear()

    bad: list[str] = []
    for order, record in _shard_records(shard, bad):
        if record is not None:
            examples = to_examples([record], fmt, settings["system_prompt"], bad)
            if examples:
                if settings["source_meta"]:
                    examples[0].meta["source"] = settings["paths"][source]
                pending.append((order, examples[0]))
                if len(pending) >= ENCODE_CHUNK:
                    flush()
                continue
        flush()  # rows stay in file order
        add(order, record.where if record is not None else f"{shard['path']}:{order}", BAD, bad[-1])
        if settings["on_bad_record"] != "skip":
            break
    flush()
    out["ids"], out["mask"] = _list_array(out["ids"], np.int32), _list_array(out["mask"], np.uint8)
    return out


def _list_array(rows: list[list], dtype):
    """Lists of numbers as one Arrow list column, built from a flat array and offsets: converting
    Python lists row by row took as long as rendering."""
    import pyarrow as pa

    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def encode_shards(batch: dict, tokenizer, settings: dict):
    """`datasets.map` function (batched, one shard per call): a shard's description to its rows. The
    rows leave as one Arrow table, which datasets writes as it is."""
    import pyarrow as pa

    (blob,) = batch["shard"]  # batch_size=1
    if settings["workers"] > 1:
        # one process per core already: the tokenizer's own threads would only contend (tokenizers reads
        # this at each call; it is set in the worker process, never in the user's)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    columns = _columns(pickle.loads(blob), tokenizer, settings)
    schema = features().arrow_schema
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) if isinstance(columns[f.name], list)
                                 else columns[f.name].cast(f.type) for f in schema], schema=schema)


# ---- the build ----

@dataclass
class Built:
    account: DataAccount
    notes: list[tuple[str, str]]
    train: int  # rows written
    validation: int


class _Column:
    """A string column read one value at a time (only the few rows a note names are ever read)."""

    def __init__(self, column, rows):
        self.column, self.rows = column, rows

    def __getitem__(self, i):
        return self.column[int(self.rows[i])].as_py()


def workers(cfg: DataConfig, n: int) -> int:
    if cfg.num_proc is not None:
        return cfg.num_proc
    return max(1, min(os.cpu_count() or 1, 8)) if n >= PARALLEL_FROM else 1


def build(cfg: DataConfig, seed: int, tokenizer, scratch: Path, key: str) -> Built:
    """Encode every record of `cfg`'s sources into `scratch`/train and /validation (Arrow; validation
    also holds each example as JSON, for generation-based evaluation) and account for each record."""
    import datasets

    specs = source_specs(cfg)
    shards, n = [], 0
    for k, (_, path, own) in enumerate(specs):
        more, count = source_shards(k, path, own)
        shards += more
        n += count
    settings = {"formats": [own.format for _, _, own in specs], "paths": [path for _, path, _ in specs],
                "system_prompt": cfg.system_prompt, "on_bad_record": cfg.on_bad_record,
                "max_length": cfg.max_length, "truncation": cfg.truncation, "train_on_prompt": cfg.train_on_prompt,
                "source_meta": not isinstance(cfg.train, str)}
    work = scratch / "work"
    work.mkdir()
    n_proc = min(workers(cfg, n), max(1, len(shards)))
    settings["workers"] = n_proc
    described = datasets.Dataset.from_dict({"shard": [pickle.dumps(shard) for shard in shards]},
                                           features=datasets.Features({"shard": datasets.Value("binary")}))
    if shards:
        table = described.map(encode_shards, batched=True, batch_size=1, num_proc=n_proc if n_proc > 1 else None,
                              remove_columns=["shard"], features=features(), new_fingerprint=f"{key}-rows",
                              cache_file_name=str(work / "rows.arrow"),
                              fn_kwargs={"tokenizer": tokenizer, "settings": settings})
    if not shards or len(table) == 0:
        table = datasets.Dataset.from_dict({k: [] for k in features()}, features=features())
    arrow = table.data.table
    source = arrow.column("source").to_numpy()
    order = arrow.column("order").to_numpy()
    rank = np.lexsort((order, source))  # the workers' rows come back in shard order; make sure of it
    if not np.array_equal(rank, np.arange(len(rank))):
        table = table.select(rank).flatten_indices()
        arrow = table.data.table
        source = arrow.column("source").to_numpy()
    outcomes = arrow.column("outcome").to_numpy()
    bad_rows = np.flatnonzero(outcomes == BAD)
    reasons = [arrow.column("reason")[int(i)].as_py() for i in bad_rows]
    if reasons and cfg.on_bad_record == "error":
        raise UserError(reasons[0])
    good = np.flatnonzero(outcomes != BAD)
    keys = arrow.column("key").take(good).to_pylist()
    sources, at = [], 0
    bad_by_source = np.bincount(source[bad_rows], minlength=len(specs))
    read_by_source = np.bincount(source, minlength=len(specs))
    good_by_source = np.bincount(source[good], minlength=len(specs))
    for k, (label, path, _) in enumerate(specs):
        first_bad = next((r for i, r in zip(bad_rows, reasons) if source[i] == k), None)
        sources.append(SourceRows(label, path, keys[at:at + good_by_source[k]], read=int(read_by_source[k]),
                                  bad=int(bad_by_source[k]), first_bad=first_bad))
        at += good_by_source[k]
    train, val, account = plan(cfg, seed, sources)
    paths = [path for _, path, _ in specs]
    train_out, train_rows = _split(arrow, good[np.asarray(train, dtype=np.int64)], source, paths, cfg)
    val_out, val_rows = _split(arrow, good[np.asarray(val, dtype=np.int64)], source, paths, cfg)
    _save(table, train_rows, scratch / "train", STORED)
    _save(table, val_rows, scratch / "validation", (*STORED, "example"))
    add_encoding(account, train_out, val_out)
    bad_notes = [(r.split(": ", 1)[0], "malformed or empty: " + r.split(": ", 1)[-1]) for r in reasons]
    return Built(account, bad_notes + train_out.notes + val_out.notes, len(train_rows), len(val_rows))


def _split(arrow, chosen: np.ndarray, source: np.ndarray, paths: list[str], cfg: DataConfig
           ) -> tuple[EncodedSplit, np.ndarray]:
    """The counts and notes of one split (table rows `chosen`, repeats included) and its kept rows."""
    distinct, index = np.unique(chosen, return_inverse=True) if len(chosen) else (chosen, chosen)
    # np.unique sorts: number the distinct rows in first-seen order, as the in-memory path does
    first = np.full(len(distinct), len(chosen), dtype=np.int64)
    np.minimum.at(first, index, np.arange(len(chosen)))
    by_first = np.argsort(first, kind="stable")
    distinct = distinct[by_first]
    renumber = np.empty_like(by_first)
    renumber[by_first] = np.arange(len(by_first))
    index = renumber[index] if len(chosen) else index
    outcomes = arrow.column("outcome").take(distinct).to_numpy()
    out = tally(_Column(arrow.column("where"), distinct), index.tolist(), outcomes,
                arrow.column("truncated").take(distinct).to_numpy(), arrow.column("length").take(distinct).to_numpy())
    kept = chosen[outcomes[index] == KEPT] if len(chosen) else chosen
    if not isinstance(cfg.train, str):
        counts = np.bincount(source[kept], minlength=len(paths))
        for path, count in zip(paths, counts):
            if count:
                out.by_source[path] = out.by_source.get(path, 0) + int(count)
    return out, kept


def _save(table, rows: np.ndarray, folder: Path, columns: tuple[str, ...]) -> None:
    import datasets

    if len(rows):
        table.select(rows).select_columns(list(columns)).save_to_disk(str(folder))
    else:  # an empty select cannot be read back: save an empty table with the columns
        stored = datasets.Features({k: v for k, v in features().items() if k in columns})
        datasets.Dataset.from_dict({k: [] for k in stored}, features=stored).save_to_disk(str(folder))
