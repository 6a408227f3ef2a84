import json

import pytest
import torch

from tuneforge.errors import UserError
from tuneforge.models.bottleneck import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    BottleneckAdapter,
    BottleneckConfig,
    attach_bottleneck,
    bottleneck_modules,
    detach_bottleneck,
    is_bottleneck_dir,
    load_bottleneck,
    save_bottleneck,
    set_bottleneck_enabled,
)
from tuneforge.models.anatomy import decoder_and_head
from tuneforge.models.load import load_model

ARCHS = ("llama", "qwen2", "gpt2")


def _tokens(seed=0, batch=2, length=12, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


@torch.no_grad()
def _logits(model, ids):
    """The way the training loop does it: call the body, apply the head."""
    model.eval()
    body, head = decoder_and_head(model)
    return head(body(input_ids=ids).last_hidden_state)


def _train(model, steps=4, lr=0.5, seed=1):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    body, head = decoder_and_head(model)
    model.train()
    for step in range(steps):
        ids = _tokens(seed + step)
        logits = head(body(input_ids=ids).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_identity_at_init_and_frozen_base(tiny_models, arch, placement):
    model = load_model(str(tiny_models[arch]))
    ids = _tokens()
    base = _logits(model, ids)
    n_base = sum(1 for _ in model.parameters())
    out = attach_bottleneck(model, BottleneckConfig(size=8, placement=placement, activation="gelu"))
    assert out is model
    assert torch.equal(_logits(model, ids), base)
    # also through the top-level forward
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)

    layers = model.config.num_hidden_layers
    adapters = bottleneck_modules(model)
    assert len(adapters) == (2 if placement == "houlsby" else 1) * layers
    assert sum(isinstance(m, BottleneckAdapter) for m in model.modules()) == len(adapters)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".bottleneck_" in n for n in trainable)
    assert len(trainable) == 4 * len(adapters)  # down/up weight+bias
    assert sum(1 for _ in model.parameters()) == n_base + len(trainable)
    assert any(".bottleneck_ffn.up.weight" in k for k in model.state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_training_changes_logits_and_save_load_roundtrip(tiny_models, tmp_path, arch):
    torch.manual_seed(0)
    model = load_model(str(tiny_models[arch]))
    ids = _tokens(seed=42)
    base = _logits(model, ids)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = BottleneckConfig(reduction_factor=8, placement="houlsby")
    attach_bottleneck(model, cfg)
    _train(model)
    trained = _logits(model, ids)
    assert not torch.allclose(trained, base)
    for adapter in bottleneck_modules(model).values():
        assert adapter.up.weight.abs().sum() > 0 and adapter.down.weight.grad is not None
    for n, p in frozen.items():  # the base did not move
        assert torch.equal(dict(model.named_parameters())[n], p)

    out = save_bottleneck(model, cfg, tmp_path / "adapter")
    assert is_bottleneck_dir(out) and not is_bottleneck_dir(tmp_path) and not is_bottleneck_dir(tmp_path / "nope")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    saved = json.loads((out / CONFIG_NAME).read_text())
    assert saved["reduction_factor"] == 8 and saved["size"] is None and saved["bottleneck_dim"] == 8
    assert saved["model_type"] == arch and saved["hidden_size"] == 64 and saved["num_layers"] == 2
    assert saved["base_model"] == str(tiny_models[arch])
    from safetensors.torch import load_file

    assert all("bottleneck_" in k for k in load_file(str(out / WEIGHTS_NAME)))

    fresh = load_model(str(tiny_models[arch]))
    assert load_bottleneck(fresh, out) is fresh
    assert torch.equal(_logits(fresh, ids), trained)
    assert all(".bottleneck_" in n for n, p in fresh.named_parameters() if p.requires_grad)

    # saving again into the existing folder replaces the files
    save_bottleneck(fresh, None, out)
    assert is_bottleneck_dir(out) and len(list(out.iterdir())) == 2


def test_size_recorded_and_config_roundtrip(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama))
    cfg = BottleneckConfig(size=16, placement="pfeiffer", activation="silu", scale=0.5)
    attach_bottleneck(model, cfg)
    out = save_bottleneck(model, cfg, tmp_path / "a")
    saved = json.loads((out / CONFIG_NAME).read_text())
    assert saved["size"] == 16 and saved["reduction_factor"] is None and saved["placement"] == "pfeiffer"
    back = BottleneckConfig.from_dict(saved)
    assert back.to_dict() == saved and back.scale == 0.5 and back.activation == "silu"
    assert BottleneckConfig().size == 64
    with pytest.raises(UserError, match="not both"):
        BottleneckConfig(size=8, reduction_factor=4)
    with pytest.raises(UserError, match="placement"):
        BottleneckConfig(placement="middle")
    with pytest.raises(UserError, match="activation"):
        BottleneckConfig(activation="tanhh")
    with pytest.raises(UserError, match="unknown config key"):
        BottleneckConfig.from_dict({"sise": 3})


def test_load_onto_wrong_base_names_both(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    model = load_model(str(tiny_models["llama"]))
    attach_bottleneck(model, BottleneckConfig(size=8))
    out = save_bottleneck(model, None, tmp_path / "llama_adapter")

    other = load_model(str(tiny_models["qwen2"]))
    with pytest.raises(UserError) as e:
        load_bottleneck(other, out)
    msg = str(e.value)
    assert "llama hidden 64 x 2 layers" in msg and "qwen2 hidden 64 x 2 layers" in msg and str(out) in msg
    assert not bottleneck_modules(other)  # nothing half-attached

    bigger = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(UserError, match="llama hidden 64 x 2 layers.*llama hidden 32 x 3 layers"):
        load_bottleneck(bigger, out)

    with pytest.raises(UserError, match="not a bottleneck adapter folder"):
        load_bottleneck(other, tmp_path)


def test_detach_and_toggle(tiny_models):
    model = load_model(str(tiny_models["gpt2"]))
    ids = _tokens(seed=3)
    base = _logits(model, ids)
    n_keys = len(model.state_dict())
    attach_bottleneck(model, BottleneckConfig(size=8))
    _train(model, steps=2)
    adapted = _logits(model, ids)
    assert not torch.allclose(adapted, base)

    set_bottleneck_enabled(model, False)
    assert torch.equal(_logits(model, ids), base)
    set_bottleneck_enabled(model, True)
    assert torch.equal(_logits(model, ids), adapted)

    with pytest.raises(UserError, match="already attached"):
        attach_bottleneck(model, BottleneckConfig(size=8))

    assert detach_bottleneck(model) is model
    assert torch.equal(_logits(model, ids), base)
    assert len(model.state_dict()) == n_keys
    assert not any(isinstance(m, BottleneckAdapter) for m in model.modules())
    from tuneforge.models.bottleneck import _AdapterHook

    assert not any(isinstance(h, _AdapterHook) for m in model.modules() for h in m._forward_hooks.values())
    # can attach again afterwards
    attach_bottleneck(model, BottleneckConfig(size=4, placement="pfeiffer"))
    assert len(bottleneck_modules(model)) == 2 and torch.equal(_logits(model, ids), base)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_base(tiny_models, tmp_path, arch):
    model = load_model(str(tiny_models[arch]), dtype=torch.bfloat16)
    ids = _tokens(seed=5)
    base = _logits(model, ids)
    assert base.dtype == torch.bfloat16
    attach_bottleneck(model, BottleneckConfig(size=8))
    assert all(a.up.weight.dtype == torch.float32 for a in bottleneck_modules(model).values())
    out = _logits(model, ids)
    assert out.dtype == torch.bfloat16 and torch.equal(out, base)
    body, _ = decoder_and_head(model)
    with torch.no_grad():
        assert body(input_ids=ids).last_hidden_state.dtype == torch.bfloat16

    _train(model, steps=3)
    assert all(a.up.weight.dtype == torch.float32 for a in bottleneck_modules(model).values())
    trained = _logits(model, ids)
    assert trained.dtype == torch.bfloat16 and not torch.equal(trained, base)

    path = save_bottleneck(model, None, tmp_path / "bf16")
    fresh = load_model(str(tiny_models[arch]), dtype=torch.bfloat16)
    load_bottleneck(fresh, path)
    assert torch.equal(_logits(fresh, ids), trained)
