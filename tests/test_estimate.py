"""`tuneforge estimate`: the arithmetic against hand-computed counts, against tuneforge's own parameter
count and against the bytes autograd really keeps, and the command line."""

import json
import re

import pytest
import torch

from conftest import run_cli, write_config, write_jsonl
from tuneforge.config import config_from_dict
from tuneforge.errors import UserError
from tuneforge.models.load import load_model
from tuneforge.models.methods import apply_method, count_parameters
from tuneforge.models.estimate import layout_of, skeleton_layout, training_of
from tuneforge.train.estimate import ADAM_STATES, FP32, Setting, estimate
from tuneforge.train.losses.target import TargetLoss


def method_cfg(**method):
    return config_from_dict({"method": method}).method


def tiny_dims(tiny_llama):
    cfg = json.loads((tiny_llama / "config.json").read_text())
    return cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]


# ------------------------------------------------------------------------------- counts by hand


def test_counts_by_hand_tiny_llama(tiny_llama):
    from transformers import AutoConfig

    V, H, I, L = tiny_dims(tiny_llama)
    assert (H, I, L) == (64, 128, 2)  # 4 heads of 16, 2 key/value heads: k and v are 64 -> 32
    kv = 32
    block_linears = [(H, H), (H, kv), (H, kv), (H, H), (H, I), (H, I), (I, H)]  # q k v o gate up down
    per_block = sum(i * o for i, o in block_linears) + 2 * H  # two RMSNorm weights
    total = V * H + L * per_block + H  # tied embedding / head, final norm
    layout = skeleton_layout(AutoConfig.from_pretrained(tiny_llama))
    assert layout.total == total

    lora = training_of(layout, method_cfg(name="lora", r=4))  # all-linear: every block linear, not the head
    assert lora.trainable == L * sum(4 * (i + o) for i, o in block_linears)
    dora = training_of(layout, method_cfg(name="dora", r=4))  # + a magnitude per output feature
    assert dora.trainable == lora.trainable + L * sum(o for _, o in block_linears)
    qv = training_of(layout, method_cfg(name="lora", r=8, target_modules=["q_proj", "v_proj"]))
    assert qv.trainable == L * (8 * (H + H) + 8 * (H + kv))
    assert training_of(layout, method_cfg(name="full")).trainable == total
    freeze = training_of(layout, method_cfg(name="freeze", trainable_layers=1))
    assert freeze.trainable == per_block
    ia3 = training_of(layout, method_cfg(name="ia3"))  # PEFT's llama default: k, v outputs; down's input
    assert ia3.trainable == L * (kv + kv + I)
    prompt = training_of(layout, method_cfg(name="prompt", num_virtual_tokens=5))
    assert prompt.trainable == 5 * H
    prefix = training_of(layout, method_cfg(name="prefix", num_virtual_tokens=5))  # key + value per layer, kv wide
    assert prefix.trainable == 5 * L * 2 * kv
    bottleneck = training_of(layout, method_cfg(name="bottleneck", size=8))  # two adapters per block
    assert bottleneck.trainable == L * 2 * (H * 8 + 8 + 8 * H + H)


def test_bad_target_modules_is_one_line(tiny_llama):
    layout = layout_of(load_model(str(tiny_llama)))
    with pytest.raises(UserError, match=r"method.target_modules: .*q_proj"):
        training_of(layout, method_cfg(name="lora", target_modules=["query"]))
    with pytest.raises(UserError, match="method.trainable_layers=9"):
        training_of(layout, method_cfg(name="freeze", trainable_layers=9))


# ------------------------------------------------------------------------------- counts vs tuneforge

METHODS = [
    dict(name="full"), dict(name="freeze", trainable_layers=1), dict(name="freeze", trainable_layers=0,
                                                                    trainable_modules=["norm"]),
    dict(name="lora", r=4), dict(name="lora", r=2, target_modules=["q_proj", "c_attn", "down_proj", "c_fc"]),
    dict(name="dora", r=4), dict(name="ia3"), dict(name="prefix", num_virtual_tokens=3),
    dict(name="prefix", num_virtual_tokens=3, projection=True, projection_hidden_size=16),
    dict(name="prompt", num_virtual_tokens=4), dict(name="bottleneck", size=8),
    dict(name="bottleneck", reduction_factor=4, placement="pfeiffer"),
]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_counts_equal_count_parameters(tiny_models, arch, method):
    m = method_cfg(**method)
    model = load_model(str(tiny_models[arch]))
    layout = layout_of(model)
    try:
        trainable, total = count_parameters(apply_method(model, m))
    except UserError as e:  # what tuneforge refuses (GPT-2 has no parameter named *norm*), the estimate refuses alike
        with pytest.raises(UserError, match=re.escape(str(e))):
            training_of(layout, m)
        return
    predicted = training_of(layout, m)
    assert (predicted.trainable, layout.total + predicted.added) == (trainable, total)


# ------------------------------------------------------------------------------- bytes


def single(tokens=256, row=32, **kw) -> Setting:
    return Setting(**{"device": "cpu", "autocast": False, "frozen_bytes": FP32, "attention": "eager",
                      "tokens": tokens, "row": row} | kw)


def test_full_fp32_adamw_is_16_bytes_per_parameter(tiny_llama):
    layout = layout_of(load_model(str(tiny_llama)))
    e = estimate(layout, training_of(layout, method_cfg(name="full")), single())
    step = e.moments["end of backward (optimizer step)"]
    assert sum(step.values()) == 16 * layout.total  # weights 4 + gradients 4 + AdamW 2 x 4
    assert step["optimizer state (AdamW)"] == ADAM_STATES * FP32 * layout.total


def test_fsdp_shards_a_quarter_ddp_replicates(tiny_llama):
    layout = layout_of(load_model(str(tiny_llama)))
    t = training_of(layout, method_cfg(name="full"))
    one = estimate(layout, t, single()).moments["end of backward (optimizer step)"]
    fsdp = estimate(layout, t, single(processes=4, strategy="fsdp")).moments["end of backward (optimizer step)"]
    for term in ("weights", "gradients", "optimizer state (AdamW)"):
        assert fsdp[term] == one[term] / 4
    ddp = estimate(layout, t, single(processes=4, strategy="ddp"))
    assert ddp.moments["end of backward (optimizer step)"]["weights"] == one["weights"]
    assert ddp.machine == 4 * ddp.per_process  # four whole processes on one machine


def test_rl_micro_batch_is_its_completions_not_batch_tokens(tiny_llama):
    from tuneforge.train.estimate import setting_for

    cfg = config_from_dict({"recipe": "rl", "model": str(tiny_llama), "data": {"train": "p.jsonl"},
                            "train": {"grad_accum": 2, "batch_tokens": 16384},
                            "rl": {"num_generations": 8, "prompts_per_step": 3, "max_new_tokens": 24,
                                   "max_prompt_length": 100, "rewards": [{"name": "numeric"}]}})
    bound = setting_for(cfg, "cpu")
    assert (bound.row, bound.tokens) == (124, 12 * 124)  # ceil(3 x 8 / 2) completions of prompt + new tokens
    run = setting_for(cfg, "cpu", row=71)  # `tuneforge train` passes the data's longest prompt
    assert (run.row, run.tokens) == (95, 12 * 95)


def test_fewer_targets_smaller_loss_buffers(tiny_llama):
    layout = layout_of(load_model(str(tiny_llama)))
    t = training_of(layout, method_cfg(name="lora", r=4))
    kept = [estimate(layout, t, single(tokens=4096, row=64, target_share=share)).moments["start of backward"]
            for share in (1.0, 0.1)]
    H = layout.hidden
    assert kept[0]["loss (kept for backward)"] == 4096 * H * FP32  # the hidden states' gradient, every token
    assert kept[1]["loss (kept for backward)"] == 410 * H * FP32  # ceil(409.6) targets


def test_frozen_base_bf16_and_quantized(tiny_llama):
    layout = layout_of(load_model(str(tiny_llama)))
    t = training_of(layout, method_cfg(name="lora", r=4))
    frozen = layout.total
    fp32 = estimate(layout, t, single()).moments["end of backward (optimizer step)"]["weights"]
    bf16 = estimate(layout, t, single(autocast=True, frozen_bytes=2)).moments["end of backward (optimizer step)"]
    assert fp32 - bf16["weights"] == frozen * 2
    nf4 = estimate(layout, t, single(quantize="nf4")).moments["end of backward (optimizer step)"]["weights"]
    block_weights = sum(lin.fan_in * lin.fan_out for lin in layout.linears if lin.name.startswith("model.layers."))
    assert fp32 - nf4 == pytest.approx(block_weights * (4 - 0.5), rel=0.01)  # ~half a byte a weight


class _Kept:
    """What the pack hook hands autograd instead of a tensor: alive exactly as long as the graph keeps it."""
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def _saved_bytes(loss_model, batch, params) -> int:
    """Bytes of the distinct tensors autograd keeps for backward, parameters left out. Counted once the
    forward is done, among what the graph still holds: a branch the forward detaches (DoRA's weight norm)
    is freed with what it saved, and counting at pack time made the total depend on address reuse."""
    import weakref

    owned = {p.untyped_storage().data_ptr() for p in params}
    kept = []

    def pack(t):
        holder = _Kept(t)
        kept.append(weakref.ref(holder))
        return holder

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
        out = loss_model(**batch)  # noqa: F841 - holds the graph while its saved tensors are counted
    seen: dict[int, int] = {}
    for ref in kept:
        holder = ref()
        if holder is not None:
            storage = holder.tensor.untyped_storage()
            if storage.data_ptr() not in owned:
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


SAVED_CASES = [("lora", "eager", False), ("lora", "sdpa", False), ("full", "eager", False), ("dora", "eager", False),
               ("ia3", "eager", False), ("bottleneck", "eager", False), ("freeze", "eager", False),
               ("prompt", "eager", False), ("prefix", "eager", False), ("lora-dropout", "eager", False),
               ("lora", "eager", True), ("full", "eager", True)]
SAVED_METHODS = {"lora": dict(name="lora", r=4), "lora-dropout": dict(name="lora", r=4, dropout=0.1),
                 "dora": dict(name="dora", r=4), "freeze": dict(name="freeze", trainable_layers=3)}


@pytest.mark.parametrize("method,attention,bf16", SAVED_CASES)
def test_activations_match_what_autograd_keeps(method, attention, bf16):
    """The per-block arithmetic against the bytes autograd saves, on a 6-block Llama with GQA."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=384, hidden_size=96, intermediate_size=256, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)
    model.set_attn_implementation(attention)
    layout = layout_of(model)
    m = method_cfg(**SAVED_METHODS.get(method, {"name": method}))
    t = training_of(layout, m)
    s = single(tokens=4 * 48, row=48, attention=attention, autocast=bf16, frozen_bytes=2 if bf16 and t.added else 4)
    if bf16 and t.added:
        model.to(torch.bfloat16)  # as session.prepare stores an adapter method's frozen base
    model = apply_method(model, m)
    rows, row = 4, 48
    batch = {"input_ids": torch.randint(0, 384, (rows, row)),  # two packed examples a row, as tuneforge trains
             "position_ids": torch.arange(row // 2).repeat(rows, 2), "target_mask": torch.ones(rows, row, dtype=torch.bool)}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        measured = _saved_bytes(TargetLoss(model), batch, list(model.parameters()))
    kept = estimate(layout, t, s).moments["start of backward"]
    predicted = kept["activations"] + kept["loss (kept for backward)"] + kept["autocast bf16 weight copies"]
    assert measured == pytest.approx(predicted, rel=0.07), (measured, predicted)


# ------------------------------------------------------------------------------- command line


def test_cli_prints_the_estimate(tiny_llama, tmp_path, capsys):
    train = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "a", "output": "b"}])
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", method={"name": "lora", "r": 4})
    code, out, err = run_cli(["estimate", cfg, "train.batch_tokens=1024"], capsys)
    assert code == 0, err
    assert "trains" in out and "1,024 tokens" in out and "peak per process" in out
    assert "cpu" in out and "cuda" in out and "CUDA context" in out
    assert not (tmp_path / "run").exists()  # nothing written, nothing trained

    code, out, err = run_cli(["estimate", cfg, "--device", "cpu", "--processes", "4",
                              "train.distributed=fsdp", "method=full"], capsys)
    assert code == 0, err
    assert "4 processes (fsdp)" in out and "cuda" not in out.split("\n\n")[1]

    code, out, err = run_cli(["estimate", cfg, "--device", "cuda", "--targets", "0.1"], capsys)
    assert code == 0 and "10% of tokens targets" in out

    code, out, err = run_cli(["estimate", cfg, "--device", "tpu"], capsys)
    assert code == 2 and "--device tpu" in err and "Traceback" not in err
    code, out, err = run_cli(["estimate", cfg, "method.r=zero"], capsys)
    assert code == 2 and "method.r" in err and "Traceback" not in err


def test_train_logs_its_estimate(tiny_llama, tmp_path, capsys):
    train = write_jsonl(tmp_path / "t.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(8)])
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run",
                       train={"max_steps": 1}, eval={"before_after": False})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    line = next(x for x in out.splitlines() if "memory estimate:" in x)
    assert "GB peak per process on cpu" in line
