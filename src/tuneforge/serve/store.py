"""The server's memory: every completion it returned, and what users said about them.

`serve_dir/feedback.sqlite` holds two tables:

- completions: id ("chatcmpl-..." or "cmpl-..."), created (unix seconds), model, endpoint ("chat" or
  "completion"), prompt (JSON: the messages list for chat, the text for completions), response,
  finish_reason. Written for every completion; prompts are stored here (preference data needs
  them) but never in the request log.
- feedback: completion_id, rating, preferred, rejected, comment, created. The rating is a thumb:
  -1 (bad), 0 (neutral), 1 (good). `preferred` is a better reply written or picked by the user,
  `rejected` a worse one.

`export_preferences` turns feedback into DPO pairs ({prompt, chosen, rejected} JSONL):
- explicit feedback: preferred and rejected given: that pair; only preferred: preferred over the
  stored response; only rejected: the stored response over rejected;
- ratings: for the same prompt (same messages or text, any served model), a response rated higher
  is chosen over one rated lower (a completion's latest rating counts).
Pairs whose chosen and rejected texts are the same (ignoring surrounding whitespace) teach
nothing and are skipped; so are repeats of a pair already written and pairs with an empty prompt or response.
All are counted as skipped. The output is what `tuneforge.data.preference` reads (a text prompt
becomes one user message there).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from itertools import combinations
from pathlib import Path

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import UserError

DB_NAME = "feedback.sqlite"
RATINGS = (-1, 0, 1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    finish_reason TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    completion_id TEXT NOT NULL REFERENCES completions(id),
    rating INTEGER CHECK (rating IS NULL OR rating BETWEEN -1 AND 1),
    preferred TEXT,
    rejected TEXT,
    comment TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_completion ON feedback(completion_id);
"""


class UnknownCompletion(LookupError):
    """Feedback named a completion id this server never returned (the API answers 404)."""

    def __init__(self, completion_id: str):
        super().__init__(f"no completion with id '{completion_id}' in this server's store")
        self.completion_id = completion_id


class FeedbackStore:
    """Thread-safe (one connection behind a lock); WAL so an export can read while serving."""

    def __init__(self, serve_dir: str | Path):
        self.serve_dir = Path(serve_dir)
        self.serve_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.serve_dir / DB_NAME
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._conn.commit()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def record_completion(self, completion_id: str, model: str, prompt, response: str,
                          endpoint: str = "chat", finish_reason: str | None = None,
                          created: int | None = None) -> None:
        """`prompt`: the messages list (chat) or the text (completions); stored as JSON."""
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO completions (id, created, model, endpoint, prompt, response, finish_reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (completion_id, int(created if created is not None else time.time()), model, endpoint,
                 json.dumps(prompt, ensure_ascii=False), response, finish_reason))

    def get_completion(self, completion_id: str) -> dict | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, created, model, endpoint, prompt, response, finish_reason FROM completions "
                "WHERE id = ?", (completion_id,)).fetchone()
        if row is None:
            return None
        keys = ("id", "created", "model", "endpoint", "prompt", "response", "finish_reason")
        out = dict(zip(keys, row))
        out["prompt"] = json.loads(out["prompt"])
        return out

    def record_feedback(self, completion_id: str, rating: int | None = None, preferred: str | None = None,
                        rejected: str | None = None, comment: str | None = None) -> int:
        """Store feedback on a completion; returns the feedback id.

        Raises UnknownCompletion for an id this store has not seen, ValueError for a rating outside
        -1..1 or feedback that says nothing."""
        if rating is not None and (isinstance(rating, bool) or rating not in RATINGS):
            raise ValueError(f"rating must be -1, 0 or 1, not {rating!r}")
        if rating is None and not preferred and not rejected and not comment:
            raise ValueError("feedback needs at least one of rating, preferred, rejected, comment")
        with self._lock, self._conn:
            known = self._conn.execute("SELECT 1 FROM completions WHERE id = ?", (completion_id,)).fetchone()
            if known is None:
                raise UnknownCompletion(completion_id)
            cur = self._conn.execute(
                "INSERT INTO feedback (completion_id, rating, preferred, rejected, comment, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (completion_id, rating, preferred or None, rejected or None, comment or None, time.time()))
            return int(cur.lastrowid)

    def counts(self) -> dict[str, int]:
        with self._lock:
            n_c = self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            n_f = self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return {"completions": int(n_c), "feedback": int(n_f)}


def _pairs(conn: sqlite3.Connection):
    """(prompt JSON, chosen, rejected) candidates, explicit feedback first, then from ratings."""
    rows = conn.execute(
        "SELECT c.prompt, c.response, f.preferred, f.rejected FROM feedback f "
        "JOIN completions c ON c.id = f.completion_id "
        "WHERE f.preferred IS NOT NULL OR f.rejected IS NOT NULL ORDER BY f.id").fetchall()
    for prompt, response, preferred, rejected in rows:
        if preferred is not None and rejected is not None:
            yield prompt, preferred, rejected
        elif preferred is not None:
            yield prompt, preferred, response
        else:
            yield prompt, response, rejected

    # Latest rating per completion, grouped by prompt.
    rated = conn.execute(
        "SELECT c.id, c.prompt, c.response, f.rating FROM feedback f JOIN completions c ON c.id = f.completion_id "
        "WHERE f.rating IS NOT NULL AND f.id = (SELECT MAX(f2.id) FROM feedback f2 "
        "WHERE f2.completion_id = f.completion_id AND f2.rating IS NOT NULL) ORDER BY c.created, c.id").fetchall()
    by_prompt: dict[str, list[tuple[str, int]]] = {}
    for _, prompt, response, rating in rated:
        key = json.dumps(json.loads(prompt), sort_keys=True, ensure_ascii=False)
        by_prompt.setdefault(key, []).append((response, rating))
    for key, items in by_prompt.items():
        for (a, ra), (b, rb) in combinations(items, 2):
            if ra > rb:
                yield key, a, b
            elif rb > ra:
                yield key, b, a


def export_kto(serve_dir: str | Path, out_path: str | Path) -> tuple[int, int]:
    """Write labelled completions for KTO as JSONL ({"prompt", "completion", "label"}); returns
    (written, skipped). A thumbs up (rating 1) or a user's preferred text is desirable, a thumbs down
    (-1) or a rejected text undesirable; the latest feedback on the same prompt and text wins.
    Neutral ratings (0), empty texts and repeats are skipped and counted."""
    db = Path(serve_dir) / DB_NAME
    if not db.is_file():
        raise UserError(f"{db} does not exist: give the --serve-dir of a `tuneforge serve` that received feedback")
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT c.prompt, c.response, f.rating, f.preferred, f.rejected FROM feedback f "
            "JOIN completions c ON c.id = f.completion_id ORDER BY f.id").fetchall()
    finally:
        conn.close()
    labels: dict[tuple[str, str], tuple[object, bool]] = {}
    skipped = 0
    for prompt_json, response, rating, preferred, rejected in rows:
        prompt = json.loads(prompt_json)
        canon = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        found = []
        if rating is not None:
            if rating == 0:
                skipped += 1
            else:
                found.append((response, rating > 0))
        found += [(text, good) for text, good in ((preferred, True), (rejected, False)) if text is not None]
        for text, good in found:
            if not text.strip() or (prompt.strip() == "" if isinstance(prompt, str) else not prompt):
                skipped += 1
                continue
            if (canon, text) in labels:
                skipped += 1  # a repeat, or a later change of mind: the latest label counts
            labels[(canon, text)] = (prompt, good)
    lines = [json.dumps({"prompt": prompt, "completion": text, "label": good}, ensure_ascii=False)
             for (_, text), (prompt, good) in labels.items()]
    atomic_write_text(Path(out_path), "".join(line + "\n" for line in lines))
    return len(lines), skipped


def export_preferences(serve_dir: str | Path, out_path: str | Path) -> tuple[int, int]:
    """Write preference pairs from the feedback store as JSONL; returns (pairs written, pairs skipped).

    Each line is {"prompt": messages list or text, "chosen": str, "rejected": str}. The file is
    written atomically (a temporary file, then os.replace)."""
    db = Path(serve_dir) / DB_NAME
    if not db.is_file():
        raise UserError(f"{db} does not exist: give the --serve-dir of a `tuneforge serve` that received feedback")
    out_path = Path(out_path)
    conn = sqlite3.connect(db)  # not mode=ro: reading a WAL database may need to create its -shm file
    try:
        candidates = list(_pairs(conn))
    finally:
        conn.close()

    seen: set[tuple[str, str, str]] = set()
    lines: list[str] = []
    skipped = 0
    for prompt_json, chosen, rejected in candidates:
        prompt = json.loads(prompt_json)
        canon = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        empty = prompt.strip() == "" if isinstance(prompt, str) else not prompt
        # An empty response (e.g. the model stopped at once) teaches DPO nothing usable either.
        empty = empty or not chosen.strip() or not rejected.strip()
        if empty or chosen.strip() == rejected.strip() or (canon, chosen, rejected) in seen:
            skipped += 1
            continue
        seen.add((canon, chosen, rejected))
        lines.append(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False))

    atomic_write_text(out_path, "".join(line + "\n" for line in lines))
    return len(lines), skipped
