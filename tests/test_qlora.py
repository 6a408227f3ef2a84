"""A quantized frozen base (method.quantize, `method: qlora`): training, resume, reload, merge, refusals.

Tolerances: the merged folder (dequantized base + adapter folded in, fp32) reproduces the run's own
view (quantized nf4 base + adapter) to atol 1e-5 on logits of magnitude ~1, since bitsandbytes' nf4
layer dequantizes to fp32 and multiplies, exactly what the merged Linear does, up to summation order.
With int8 the layer also quantizes the activations (LLM.int8), so there the bound is 5% of the logit
scale. A killed and resumed run ends bitwise equal to an uninterrupted one (atol 0).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import run_cli, write_config
from tuneforge.errors import UserError


def _backend_runs(kind: str) -> str | None:
    """None when bitsandbytes runs `kind` layers on this machine, else why not (the skip reason)."""
    from tuneforge.models.quantize import check_backend

    try:
        check_backend(kind)
    except UserError as e:
        return str(e)
    return None


def _needs(kind: str):
    why = _backend_runs(kind)
    if why:
        pytest.skip(f"quantized base {kind} cannot run on this machine: {why}")


def _qconfig(tmp_path: Path, model: Path, data, out: str, method: dict, **sections) -> Path:
    train, val = data
    return write_config(tmp_path / f"{out}.yaml", model, train, tmp_path / out, val, method=method,
                        eval={"before_after": False}, **sections)


IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("method,kind,tol", [
    ({"name": "qlora", "r": 4}, "nf4", 1e-5),
    ({"name": "dora", "r": 4, "quantize": "nf4"}, "nf4", 1e-5),
    ({"name": "lora", "r": 4, "quantize": "int8"}, "int8", 0.05),
])
def test_quantized_run_trains_reloads_and_merges(tiny_llama, dates_data, tmp_path, capsys, method, kind, tol):
    _needs(kind)
    from tuneforge.models.merge import load_for_inference

    cfg = _qconfig(tmp_path, tiny_llama, dates_data, "run", method, train={"eval_every": 2})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    assert f"base quantized to {kind}" in out and "bitsandbytes" in out  # the backend and why, in the run log
    recorded = yaml.safe_load((run / "config.yaml").read_text())["method"]
    assert recorded["quantize"] == kind and recorded["name"] == method["name"].replace("qlora", "lora")
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in adapter.values()), "the adapter trains in the compute dtype"
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "adapter never trained"

    # Reloaded for generation, the base is quantized the same way as in training.
    model, _ = load_for_inference(run)
    assert model.base_model.model.is_quantized
    code, _, err = run_cli(["generate", run, "Rewrite 5 March 2021", "--max-new-tokens", "4"], capsys)
    assert code == 0, err

    code, out, err = run_cli(["merge", run, tmp_path / "merged"], capsys)
    assert code == 0, err
    assert f"base quantized to {kind}; that base is dequantized to fp32" in out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    want = _logits(model)
    assert (_logits(merged) - want).abs().max() <= tol * max(1.0, want.abs().max().item())


def test_bf16_compute_keeps_the_quantized_base_packed(tiny_llama, dates_data, tmp_path, capsys):
    """Adapter methods store the frozen base in the compute dtype; a quantized one cannot be cast and
    dequantizes to bf16 instead (bf16 is emulated on some CPUs: only two steps)."""
    _needs("nf4")
    cfg = _qconfig(tmp_path, tiny_llama, dates_data, "run", {"name": "qlora", "r": 4},
                   train={"precision": "bf16", "max_steps": 2})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    assert "compute bf16 autocast" in out


def test_a_no_grad_pass_leaves_the_quantized_base_exact_and_differentiable(tiny_llama):
    """Validation or generation (no gradients) must not change what later training computes: the same
    input gradient and the same dequantized weights as a model that never ran without gradients. On
    CPUs with AVX512-BF16, bitsandbytes would otherwise repack the weights for a bf16 kernel that has
    no backward and that dequantize() misreads (models/quantize.py: keep_weights_unpacked)."""
    _needs("nf4")
    from tuneforge.models.load import load_model
    from tuneforge.models.quantize import dequantize_base, quantized_load_args

    def input_grad(model):
        embeds = model.get_input_embeddings()(IDS).detach().requires_grad_()
        model(inputs_embeds=embeds).logits.float().pow(2).sum().backward()
        return embeds.grad

    fresh = load_model(str(tiny_llama), quantization=quantized_load_args("nf4"))
    want_grad = input_grad(fresh.train())
    seen = load_model(str(tiny_llama), quantization=quantized_load_args("nf4"))
    with torch.no_grad():
        seen.eval()(IDS)
    got_grad = input_grad(seen.train())
    assert got_grad is not None, "no gradient flows through the quantized layers after a no-grad pass"
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)
    want = _logits(dequantize_base(fresh).eval())
    torch.testing.assert_close(_logits(dequantize_base(seen).eval()), want, rtol=0, atol=0)


def _train_cmd(cfg: Path, *extra) -> list[str]:
    return [sys.executable, "-c", "from tuneforge.cli import main; main()", "train", str(cfg), *extra]


def test_kill_and_resume_over_a_quantized_base_is_bit_identical(tiny_llama, dates_data, tmp_path):
    _needs("nf4")
    common = dict(train={"max_steps": 10, "save_every": 2, "batch_tokens": 256, "keep_last": 2})
    method = {"name": "qlora", "r": 4, "dropout": 0.1}  # dropout: the RNG state must be restored too
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    ref_cfg = _qconfig(tmp_path, tiny_llama, dates_data, "ref", method, **common)
    subprocess.run(_train_cmd(ref_cfg), check=True, env=env, capture_output=True)

    cfg = _qconfig(tmp_path, tiny_llama, dates_data, "run", method, **common)
    proc = subprocess.Popen(_train_cmd(cfg), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not (ckpts.is_dir() and any(p.name >= "step-0000004" for p in ckpts.iterdir()
                                                                  if p.name.startswith("step-"))):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "adapter").exists(), "run finished before the kill; make it longer"
    done = subprocess.run(_train_cmd(cfg, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert ref.keys() == resumed.keys()
    for k in ref:
        torch.testing.assert_close(resumed[k], ref[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("method,recipe,says", [
    ({"name": "full", "quantize": "nf4"}, "sft", "quantize: nf4 does not apply to method full"),
    ({"name": "freeze", "quantize": "int8"}, "sft", "quantize: int8 does not apply to method freeze"),
    ({"name": "prefix", "quantize": "nf4"}, "sft", "does not apply to method prefix"),
    ({"name": "bottleneck", "quantize": "nf4"}, "sft", "does not apply to method bottleneck"),
    ({"name": "qlora", "quantize": "none"}, "sft", "qlora is LoRA over a quantized base"),
    ({"name": "dora", "quantize": "int8"}, "sft", "quantize: int8 with method dora fails from the second step"),
    ({"name": "lora", "quantize": "fp8"}, "sft", "method.quantize"),
    ("qlora", "reward", "method.quantize: recipe reward folds the adapter into the base"),
])
def test_quantize_where_it_cannot_apply_is_refused_in_one_line(tiny_llama, dates_data, tmp_path, capsys, method,
                                                               recipe, says):
    cfg = _qconfig(tmp_path, tiny_llama, dates_data, "run", method, recipe=recipe)
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_qlora_is_lora_with_nf4():
    from tuneforge.config import config_from_dict

    cfg = config_from_dict({"method": {"name": "qlora", "r": 8}})
    assert (cfg.method.name, cfg.method.quantize, cfg.method.r) == ("lora", "nf4", 8)
    assert config_from_dict({"method": "lora"}).method.quantize == "none"


def test_missing_backend_names_the_key_and_the_install(monkeypatch):
    from tuneforge.models.quantize import check_backend

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"method.quantize: nf4 needs bitsandbytes, which is not installed; "
                                        r"pip install bitsandbytes==0\.50\.2"):
        check_backend("nf4")


def test_backend_without_kernels_for_the_device_is_refused(monkeypatch):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    from tuneforge.models import quantize

    monkeypatch.setitem(quantize._probed, ("int8", "cpu"), "NotImplementedError: no int8 kernel")
    with pytest.raises(UserError, match=r"method.quantize: int8: bitsandbytes .* cannot run int8 layers on cpu "
                                        r"\(NotImplementedError: no int8 kernel\)"):
        quantize.check_backend("int8", torch.device("cpu"))
