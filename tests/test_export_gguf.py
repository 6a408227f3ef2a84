"""GGUF export: the file transformers' GGUF reader (which reads llama.cpp's files) loads back gives
the same tokens and logits as the model it came from; other architectures are refused by name."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import NoCapture, run_cli, write_config
from tuneforge.export.gguf import permute_rotary

PROMPTS = ["Rewrite 3 May 1999 as a date.", "Hello world, the date is 2019-02-15."]


def _load(path):
    return (AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))


def _greedy(model, tok, prompt):
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         pad_token_id=tok.pad_token_id or 0)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def trained(tiny_llama, dates_data, tmp_path_factory):
    """A LoRA run on the tiny llama and its merged model, the reference for every export."""
    tmp = tmp_path_factory.mktemp("gguf")
    cfg = write_config(tmp / "c.yaml", tiny_llama, dates_data[0], tmp / "run", eval={"before_after": False},
                       train={"max_steps": 2, "batch_tokens": 256, "lr": 1e-2}, method={"name": "lora", "r": 4})
    code, _, err = run_cli(["train", cfg], NoCapture())
    assert code == 0, err
    code, _, err = run_cli(["merge", tmp / "run", tmp / "merged"], NoCapture())
    assert code == 0, err
    return tmp


def test_f32_export_loads_back_with_the_same_tokens_and_logits(trained, capsys):
    code, out, err = run_cli(["export", trained / "run", trained / "f32", "--quant", "f32"], capsys)
    assert code == 0, err
    model, tok = _load(trained / "f32" / "model-f32.gguf")
    ref = AutoModelForCausalLM.from_pretrained(str(trained / "merged"), dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(str(trained / "merged"))
    for prompt in PROMPTS:
        ids = ref_tok(prompt)["input_ids"]
        assert tok(prompt)["input_ids"] == ids
        with torch.no_grad():
            torch.testing.assert_close(model(torch.tensor([ids])).logits, ref(torch.tensor([ids])).logits,
                                       rtol=0, atol=1e-5)
    modelfile = (trained / "f32" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f32.gguf") and "PARAMETER stop" in modelfile
    assert "Exported by `tuneforge export" in (trained / "f32" / "README.md").read_text()


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_f16_and_q8_exports_generate_like_the_merged_model(trained, capsys, quant):
    code, _, err = run_cli(["export", trained / "run", trained / quant, "--quant", quant], capsys)
    assert code == 0, err
    model, tok = _load(trained / quant / f"model-{quant}.gguf")
    ref = AutoModelForCausalLM.from_pretrained(str(trained / "merged"), dtype=torch.float32)
    agree = [_greedy(model, tok, p) == _greedy(ref, tok, p) for p in PROMPTS]
    if quant == "f16":
        assert all(agree)  # f16 rounding does not move a greedy choice of this model
    else:
        assert any(agree), "q8_0 output should mostly match"


def test_llama_cpp_runs_the_export_like_transformers(trained, capsys):
    # llama.cpp itself (llama-cpp-python, built from source by `make gguf-check`; skipped where it is not
    # installed): f32 weights, the same prompt ids, the same greedy tokens and near-equal logits.
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    code, _, err = run_cli(["export", trained / "run", trained / "llama-f32", "--quant", "f32"], capsys)
    assert code == 0, err
    ref = AutoModelForCausalLM.from_pretrained(str(trained / "merged"), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(trained / "merged"))
    llm = llama_cpp.Llama(model_path=str(trained / "llama-f32" / "model-f32.gguf"), n_ctx=256, n_threads=1,
                          verbose=False, logits_all=True)
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            expected = ref(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(np.asarray(llm.scores[:len(ids)]), expected, rtol=0, atol=1e-3)
        got = []
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            got.append(int(token))
            if len(got) == 8 or token == tok.eos_token_id:  # HF's generate stops there too
                break
        assert got == _greedy(ref, tok, prompt)


def test_rotary_permutation_is_llama_cpps_interleaving():
    w = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)  # 2 heads of 4 rows: [a0 a1 b0 b1] -> [a0 b0 a1 b1]
    got = permute_rotary(w, 2)
    assert got[:4, 0].tolist() == [0, 6, 3, 9] and got[4:, 0].tolist() == [12, 18, 15, 21]


def test_other_architectures_are_refused_by_name(tiny_models, tmp_path, capsys):
    code, _, err = run_cli(["export", tiny_models["gpt2"], tmp_path / "out"], capsys)
    assert code == 2 and "GGUF export supports the Llama architecture" in err and "GPT2LMHeadModel" in err
