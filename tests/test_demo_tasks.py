import json
import re
from datetime import date

from tuneforge.data.demo_tasks import INSTRUCTION, make_dates_examples, write_dates_dataset

_MONTHS = ["january", "february", "march", "april", "may", "june", "july",
           "august", "september", "october", "november", "december"]


def _parse_input(text: str) -> date:
    """Independent parser for every surface format the generator emits."""
    t = text.lower()
    nums = [int(x) for x in re.findall(r"\d+", t.split("(")[0])]
    month = next((i + 1 for i, m in enumerate(_MONTHS) if m[:3] in t), None)
    if month is not None:  # textual month: the 4-digit number is the year, the other is the day
        year = next(n for n in nums if n >= 1000)
        day = next(n for n in nums if n < 1000)
        return date(year, month, day)
    a, b, year = nums
    if "(month/day/year)" in t:
        return date(year, a, b)
    assert "(day/month/year)" in t or "(d.m.y)" in t, text  # ambiguous forms state their order
    return date(year, b, a)


def test_deterministic_for_seed():
    assert make_dates_examples(50, seed=3) == make_dates_examples(50, seed=3)
    assert make_dates_examples(50, seed=3) != make_dates_examples(50, seed=4)


def test_outputs_are_iso_and_match_input():
    examples = make_dates_examples(500, seed=0)
    assert len({e["input"] for e in examples}) == 500
    for e in examples:
        assert e["instruction"] == INSTRUCTION
        d = date.fromisoformat(e["output"])
        assert 1950 <= d.year <= 2049
        assert _parse_input(e["input"]) == d, e


def test_write_dataset_no_overlap(tmp_path):
    train_p, val_p = write_dates_dataset(tmp_path, n_train=300, n_val=60, seed=0)
    train = [json.loads(line) for line in train_p.read_text().splitlines()]
    val = [json.loads(line) for line in val_p.read_text().splitlines()]
    assert len(train) == 300 and len(val) == 60
    assert not {r["input"] for r in train} & {r["input"] for r in val}
