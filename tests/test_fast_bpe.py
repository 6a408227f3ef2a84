"""The tiktoken twin of a byte-level BPE tokenizer gives the tokenizer's own ids and offsets, and the
data path encodes the same with it as without it; where it cannot be exact it is not used."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

import tuneforge.data.fast_bpe as fast_bpe
from tuneforge.data.formats import Example, Segment
from tuneforge.data.render import encode_many
from tuneforge.models.tiny import train_tiny_tokenizer

pytest.importorskip("tiktoken")


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


def _reference(tok, texts):
    return [(e.ids, [list(o) for o in e.offsets])
            for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def _twin_says(tok, texts):
    fast = fast_bpe.twin(tok)
    assert fast is not None
    return [(list(ids), [list(o) for o in (off.tolist() if hasattr(off, "tolist") else off)])
            for ids, off in fast.encode_batch(texts, tok.backend_tokenizer)]


PIECES = ["the", " model", "Answer", ":", " ", "  ", "\n", "\n\n", "\t", "'s", "'ll", "don't", "123", "4.5",
          "x=1", "(", ")", "{\"a\": 1}", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "é", "日本", "—", "🙂",
          "zzqx", "CamelCase", "snake_case", "!!", "?"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), min_size=1, max_size=8))
def test_ids_and_offsets_are_the_tokenizers_own(tok, texts):
    assert _twin_says(tok, texts) == _reference(tok, texts)


def test_the_embedded_kind_of_text_and_empty_texts(tok):
    texts = ["", "<|im_start|>user\nWhat is 15% of 80?<|im_end|>\n<|im_start|>assistant\n12<|im_end|>\n",
             "   ", "a" * 500, "naïve café"]
    assert _twin_says(tok, texts) == _reference(tok, texts)


def _examples():
    long_prompt = " ".join(["the river city number people time water"] * 40)
    return [
        Example([Segment("user", "What is two plus two?", False), Segment("assistant", "Four.", True)], "f.jsonl:1"),
        Example([Segment("system", "Be brief.", False), Segment("user", "Name a colour.", False), Segment("assistant", "Red.", True),
                 Segment("user", "Another?", False), Segment("assistant", " Blue, then\n\ngreen.", True)], "f.jsonl:2"),
        Example([Segment("user", long_prompt, False), Segment("assistant", "A summary of it.", True)], "f.jsonl:3"),
        Example([Segment("user", "Ça va ? 日本", False), Segment("assistant", "Oui — très bien 🙂", True)], "f.jsonl:4"),
        Example([Segment("text", "plain text, trained whole", True)], "f.jsonl:5"),
    ]


@pytest.mark.parametrize("truncation", ["prompt", "right", "drop"])
def test_the_data_path_encodes_the_same_with_and_without_the_twin(tok, monkeypatch, truncation):
    with_twin = encode_many(_examples(), tok, 96, truncation)
    monkeypatch.setattr("tuneforge.data.render.twin", lambda tokenizer: None)
    without = encode_many(_examples(), tok, 96, truncation)
    assert [e and (e.ids, e.mask, e.truncated) for e in with_twin] == \
        [e and (e.ids, e.mask, e.truncated) for e in without]
    assert any(e is not None and any(e.mask) for e in with_twin)


def test_no_twin_where_it_could_not_be_exact(tok, monkeypatch):
    # a normalizer changes the text before splitting: not GPT-2's kind
    spec = json.loads(tok.backend_tokenizer.to_str())
    other = Tokenizer.from_str(json.dumps(spec))
    other.normalizer = normalizers.Lowercase()
    assert fast_bpe._build(other) is None
    # another kind of model
    assert fast_bpe._build(Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))) is None
    # a prefix space added before splitting
    spaced = Tokenizer.from_str(json.dumps(spec))
    spaced.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert fast_bpe._build(spaced) is None
    # merges whose results are not in id order: priorities would differ
    shuffled = json.loads(json.dumps(spec))
    shuffled["model"]["merges"] = shuffled["model"]["merges"][::-1]
    assert fast_bpe._build(Tokenizer.from_str(json.dumps(shuffled))) is None


def test_a_twin_that_disagrees_on_the_probes_is_not_used(monkeypatch):
    fresh = train_tiny_tokenizer()
    monkeypatch.setattr(fast_bpe, "GPT2_PATTERN", r"\S+|\s+")  # another split: other tokens
    assert fast_bpe.twin(fresh) is None
    # and the data path still encodes, through the tokenizer
    assert encode_many(_examples()[:1], fresh, 96)[0].ids == \
        fresh(fresh.apply_chat_template([{"role": "user", "content": "What is two plus two?"},
                                         {"role": "assistant", "content": "Four."}], tokenize=False),
              add_special_tokens=False)["input_ids"]


def test_without_tiktoken_the_tokenizer_is_used(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tiktoken(name, *args, **kwargs):
        if name == "tiktoken":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tiktoken)
    assert fast_bpe.twin(train_tiny_tokenizer()) is None


def test_a_token_added_after_the_twin_was_made_is_known_to_it():
    fresh = train_tiny_tokenizer()
    assert fast_bpe.twin(fresh) is not None
    fresh.add_special_tokens({"additional_special_tokens": ["<|tool_call|>"]})
    texts = ["before<|tool_call|>after", "a <|tool_call|> b"]
    assert _twin_says(fresh, texts) == _reference(fresh, texts)
    assert fresh.convert_tokens_to_ids("<|tool_call|>") in _twin_says(fresh, texts)[0][0]
