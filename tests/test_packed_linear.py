"""Linear weights packed once for oneDNN: the same numbers as `F.linear`, only where they help."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.eval.generate import generate
from tuneforge.eval.prefix_cache import PrefixCache
from tuneforge.models.packed_linear import PackedLinear, can_pack, pack_linears
from tuneforge.models.tiny import build_tiny_model

native_bf16 = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="this CPU's oneDNN has no native bf16: nothing is packed here (tested below)")


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("llama") / "m", arch="llama", seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large weights, so greedy replies vary by prompt
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.to(torch.bfloat16).eval(), AutoTokenizer.from_pretrained(path)


@native_bf16
@pytest.mark.parametrize("shape", [(1, 1, 48), (7, 1, 48), (2, 33, 48), (64, 48)])
def test_a_packed_linear_gives_f_linear_bit_for_bit(shape):
    g = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(48, 80, bias=True).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(80, 48, generator=g))
        linear.bias.copy_(torch.randn(80, generator=g))
    x = torch.randn(*shape, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(PackedLinear(linear)(x), linear(x))
        # A non-contiguous input (the last position of each row) is copied first. F.linear itself gives
        # a strided and a contiguous copy of the same numbers different bf16 roundings; ours is the latter.
        last = torch.randn(4, 5, 48, generator=g).to(torch.bfloat16)[:, -1:]
        assert not last.is_contiguous()
        assert torch.equal(PackedLinear(linear)(last), linear(last.contiguous()))


@native_bf16
def test_a_packed_model_generates_the_same_tokens(tiny_bf16):
    model, tok = tiny_bf16
    prompts = [[{"role": "user", "content": text}] for text in
               ("Price of order 17 in euros", "Weight of item B-9 in grams, please", "Hi", "List three tools")]
    expected = generate(model, tok, prompts, max_new_tokens=12, batch_size=3, prefix_cache=PrefixCache())
    assert len(set(expected)) > 1
    packed = copy.deepcopy(model)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert pack_linears(packed) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert generate(packed, tok, prompts, max_new_tokens=12, batch_size=3, prefix_cache=PrefixCache()) == expected
    ids = tok("a b c d", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(packed(ids).logits, model(ids).logits)


@native_bf16
def test_a_packed_layer_refuses_to_train(tiny_bf16):
    layer = PackedLinear(torch.nn.Linear(8, 4).to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="generation only"):
        layer(torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True))


def test_models_it_cannot_help_are_left_alone(tiny_bf16):
    model, _ = tiny_bf16
    fp32 = copy.deepcopy(model).float()
    assert not can_pack(fp32)
    assert pack_linears(fp32) == 0
    assert sum(type(m) is torch.nn.Linear for m in fp32.modules()) > 0
