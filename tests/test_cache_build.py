"""The cache's build in worker processes: the same splits, tokens, account and notes as reading into
Python, whatever the shards, line endings, malformed records or source type."""

import json

import pytest
from conftest import write_jsonl

from tuneforge.config import DataConfig
from tuneforge.data import cache_build
from tuneforge.data.token_cache import prepare
from tuneforge.errors import UserError
from tuneforge.models.load import load_tokenizer

LONG = " ".join(f"word{i}" for i in range(120))


@pytest.fixture()
def tok(tiny_llama):
    return load_tokenizer(tiny_llama)


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"instruction": f"Repeat {i}." + (f" {LONG}" if i % 7 == 0 else ""), "output": f"{i} {i}"}
            for i in range(start, start + n)]


def as_lists(encoded) -> list:
    return [(list(e.ids), list(e.mask), e.truncated) for e in encoded]


def same(cached, memory) -> None:
    assert cached.cache.startswith("cached in")
    assert as_lists(cached.train) == as_lists(memory.train) and as_lists(cached.val) == as_lists(memory.val)
    assert cached.account == memory.account and cached.account.balanced()
    assert cached.notes == memory.notes
    assert [(e.segments, e.where, e.meta) for e in cached.val_examples] == \
        [(e.segments, e.where, e.meta) for e in memory.val_examples]


def both(tmp_path, tok, **kw):
    c = DataConfig(max_length=64, cache_dir=str(tmp_path / "cache"), max_lost=1.0, **kw)
    return prepare(c, 0, tok), prepare(c.model_copy(update={"cache": False}), 0, tok)


def messy_jsonl(path, n: int = 300, newline: str = "\n") -> str:
    """n records with a BOM, blank lines, malformed lines, an empty answer, duplicates and long prompts."""
    lines = []
    for i, r in enumerate(rows(n)):
        lines.append(json.dumps(r))
        if i % 50 == 3:
            lines.append("")  # a blank line: no record
        if i % 60 == 5:
            lines.append("{not json")
        if i % 70 == 6:
            lines.append(json.dumps({"instruction": "x", "output": ""}))  # empty answer: malformed
        if i % 40 == 7:
            lines.append(json.dumps(r))  # a duplicate
    path.write_bytes(("\ufeff" + newline.join(lines) + newline).encode())
    return str(path)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_many_shards_in_two_processes_match_reading_into_python(tmp_path, tok, monkeypatch, newline):
    monkeypatch.setattr(cache_build, "SHARD_BYTES", 2048)  # dozens of shards, cut inside the file's lines
    data = messy_jsonl(tmp_path / "d.jsonl", newline=newline)
    cached, memory = both(tmp_path, tok, train=data, num_proc=2, on_bad_record="skip", drop_duplicates=True)
    same(cached, memory)
    account = cached.account
    assert account.bad > 0 and account.duplicates > 0 and account.truncated > 0
    # line numbers in the notes are the file's (the BOM, blank lines and line endings counted as an editor does)
    where = [w for w, what in cached.notes if what.startswith("malformed")]
    text = (tmp_path / "d.jsonl").read_bytes().decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert all(text[int(w.rsplit(":", 1)[1]) - 1] in ("{not json", '{"instruction": "x", "output": ""}') for w in where)


def test_a_mixture_with_validation_matches_reading_into_python(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", rows(40))
    b = write_jsonl(tmp_path / "b.jsonl", rows(15, start=100))
    v = write_jsonl(tmp_path / "v.jsonl", rows(10, start=200))
    cached, memory = both(tmp_path, tok, train=[{"path": str(a), "weight": 1}, {"path": str(b), "weight": 2}],
                          validation=str(v), max_examples=50)
    same(cached, memory)
    assert cached.account.sources and cached.account.repeats > 0


@pytest.mark.parametrize("kind", ["parquet", "csv", "json"])
def test_other_file_types_match_reading_into_python(tmp_path, tok, monkeypatch, kind):
    import datasets

    monkeypatch.setattr(cache_build, "SHARD_ROWS", 7)  # several shards, over two processes

    path = tmp_path / f"d.{kind}"
    if kind == "json":
        path.write_text(json.dumps(rows(30)))
    else:
        ds = datasets.Dataset.from_list(rows(30))
        ds.to_parquet(str(path)) if kind == "parquet" else ds.to_csv(str(path), index=False)
    same(*both(tmp_path, tok, train=str(path), num_proc=2))


def test_a_malformed_record_stops_the_build_with_its_line(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(cache_build, "SHARD_BYTES", 1024)
    data = messy_jsonl(tmp_path / "d.jsonl")
    with pytest.raises(UserError) as cached:
        prepare(DataConfig(train=data, max_length=64, cache_dir=str(tmp_path / "cache"), num_proc=2), 0, tok)
    with pytest.raises(UserError) as memory:
        prepare(DataConfig(train=data, max_length=64, cache=False), 0, tok)
    assert str(cached.value) == str(memory.value) and ":8: not valid JSON" in str(cached.value)
    assert not any((tmp_path / "cache").iterdir())


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(cache_build, "SHARD_BYTES", 512)
    body = "".join(json.dumps(r) + "\n" for r in rows(40)).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(body + b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(UserError, match=r"d\.jsonl:41: not UTF-8 text"):
        prepare(DataConfig(train=str(path), max_length=64, cache_dir=str(tmp_path / "cache")), 0, tok)


def test_shards_cover_the_file_once_with_their_first_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_build, "SHARD_BYTES", 100)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(b'{"a": %d}\r\n' % i if i % 3 else b'{"a": %d}\n' % i for i in range(200)))
    shards, lines = cache_build.jsonl_shards(path, 0)
    assert lines == 200 and shards[0]["start"] == 0 and shards[-1]["stop"] == path.stat().st_size
    data = path.read_bytes()
    for one, two in zip(shards, shards[1:]):
        assert one["stop"] == two["start"] and data[one["stop"] - 1:one["stop"]] == b"\n"
        assert two["line"] == data[:two["start"]].count(b"\n") + 1
