"""Every PEFT method trains, saves a folder PEFT loads, merges or refuses to, resumes; adapters switch per call."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import run_cli, write_config

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8]])
PEFT_METHODS = [
    {"name": "dora", "r": 4},
    {"name": "ia3"},
    {"name": "prefix", "num_virtual_tokens": 4},
    {"name": "prefix", "num_virtual_tokens": 4, "projection": True, "projection_hidden_size": 16},
    {"name": "prompt", "num_virtual_tokens": 4},
    {"name": "prompt", "num_virtual_tokens": 4, "init_text": "Rewrite the date"},
]


def _train(tmp_path, model, train_file, method, capsys, name="run", **sections):
    cfg = write_config(tmp_path / f"{name}.yaml", model, train_file, tmp_path / name, method=method,
                       eval={"before_after": False}, **sections)
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    return tmp_path / name


@pytest.mark.parametrize("method", PEFT_METHODS, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_peft_method_trains_and_reloads(tiny_llama, dates_data, tmp_path, capsys, method):
    run = _train(tmp_path, tiny_llama, dates_data[0], method, capsys)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run / "adapter").eval()
    with torch.no_grad():
        base_logits = base(IDS).logits
        tuned_logits = tuned(IDS).logits[:, -IDS.shape[1]:]
    assert not torch.allclose(base_logits, tuned_logits), "training changed nothing"

    code, _, err = run_cli(["merge", run, tmp_path / "merged"], capsys)
    if method["name"] in ("prefix", "prompt"):
        assert code == 2 and "cannot merge" in err and "Serve" in err
        assert not (tmp_path / "merged").exists()
        return
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, tuned_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, weights", [
    ({"name": "dora", "r": 4}, "adapter_model.safetensors"),
    ({"name": "prompt", "num_virtual_tokens": 4}, "adapter_model.safetensors"),
    ({"name": "bottleneck", "reduction_factor": 8, "placement": "pfeiffer"}, "bottleneck_model.safetensors"),
], ids=["dora", "prompt", "bottleneck"])
def test_resume_equals_uninterrupted(tiny_llama, dates_data, tmp_path, capsys, method, weights):
    import shutil

    from safetensors.torch import load_file

    full = _train(tmp_path, tiny_llama, dates_data[0], method, capsys, "full", train={"max_steps": 4})
    half = _train(tmp_path, tiny_llama, dates_data[0], method, capsys, "half",
                  train={"max_steps": 4, "save_every": 2})
    # Rewind the second run to its step-2 checkpoint, as if it had died there, and resume.
    shutil.rmtree(half / "checkpoints" / "step-0000004")
    shutil.rmtree(half / "adapter")
    code, _, err = run_cli(["train", tmp_path / "half.yaml", "--resume"], capsys)
    assert code == 0, err
    a, b = load_file(str(full / "adapter" / weights)), load_file(str(half / "adapter" / weights))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_adapters_switch_per_call_and_base_stays_untouched(tiny_llama, dates_data, tmp_path, capsys):
    from tuneforge.models.adapters import AdapterSet

    run_a = _train(tmp_path, tiny_llama, dates_data[0], {"name": "lora", "r": 4}, capsys, "a")
    run_b = _train(tmp_path, tiny_llama, dates_data[0], {"name": "lora", "r": 8}, capsys, "b",
                   train={"lr": 5e-3, "max_steps": 3})
    own = {}
    for name, run in (("a", run_a), ("b", run_b)):
        single = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run / "adapter").eval()
        with torch.no_grad():
            own[name] = single(IDS).logits
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(IDS).logits

    aset = AdapterSet(str(tiny_llama), {"a": run_a, "b": run_b})
    with torch.no_grad():
        for name in ("a", "b", "a", "base", "b", "base"):
            with aset.use(name) as model:
                got = model(IDS).logits
            torch.testing.assert_close(got, base_logits if name == "base" else own[name], rtol=0, atol=0)

    code, out, err = run_cli(["generate", tiny_llama, "hi", "--adapter", f"a={run_a}", "--adapter", f"b={run_b}",
                              "--use", "b", "--max-new-tokens", "3"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["generate", tiny_llama, "hi", "--adapter", f"a={run_a}", "--use", "zzz"], capsys)
    assert code == 2 and "no such adapter" in err


def test_adapter_for_another_base_is_refused_by_name(tiny_models, dates_data, tmp_path, capsys):
    run = _train(tmp_path, tiny_models["llama"], dates_data[0], {"name": "lora", "r": 4}, capsys)
    code, _, err = run_cli(["generate", tiny_models["gpt2"], "hi", "--adapter", f"x={run}"], capsys)
    assert code == 2 and "llama" in err and "gpt2" in err


def test_bottleneck_run_reloads_refuses_merge_and_switches_beside_lora(tiny_llama, dates_data, tmp_path, capsys):
    from tuneforge.models.adapters import AdapterSet
    from tuneforge.models.merge import load_for_inference

    run = _train(tmp_path, tiny_llama, dates_data[0], {"name": "bottleneck", "size": 8}, capsys, "bn")
    assert (run / "adapter" / "bottleneck_config.json").is_file()
    assert (run / "adapter" / "tokenizer.json").is_file()
    model, _ = load_for_inference(run)
    with torch.no_grad():
        tuned = model(IDS).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(IDS).logits
    assert not torch.allclose(tuned, base_logits)

    code, _, err = run_cli(["merge", run, tmp_path / "merged"], capsys)
    assert code == 2 and "cannot merge a bottleneck" in err and not (tmp_path / "merged").exists()

    lora = _train(tmp_path, tiny_llama, dates_data[0], {"name": "lora", "r": 4}, capsys, "lora")
    with torch.no_grad():
        lora_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama),
                                                lora / "adapter").eval()(IDS).logits
    aset = AdapterSet(str(tiny_llama), {"l": lora, "b": run})
    with torch.no_grad():
        for name, want in (("b", tuned), ("l", lora_logits), ("base", base_logits), ("b", tuned), ("base", base_logits)):
            with aset.use(name) as m:
                torch.testing.assert_close(m(IDS).logits, want, rtol=0, atol=0, msg=name)



def test_compare_methods_writes_table_and_chart(tiny_llama, dates_data, tmp_path, capsys):
    train, val = dates_data
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "task", val,
                       train={"max_steps": 2, "eval_every": 2}, eval={"max_examples": 2, "max_new_tokens": 4})
    code, out, err = run_cli(["compare-methods", cfg, "--methods", "lora,bottleneck,prompt", "--out",
                              tmp_path / "cmp"], capsys)
    assert code == 0, err
    import json

    rows = json.loads((tmp_path / "cmp" / "methods.json").read_text())
    assert [r["method"] for r in rows] == ["lora", "bottleneck", "prompt"]
    assert all("error" not in r and r["trainable_params"] > 0 and r["artifact_mb"] > 0 for r in rows)
    assert (tmp_path / "cmp" / "methods.png").is_file()
    table = (tmp_path / "cmp" / "methods.md").read_text()
    assert "| base (untuned) |" in table and "| prompt |" in table
