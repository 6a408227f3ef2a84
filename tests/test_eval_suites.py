"""`tuneforge eval` suites (generate / choice / perplexity), side-by-side results, the promotion gate,
`runs list|show|compare`, and the optional lm-eval backend's missing-package error."""

import json
import math
import sys

import pytest
import torch
import yaml

from conftest import write_jsonl
from tuneforge.config import SuiteConfig
from tuneforge.errors import UserError
from tuneforge.eval import runner, suites
from tuneforge.eval.generate import render_prompt

QA = [{"question": f"What is {a} plus {b}?", "output": str(a + b), "id": i}
      for i, (a, b) in enumerate([(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 1), (2, 2)])]
MC = [
    {"q": "Where do fish live?", "options": ["water", "sky", "a very long answer about deserts"], "gold": "A"},
    {"q": "What is blue?", "options": "A. the sky\nB. grass", "gold": "A. the sky"},
    {"q": "Pick two.", "options": ["one", "two", "three"], "gold": 1},
    {"q": "Capital of France?", "options": ["Berlin", "Paris"], "gold": "Paris"},
]


@pytest.fixture(scope="module")
def llama(tiny_llama):
    torch.set_num_threads(1)
    return runner.load_model_spec(str(tiny_llama))


def test_generate_choice_perplexity_in_range(llama, tmp_path):
    model, tok = llama
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    gen = suites.run_suite(model, tok, SuiteConfig(name="qa", data=str(qa), template="Q: {question}\nA:",
                                                   metric="token_f1", max_examples=4, max_new_tokens=4))
    assert gen["n"] == 4 and 0.0 <= gen["token_f1"] <= 1.0 and len(gen["samples"]) == 4
    num = suites.run_suite(model, tok, SuiteConfig(name="num", data=str(qa), template="{question}",
                                                   metric="numeric", max_examples=3, max_new_tokens=3))
    assert 0.0 <= num["numeric"] <= 1.0

    mc = write_jsonl(tmp_path / "mc.jsonl", MC)
    ch = suites.run_suite(model, tok, SuiteConfig(name="mc", kind="choice", data=str(mc), template="{q}",
                                                  target_field="gold"))
    assert ch["n"] == 4 and 0 <= ch["acc"] <= 1 and 0 <= ch["acc_norm"] <= 1
    assert [s["reference"] for s in ch["samples"]] == ["water", "the sky", "two", "Paris"]

    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "The quick brown fox jumps over the lazy dog."},
                                               {"text": "Numbers: 1 2 3"}])
    ppl = suites.run_suite(model, tok, SuiteConfig(name="ppl", kind="perplexity", data=str(texts)))
    vocab = model.config.vocab_size
    # A random tiny model sits near the uniform distribution over its vocabulary.
    assert 1 < ppl["perplexity"] < 5 * vocab and ppl["bits_per_byte"] > 0 and ppl["n"] == 2
    assert math.isclose(ppl["perplexity"], math.exp(ppl["loss"]), rel_tol=1e-6)


def test_long_text_perplexity_in_windows(llama, monkeypatch):
    model, tok = llama
    text = "The quick brown fox jumps over the lazy dog. " * 3
    (nll, n), = suites.text_nll(model, tok, [text])
    assert n == len(tok(text)["input_ids"])  # every token predicted (an EOS/BOS goes in front)
    monkeypatch.setattr(suites, "_max_length", lambda model: 8)
    (nll_w, n_w), = suites.text_nll(model, tok, [text])
    assert n_w == n and nll_w == pytest.approx(nll, rel=0.1)


def test_choice_scores_match_one_forward_per_option(llama, tmp_path):
    """Batched, padded scoring gives the same option log-probs as scoring each option on its own."""
    model, tok = llama
    suite = SuiteConfig(name="mc", kind="choice", data=str(write_jsonl(tmp_path / "mc.jsonl", MC)),
                        template="{q}", target_field="gold")
    data = suites.suite_data(suite)
    got = suites._run_choice(model, tok, suite, data, seed=0, batch_size=3)
    expected_acc = 0
    for rec in data.records:
        options = suites.parse_options(suite, rec)
        ctx = tok(render_prompt(tok, [{"role": "user", "content": rec["q"]}]), add_special_tokens=False)["input_ids"]
        lps = []
        for opt in options:
            cont = tok(opt, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
            lps.append(sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont)))
        expected_acc += max(range(len(lps)), key=lps.__getitem__) == suites.gold_index(suite, rec, options)
        if rec is data.records[0]:
            assert got["samples"][0]["logprobs"] == pytest.approx(lps, abs=1e-3)
    assert got["acc"] == expected_acc / len(data.records)


def test_choice_accuracy_with_forced_log_likelihoods(tmp_path, monkeypatch):
    # Log-probs per option in order: raw picks favour long options, per-character picks do not.
    forced = {"water": -3.0, "sky": -2.0, "a very long answer about deserts": -1.0,
              "the sky": -1.0, "grass": -5.0,
              "one": -4.0, "two": -1.0, "three": -9.0,
              "Berlin": -0.5, "Paris": -6.0}

    def fake(model, tokenizer, pairs, batch_size=16):
        return [forced[tokenizer.decode(cont)] for _, cont in pairs]

    class Tok:
        chat_template = None
        bos_token_id = eos_token_id = pad_token_id = 0

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids):
            return "".join(map(chr, ids)).strip()

    monkeypatch.setattr(suites, "continuation_logprobs", fake)
    suite = SuiteConfig(name="mc", kind="choice", data=str(write_jsonl(tmp_path / "mc.jsonl", MC)),
                        template="{q}", target_field="gold")
    res = suites._run_choice(None, Tok(), suite, suites.suite_data(suite), seed=0, batch_size=4)
    # acc picks: C, A, B, A  vs gold A, A, B, B  -> 2/4
    # acc_norm (per char): water -0.6, sky -0.667, long -0.031 -> C; the sky -0.143 vs grass -1 -> A;
    #   one -1.33, two -0.33, three -1.8 -> B; Berlin -0.083, Paris -1.2 -> A   -> 2/4
    assert res["acc"] == 0.5 and res["acc_norm"] == 0.5
    forced["water"] = -0.1  # now A wins both ways on the first question (-0.02 per character)
    res = suites._run_choice(None, Tok(), suite, suites.suite_data(suite), seed=0, batch_size=4)
    assert res["acc"] == 0.75 and res["acc_norm"] == 0.75


def test_gold_forms_and_bad_options():
    suite = SuiteConfig(name="s", kind="choice", target_field="gold")
    opts = ["bank", "library", "mall"]
    for gold, want in (("B", 1), ("(c)", 2), ("B. library", 1), ("A. bank", 0), (2, 2), ("mall", 2), ("1", 1)):
        assert suites.gold_index(suite, {"gold": gold, "options": opts}, opts) == want
    with pytest.raises(UserError, match="names none"):
        suites.gold_index(suite, {"gold": "river", "options": opts}, opts)
    assert suites.parse_options(suite, {"options": "\nA. bank\nB. library"}) == ["bank", "library"]
    with pytest.raises(UserError, match="neither a list"):
        suites.parse_options(suite, {"options": "just text"})


def test_few_shot_seeded_and_disjoint(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    # Held out from the data: the same k shots before every question, never scored.
    suite = SuiteConfig(name="qa", data=str(qa), template="Q: {question}", shots=2, max_examples=5)
    data = suites.suite_data(suite, seed=0)
    assert len(data.records) == 5 and len(data.shot_pool) == 2
    assert not {r["id"] for r in data.records} & {r["id"] for r in data.shot_pool}
    prompts = suites.suite_prompts(suite, data)
    for p, rec in zip(prompts, data.records):
        assert [m["role"] for m in p] == ["user", "assistant", "user", "assistant", "user"]
        assert p[1]["content"] == data.shot_pool[0]["output"] and p[-1]["content"] == f"Q: {rec['question']}"
    assert suites.suite_prompts(suite, suites.suite_data(suite, seed=0)) == prompts  # seeded
    assert suites.suite_data(suite, seed=1).shot_pool != data.shot_pool or \
        suites.suite_data(suite, seed=1).records != data.records

    # From a shots file that overlaps the data (here: the data itself): scored records are never shots.
    suite = SuiteConfig(name="qa2", data=str(qa), shots_from=str(qa), shots=3, template="{question}")
    with pytest.raises(UserError, match="not among the scored"):
        suites.suite_data(suite)  # every record is scored: nothing left to show
    suite = SuiteConfig(name="qa2", data=str(qa), shots_from=str(qa), shots=3, template="{question}",
                        max_examples=4)
    data = suites.suite_data(suite)
    scored = {r["id"] for r in data.records}
    assert not scored & {r["id"] for r in data.shot_pool}
    prompts = suites.suite_prompts(suite, data)
    for p in prompts:
        shown = [m["content"] for m in p[:-1:2]]
        assert len(shown) == 3 and not set(shown) & {r["question"] for r in data.records}
    assert prompts == suites.suite_prompts(suite, suites.suite_data(suite))


def test_too_few_shots_and_template_errors(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    pool = write_jsonl(tmp_path / "pool.jsonl", QA[:2])
    with pytest.raises(UserError, match="shots_from"):
        suites.suite_data(SuiteConfig(name="qa", data=str(qa), shots_from=str(pool), shots=3))
    suite = SuiteConfig(name="qa", data=str(qa), template="Q: {questoin}")
    data = suites.suite_data(suite)
    with pytest.raises(UserError) as e:
        suites.suite_prompts(suite, data)
    msg = str(e.value)
    assert "'qa'" in msg and "questoin" in msg and "question" in msg and "output" in msg
    with pytest.raises(UserError, match="target_field 'answer'"):
        suites.references(SuiteConfig(name="qa", target_field="answer"), QA[0])


def test_numeric_metric():
    assert suites.score_answer("numeric", "The answer is 1,200.00005 apples", ["1200"]) == 1.0
    assert suites.score_answer("numeric", "12", ["13", "12 eggs"]) == 1.0
    assert suites.score_answer("numeric", "1201", ["1200"]) == 0.0
    assert suites.score_answer("numeric", "no idea", ["7"]) == 0.0


def test_two_models_side_by_side_and_gate(tiny_models, tmp_path, capsys):
    torch.set_num_threads(1)
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    mc = write_jsonl(tmp_path / "mc.jsonl", MC)
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "The quick brown fox."}])
    suite_list = [SuiteConfig(name="qa", data=str(qa), template="{question}", max_examples=3, max_new_tokens=3),
                  SuiteConfig(name="mc", kind="choice", data=str(mc), template="{q}", target_field="gold"),
                  SuiteConfig(name="ppl", kind="perplexity", data=str(texts))]
    out = tmp_path / "eval"
    res = runner.evaluate_models([f"llama={tiny_models['llama']}", f"qwen={tiny_models['qwen2']}"], suite_list, out)
    assert list(res["results"]) == ["llama", "qwen"]
    assert {s: i["main_metric"] for s, i in res["suites"].items()} == {"qa": "exact_match", "mc": "acc",
                                                                        "ppl": "perplexity"}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["results"]["qwen"]["ppl"]["perplexity"] == res["results"]["qwen"]["ppl"]["perplexity"]
    md = (out / "results.md").read_text()
    assert "| suite | metric | llama | qwen |" in md and "perplexity ↓" in md and "acc_norm ↑" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind

    # The CLI's entry point: the same model as baseline and candidate passes any gate.
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"suites": [s.model_dump() for s in suite_list[1:]]}))
    code = runner.run_eval_command(cfg, [str(tiny_models["llama"])], out=tmp_path / "gate",
                                   baseline=str(tiny_models["llama"]), fail_if_worse=["acc:0", "perplexity"],
                                   suite_names=["mc", "ppl"])
    assert code == 0 and "promotion gate passed" in capsys.readouterr().out
    gated = json.loads((tmp_path / "gate" / "results.json").read_text())
    assert gated["gate"]["passed"] and list(gated["results"]) == ["baseline", "candidate"]
    with pytest.raises(UserError, match="--suite nope"):
        runner.run_eval_command(cfg, ["default"], suite_names=["nope"])
    with pytest.raises(UserError, match="needs --baseline"):
        runner.run_eval_command(cfg, ["default"], fail_if_worse=["acc"])


def test_gate_rules():
    base = {"qa": {"exact_match": 0.50, "n": 10}, "mc": {"acc": 0.60, "acc_norm": 0.6},
            "ppl": {"perplexity": 10.0, "bits_per_byte": 1.0}}
    new = {"qa": {"exact_match": 0.495}, "mc": {"acc": 0.55, "acc_norm": 0.7},
           "ppl": {"perplexity": 10.5, "bits_per_byte": 0.9}}
    assert runner.gate(new, base, ["exact_match:0.01"]) == []  # within tolerance
    v = runner.gate(new, base, ["qa/exact_match"])
    assert len(v) == 1 and v[0].startswith("qa/exact_match: 0.4950 vs baseline 0.5000")
    assert runner.gate(new, base, ["mc/acc:0.1", "acc_norm"]) == []  # acc_norm improved
    assert len(runner.gate(new, base, ["mc/acc:0.02"])) == 1
    # Lower is better: perplexity went up (worse), bits_per_byte went down (better).
    assert len(runner.gate(new, base, ["perplexity:0.1"])) == 1
    assert runner.gate(new, base, ["perplexity:0.5", "ppl/bits_per_byte"]) == []
    assert runner.gate(new, base, ["perplexity:5%"]) == []  # relative: 0.5 allowed
    assert len(runner.gate(new, base, ["perplexity:4%"])) == 1
    assert runner.lower_is_better("bits_per_byte") and runner.lower_is_better("stereotype_gap")
    assert not runner.lower_is_better("acc")
    missing = runner.gate({"qa": {}}, base, ["qa/exact_match"])
    assert "missing" in missing[0]
    with pytest.raises(UserError, match="available: .*mc/acc"):
        runner.gate(new, base, ["rouge_l"])
    with pytest.raises(UserError, match="non-negative tolerance"):
        runner.gate(new, base, ["acc:lots"])


def test_model_specs():
    assert runner.parse_model_spec("tuned=runs/a") == ("tuned", "runs/a")
    assert runner.parse_model_spec("org/model") == (None, "org/model")
    assert runner.model_labels(["default", "runs/x/adapter", "runs/x", "t=base"]) == [
        ("base", "default"), ("x", "runs/x/adapter"), ("x#2", "runs/x"), ("t", "base")]
    with pytest.raises(UserError, match="does not exist"):
        runner.load_model_spec("./no/such/folder")


def _fake_run(root, name, cfg, report=None, extra=None):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if report is not None:
        (run / "report.json").write_text(json.dumps(report))
    for fname, data in (extra or {}).items():
        (run / fname).write_text(json.dumps(data))
    return run


def test_runs_list_show_compare(tmp_path):
    from tuneforge import runs_index

    root = tmp_path / "runs"
    a = _fake_run(root, "lora-a", {"recipe": "sft", "model": "/m/tiny", "method": {"name": "lora", "r": 8},
                                   "data": {"train": "/d/train.jsonl"}, "train": {"lr": 1e-4, "max_steps": 10},
                                   "output_dir": "runs/lora-a"},
                  {"model": "/m/tiny", "method": "lora", "steps": 10, "best_val_loss": 1.234, "final_train_loss": 1.5,
                   "evaluation": {"metric": "exact_match", "before": 0.1, "after": 0.4, "examples": 20}})
    b = _fake_run(root, "group/full-b", {"recipe": "sft", "model": "/m/tiny", "method": {"name": "full"},
                                         "data": {"train": "/d/train.jsonl"}, "train": {"lr": 2e-5, "max_steps": 10},
                                         "output_dir": "runs/full-b"},
                  {"model": "/m/tiny", "method": "full", "steps": 10, "best_val_loss": 1.1})
    c = _fake_run(root, "cal", {"recipe": "calibration", "method": "lora"}, None,
                  {"calibration_results.json": {"results": {"test": {"calibration-tuned": {
                      "accuracy": 0.5, "ece": 0.07, "auroc": 0.71, "brier": 0.2}}}}})
    _fake_run(root, "unfinished", {"recipe": "sft", "method": {"name": "lora"}})
    (root / "lora-a" / "checkpoints").mkdir()  # not a run itself
    (root / "notes").mkdir()

    runs = runs_index.list_runs(root)
    assert sorted(r["name"] for r in runs) == ["cal", "group/full-b", "lora-a", "unfinished"]
    by = {r["name"]: r for r in runs}
    assert by["lora-a"]["key_metric"] == "exact_match 0.1 -> 0.4"
    assert by["lora-a"]["method"] == "lora" and by["lora-a"]["data"] == "train.jsonl" and by["lora-a"]["steps"] == 10
    assert by["cal"]["metrics"]["calibration test ece"] == 0.07 and "ece 0.07" in by["cal"]["key_metric"]
    assert by["unfinished"]["status"] == "running" and by["lora-a"]["status"] == "finished"
    table = runs_index.format_run_list(runs)
    assert table.count("\n") == 6 and "| group/full-b | sft | full |" in table

    shown = runs_index.show_run(a)
    assert "method.r | 8" in shown and "| tuned | 0.4 |" in shown and "best_val_loss | 1.234" in shown
    assert "ece" in runs_index.show_run(c)

    cmp = runs_index.compare_runs([a, b])
    header = cmp.splitlines()[0]
    assert "lora-a" in header and "full-b" in header
    assert "| config: train.lr | 0.0001 | 2e-05 |" in cmp and "config: output_dir" not in cmp
    assert "| **best_val_loss** | 1.234 | 1.1 |" in cmp and "| config: method.r | 8 | - |" in cmp
    with pytest.raises(UserError, match="at least two"):
        runs_index.compare_runs([a])
    with pytest.raises(UserError, match="no config.yaml"):
        runs_index.show_run(root / "notes")
    with pytest.raises(UserError, match="does not exist"):
        runs_index.list_runs(tmp_path / "nope")


def test_lm_eval_missing_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import fails even where it is installed
    with pytest.raises(UserError, match="pip install lm-eval"):
        runner.run_lm_eval("default", ["hellaswag"], tmp_path)
