"""Training data read as a stream (`data.streaming: true`): a JSONL file is read, encoded and packed a
window of records at a time, so a file bigger than memory trains with memory bounded by one window.

The position (epoch, the byte offset and line of the window in training, and how many of its
micro-batches are done) and the account so far travel in every checkpoint, so `--resume` re-reads
that one window, plans it the same way (the plan is seeded by epoch and window) and continues with
the next micro-batch: a resumed run trains on exactly what an uninterrupted one would.

Order: windows come in file order and examples are shuffled within a window (packing needs a
window of examples anyway); shuffle the file beforehand if its order is not random.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tuneforge.config import Config, DataConfig
from tuneforge.data.account import DataAccount
from tuneforge.data.dataset import CUT_BEFORE_ANSWER, KEPT, NO_ANSWER, TOO_LONG, outcome
from tuneforge.data.formats import to_examples
from tuneforge.data.pack import plan_micro_batches
from tuneforge.data.render import Encoded, encode_many
from tuneforge.data.sources import jsonl_record
from tuneforge.errors import UserError

STREAM_WINDOW = 2048  # records per window: enough for packing to fill rows and to mix a window well


def check_streaming(cfg: Config) -> None:
    """What streaming cannot do, refused before any work: one line naming the key."""
    data = cfg.data
    if not isinstance(data.train, str) or Path(data.train).suffix.lower() not in (".jsonl", ".json") \
            or not Path(data.train).is_file():
        raise UserError(f"data.streaming reads one JSONL file; data.train is {data.train!r}: give a .jsonl file or "
                        "set data.streaming: false (Parquet, CSV, dataset folders and mixtures use the cache)")
    if cfg.train.max_steps is None:
        raise UserError("data.streaming: a stream's length is not known before it is read, so set train.max_steps")
    for key in ("drop_duplicates", "max_examples"):
        if getattr(data, key):
            raise UserError(f"data.{key} needs the whole file in memory; remove it or set data.streaming: false")


class TokenStream:
    """Micro-batches from a JSONL file, a window at a time; `state()` / `restore()` for checkpoints."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int, batch_tokens: int, pack_length: int | None,
                 packing: bool, window: int | None = None):
        self.cfg, self.tokenizer, self.seed, self.window_size = cfg, tokenizer, seed, window or STREAM_WINDOW
        self.path = Path(cfg.train)
        self.batch_tokens, self.packing = batch_tokens, packing
        self.row_length = min(cfg.max_length, pack_length or cfg.max_length)
        self.account = DataAccount()
        self.first_pass_done = False
        self.epoch = self.window = self.offset = self.line = self.micro = 0
        self._encoded: list[Encoded] = []
        self._plan: list[list[list[int]]] = []
        self._next = (0, 0, False)  # the following window's (offset, line) and whether the file ended
        self._loaded = False

    # ------------------------------------------------------------------ position

    def state(self) -> dict:
        return {"epoch": self.epoch, "window": self.window, "offset": self.offset, "line": self.line,
                "micro": self.micro, "first_pass_done": self.first_pass_done, "account": asdict(self.account)}

    def restore(self, state: dict) -> None:
        """Continue where `state` was taken: its window is read again (not counted again) and planned the same."""
        self.epoch, self.window, self.offset, self.line = state["epoch"], state["window"], state["offset"], state["line"]
        self.first_pass_done = state["first_pass_done"]
        self.account = DataAccount.from_dict(state["account"])
        self._load(count=False)
        self.micro = state["micro"]

    # ------------------------------------------------------------------ reading

    def _read_window(self) -> tuple[list, list[str], int, int, bool]:
        """(records, bad reasons, next offset, next line, whether the file ended) of the window at the position."""
        skip = self.cfg.on_bad_record == "skip"
        records, bad = [], []
        line, ended = self.line, False
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while len(records) + len(bad) < self.window_size:
                raw = f.readline()
                if not raw:
                    ended = True
                    break
                line += 1
                where = f"{self.path}:{line}"
                try:
                    text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    reason = f"{where}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as UTF-8"
                    if not skip:
                        raise UserError(reason) from None
                    bad.append(reason)
                    continue
                record = jsonl_record(text, where, bad if skip else None)
                if record is not None:
                    records.append(record)
            next_offset = f.tell()
        return records, bad, next_offset, line, ended

    def _load(self, count: bool = True) -> None:
        """Read, encode and plan the window at the position; `count` adds it to the account (first pass only)."""
        records, bad, next_offset, next_line, ended = self._read_window()
        unreadable = len(bad)
        examples = to_examples(records, self.cfg.format, self.cfg.system_prompt,
                               bad if self.cfg.on_bad_record == "skip" else None)
        encoded = encode_many(examples, self.tokenizer, self.cfg.max_length, self.cfg.truncation,
                              self.cfg.train_on_prompt)
        outcomes = [outcome(e) for e in encoded]
        self._encoded = [e for e, what in zip(encoded, outcomes) if what == KEPT]
        if count and not self.first_pass_done:
            a = self.account
            a.read += unreadable + len(records)
            a.bad += len(bad)
            a.first_bad = a.first_bad or (bad[0] if bad else None)
            a.train += len(self._encoded)
            a.truncated += sum(e.truncated for e in self._encoded)
            a.too_long += outcomes.count(TOO_LONG)
            a.cut_before_answer += outcomes.count(CUT_BEFORE_ANSWER)
            a.no_answer += outcomes.count(NO_ANSWER)
            a.check(self.cfg.max_lost, f"data.train (streamed, {a.read} records read so far)")
        lengths = [len(e.ids) for e in self._encoded]
        self._plan = plan_micro_batches(lengths, self.batch_tokens, self.row_length, self.packing,
                                        seed=self.seed + 1_000_003 * self.epoch + self.window) if lengths else []
        self._next = (next_offset, next_line, ended)
        self.micro = 0
        self._loaded = True

    def _advance(self) -> None:
        """On to the next window, or to the next epoch at the end of the file."""
        next_offset, next_line, ended = self._next
        if ended:
            if not self.first_pass_done and self.account.train == 0:
                raise UserError(f"data.train: no usable examples in {self.path} ({self.account.line()}); "
                                "raise data.max_length or check the data")
            self.first_pass_done = True
            self.epoch, self.window, self.offset, self.line = self.epoch + 1, 0, 0, 0
        else:
            self.window, self.offset, self.line = self.window + 1, next_offset, next_line
        self._load()

    def next_micro_batch(self) -> tuple[list[list[int]], list[Encoded]]:
        """(rows of example indices, the window's encoded examples they index)."""
        if not self._loaded:
            self._load()
        while self.micro >= len(self._plan):
            self._advance()
        rows = self._plan[self.micro]
        self.micro += 1
        return rows, self._encoded
