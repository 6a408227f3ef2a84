"""The loop end to end on tiny models: accumulation, artifacts others load, merge, resume after kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import run_cli, write_config
from tuneforge.config import TrainConfig


def _adapter_weights(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_lora_run_writes_peft_adapter_report_and_plot(tiny_llama, dates_data, tmp_path, capsys):
    train, val = dates_data
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", val,
                       train={"eval_every": 2})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "report.md", "report.json", "plots/loss.png",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json"):
        assert (run / name).exists(), name
    report = json.loads((run / "report.json").read_text())
    assert report["evaluation"]["metric"] == "exact_match" and "before" in report["evaluation"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert [m["step"] for m in metrics if "val_loss" in m] == [2, 4]
    assert "run directory:" in out

    # PEFT loads the adapter unchanged, and the merged folder reproduces base+adapter logits.
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run / "adapter").eval()
    assert any(v.abs().sum() > 0 for k, v in _adapter_weights(run).items() if "lora_B" in k), "adapter never trained"
    code, _, err = run_cli(["merge", run, tmp_path / "merged"], capsys)
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (tmp_path / "merged" / "chat_template.jinja").exists() or "chat_template" in \
        (tmp_path / "merged" / "tokenizer_config.json").read_text()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
        assert not torch.allclose(base(ids).logits, merged(ids).logits), "merge changed nothing"

    code, out, err = run_cli(["generate", run, "Rewrite 5 March 2021", "--max-new-tokens", "4"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "freeze", "trainable_layers": 1}])
def test_full_and_freeze_write_hf_model_folder(tiny_models, dates_data, tmp_path, capsys, method):
    train, _ = dates_data
    cfg = write_config(tmp_path / "c.yaml", tiny_models["qwen2"], train, tmp_path / "run", method=method,
                       eval={"before_after": False})
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    changed = {n for (n, p), (_, q) in zip(tuned.named_parameters(), base.named_parameters()) if not torch.equal(p, q)}
    assert changed
    if method["name"] == "freeze":
        assert all(".layers.1." in n for n in changed), changed  # only the top block trained


def _first_step_gradients(model_path, encoded, cfg: TrainConfig, tmp_path):
    """Gradients as the optimizer sees them at its first step (Adam would amplify float noise in weights)."""
    from accelerate import Accelerator
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from tuneforge.models.load import load_model
    from tuneforge.train.loop import train_loop

    torch.manual_seed(0)
    model = load_model(str(model_path))
    grads = {}

    def capture(optimizer, args, kwargs):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    handle = register_optimizer_step_pre_hook(capture)
    try:
        train_loop(model, encoded, [], cfg, run_dir=tmp_path, seed=3, pad_id=0, accelerator=Accelerator(cpu=True),
                   amp_dtype=None)
    finally:
        handle.remove()
    return grads


def test_gradient_accumulation_equals_one_big_batch(tiny_llama, tmp_path):
    from tuneforge.data.render import Encoded

    # Same-length examples with different numbers of targets: a mean of per-batch means would differ.
    g = torch.Generator().manual_seed(0)
    encoded = []
    for i in range(4):  # exactly one optimizer step's worth: both plans see the same four examples
        ids = torch.randint(10, 500, (24,), generator=g).tolist()
        n_targets = 2 + 3 * i
        encoded.append(Encoded(ids, [False] * (24 - n_targets) + [True] * n_targets))
    common = dict(max_steps=1, packing=False, precision="fp32", max_grad_norm=None)
    # 2 micro-batches of 2 rows, accumulated, versus one batch of the same 4 rows.
    accumulated = _first_step_gradients(tiny_llama, encoded, TrainConfig(batch_tokens=48, grad_accum=2, **common),
                                        tmp_path / "a")
    big = _first_step_gradients(tiny_llama, encoded, TrainConfig(batch_tokens=96, grad_accum=1, **common),
                                tmp_path / "b")
    assert big.keys() == accumulated.keys() and big
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-5, atol=1e-7, msg=name)


def _train_cmd(cfg: Path, *extra) -> list[str]:
    return [sys.executable, "-c", "from tuneforge.cli import main; main()", "train", str(cfg), *extra]


def test_kill_and_resume_matches_uninterrupted_run(tiny_llama, dates_data, tmp_path):
    train, _ = dates_data
    common = dict(train={"max_steps": 12, "save_every": 2, "batch_tokens": 256, "keep_last": 2},
                  method={"name": "lora", "r": 4, "dropout": 0.1},  # dropout: RNG state must be restored too
                  eval={"before_after": False})
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    ref_cfg = write_config(tmp_path / "ref.yaml", tiny_llama, train, tmp_path / "ref", **common)
    subprocess.run(_train_cmd(ref_cfg), check=True, env=env, capture_output=True)

    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", **common)
    proc = subprocess.Popen(_train_cmd(cfg), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.is_dir() and any(p.name >= "step-0000004" for p in ckpts.iterdir()
                                                                  if p.name.startswith("step-"))):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: whatever is mid-write stays mid-write
    proc.wait()
    assert not (tmp_path / "run" / "adapter").exists(), "run finished before the kill; make it longer"
    done = subprocess.run(_train_cmd(cfg, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref, resumed = _adapter_weights(tmp_path / "ref"), _adapter_weights(tmp_path / "run")
    assert ref.keys() == resumed.keys()
    for k in ref:
        torch.testing.assert_close(resumed[k], ref[k], rtol=0, atol=0, msg=k)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), "metrics.jsonl has gaps or duplicates after resume"
    kept = sorted(p.name for p in ckpts.iterdir())
    assert kept == ["step-0000010", "step-0000012"], kept  # keep_last=2, no temp folders left
