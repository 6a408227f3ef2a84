"""Nothing lost silently: every record read lands in exactly one category (kept, or lost and why), a
run that would lose more than data.max_lost stops with the counts, and prompt-side truncation keeps
the whole answer with its loss mask."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, write_config, write_jsonl
from tuneforge.config import DataConfig
from tuneforge.data.account import DataAccount
from tuneforge.data.dataset import account_for, encode_split, load_splits
from tuneforge.data.formats import Example, Segment
from tuneforge.data.render import encode
from tuneforge.errors import UserError


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


LONG = " ".join(f"word{i}" for i in range(400))  # far past max_length 64


def _rows():
    """One or more records for every category, with the count each should end up in."""
    good = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(20)]
    return [{"instruction": LONG, "output": "long prompt, short answer"},  # truncated on the prompt side, kept
            {"instruction": "Answer at length.", "output": LONG},  # the answer alone is too long
            *good,
            {"instruction": "Say 0.", "output": "0"},  # duplicate
            {"instruction": "", "output": "no instruction"},  # empty field: malformed
            {"foo": "bar"}]  # no known format: malformed


def _file(tmp_path, rows, bad_lines=("{not json",)):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with path.open("a") as f:
        for line in bad_lines:
            f.write(line + "\n")
    return path


def _account(path, tok, **data) -> DataAccount:
    cfg = DataConfig(train=str(path), max_length=64, **data)
    splits = load_splits(cfg, seed=0)
    return account_for(splits, encode_split(splits.train, tok, cfg), encode_split(splits.val, tok, cfg))


def test_every_record_read_is_in_one_category(tmp_path, tok):
    path = _file(tmp_path, _rows())
    acc = _account(path, tok, val_ratio=0.2, on_bad_record="skip", drop_duplicates=True, truncation="drop",
                   max_examples=12)
    assert acc.read == 26
    assert acc.bad == 3 and acc.first_bad.startswith(f"{path}:")
    assert acc.duplicates == 1
    assert acc.too_long == 2  # truncation: drop leaves both long records out (first in the file: never beyond)
    assert acc.validation + acc.train + acc.too_long + acc.beyond_max_examples == 22
    assert acc.beyond_max_examples == 22 - 4 - 12  # 4 held out for validation, 12 kept for training
    assert acc.balanced(), acc.as_dict()


@pytest.mark.parametrize("truncation", ["prompt", "right", "drop"])
def test_the_categories_add_up_under_every_truncation(tmp_path, tok, truncation):
    acc = _account(_file(tmp_path, _rows()), tok, val_ratio=0.0, on_bad_record="skip", truncation=truncation)
    assert acc.balanced(), acc.as_dict()
    assert acc.read == 26 and acc.bad == 3 and acc.duplicates == 0
    if truncation == "prompt":
        # the long prompt is shortened and kept; the long answer is cut at its end (its start still trains)
        assert acc.truncated == 2 and acc.too_long == 0 and acc.train == 23
    if truncation == "right":
        # the long prompt is cut before its answer: nothing left to learn, counted
        assert acc.cut_before_answer == 1 and acc.truncated == 1 and acc.train == 22
    if truncation == "drop":
        assert acc.too_long == 2 and acc.train == 21


def test_bad_records_stop_the_run_by_default(tmp_path, tok):
    # the first malformed record in the file, not the first that happens not to parse
    with pytest.raises(UserError, match=r"d.jsonl:24: field 'instruction' is empty"):
        _account(_file(tmp_path, _rows()), tok)
    with pytest.raises(UserError, match=r"d.jsonl:1: not valid JSON"):
        _account(_file(tmp_path / "json", [], ("{not json",)), tok)


def test_losing_more_than_max_lost_stops_with_the_counts_and_the_fix(tmp_path, tok):
    acc = _account(_file(tmp_path, _rows()), tok, val_ratio=0.0, on_bad_record="skip", truncation="right")
    with pytest.raises(UserError) as e:
        acc.check(0.01)
    msg = str(e.value)
    assert "4 of 26 records (15.4%) would be lost" in msg and "\n" not in msg
    assert "most are malformed or empty: fix those records" in msg and "first: " in msg
    acc.check(0.2)  # within a looser limit: no error


def test_prompt_truncation_keeps_the_whole_answer_and_its_mask(tok):
    answer = "The answer is forty two, as computed."
    turns = [Segment("system", "Be brief.", False)]
    for i in range(6):  # a long history: old turns must go first
        turns += [Segment("user", f"Old question {i}: " + LONG[:300], False),
                  Segment("assistant", f"Old answer {i}.", True)]
    turns += [Segment("user", "Now: " + LONG, False), Segment("assistant", answer, True)]
    ex = Example(turns, "x")
    whole = encode(ex, tok, 10_000)
    target = [t for t, m in zip(whole.ids, whole.mask) if m]
    last = tok(answer, add_special_tokens=False)["input_ids"]
    enc = encode(ex, tok, 96, "prompt")
    assert enc.truncated and len(enc.ids) <= 96
    trained = [t for t, m in zip(enc.ids, enc.mask) if m]
    assert trained == target[-len(trained):] and len(trained) >= len(last)  # the answer with its end-of-turn
    text = tok.decode(enc.ids)
    assert answer in text and "Be brief." in text and "Old question 0" not in text
    right = encode(ex, tok, 96, "right")
    assert answer not in tok.decode(right.ids)  # what right truncation would have lost


def test_prompt_truncation_cuts_the_start_of_the_last_user_message(tok):
    ex = Example([Segment("user", "START " + LONG + " END?", False), Segment("assistant", "Yes.", True)], "x")
    enc = encode(ex, tok, 64, "prompt")
    text = tok.decode(enc.ids)
    assert len(enc.ids) <= 64 and "START" not in text and "END?" in text and "Yes." in text


def test_a_run_reports_its_account_and_refuses_heavy_loss(tmp_path, tiny_llama, capsys):
    rows = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(40)]
    data = write_jsonl(tmp_path / "ok.jsonl", rows + [{"instruction": LONG, "output": "x"}])
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, data, tmp_path / "run", data={"max_length": 64},
                       eval={"before_after": False})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    acc = DataAccount.from_dict(report["data"])
    assert acc.read == 41 and acc.balanced() and acc.truncated == 1
    assert "41 read:" in out + err

    heavy = write_jsonl(tmp_path / "heavy.jsonl", rows + [{"instruction": "x", "output": LONG}] * 3)
    cfg = write_config(tmp_path / "h.yaml", tiny_llama, heavy, tmp_path / "run2",
                       data={"max_length": 64, "truncation": "drop"}, eval={"before_after": False})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: data.train: 3 of 43 records (7.0%) would be lost")
    assert not (tmp_path / "run2").exists()  # stopped before the run folder was made


def test_data_inspect_accounts_plots_and_shows_the_loss_mask(tmp_path, tiny_llama, capsys):
    rows = [{"instruction": f"Say {i}.", "output": f"answer {i}"} for i in range(10)]
    data = _file(tmp_path, [{"instruction": LONG, "output": "kept answer"}, *rows])
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, data, tmp_path / "run",
                       data={"max_length": 64, "on_bad_record": "skip", "max_lost": 0.5})
    png = tmp_path / "lengths.png"
    code, out, err = run_cli(["data", "inspect", cfg, "--plot", png, "--show", "1"], capsys)
    assert code == 0, err
    assert "data: 12 read: 10 train / 1 validation (1 truncated); lost 1 malformed or empty" in out
    assert f"{data}:1: truncated to" in out and f"{data}:12: malformed or empty: not valid JSON" in out
    assert "answer tokens: min" in out and "training example 1" in out
    assert png.stat().st_size > 1000 and not (tmp_path / "run").exists()  # inspecting trains nothing


# ---------------------------------------------------------------- mixtures


def _sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"A{i}?", "output": f"a{i}"} for i in range(100)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": [{"role": "user", "content": f"B{i}?"},
                                                         {"role": "assistant", "content": f"b{i}"}]}
                                           for i in range(50)])
    return a, b


def _mixed(tmp_path, tok, sources, **data):
    cfg = DataConfig(train=sources, max_length=64, val_ratio=0.1, **data)
    splits = load_splits(cfg, seed=0)
    train, val = encode_split(splits.train, tok, cfg), encode_split(splits.val, tok, cfg)
    return splits, train, account_for(splits, train, val)


def test_mixture_weights_set_each_sources_share(tmp_path, tok):
    a, b = _sources(tmp_path)
    splits, train, acc = _mixed(tmp_path, tok, [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 3}])
    share_b = sum(ex.meta["source"] == str(b) for ex in splits.train) / len(splits.train)
    assert share_b == pytest.approx(0.75, abs=0.01)
    assert len(splits.train) == 90 + 45  # the mixture keeps the sources' total size
    assert acc.sources[str(b)]["read"] == 50 and acc.sources[str(a)]["unsampled"] > 0
    assert acc.repeats > 0 and acc.balanced(), acc.as_dict()
    # the repeated example is encoded once: copies share the same token lists
    assert len({id(e) for e in train.encoded}) == len(train.encoded) - train.repeats


def test_mixture_epochs_repeat_or_subsample_each_source(tmp_path, tok):
    a, b = _sources(tmp_path)
    splits, _, acc = _mixed(tmp_path, tok, [{"path": str(a), "epochs": 0.5}, {"path": str(b), "epochs": 2}])
    counts = {str(a): 0, str(b): 0}
    for ex in splits.train:
        counts[ex.meta["source"]] += 1
    assert counts == {str(a): 45, str(b): 90}
    assert acc.unsampled == 45 and acc.repeats == 45 and acc.balanced(), acc.as_dict()


def test_a_mixture_is_for_sft_and_takes_one_rule(tmp_path):
    from tuneforge.config import config_from_dict

    src = [{"path": "a.jsonl", "weight": 1}]
    with pytest.raises(UserError, match="recipe preference reads one file"):
        config_from_dict({"recipe": "preference", "data": {"train": src}})
    with pytest.raises(UserError, match="a weight, or none"):
        config_from_dict({"data": {"train": [*src, {"path": "b.jsonl", "epochs": 2}]}})


def test_a_mixture_trains_and_reports_per_source(tmp_path, tiny_llama, capsys):
    a, b = _sources(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, a, tmp_path / "run", eval={"before_after": False},
                       data={"train": [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 1}], "max_length": 64})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "run" / "report.json").read_text())["data"]
    assert set(data["sources"]) == {str(a), str(b)} and DataAccount.from_dict(data).balanced()
    assert f"  {b}: 50 read" in out + err
