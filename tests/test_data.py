"""Formats, readers, rendering with loss masks, truncation, splits, packing and collation."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import write_jsonl
from tuneforge.config import DataConfig
from tuneforge.data.dataset import encode_split, load_splits
from tuneforge.data.formats import Example, detect_format, to_examples
from tuneforge.data.pack import collate, plan_micro_batches
from tuneforge.data.render import encode
from tuneforge.data.sources import Record, read_records


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def _segs(ex: Example) -> list[tuple[str, str, bool]]:
    return [(s.role, s.text, s.train) for s in ex.segments]


def _one(data: dict, fmt: str = "auto", system: str | None = None) -> Example:
    return to_examples([Record(data, "mem:1")], fmt, system)[0]


# ---------------------------------------------------------------- formats


def test_alpaca_with_and_without_input():
    assert _segs(_one({"instruction": "Translate", "input": "bonjour", "output": "hello"})) == [
        ("user", "Translate\n\nbonjour", False), ("assistant", "hello", True)]
    no_input = [("user", "Say hi", False), ("assistant", "hi", True)]
    assert _segs(_one({"instruction": "Say hi", "input": "", "output": "hi"})) == no_input
    assert _segs(_one({"instruction": "Say hi", "output": "hi"})) == no_input
    assert _segs(_one({"instruction": "Say hi", "input": None, "output": "hi"})) == no_input


def test_openai_and_sharegpt_messages_give_the_same_example():
    openai = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                           {"role": "assistant", "content": "Goodbye"}]}
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                  {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"},
                                  {"from": "gpt", "value": "Goodbye"}]}
    a, b = _one(openai), _one(sharegpt)
    assert _segs(a) == _segs(b) == [("system", "Be brief.", False), ("user", "Hi", False),
                                     ("assistant", "Hello", True), ("user", "Bye", False),
                                     ("assistant", "Goodbye", True)]
    assert a.reference == "Goodbye"
    assert _segs(Example(a.prompt_segments())) == _segs(a)[:4]


def test_message_train_flag_excludes_a_turn():
    ex = _one({"messages": [{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "bad answer", "train": False},
                            {"role": "user", "content": "Again"}, {"role": "assistant", "content": "good"}]})
    assert [s.train for s in ex.segments] == [False, False, False, True]


def test_prompt_completion_and_text():
    assert _segs(_one({"prompt": "2+2=", "completion": "4"})) == [("user", "2+2=", False), ("assistant", "4", True)]
    assert _segs(_one({"text": "Once upon a time"})) == [("text", "Once upon a time", True)]


@pytest.mark.parametrize("data, fmt", [
    ({"messages": []}, "messages"),
    ({"conversations": []}, "messages"),
    ({"instruction": "a", "input": "b", "output": "c"}, "alpaca"),
    ({"prompt": "a", "completion": "b"}, "prompt_completion"),
    ({"text": "a"}, "text"),
    ({"text": "a", "meta": 1}, "text"),
    ({"question": "a", "answer": "b"}, None),
])
def test_auto_detection(data, fmt):
    assert detect_format(data) == fmt


def test_forced_format_overrides_detection():
    # A record with both `text` and alpaca fields is alpaca under auto; `format: text` forces text.
    data = {"instruction": "Say hi", "output": "hi", "text": "raw"}
    assert _one(data).segments[-1].role == "assistant"
    assert _segs(_one(data, "text")) == [("text", "raw", True)]


def test_system_prompt_from_config_is_inserted(tok):
    for data in ({"instruction": "Say hi", "output": "hi"}, {"prompt": "Say hi", "completion": "hi"},
                 {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}):
        ex = _one(data, system="Be brief.")
        assert _segs(ex)[0] == ("system", "Be brief.", False), data
        rendered = tok.decode(encode(ex, tok, max_length=256).ids)
        assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    # A conversation with its own system message keeps it; a record-level alpaca `system` wins too.
    own = _one({"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content": "x"},
                             {"role": "assistant", "content": "y"}]}, system="Config.")
    assert [s.text for s in own.segments if s.role == "system"] == ["Own."]
    assert _segs(_one({"instruction": "x", "output": "y", "system": "Rec."}, system="Config."))[0][1] == "Rec."
    # Plain text never gets a system prompt.
    assert _segs(_one({"text": "abc"}, system="Config.")) == [("text", "abc", True)]


# ---------------------------------------------------------------- rendering and loss mask


def _expected_assistant_mask(tok, ids: list[int]) -> list[bool]:
    """Independent of the implementation: walk the decoded ChatML token stream."""
    pieces = [tok.decode([i]) for i in ids]
    mask, i = [False] * len(ids), 0
    while i < len(pieces):
        if pieces[i] == "<|im_start|>":
            j, header = i + 1, ""
            while not header.endswith("\n"):
                header += pieces[j]
                j += 1
            if header == "assistant\n":
                while pieces[j] != "<|im_end|>":
                    mask[j] = True
                    j += 1
                mask[j] = True  # the end-of-turn token is a target
            i = j
        else:
            i += 1
    return mask


def test_loss_mask_covers_only_assistant_content_and_end_of_turn(tok):
    ex = _one({"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "What is the capital of France?"},
                            {"role": "assistant", "content": "Paris."},
                            {"role": "user", "content": "And of nothing?"},
                            {"role": "assistant", "content": "There is no answer."},
                            {"role": "user", "content": "Thanks"},
                            {"role": "assistant", "content": "yes"}]})
    enc = encode(ex, tok, max_length=1024)
    full = tok.apply_chat_template([{"role": s.role, "content": s.text} for s in ex.segments], tokenize=False)
    assert enc.ids == tok(full, add_special_tokens=False)["input_ids"]
    assert enc.mask == _expected_assistant_mask(tok, enc.ids)
    # Each assistant turn contributes exactly its content tokens plus one <|im_end|>.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    targets = [i for i, m in zip(enc.ids, enc.mask) if m]
    assert tok.decode(targets) == "Paris.<|im_end|>There is no answer.<|im_end|>yes<|im_end|>"
    assert targets.count(im_end) == 3
    assert enc.n_targets == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1
                                for t in ("Paris.", "There is no answer.", "yes"))
    # The newline ChatML puts after <|im_end|> is a separator, never a target.
    for k, (i, m) in enumerate(zip(enc.ids, enc.mask)):
        if i == im_end and k + 1 < len(enc.ids):
            assert not enc.mask[k + 1]


def test_alpaca_mask_token_by_token(tok):
    ex = _one({"instruction": "Rewrite the date", "input": "5 March 2021", "output": "2021-03-05"})
    enc = encode(ex, tok, max_length=1024)
    assert enc.mask == _expected_assistant_mask(tok, enc.ids)
    assert tok.decode([i for i, m in zip(enc.ids, enc.mask) if m]) == "2021-03-05<|im_end|>"
    assert not enc.truncated


def test_untrained_assistant_turn_has_no_targets(tok):
    ex = _one({"messages": [{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "bad", "train": False},
                            {"role": "user", "content": "Again"}, {"role": "assistant", "content": "good"}]})
    enc = encode(ex, tok, max_length=1024)
    assert tok.decode([i for i, m in zip(enc.ids, enc.mask) if m]) == "good<|im_end|>"


def test_train_on_prompt_trains_everything_but_the_first_token(tok):
    ex = _one({"instruction": "Say hi", "output": "hi"}, system="Be brief.")
    enc = encode(ex, tok, max_length=1024, train_on_prompt=True)
    assert len(enc.ids) > 10
    assert enc.mask == [False] + [True] * (len(enc.ids) - 1)


def test_plain_text_trains_all_but_first_and_ends_with_eos(tok):
    enc = encode(_one({"text": "The quick brown fox"}), tok, max_length=1024)
    assert enc.ids[-1] == tok.eos_token_id
    assert tok.decode(enc.ids) == "The quick brown fox" + tok.eos_token
    assert enc.mask == [False] + [True] * (len(enc.ids) - 1)


def test_truncation_right_and_drop_are_counted(tok):
    long_text = "The quick brown fox jumps over the lazy dog. " * 5
    examples = to_examples([Record({"text": long_text}, "a:1"), Record({"text": "yes"}, "a:2"),
                            Record({"instruction": "Say yes", "output": "yes"}, "a:3")])
    full = encode(examples[0], tok, max_length=10_000)
    assert len(full.ids) > 24

    right = encode_split(examples, tok, DataConfig(train="x", max_length=24, truncation="right"))
    assert right.truncated == 1 and right.dropped == 0 and len(right.encoded) == 3
    assert right.encoded[0].ids == full.ids[:24]
    assert right.encoded[0].mask == full.mask[:24]
    assert right.encoded[0].truncated and not right.encoded[1].truncated

    drop = encode_split(examples, tok, DataConfig(train="x", max_length=24, truncation="drop"))
    assert drop.dropped == 1 and drop.truncated == 0
    assert [e.where for e in drop.examples] == ["a:2", "a:3"]


def test_truncated_before_the_answer_counts_as_no_target(tok):
    ex = _one({"instruction": "word " * 30, "output": "yes"})
    out = encode_split([ex], tok, DataConfig(train="x", max_length=12, truncation="right"))
    assert out.no_target == 1 and not out.encoded


# ---------------------------------------------------------------- splits and readers

ROWS = [{"instruction": f"Say {w}", "input": inp, "output": w}
        for w, inp in [("yes", ""), ("no", "now"), ("maybe", ""), ("true", "x"), ("false", ""),
                       ("answer", "y"), ("Paris", ""), ("France", "z"), ("Monday", ""), ("June", "w")]]


def test_val_split_is_deterministic_and_disjoint(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    cfg = DataConfig(train=str(data), val_ratio=0.3)
    a, b = load_splits(cfg, seed=1), load_splits(cfg, seed=1)
    where = lambda exs: [e.where for e in exs]  # noqa: E731
    assert where(a.train) == where(b.train) and where(a.val) == where(b.val)
    assert len(a.val) == 3 and len(a.train) == 7
    assert not set(where(a.train)) & set(where(a.val))
    assert set(where(a.train)) | set(where(a.val)) == {f"{data}:{i}" for i in range(1, 11)}
    others = [set(where(load_splits(cfg, seed=s).val)) for s in range(2, 8)]
    assert any(o != set(where(a.val)) for o in others), "the seed does not change the split"
    # An explicit validation file replaces the ratio split; val_ratio 0 keeps everything for training.
    val = write_jsonl(tmp_path / "v.jsonl", ROWS[:2])
    c = load_splits(DataConfig(train=str(data), validation=str(val), val_ratio=0.3), seed=1)
    assert len(c.train) == 10 and where(c.val) == [f"{val}:1", f"{val}:2"]
    assert len(load_splits(DataConfig(train=str(data), val_ratio=0), seed=1).val) == 0
    assert len(load_splits(DataConfig(train=str(data), max_examples=4, val_ratio=0), seed=1).train) == 4


def test_readers_agree(tmp_path):
    import datasets

    sources = {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", ROWS),
        "json_list": tmp_path / "list.json",
        "json_data": tmp_path / "data.json",
        "jsonl_named_json": tmp_path / "lines.json",
        "csv": tmp_path / "d.csv",
        "parquet": tmp_path / "d.parquet",
        "disk": tmp_path / "saved",
        "disk_dict": tmp_path / "saved_dict",
    }
    sources["json_list"].write_text(json.dumps(ROWS, indent=2))
    sources["json_data"].write_text(json.dumps({"data": ROWS, "version": 1}))
    sources["jsonl_named_json"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    import csv

    with sources["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(ROWS)
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(sources["parquet"]))
    ds.save_to_disk(str(sources["disk"]))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(sources["disk_dict"]))

    expected = [_segs(e) for e in to_examples([Record(r, "") for r in ROWS])]
    for name, path in sources.items():
        records = read_records(str(path))
        assert [_segs(e) for e in to_examples(records)] == expected, name
        assert len({r.where for r in records}) == len(ROWS), name
        assert str(path) in records[0].where, name
    assert read_records(str(sources["jsonl"]))[3].where == f"{sources['jsonl']}:4"
    assert read_records(str(sources["csv"]))[0].where == f"{sources['csv']}:2"  # line 1 is the header
    assert len(read_records(str(sources["disk_dict"]), split="test")) == 2


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n")
    assert [r.where for r in read_records(str(path))] == [f"{path}:1", f"{path}:4"]


# ---------------------------------------------------------------- packing and collation


@pytest.mark.parametrize("packing", [True, False])
def test_plan_micro_batches_packs_each_example_once_within_budget(packing):
    rng = random.Random(0)
    lengths = [rng.randint(3, 64) for _ in range(200)]
    batch_tokens, row_length = 256, 64
    plan = plan_micro_batches(lengths, batch_tokens, row_length, packing, seed=3)
    flat = [i for batch in plan for row in batch for i in row]
    assert sorted(flat) == list(range(len(lengths)))
    padded = 0
    for batch in plan:
        assert all(row for row in batch)
        widths = [sum(lengths[i] for i in row) for row in batch]
        footprint = len(batch) * max(widths)
        padded += footprint
        # The padded size is the nearest to the budget that whole rows allow.
        assert len(batch) == 1 or footprint <= batch_tokens + max(widths) / 2
        if packing:
            assert all(w <= row_length for w in widths)
        else:
            assert all(len(row) == 1 for row in batch)
    assert sum(lengths) / padded > 0.9, "rows of similar width should share batches: little padding"
    if packing:
        assert len(plan) < len(lengths) // 4, "packing should fill rows with several examples"
    assert plan_micro_batches(lengths, batch_tokens, row_length, packing, seed=3) == plan
    assert plan_micro_batches(lengths, batch_tokens, row_length, packing, seed=4) != plan


def test_rows_shorter_than_the_longest_example_give_it_a_row_of_its_own():
    lengths = [300, 40, 60, 90, 30, 50, 70]  # pack_length 128: the 300-token example cannot share a row
    plan = plan_micro_batches(lengths, 512, 128, True, seed=0)
    rows = [row for batch in plan for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert [0] in rows
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows if row != [0])


def test_collate_restarts_position_ids_per_example(tok):
    from tuneforge.data.render import Encoded

    encoded = [Encoded([10, 11, 12], [False, True, True]), Encoded([20, 21], [False, True]),
               Encoded([30, 31, 32, 33], [False, False, True, True])]
    batch = collate([[0, 1], [2]], encoded, pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21], [30, 31, 32, 33, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["target_mask"].tolist() == [[False, True, True, False, True], [False, False, True, True, False]]
    assert batch["input_ids"].dtype == torch.long and batch["target_mask"].dtype == torch.bool

    # A row padded by several tokens: the pad tail counts from 0 as its own sequence, with no targets.
    batch = collate([[0, 1, 2], [1]], encoded, pad_id=7)
    assert batch["position_ids"][1].tolist() == [0, 1] + list(range(7))
    assert batch["input_ids"][1, 2:].eq(7).all() and not batch["target_mask"][1, 2:].any()
    assert int(batch["target_mask"].sum()) == sum(e.n_targets for e in encoded) + encoded[1].n_targets


TEMPLATES = {
    "chatml": None,
    "bos-and-raise": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}"
                      "{{ raise_exception('no tools') }}{% endif %}[{{ m['role'] | upper }}] {{ m['content'] | trim }}"
                      "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}"),
    "loop-vars": ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<s>default</s>{% endif %}"
                  "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{{ '>' if add_generation_prompt else '' }}"),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_rendering_equals_apply_chat_template(tiny_llama, name):
    from tuneforge.data.formats import Segment
    from tuneforge.data.render import _messages, render_text, setup_chat_template
    from tuneforge.errors import UserError
    from tuneforge.models.load import load_tokenizer

    tok = load_tokenizer(tiny_llama)
    setup_chat_template(tok, TEMPLATES[name] or "chatml", "test")
    convs = [[Segment("user", "  hi  ", False), Segment("assistant", "yo", True)],
             [Segment("system", "be brief", False), Segment("user", "2+2?", False), Segment("assistant", "4", True),
              Segment("user", "and 3+3?", False)]]
    for segs in convs:
        for gen in (False, True):
            assert render_text(tok, segs, gen) == tok.apply_chat_template(_messages(segs), tokenize=False,
                                                                           add_generation_prompt=gen)
    if name == "bos-and-raise":  # a template's own error is the user's one line, as before
        with pytest.raises(UserError, match="the chat template failed on this conversation .no tools."):
            render_text(tok, [Segment("tool", "x", False)], False, where="d.jsonl:3")
