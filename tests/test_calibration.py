"""Calibration tuning: the query, its loss, the post-hoc fits and the pipeline on a tiny model."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import report_into_doc, run_cli, write_config, write_jsonl
from tuneforge.run_dir import RunDir
from tuneforge.calibration.baselines import agrees, parse_verbalized
from tuneforge.calibration.fit import Probe, fit_probe, fit_temperature
from tuneforge.train.losses.calibration import CalibrationLoss, divergence
from tuneforge.calibration.questions import Question
from tuneforge.calibration.query import encode_query, make_query_spec, query_text, score_queries
from tuneforge.calibration.balance import balance, check_both_classes
from tuneforge.data.pack import collate
from tuneforge.errors import UserError
from tuneforge.models.load import load_model, load_tokenizer

Q_OPEN = Question(question="What is the capital of France?", targets=["Paris"])
Q_MC = Question(question="Which is a fruit?", targets=["apple"], options=["stone", "apple", "car"])


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    torch.manual_seed(0)
    return load_model(str(tiny_llama)).eval(), load_tokenizer(str(tiny_llama))


@pytest.fixture(scope="module")
def spec(tiny):
    return make_query_spec(tiny[1], "Is the proposed answer correct?", ("no", "yes"))


def test_option_tokens_differ_and_shared_first_token_is_refused(tiny, spec):
    assert spec.token_ids[0] != spec.token_ids[1]
    with pytest.raises(UserError, match="start with the same token"):
        make_query_spec(tiny[1], "Is it right?", ("no", "no way"))


def test_encoded_query_targets_only_the_option_and_marks_the_answer(tiny, spec):
    tok = tiny[1]
    for correct in (True, False):
        e = encode_query(tok, Q_MC, "B. apple", correct, spec, max_length=512)
        assert sum(e.mask) == 1 and e.mask[-1]
        assert e.ids[-1] == spec.token_ids[int(correct)]
        answer_ids = [i for i, m in zip(e.ids, e.aux_mask) if m]
        assert tok.decode(answer_ids).strip() == "B. apple"
    assert encode_query(tok, Q_MC, "B. apple", True, spec, max_length=8) is None


def _manual_loss(model, encoded, option_ids, weights):
    """Two-way CE from the full model forward, one unpadded example at a time."""
    total = 0.0
    for e, w in zip(encoded, weights):
        logits = model(input_ids=torch.tensor([e.ids])).logits[0, -2].float()
        two = logits[list(option_ids)]
        label = int(e.ids[-1] == option_ids[1])
        total += w * F.cross_entropy(two[None], torch.tensor([label])).item()
    return total


def test_calibration_loss_matches_full_forward_packed_and_weighted(tiny, spec):
    model, tok = tiny
    answers = [("Paris", True), ("Lyon", False), ("It is Paris, France", True)]
    encoded = [encode_query(tok, Q_OPEN, a, c, spec, 512) for a, c in answers]
    for e, w in zip(encoded, (0.5, 2.0, 1.0)):
        e.weight = w
    loss = CalibrationLoss(model, spec.token_ids)
    fields = CalibrationLoss.extra_fields
    with torch.no_grad():
        packed = loss(**collate([[0, 1, 2]], encoded, tok.pad_token_id, fields))
        unpacked = loss(**collate([[0], [1], [2]], encoded, tok.pad_token_id, fields))
    expected = _manual_loss(model, encoded, spec.token_ids, (0.5, 2.0, 1.0))
    assert packed.item() == pytest.approx(expected, rel=1e-4)
    assert unpacked.item() == pytest.approx(expected, rel=1e-4)


def test_divergences_are_zero_for_equal_and_positive_otherwise():
    p = torch.log_softmax(torch.randn(4, 10), -1)
    q = torch.log_softmax(torch.randn(4, 10), -1)
    for kind in ("kl", "js"):
        assert torch.allclose(divergence(p, p, kind), torch.zeros(4), atol=1e-6)
        assert (divergence(p, q, kind) > 0).all()
    assert torch.allclose(divergence(p, q, "js"), divergence(q, p, "js"), atol=1e-6)
    assert (divergence(p, q, "js") <= math.log(2) + 1e-6).all()


def test_regularizer_is_zero_at_lora_init_and_grows_when_weights_move(tiny_llama, spec):
    from tuneforge.config import LoraMethod
    from tuneforge.models.methods import apply_method

    torch.manual_seed(0)
    model = apply_method(load_model(str(tiny_llama)), LoraMethod(r=4))
    tok = load_tokenizer(str(tiny_llama))
    encoded = [encode_query(tok, Q_OPEN, "Paris", True, spec, 512)]
    batch = collate([[0]], encoded, tok.pad_token_id, CalibrationLoss.extra_fields)
    plain = CalibrationLoss(model, spec.token_ids)
    kl = CalibrationLoss(model, spec.token_ids, "kl", 10.0)
    with torch.no_grad():
        assert kl(**batch).item() == pytest.approx(plain(**batch).item(), abs=1e-5)  # LoRA B = 0: same model
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.5)
        assert kl(**batch).item() > plain(**batch).item() + 1e-4


def test_score_queries_matches_unbatched_forward(tiny, spec):
    model, tok = tiny
    texts = [query_text(tok, Q_OPEN, a, spec) for a in ("Paris", "Lyon is the answer I think", "x")]
    margins, hidden = score_queries(model, tok, texts, spec, batch_size=2, want_hidden=True)
    for text, m in zip(texts, margins):
        with torch.no_grad():
            logits = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
        assert m.item() == pytest.approx((logits[spec.token_ids[1]] - logits[spec.token_ids[0]]).item(), abs=1e-4)
    assert hidden.shape == (3, model.config.hidden_size)


def test_temperature_scaling_recovers_a_known_temperature():
    gen = torch.Generator().manual_seed(0)
    true_logit = torch.randn(4000, generator=gen) * 2
    labels = torch.rand(4000, generator=gen) < torch.sigmoid(true_logit)
    t = fit_temperature(true_logit * 3.0, labels)  # an overconfident model: margins 3x too large
    assert t == pytest.approx(3.0, rel=0.1)


def test_probe_separates_separable_features(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=gen)
    y = x[:, 2] + 0.5 * x[:, 5] > 0
    probe = fit_probe(x, y)
    assert ((probe.margin(x) > 0) == y).float().mean() > 0.95
    probe.save(tmp_path / "probe.safetensors")
    again = Probe.load(tmp_path / "probe.safetensors")
    assert torch.allclose(again.margin(x), probe.margin(x))


def test_balance_weights_have_mean_one_and_upsampling_reaches_parity():
    from tuneforge.data.render import Encoded

    labels = [True] * 6 + [False] * 2
    enc = [Encoded([1, 2], [False, True]) for _ in labels]
    weighted = balance(enc, labels, "weight", 0)
    assert sum(e.weight for e in weighted) / len(weighted) == pytest.approx(1.0)
    assert sum(e.weight for e, y in zip(weighted, labels) if y) == pytest.approx(4.0)  # classes weigh the same
    enc = [Encoded([1, 2], [False, True]) for _ in labels]
    up = balance(enc, labels, "upsample", 0)
    assert len(up) == 12


def test_one_class_training_set_is_refused():
    with pytest.raises(UserError, match="all 3 training answers are wrong"):
        check_both_classes([False, False, False], "graded.jsonl")


@pytest.mark.parametrize("text,value", [("80%", 0.8), ("I am 75 percent sure", 0.75), ("0.3", 0.3),
                                        ("1", 1.0), ("42", 0.42), ("100%", 1.0), ("about 1,000%", None),
                                        ("very sure", None), ("", None)])
def test_verbalized_confidence_parsing(text, value):
    assert parse_verbalized(text) == (pytest.approx(value) if value is not None else None)


def test_sampling_agreement_uses_the_graders_notion_of_same():
    assert agrees("B", "B. apple", Q_MC)
    assert agrees("apple", "B", Q_MC)
    assert not agrees("A. stone", "B. apple", Q_MC)
    assert agrees("the Paris", "Paris.", Q_OPEN)
    assert agrees("12 apples", "12", Question(question="How many?", targets=["12"]))
    assert not agrees("Lyon", "Paris", Q_OPEN)


# ---------------------------------------------------------------- the pipeline, end to end


def _graded_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        right = i % 3 != 0
        rows.append({"question": f"What is {i} plus {i}?", "target": str(2 * i),
                     "answer": str(2 * i if right else 2 * i + 1), "correct": right})
    return rows


def _calibration_config(tmp_path, tiny_llama, train_file, **calibration):
    cal = {"baselines": ["zero_shot", "verbalized", "sampling"], "samples": 2, "answer_max_new_tokens": 4,
           "verbalized_max_new_tokens": 4, "batch_size": 8} | calibration
    return write_config(tmp_path / "cal.yaml", tiny_llama, train_file, tmp_path / "run", recipe="calibration",
                        calibration=cal, train={"max_steps": 3, "batch_tokens": 2048, "lr": 1e-3,
                                                "precision": "fp32"})


def test_pipeline_from_a_graded_file_to_results_and_confidence(tmp_path, tiny_llama, capsys, monkeypatch):
    train_file = write_jsonl(tmp_path / "graded.jsonl", _graded_rows(40))
    shift_file = write_jsonl(tmp_path / "shift.jsonl", _graded_rows(12))
    cfg = _calibration_config(tmp_path, tiny_llama, train_file, shift=str(shift_file), probe=True)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    results = json.loads((run / "calibration_results.json").read_text())
    assert set(results["results"]) == {"test", "shift"}
    methods = set(results["results"]["test"])
    assert {"zero-shot classifier", "verbalized", "sampling", "calibration-tuned", "probe"} <= methods
    for summary in results["results"]["test"].values():
        assert summary["n"] == 8 and 0 <= summary["ece"] <= 1
    assert "| test | calibration-tuned |" in (run / "calibration.md").read_text()
    assert (run / "plots" / "calibration-test.png").stat().st_size > 0
    assert (run / "plots" / "reliability-shift-verbalized.png").stat().st_size > 0
    info = json.loads((run / "calibration.json").read_text())
    assert info["train"]["correct"] + info["train"]["wrong"] == info["train"]["queries"]
    assert info["train"]["regularizer"] == "js" and info["train"]["regularizer_on"] == "answer_prompt"
    assert RunDir(run).status() == "finished"
    # The trivial predictors are rows like any method; every method gets intervals and the noise floor.
    assert {"base rate", "per-source prior"} <= methods
    stats = results["details"]["test"]["statistics"]
    assert stats["reference"].startswith("calibration-tuned") and "base rate" in stats["paired"]
    assert {"ece", "auroc", "brier", "brier_skill", "ece_equal_mass"} <= set(stats["methods"]["probe"]["intervals"])
    # ... and go into a doc's results block, charts beside it.
    text = report_into_doc(run, "calibration", tmp_path, capsys, "make calibration-demo")
    assert "noise floor" in text and "(img/run-calibration-test.png)" in text
    assert (tmp_path / "img" / "run-calibration-reliability-test.png").is_file()

    code, out, err = run_cli(["generate", run, "What is 3 plus 3?", "--confidence", "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    p = float(out.strip().splitlines()[-1].split()[-1])
    assert 0 <= p <= 1

    typed = iter(["What is 3 plus 3?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    code, out, err = run_cli(["chat", run, "--confidence"], capsys)
    assert code == 0, err
    reply = [line for line in out.splitlines() if line.startswith("model> ")]
    assert len(reply) == 1 and 0 <= float(reply[0].rsplit("confidence ", 1)[1].rstrip("]")) <= 1

    # A single stage reruns from the files of the earlier ones.
    code, out, err = run_cli(["calibrate", cfg, "--stage", "evaluate"], capsys)
    assert code == 0, err


def test_public_calibration_format_is_read(tmp_path, tiny_llama, capsys):
    rows = [{"context": f"Q: what is {i}+{i}?", "target": str(2 * i), "output": str(2 * i + (i % 2)),
             "label": int(i % 2 == 0)} for i in range(30)]
    cfg = _calibration_config(tmp_path, tiny_llama, write_jsonl(tmp_path / "pub.jsonl", rows), baselines=[])
    code, out, err = run_cli(["calibrate", cfg, "--stage", "answer"], capsys)
    assert code == 0, err
    graded = [json.loads(line) for line in (tmp_path / "run" / "graded.jsonl").read_text().splitlines()]
    assert len(graded) == 30 and {g["grader"] for g in graded} == {"given"}
    assert sum(g["correct"] for g in graded) == 15


def test_answer_and_grade_stages_then_one_class_refusal(tmp_path, tiny_llama, capsys):
    rows = [{"question": f"Which is bigger, {i} or {i + 1}?", "answer": str(i + 1)} for i in range(12)]
    rows += [{"question": "Pick the color.", "options": "A. red\nB. dog", "answer": "A"}] * 4
    rows.append({"question": "No target here"})
    cfg = _calibration_config(tmp_path, tiny_llama, write_jsonl(tmp_path / "q.jsonl", rows))
    code, out, err = run_cli(["calibrate", cfg, "--stage", "answer"], capsys)
    assert code == 0, err
    assert "1 questions" in out and "no target" in out
    answers = (tmp_path / "run" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 16
    code, out, err = run_cli(["calibrate", cfg, "--stage", "grade"], capsys)
    assert code == 0, err
    graded = [json.loads(line) for line in (tmp_path / "run" / "graded.jsonl").read_text().splitlines()]
    assert len(graded) == 16 and all("correct" in g for g in graded)
    if len({g["correct"] for g in graded if g["split"] == "train"}) == 1:  # a random tiny model: usually all wrong
        code, out, err = run_cli(["calibrate", cfg, "--stage", "tune"], capsys)
        assert code == 2 and "nothing to tell apart" in err


def test_later_stage_without_earlier_files_says_which_to_run(tmp_path, tiny_llama, capsys):
    cfg = _calibration_config(tmp_path, tiny_llama, write_jsonl(tmp_path / "g.jsonl", _graded_rows(10)))
    (tmp_path / "run").mkdir()
    code, out, err = run_cli(["calibrate", cfg, "--stage", "tune"], capsys)
    assert code == 2 and "run the 'grade' stage first" in err


def test_calibration_config_refuses_virtual_token_methods_and_regularizer_without_adapter(tmp_path, tiny_llama, capsys):
    cfg = _calibration_config(tmp_path, tiny_llama, write_jsonl(tmp_path / "g.jsonl", _graded_rows(10)))
    code, _, err = run_cli(["train", cfg, "method=prefix"], capsys)
    assert code == 2 and "not supported by recipe: calibration" in err
    code, _, err = run_cli(["train", cfg, "method=full", "calibration.regularizer=kl"], capsys)
    assert code == 2 and "needs an adapter method" in err
