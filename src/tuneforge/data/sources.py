"""Read raw records from files or `datasets`, remembering where each came from.

JSON and JSONL are read by hand so a malformed line is reported with its file and line number;
Parquet and CSV go through `datasets`, as do saved dataset folders and hub ids.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import UserError


@dataclass
class Record:
    data: dict
    where: str  # "file.jsonl:12" or "dataset[3]": used in every error about this record


def read_text(path: Path) -> str:
    """The file as text: UTF-8 (a leading byte-order mark is dropped); other bytes are the user's to fix."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                        "save the file as UTF-8") from None


def _loads(text: str, where: str, fix: str = "") -> object:
    """json.loads, with every way it can fail (syntax, nesting too deep, huge integers) as a UserError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg}){fix}") from None
    except (ValueError, RecursionError) as e:
        reason = ("nested too deeply" if isinstance(e, RecursionError) else
                  "a number with too many digits" if "digits" in str(e) else (str(e).splitlines() or ["?"])[0])
        raise UserError(f"{where}: not usable JSON ({reason}){fix}") from None


def jsonl_record(line: str, where: str, bad: list[str] | None = None) -> Record | None:
    """The record on one JSONL line (None for a blank line); a line that is not a JSON object raises,
    or with `bad` given gives None and its one-line reason is appended there."""
    if not line.strip():
        return None
    try:
        obj = _loads(line, where, "; fix or remove that line")
        if not isinstance(obj, dict):
            raise UserError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
    except UserError as e:
        if bad is None:
            raise
        bad.append(str(e))
        return None
    return Record(obj, where)


def iter_jsonl(path: Path, bad: list[str] | None = None) -> Iterator[Record]:
    """Records of a JSONL file, one at a time (see `jsonl_record` for malformed lines: their reasons
    reach `bad` as the reading passes them, so a caller that converts as it goes keeps file order)."""
    for lineno, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        record = jsonl_record(line, f"{path}:{lineno}", bad)
        if record is not None:
            yield record


def _read_jsonl(path: Path, bad: list[str] | None = None) -> list[Record]:
    return list(iter_jsonl(path, bad))


def _read_json(path: Path) -> list[Record]:
    text = read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError):
        obj = _loads(text, str(path))  # raises the UserError
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise UserError(f"{path}: expected a JSON list of records (or {{\"data\": [...]}})")
    out = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise UserError(f"{path}: record {i} must be a JSON object, got {type(item).__name__}")
        out.append(Record(item, f"{path}[{i}]"))
    return out


def open_dataset(kind: str, path: str, split: str):
    """`path` as a `datasets.Dataset` (Arrow, memory-mapped): a Parquet or CSV file, a saved dataset
    folder ("disk") or a hub id ("hub")."""
    import datasets

    datasets.disable_progress_bars()
    # datasets logs its own errors (e.g. a corrupt Parquet footer) before raising; the UserError
    # below carries the reason, so keep stderr to that one line.
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    try:
        if kind in ("parquet", "csv"):
            return datasets.load_dataset(kind, data_files=path, split="train")
        if kind == "disk":
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"{path}: no split '{split}' (has {', '.join(ds)}); set data.split")
                ds = ds[split]
            return ds
        return datasets.load_dataset(path, split=split)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the path and the reason
        reason = (str(e).splitlines() or [""])[0]
        raise UserError(f"{path}: could not load as a dataset ({type(e).__name__}: {reason})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)


def row_where(kind: str, path: str, i: int) -> str:
    """Where row `i` of a dataset source is, for messages: a file line (CSV: after the header) or an index."""
    if kind in ("parquet", "csv"):
        return f"{path}:{i + 2 if kind == 'csv' else i}"
    return f"{path}[{i}]"


def _read_with_datasets(kind: str, path: str, split: str) -> list[Record]:
    return [Record(dict(row), row_where(kind, path, i)) for i, row in enumerate(open_dataset(kind, path, split))]


def source_kind(source: str) -> str:
    """How `source` is read: "jsonl", "json" (one document), "parquet", "csv", "disk" or "hub"."""
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return "jsonl"
        if suffix == ".json":
            # Many users name JSONL files .json: a whole-file JSON document wins, else lines.
            return "json" if _is_json_document(path) else "jsonl"
        if suffix in (".parquet", ".csv"):
            return suffix[1:]
        raise UserError(f"{path}: unsupported file type '{suffix}'; use .jsonl, .json, .parquet or .csv")
    if path.is_dir():
        return "disk"
    if "/" in source and not source.startswith((".", "/")) and not path.suffix:
        return "hub"  # an HF hub dataset id such as "org/name"
    raise UserError(f"data file {source} does not exist")


def read_records(source: str, split: str = "train", bad: list[str] | None = None) -> list[Record]:
    """Every record of `source`. `bad`: where unreadable JSONL lines go (one reason each) instead of
    stopping the read; a whole file that cannot be read always stops it."""
    kind = source_kind(source)
    if kind == "jsonl":
        return _read_jsonl(Path(source), bad)
    if kind == "json":
        return _read_json(Path(source))
    return _read_with_datasets(kind, source, split)


def _is_json_document(path: Path) -> bool:
    text = read_text(path).lstrip()
    if text.startswith("["):
        return True
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):  # JSONDecodeError, or a document json cannot hold
        return False
