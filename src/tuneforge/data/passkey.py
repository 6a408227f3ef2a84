"""Pass-key retrieval prompts: a number hidden at a chosen depth in repetitive filler, asked for at the end.

The classic long-context probe (Mohtashami & Jaggi, 2023): the filler carries no information, so the
only way to answer is to attend back to where the key sits. Prompts are built in token ids, piece by
piece, so one has exactly the requested length (chat template included) and the key starts exactly at
the requested share of the filler. The same builder writes training data (`tuneforge data passkey`),
where the prompt is decoded to text (its length then agrees to within a few tokens).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.formats import Segment
from tuneforge.data.render import render_text
from tuneforge.errors import UserError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
INTRO = ("There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the pass key.\n")
KEY_LINE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\nWhat is the pass key? Answer with the number only."
MARK = "\x00PASSKEY\x00"  # stands for the user message while the chat template is rendered around it


def make_key(rng: random.Random, digits: int = 5) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def chat_frame(tokenizer, system: str | None = None) -> tuple[str, str]:
    """The rendered text before and after the user message of a one-turn prompt awaiting the reply
    (what eval.generate.render_prompt produces around it; without a chat template: plain text)."""
    if not getattr(tokenizer, "chat_template", None):
        return (f"{system}\n" if system else ""), ""
    segs = ([Segment("system", system, False)] if system else []) + [Segment("user", MARK, False)]
    before, _, after = render_text(tokenizer, segs, add_generation_prompt=True).partition(MARK)
    return before, after


@dataclass
class PasskeyPrompt:
    ids: list[int]  # the whole prompt, chat template included, ready for generation
    key: str
    key_start: int  # index in `ids` where the key line begins
    filler: tuple[int, int]  # [start, end) of the filler region in `ids` (the key line sits inside it)


class PasskeyBuilder:
    """Builds prompts of exact token lengths for one tokenizer (its pieces are tokenized once)."""

    def __init__(self, tokenizer, system: str | None = None):
        self.tokenizer = tokenizer
        before, after = chat_frame(tokenizer, system)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        # Rendered templates carry their own special tokens; a plain prompt gets the tokenizer's (as generate does).
        self.head = self._ids(before, special=not has_template) + self._ids(INTRO)
        self.tail = self._ids(QUESTION) + self._ids(after)
        # Each sentence is tokenized with its leading space, so sentences laid end to end read as joined text,
        # and the key can go in between two of them.
        self._sentences = [self._ids(" " + s.strip() + ".") for s in FILLER.split(".") if s.strip()]
        self._unit = [i for sentence in self._sentences for i in sentence]

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"] if text else []

    def filler_ids(self, n: int) -> list[int]:
        """n tokens of filler: the tokenized sentences repeated, cut at n."""
        return (self._unit * (n // len(self._unit) + 1))[:n]

    def overhead(self, key: str) -> int:
        """Tokens of a prompt that are not filler."""
        return len(self.head) + len(self._ids(KEY_LINE.format(key=key))) + len(self.tail)

    def sentence_ends(self, n: int) -> list[int]:
        """Token offsets in the filler where a sentence ends (0 included), up to n."""
        ends, at = [0], 0
        while at < n:
            for sentence in self._sentences:
                at += len(sentence)
                if at <= n:
                    ends.append(at)
        return ends

    def build(self, length: int, depth: float, key: str) -> PasskeyPrompt:
        """A prompt of exactly `length` tokens with the key line after `depth` of the filler (at the
        nearest sentence end, a few tokens off at most)."""
        key_line = self._ids(KEY_LINE.format(key=key))
        n_filler = length - self.overhead(key)
        if n_filler < 0:
            raise UserError(f"passkey length {length} is shorter than the prompt without filler "
                            f"({self.overhead(key)} tokens); use lengths of at least {self.overhead(key) + 16}")
        filler = self.filler_ids(n_filler)
        cut = min(self.sentence_ends(n_filler), key=lambda end: abs(end - depth * n_filler))
        ids = self.head + filler[:cut] + key_line + filler[cut:] + self.tail
        start = len(self.head)
        return PasskeyPrompt(ids, key, start + cut, (start, start + n_filler + len(key_line)))

    def user_text(self, length: int, depth: float, key: str) -> str:
        """The user message of `build` as text (for training data): decoded from the ids between the frame."""
        p = self.build(length, depth, key)
        intro = len(self._ids(INTRO))
        content = p.ids[p.filler[0] - intro:p.filler[1] + len(self._ids(QUESTION))]
        return self.tokenizer.decode(content)


def passkey_records(builder: PasskeyBuilder, lengths: list[int], n: int, seed: int,
                    depths: list[float] | None = None) -> list[dict]:
    """n alpaca records cycling over `lengths`, each at a seeded depth (from `depths`, or uniform in 0..1)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        depth = rng.choice(depths) if depths else round(rng.random(), 3)
        key = make_key(rng)
        records.append({"instruction": builder.user_text(length, depth, key), "input": "", "output": key,
                        "length": length, "depth": depth})
    return records


def write_passkey_dataset(out: Path, tokenizer, lengths: list[int], n_train: int, n_val: int,
                          seed: int = 0) -> tuple[Path, Path]:
    """OUT/train.jsonl and OUT/val.jsonl: pass-key retrieval at the given prompt lengths (alpaca)."""
    if not lengths:
        raise UserError("--lengths: give at least one prompt length in tokens, e.g. 2048,4096")
    builder = PasskeyBuilder(tokenizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n, split_seed in (("train", n_train, seed), ("val", n_val, seed + 1_000_003)):
        path = out / f"{name}.jsonl"
        rows = passkey_records(builder, lengths, n, split_seed)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1]
