"""Where every record read went: kept (whole or truncated), or lost, and why.

The categories add up to the records read, so nothing disappears without a count: the console line
and report.json show them, and a run that loses more than `data.max_lost` of what it read stops
before training with the numbers and what to change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tuneforge.errors import UserError

# Lost categories, in the order they are shown, with what the user can change about each.
# Losses the config asked for (duplicates dropped, max_examples, a mixture's weights) are counted but
# do not count against data.max_lost; the others are surprises.
LOST = {
    "bad": ("malformed or empty", "fix those records (the first is named below)"),
    "duplicates": ("duplicates", "set data.drop_duplicates: false to keep them"),
    "beyond_max_examples": ("beyond data.max_examples", "raise or remove data.max_examples"),
    "unsampled": ("left out by the mixture", "raise that source's weight or epochs"),
    "too_long": ("too long (truncation: drop)", "raise data.max_length or set data.truncation: prompt"),
    "cut_before_answer": ("cut before their answer", "raise data.max_length or set data.truncation: prompt"),
    "no_answer": ("without answer tokens", "check that each record has a non-empty answer"),
}

CHOSEN = {"duplicates", "beyond_max_examples", "unsampled"}


@dataclass
class DataAccount:
    read: int = 0  # records read from data.train (and data.validation)
    train: int = 0  # kept for training
    validation: int = 0  # kept for validation
    truncated: int = 0  # of the kept, how many were shortened to data.max_length
    repeats: int = 0  # of the kept, extra copies a mixture made (weight or epochs above one pass)
    bad: int = 0
    duplicates: int = 0
    beyond_max_examples: int = 0
    unsampled: int = 0
    too_long: int = 0
    cut_before_answer: int = 0
    no_answer: int = 0
    first_bad: str | None = None  # the first malformed record's error, for the user to find it
    sources: dict[str, dict] | None = None  # a mixture's sources: read, bad, unsampled, train, validation each

    @classmethod
    def from_dict(cls, saved: dict) -> DataAccount:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    @property
    def kept(self) -> int:
        """Records kept (a repeated record once)."""
        return self.train + self.validation - self.repeats

    @property
    def lost(self) -> int:
        return sum(getattr(self, k) for k in LOST)

    @property
    def unintended(self) -> int:
        """Lost without the config asking for it."""
        return sum(getattr(self, k) for k in LOST if k not in CHOSEN)

    def balanced(self) -> bool:
        """Every record read is in exactly one category."""
        return self.kept + self.lost == self.read

    def line(self) -> str:
        """One console line: `N read: T train / V validation (K truncated); L lost: ...`."""
        repeats = f", {self.repeats} repeats" if self.repeats else ""
        head = (f"{self.read} read: {self.train} train / {self.validation} validation "
                f"({self.truncated} truncated{repeats})")
        lost = [f"{getattr(self, k)} {label}" for k, (label, _) in LOST.items() if getattr(self, k)]
        return head + ("; lost " + ", ".join(lost) if lost else "; none lost")

    def source_lines(self) -> list[str]:
        """One line per source of a mixture (train counts include the mixture's repeats)."""
        return [f"  {name}: {c['read']} read, {c['bad']} malformed or empty, {c['unsampled']} left out by the "
                f"mixture -> {c['train']} train / {c['validation']} validation" for name, c in (self.sources or {}).items()]

    def plus(self, other: DataAccount) -> DataAccount:
        """Both accounts' counts added (e.g. a stream's and its validation file's)."""
        counts = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                  if f.type in ("int", int)}
        return DataAccount(**counts, first_bad=self.first_bad or other.first_bad)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["kept"], out["lost"] = self.kept, self.lost
        return out

    def check(self, max_lost: float, where: str = "data.train") -> None:
        """Stop when more than `max_lost` of the records read were lost without the config asking for it:
        one line with the counts and the fix."""
        if not self.read or self.unintended / self.read <= max_lost:
            return
        worst = max((k for k in LOST if k not in CHOSEN), key=lambda k: getattr(self, k))
        label, fix = LOST[worst]
        first = f"; first: {self.first_bad}" if worst == "bad" and self.first_bad else ""
        raise UserError(f"{where}: {self.unintended} of {self.read} records ({self.unintended / self.read:.1%}) would be lost, "
                        f"more than data.max_lost {max_lost:.1%} ({self.line()}); most are {label}: {fix}, "
                        f"or raise data.max_lost{first}")
