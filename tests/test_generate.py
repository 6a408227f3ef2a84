import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.eval.generate import generate, render_prompt
from tuneforge.models.tiny import build_tiny_model

PROMPTS = [
    "Hi",
    "What is the capital of France? Answer in one word please, and be quick about it.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rewrite this date in ISO format: May 4 2021"}],
    "Numbers: 0 1 2",
    "Instruction: summarise the text. Input: the weather is nice today.",
]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(request.param) / "m", arch=request.param, seed=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def one_at_a_time(model, tok, prompts, max_new_tokens):
    outs = []
    for p in prompts:
        ids = tok(render_prompt(tok, p), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        outs.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return outs


def test_batched_greedy_matches_one_at_a_time(tiny):
    model, tok = tiny
    expected = one_at_a_time(model, tok, PROMPTS, 12)
    assert any(expected)  # random weights still produce text, so the comparison means something
    # batch_size 3 exercises several batches, a ragged last batch and the reorder.
    assert generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3) == expected
    assert generate(model, tok, PROMPTS[::-1], max_new_tokens=12, batch_size=16) == expected[::-1]


def test_restores_training_mode_and_padding_side(tiny):
    model, tok = tiny
    tok.padding_side = "right"
    model.train()
    generate(model, tok, PROMPTS[:2], max_new_tokens=2)
    assert model.training and tok.padding_side == "right"
    model.eval()
    generate(model, tok, PROMPTS[:2], max_new_tokens=2)
    assert not model.training


def test_missing_pad_token_uses_eos(tiny):
    model, tok = tiny
    saved = tok.pad_token
    tok.pad_token = None
    try:
        out = generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=2)
        assert len(out) == len(PROMPTS)
        assert tok.pad_token is None
    finally:
        tok.pad_token = saved


def test_sampling_is_seeded_and_newline_stop(tiny):
    model, tok = tiny
    a = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=1)
    b = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=1)
    assert a == b
    assert all("\n" not in t for t in generate(model, tok, PROMPTS, max_new_tokens=16, stop_at_newline=True))


def test_peft_model(tiny):
    peft = pytest.importorskip("peft")
    model, tok = tiny
    is_gpt2 = model.config.model_type == "gpt2"
    target = ["c_attn"] if is_gpt2 else ["q_proj", "v_proj"]
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=target, fan_in_fan_out=is_gpt2))
    try:
        # LoRA B starts at zero, so the adapter must not change greedy outputs.
        expected = one_at_a_time(wrapped, tok, PROMPTS[:3], 6)
        assert generate(wrapped, tok, PROMPTS[:3], max_new_tokens=6, batch_size=2) == expected
    finally:
        wrapped.unload()


def test_render_prompt_plain_string_and_system(tiny):
    _, tok = tiny
    text = render_prompt(tok, "hello", system="sys")
    assert text.startswith("<|im_start|>system\nsys<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_continue_final_leaves_the_assistant_turn_open(tiny):
    """With continue_final the prompt stops right after the last assistant message (no end of turn, no
    new turn), and the reply is the greedy continuation of exactly that text."""
    model, tok = tiny
    messages = [{"role": "user", "content": "Rewrite 4 May 2021"}, {"role": "assistant", "content": "Next: caller"}]
    closed = tok.apply_chat_template(messages, tokenize=False)
    text = render_prompt(tok, messages, continue_final=True)
    assert text.endswith("Next: caller") and closed.startswith(text) and len(closed) > len(text)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    want = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert generate(model, tok, [messages], max_new_tokens=8, continue_final=True) == [want]
    with pytest.raises(ValueError, match="last message must be the assistant turn"):
        render_prompt(tok, messages[:1], continue_final=True)
