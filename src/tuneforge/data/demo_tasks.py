"""Synthetic demo task: rewrite a human-written date in ISO format (YYYY-MM-DD).

Small, checkable by exact match, and the base model is weak at it, so a short fine-tune
shows a visible gain.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path

INSTRUCTION = "Rewrite this date in ISO format (YYYY-MM-DD). Answer with the date only."
_START, _END = date(1950, 1, 1), date(2049, 12, 31)
_SPAN = (_END - _START).days


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Spelled out rather than strftime("%B"), which follows the process locale.
_MONTHS = ["January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _month(d: date) -> str:
    return _MONTHS[d.month - 1]


def _mon(d: date) -> str:
    return _month(d)[:3]


# Numeric forms are ambiguous (05/03 is March or May), so they always state their order.
_FORMATS = [
    lambda d: f"{_month(d)} {_ordinal(d.day)}, {d.year}",
    lambda d: f"{d.day} {_month(d)} {d.year}",
    lambda d: f"{d.day:02d}/{d.month:02d}/{d.year} (day/month/year)",
    lambda d: f"{d.month:02d}/{d.day:02d}/{d.year} (month/day/year)",
    lambda d: f"{_mon(d)} {d.day} {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {_month(d)}, {d.year}",
    lambda d: f"{d.year}, {_month(d)} {d.day}",
    lambda d: f"{d.day}.{d.month}.{d.year} (d.m.y)",
    lambda d: f"{_WEEKDAYS[d.weekday()]}, {_month(d)} {d.day}, {d.year}",
    lambda d: f"{d.day}-{_mon(d)}-{d.year}",
    lambda d: f"{_month(d).lower()} {d.day} {d.year}",
]


def make_dates_examples(n: int, seed: int) -> list[dict]:
    """n alpaca records with distinct inputs, deterministic for a given seed."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        d = _START + timedelta(days=rng.randint(0, _SPAN))
        text = rng.choice(_FORMATS)(d)
        if text in seen:
            continue
        seen.add(text)
        out.append({"instruction": INSTRUCTION, "input": text, "output": d.isoformat()})
    return out


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_dates_dataset(out_dir: Path, n_train: int = 2000, n_val: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """Write train.jsonl / val.jsonl; validation never repeats a training input."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = make_dates_examples(n_train, seed)
    train_inputs = {r["input"] for r in train}
    # A different seed gives a different stream; drop the rare collisions so val stays unseen.
    val_rng_seed, val = seed + 1_000_003, []
    while len(val) < n_val:
        batch = make_dates_examples(n_val * 2, val_rng_seed)
        val = [r for r in batch if r["input"] not in train_inputs][:n_val]
        val_rng_seed += 1
    assert not train_inputs & {r["input"] for r in val}
    train_path, val_path = out_dir / "train.jsonl", out_dir / "val.jsonl"
    _write_jsonl(train_path, train)
    _write_jsonl(val_path, val)
    return train_path, val_path
