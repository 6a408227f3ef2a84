"""The encoded-data cache: the same tokens as encoding in memory, a hit on the same inputs, a new entry
when any input changes, nothing half-written, and memory-mapped storage."""

import json

import pytest
from conftest import run_cli, write_config, write_jsonl

from tuneforge.config import DataConfig
from tuneforge.data.dataset import encode_split, load_splits
from tuneforge.data.token_cache import TokenStore, list_entries, prepare
from tuneforge.models.load import load_tokenizer

LONG = " ".join(f"word{i}" for i in range(120))


def rows(n: int, start: int = 0) -> list[dict]:
    """Short and long examples (the long ones are truncated on the prompt side at max_length 64)."""
    return [{"instruction": f"Repeat {i}." + (f" {LONG}" if i % 7 == 0 else ""), "output": f"{i} {i}"}
            for i in range(start, start + n)]


@pytest.fixture()
def tok(tiny_llama):
    return load_tokenizer(tiny_llama)


def cfg(tmp_path, train, **kw) -> DataConfig:
    return DataConfig(train=str(train), max_length=64, cache_dir=str(tmp_path / "cache"), **kw)


def as_lists(encoded) -> list:
    return [(list(e.ids), list(e.mask), e.truncated) for e in encoded]


def test_cached_tokens_equal_in_memory_encoding_and_a_second_call_hits(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", rows(60))
    c = cfg(tmp_path, data)
    first = prepare(c, 0, tok)
    splits = load_splits(c, 0)
    train, val = encode_split(splits.train, tok, c), encode_split(splits.val, tok, c)
    assert first.cache.startswith("cached in")
    assert as_lists(first.train) == as_lists(train.encoded) and as_lists(first.val) == as_lists(val.encoded)
    assert list(first.train.lengths) == [len(e.ids) for e in train.encoded]
    assert [e.segments for e in first.val_examples] == [e.segments for e in val.examples]
    assert first.account.truncated == train.truncated + val.truncated > 0 and first.account.balanced()
    second = prepare(c, 0, tok)
    assert second.cache.startswith("cache hit") and as_lists(second.train) == as_lists(first.train)
    assert second.account == first.account and second.notes == first.notes


def test_parallel_encoding_gives_the_same_tokens(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", rows(600))
    one = prepare(cfg(tmp_path, data, num_proc=1, cache=False), 0, tok)
    two = prepare(cfg(tmp_path, data, num_proc=2), 0, tok)
    assert as_lists(two.train) == as_lists(one.train) and two.account == one.account


@pytest.mark.parametrize("change", ["file", "max_length", "truncation", "seed", "template", "format"])
def test_any_input_change_makes_a_new_entry(tmp_path, tok, change):
    data = write_jsonl(tmp_path / "d.jsonl", rows(30))
    c = cfg(tmp_path, data)
    prepare(c, 0, tok)
    seed = 0
    if change == "file":
        write_jsonl(data, rows(30, start=1))
    elif change == "max_length":
        c = c.model_copy(update={"max_length": 48})
    elif change == "truncation":
        c = c.model_copy(update={"truncation": "right"})
    elif change == "seed":
        seed = 1
    elif change == "template":
        tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    elif change == "format":
        c = c.model_copy(update={"format": "alpaca"})
    again = prepare(c, seed, tok)
    assert again.cache.startswith("cached in")
    assert len(list_entries(tmp_path / "cache")) == 2
    # what does not decide the tokens does not make a new entry
    assert prepare(c.model_copy(update={"max_lost": 0.5, "num_proc": 1}), seed, tok).cache.startswith("cache hit")


def test_a_mixture_keeps_its_repeats_and_per_source_counts(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", rows(20))
    b = write_jsonl(tmp_path / "b.jsonl", rows(10, start=100))
    c = DataConfig(train=[{"path": str(a)}, {"path": str(b), "epochs": 3}], max_length=64,
                   cache_dir=str(tmp_path / "cache"))
    cached = prepare(c, 0, tok)
    memory = prepare(c.model_copy(update={"cache": False}), 0, tok)
    assert cached.account.repeats > 0 and cached.account == memory.account and cached.account.balanced()
    assert as_lists(cached.train) == as_lists(memory.train)


def test_an_interrupted_build_leaves_no_entry(tmp_path, tok, monkeypatch):
    from tuneforge.data import token_cache

    data = write_jsonl(tmp_path / "d.jsonl", rows(30))

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(token_cache, "write_json", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg(tmp_path, data), 0, tok)
    assert list((tmp_path / "cache").iterdir()) == []  # no entry, no scratch folder
    monkeypatch.undo()
    assert prepare(cfg(tmp_path, data), 0, tok).cache.startswith("cached in")


def test_the_store_is_memory_mapped_and_indexes_like_a_list(tmp_path, tok):
    import datasets

    data = write_jsonl(tmp_path / "d.jsonl", rows(40))
    prepared = prepare(cfg(tmp_path, data), 0, tok)
    entry = list_entries(tmp_path / "cache")[0].path
    assert isinstance(datasets.load_from_disk(str(entry / "train")).data, datasets.table.MemoryMappedTable)
    store = TokenStore(entry / "train")
    assert len(store) == len(prepared.train) and as_lists([store[-1]]) == as_lists(store[len(store) - 1:])
    with pytest.raises(IndexError):
        store[len(store)]


def test_a_second_run_hits_the_cache_and_data_cache_lists_and_clears(tmp_path, tiny_llama, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", rows(40))
    cache = tmp_path / "cache"
    c = write_config(tmp_path / "c.yaml", tiny_llama, data, tmp_path / "run",
                     data={"max_length": 64, "cache_dir": str(cache)}, eval={"before_after": False})
    code, out, err = run_cli(["train", c, "--overwrite"], capsys)
    assert code == 0, err
    assert "data: cached in" in out + err
    first = json.loads((tmp_path / "run" / "report.json").read_text())
    code, out, err = run_cli(["train", c, "--overwrite"], capsys)
    assert code == 0 and "data: cache hit" in out + err
    second = json.loads((tmp_path / "run" / "report.json").read_text())
    assert second["data"] == first["data"] and second["final_train_loss"] == first["final_train_loss"]
    code, out, _ = run_cli(["data", "cache", "--cache-dir", cache], capsys)
    assert code == 0 and "1 entries" in out and str(data) in out
    code, out, _ = run_cli(["data", "cache", "--cache-dir", cache, "--clear"], capsys)
    assert code == 0 and "cleared 1 entries" in out and list_entries(cache) == []


def test_an_empty_split_and_all_lost_are_stored_and_counted(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": LONG, "output": "x"}] * 3)
    prepared = prepare(cfg(tmp_path, data, val_ratio=0, truncation="drop"), 0, tok)
    assert len(prepared.train) == 0 and len(prepared.val) == 0
    assert prepared.account.too_long == 3 and prepared.account.balanced()
    assert prepare(cfg(tmp_path, data, val_ratio=0, truncation="drop"), 0, tok).cache.startswith("cache hit")


def test_resume_and_compare_methods_start_from_the_cache(tmp_path, tiny_llama, capsys):
    from tuneforge.config import load_config
    from tuneforge.recipes.compare import method_configs

    data = write_jsonl(tmp_path / "d.jsonl", rows(40))
    cache = tmp_path / "cache"
    c = write_config(tmp_path / "c.yaml", tiny_llama, data, tmp_path / "run",
                     data={"max_length": 64, "cache_dir": str(cache)}, train={"max_steps": 2, "save_every": 1},
                     eval={"before_after": False})
    code, out, err = run_cli(["train", c, "--overwrite"], capsys)
    assert code == 0 and "data: cached in" in out + err, err
    code, out, err = run_cli(["train", c, "--resume", "train.max_steps=3"], capsys)
    assert code == 0 and "data: cache hit" in out + err, err
    # compare-methods trains each method from a config that differs only in `method` and `output_dir`:
    # the same data section, so the same entry
    for cfg in method_configs(load_config(c, []), ["lora", "full"], tmp_path / "cmp").values():
        assert cfg["data"] == load_config(c, []).data.model_dump(mode="json")
