"""`tuneforge data inspect CONFIG`: what training would see, before spending compute on it.

The same reading and encoding a run does (so the same account of every record), then: token-length
statistics of prompts and answers with a histogram PNG, the records that would be truncated or lost
and why, and a few rendered examples with the trained tokens highlighted, so the loss mask can be
checked by eye.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.account import DataAccount
from tuneforge.data.dataset import account_for, encode_split, load_splits
from tuneforge.data.render import Encoded


@dataclass
class Inspection:
    account: DataAccount
    prompt_lengths: list[int]  # untrained tokens per kept example
    answer_lengths: list[int]  # trained tokens per kept example
    notes: list[tuple[str, str]] = field(default_factory=list)  # (where, what happened), in file order
    shown: list[Encoded] = field(default_factory=list)  # the first kept training examples


def inspect_data(cfg: DataConfig, tokenizer, seed: int, show: int = 3) -> Inspection:
    splits = load_splits(cfg, seed)
    train, val = encode_split(splits.train, tokenizer, cfg), encode_split(splits.val, tokenizer, cfg)
    account = account_for(splits, train, val)
    kept = train.encoded + val.encoded
    notes = [(reason.split(": ", 1)[0], "malformed or empty: " + reason.split(": ", 1)[-1]) for reason in splits.bad]
    return Inspection(account, [len(e.ids) - e.n_targets for e in kept], [e.n_targets for e in kept],
                      notes + train.notes + val.notes, train.encoded[:show])


def percentiles(values: list[int]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"min {ordered[0]}, median {at(0.5)}, p95 {at(0.95)}, max {ordered[-1]}"


def plot_lengths(result: Inspection, max_length: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneforge.atomic import atomic_savefig

    fig, ax = plt.subplots(figsize=(7, 4))
    total = [p + a for p, a in zip(result.prompt_lengths, result.answer_lengths)]
    top = max([*total, max_length, 1])
    bins = range(0, top + max(1, top // 40), max(1, top // 40))
    for values, label in ((result.prompt_lengths, "prompt (not trained)"), (result.answer_lengths, "answer (trained)"),
                          (total, "whole example")):
        ax.hist(values, bins=bins, alpha=0.5, label=label)
    ax.axvline(max_length, color="black", linestyle="--", linewidth=1, label=f"max_length {max_length}")
    ax.set_xlabel("tokens (kept examples, after truncation)")
    ax.set_ylabel("examples")
    ax.legend()
    ax.set_title(f"{result.account.kept} kept of {result.account.read} read")
    return atomic_savefig(fig, path)


def highlighted(enc: Encoded, tokenizer):
    """The example as rich Text: trained tokens bold green on a dark background, the rest dim."""
    from rich.text import Text

    text = Text()
    start = 0
    for i in range(1, len(enc.ids) + 1):
        if i == len(enc.ids) or enc.mask[i] != enc.mask[start]:
            piece = tokenizer.decode(enc.ids[start:i], skip_special_tokens=False)
            text.append(piece, style="bold green on grey11" if enc.mask[start] else "dim")
            start = i
    return text
