"""Long context: `rope_scaling` applied to the model config (training, inference, saved artifacts), its bad
input refused in one line, the `passkey` eval suite (exact prompt lengths, key depths, per-cell scoring)
and the `tuneforge data passkey` generator."""

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli, write_config
from tuneforge.config import RopeScalingConfig, SuiteConfig, config_from_dict
from tuneforge.data.passkey import KEY_LINE, PasskeyBuilder
from tuneforge.errors import UserError
from tuneforge.eval import suites
from tuneforge.eval.passkey import answer_is_key, run_passkey_suite
from tuneforge.models.adapters import AdapterSet
from tuneforge.models.load import load_model, load_model_config, load_tokenizer
from tuneforge.models.merge import load_for_inference

LINEAR_X2 = {"type": "linear", "factor": 2}


def _logits(model, n: int) -> torch.Tensor:
    ids = torch.arange(n)[None] % 200 + 10
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_linear_scaling_changes_logits_and_declared_context(tiny_llama):
    plain = load_model(str(tiny_llama)).eval()
    scaled = load_model(str(tiny_llama), rope_scaling=RopeScalingConfig(type="linear", factor=4)).eval()
    assert scaled.config.rope_parameters["rope_type"] == "linear" and scaled.config.rope_parameters["factor"] == 4
    assert scaled.config.max_position_embeddings == 4 * plain.config.max_position_embeddings
    a, b = _logits(plain, 64), _logits(scaled, 64)
    assert torch.allclose(a[0], b[0], atol=1e-5)  # position 0 has no rotation to stretch
    assert not torch.allclose(a[40:], b[40:], atol=1e-3)


def test_dynamic_scaling_acts_only_beyond_the_trained_context(tiny_llama):
    scaling = RopeScalingConfig(type="dynamic", factor=4, original_max_position_embeddings=32)
    plain = load_model(str(tiny_llama)).eval()
    scaled = load_model(str(tiny_llama), rope_scaling=scaling).eval()
    assert scaled.config.max_position_embeddings == 32  # dynamic NTK reads it as the trained length
    assert torch.allclose(_logits(plain, 24), _logits(scaled, 24), atol=1e-5)
    assert not torch.allclose(_logits(plain, 96)[60:], _logits(scaled, 96)[60:], atol=1e-3)


def test_yarn_records_the_original_context(tiny_llama):
    config = load_model_config(str(tiny_llama))
    from tuneforge.models.rope import apply_rope_scaling, trained_context

    apply_rope_scaling(config, RopeScalingConfig(type="yarn", factor=2), max_length=4096)
    assert config.rope_parameters["original_max_position_embeddings"] == 2048
    assert config.max_position_embeddings == 4096 and trained_context(config) == 2048
    apply_rope_scaling(config, RopeScalingConfig(type="yarn", factor=2))  # again: the same, not 4x
    assert config.max_position_embeddings == 4096


def test_bad_rope_scaling_is_one_clear_line(tiny_models, tiny_llama):
    with pytest.raises(UserError, match=r"rope_scaling: .*gpt2.* no rotary position embeddings"):
        load_model(str(tiny_models["gpt2"]), rope_scaling=RopeScalingConfig(**LINEAR_X2))
    with pytest.raises(UserError, match=r"rope_scaling.factor: 2 x the trained context 256 = 512 tokens does not "
                                        r"reach data.max_length 1024; raise the factor to at least 4"):
        load_model(str(tiny_llama), rope_scaling=RopeScalingConfig(type="linear", factor=2,
                                                                   original_max_position_embeddings=256),
                   max_length=1024)
    with pytest.raises(UserError, match=r"rope_scaling.type: .*'linear', 'dynamic' or 'yarn'"):
        config_from_dict({"rope_scaling": {"type": "ntk", "factor": 2}})
    with pytest.raises(UserError, match=r"rope_scaling.factor: .*greater than 1"):
        config_from_dict({"rope_scaling": {"type": "linear", "factor": 0.5}})
    with pytest.raises(UserError, match=r"rope_scaling.facter: unknown key \(did you mean 'factor'\?\)"):
        config_from_dict({"rope_scaling": {"type": "linear", "facter": 2}})


def test_training_refuses_rope_scaling_on_gpt2_before_anything_runs(tiny_models, dates_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_models["gpt2"], dates_data[0], tmp_path / "run",
                       rope_scaling=LINEAR_X2)
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2 and "rope_scaling:" in err and "no rotary position embeddings" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def scaled_runs(tiny_llama, dates_data, tmp_path_factory):
    """A full run and a LoRA run trained with linear x2, and a LoRA run without scaling."""
    from conftest import NoCapture

    root = tmp_path_factory.mktemp("long")
    runs = {}
    for name, method, rope in (("full", "full", LINEAR_X2), ("lora", "lora", LINEAR_X2), ("plain", "lora", None)):
        extra = {"rope_scaling": rope} if rope else {}
        cfg = write_config(root / f"{name}.yaml", tiny_llama, dates_data[0], root / name, method=method,
                           train={"max_steps": 2}, eval={"before_after": False}, **extra)
        code, _, err = run_cli(["train", cfg], NoCapture())
        assert code == 0, err
        runs[name] = root / name
    return runs


def test_full_run_saves_the_scaling_in_its_model_folder(scaled_runs):
    saved = json.loads((scaled_runs["full"] / "model" / "config.json").read_text())
    assert saved["rope_parameters"]["rope_type"] == "linear" and saved["rope_parameters"]["factor"] == 2
    assert saved["max_position_embeddings"] == 4096
    model, _ = load_for_inference(scaled_runs["full"])
    assert model.config.rope_parameters["rope_type"] == "linear"


def test_lora_run_loaded_back_gets_its_scaling_again(scaled_runs, tiny_llama, tmp_path, capsys):
    model, _ = load_for_inference(scaled_runs["lora"])  # generate, chat, eval: the adapter onto a re-scaled base
    assert model.config.rope_parameters["rope_type"] == "linear" and model.config.max_position_embeddings == 4096
    plain, _ = load_for_inference(scaled_runs["plain"])
    assert plain.config.rope_parameters["rope_type"] == "default"
    served = AdapterSet(str(tiny_llama), {"a": scaled_runs["lora"]})  # serve: one base for the adapters
    assert served.model.config.rope_parameters["rope_type"] == "linear"
    with pytest.raises(UserError, match="different rope_scaling .* cannot share one base"):
        AdapterSet(str(tiny_llama), {"a": scaled_runs["lora"], "b": scaled_runs["plain"]})
    code, _, err = run_cli(["merge", scaled_runs["lora"], tmp_path / "merged"], capsys)
    assert code == 0, err
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert merged["rope_parameters"]["rope_type"] == "linear"


# ---------------------------------------------------------------------------------------------- passkey


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return load_tokenizer(str(tiny_llama))


@pytest.mark.parametrize("length", [200, 333, 1024])
def test_passkey_prompt_has_the_length_and_the_key_at_the_depth(tok, length):
    builder = PasskeyBuilder(tok)
    longest_sentence = max(len(s) for s in builder._sentences)
    for depth in (0.0, 0.25, 0.5, 0.9):
        p = builder.build(length, depth, "48213")
        assert len(p.ids) == length
        key_line = tok(KEY_LINE.format(key="48213"), add_special_tokens=False)["input_ids"]
        assert p.ids[p.key_start:p.key_start + len(key_line)] == key_line
        n_filler = p.filler[1] - p.filler[0] - len(key_line)
        assert abs((p.key_start - p.filler[0]) - depth * n_filler) <= longest_sentence
        text = tok.decode(p.ids)
        assert text.count("48213") == 2 and text.rstrip().endswith("assistant")


def test_passkey_too_short_is_refused(tok):
    with pytest.raises(UserError, match="passkey length 20 is shorter than the prompt without filler"):
        PasskeyBuilder(tok).build(20, 0.5, "12345")


def test_answer_is_the_first_number():
    assert answer_is_key("The pass key is 12345.", "12345") and answer_is_key("12345", "12345")
    assert not answer_is_key("123456", "12345") and not answer_is_key("I do not know", "12345")
    assert not answer_is_key("54321 or 12345", "12345")


def test_passkey_suite_scores_each_length_and_depth(tok, tiny_llama):
    """A stand-in for generation that finds the key in short prompts, and in long ones only near the start."""
    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size):
        replies = []
        for ids in prompts:
            text = tokenizer.decode(ids)
            key = text.split("The pass key is ")[1][:5]
            near_start = text.index(key) < len(text) / 2
            replies.append(f"The pass key is {key}." if len(ids) == 256 or near_start else "00000")
        return replies

    model = SimpleNamespace(config=load_model_config(str(tiny_llama)))  # trained context 2048
    suite = SuiteConfig(name="pk", kind="passkey", lengths=[512], context_multiples=[0.125], depths=[0.1, 0.9],
                        per_cell=3)
    res = run_passkey_suite(model, tok, suite, generate=fake_generate)
    assert res["lengths"] == [256, 512] and res["n"] == 12
    assert res["acc@256"] == 1.0 and res["acc@512"] == 0.5 and res["acc"] == 0.75
    assert res["acc@depth0.1"] == 1.0 and res["acc@depth0.9"] == 0.5
    assert res["grid"] == {"256": {"0.1": 1.0, "0.9": 1.0}, "512": {"0.1": 1.0, "0.9": 0.0}}
    assert suites.main_metric(suite, res) == "acc"
    again = run_passkey_suite(model, tok, suite, generate=fake_generate)
    assert [s["key"] for s in again["samples"]] == [s["key"] for s in res["samples"]]  # seeded keys


def test_passkey_suite_runs_a_real_model(tiny_llama, tok):
    model = load_model(str(tiny_llama)).eval()
    suite = SuiteConfig(name="pk", kind="passkey", lengths=[200, 260], depths=[0.5], per_cell=2, max_new_tokens=4)
    res = suites.run_suite(model, tok, suite)
    assert res["n"] == 4 and 0.0 <= res["acc"] <= 1.0 and set(res["grid"]) == {"200", "260"}


def test_passkey_suite_needs_lengths():
    with pytest.raises(UserError, match="kind passkey needs `lengths`"):
        run_passkey_suite(SimpleNamespace(config=None), None, SuiteConfig(name="pk", kind="passkey"))
    with pytest.raises(UserError, match="depths: .*between 0 and 1"):
        config_from_dict({"suites": [{"name": "pk", "kind": "passkey", "lengths": [512], "depths": [1.5]}]})


def test_data_passkey_writes_alpaca_at_the_lengths(tiny_llama, tok, tmp_path, capsys):
    code, out, err = run_cli(["data", "passkey", tmp_path / "pk", "--lengths", "250,400", "--n-train", "4",
                              "--n-val", "2", "--model", tiny_llama], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "pk" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["length"] for r in rows] == [250, 400, 250, 400]
    for r in rows:
        assert r["output"].isdigit() and len(r["output"]) == 5 and r["instruction"].count(r["output"]) == 2
        rendered = tok.apply_chat_template([{"role": "user", "content": r["instruction"]}], tokenize=False,
                                           add_generation_prompt=True)
        assert abs(len(tok(rendered, add_special_tokens=False)["input_ids"]) - r["length"]) <= 4
    assert len((tmp_path / "pk" / "val.jsonl").read_text().splitlines()) == 2
    code, _, err = run_cli(["data", "passkey", tmp_path / "x", "--lengths", "2k"], capsys)
    assert code == 2 and "--lengths '2k'" in err
