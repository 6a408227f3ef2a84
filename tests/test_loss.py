"""The loss path: packing is exact, parity with transformers' own loss and gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.data.formats import to_examples
from tuneforge.data.pack import collate
from tuneforge.data.render import encode
from tuneforge.data.sources import Record
from tuneforge.train.losses.target import TargetLoss
from tuneforge.train.losses.fused_ce import linear_cross_entropy_sum

RECORDS = [
    {"instruction": "Say hello", "output": "Hello there, friend."},
    {"instruction": "Count to three", "input": "slowly", "output": "1, 2, 3"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
                  {"role": "user", "content": "date?"}, {"role": "assistant", "content": "2021-03-05"}]},
    {"prompt": "Capital of France?", "completion": "Paris"},
]


def _encoded(tok):
    examples = to_examples([Record(r, f"r{i}") for i, r in enumerate(RECORDS)])
    return [encode(e, tok, max_length=256) for e in examples]


def _load(path):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_loss_equals_per_example_loss(tiny_models, arch):
    model, tok = _load(tiny_models[arch])
    enc = _encoded(tok)
    loss_model = TargetLoss(model)
    packed = collate([[0, 1, 2, 3]], enc, tok.pad_token_id)  # all four in one row
    with torch.no_grad():
        packed_sum = loss_model(**packed)
        separate = sum(loss_model(**collate([[i]], enc, tok.pad_token_id)) for i in range(len(enc)))
    torch.testing.assert_close(packed_sum, separate, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loss_and_gradients_match_transformers_reference(tiny_models, arch):
    model, tok = _load(tiny_models[arch])
    enc = _encoded(tok)
    for e in enc:
        ids = torch.tensor([e.ids])
        labels = torch.where(torch.tensor([e.mask]), ids, torch.full_like(ids, -100))
        model.zero_grad()
        ref = model(input_ids=ids, labels=labels).loss  # transformers shifts labels itself
        ref.backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        ours = TargetLoss(model)(**collate([[enc.index(e)]], enc, tok.pad_token_id)) / e.n_targets
        ours.backward()
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_cross_entropy_gradients(dtype):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)  # fp32 master weight, as in training
    labels = torch.randint(0, 50, (37,))
    ours = linear_cross_entropy_sum(hidden, weight, labels, chunk_size=8)
    ours.backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = torch.nn.functional.cross_entropy((hidden @ weight.to(dtype).t()).float(), labels, reduction="sum")
    ref.backward()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(gh, hidden.grad, **tol)
    torch.testing.assert_close(gw, weight.grad, **tol)
