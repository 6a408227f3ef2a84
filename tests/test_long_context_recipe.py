"""recipe: long_context: the three models scored on the same passkey prompts (base as shipped, stretched
untrained, stretched and tuned), the paired statistics per length, the report and `runs report`, and its
bad input refused in one line."""

import json

import pytest
import torch
from scipy.stats import binomtest

from conftest import NoCapture, run_cli, write_config
from tuneforge.eval.passkey import scoring_copy
from tuneforge.models.load import load_model
from tuneforge.recipes import long_context
from tuneforge.recipes.long_context import compare_systems

YARN_X2 = {"type": "yarn", "factor": 2}
SUITE = {"name": "passkey", "kind": "passkey", "lengths": [200, 300], "depths": [0.3, 0.7], "per_cell": 2,
         "max_new_tokens": 4}


def _result(rights: dict[int, list[int]]) -> dict:
    return {"per_prompt": [[length, 0.5, bool(r)] for length, rs in rights.items() for r in rs]}


def test_compare_systems_groups_by_length_and_pairs_the_same_prompts():
    base = {100: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 200: [0] * 10}
    stretched = {100: [1, 1, 1, 1, 1, 1, 1, 0, 0, 0], 200: [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]}
    tuned = {100: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0], 200: [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    out = compare_systems({"base": _result(base), "stretched": _result(stretched), "tuned": _result(tuned)})
    assert out["lengths"] == [100, 200]
    acc = out["accuracy"]
    assert acc["base"]["100"]["acc"] == 1.0 and acc["tuned"]["200"]["acc"] == 0.7 and acc["tuned"]["200"]["n"] == 10
    assert acc["stretched"]["200"]["lo"] <= 0.1 <= acc["stretched"]["200"]["hi"]
    d = out["differences"]["tuned - base"]["200"]
    assert d["diff"] == pytest.approx(0.7) and d["lo"] <= 0.7 <= d["hi"] and d["lo"] > 0
    # 7 prompts fixed, none broken: the exact two-sided binomial test, computed independently
    assert (d["mcnemar"]["b10"], d["mcnemar"]["b01"]) == (7, 0)
    assert d["mcnemar"]["p_value"] == pytest.approx(binomtest(0, 7, 0.5).pvalue)
    d = out["differences"]["tuned - stretched"]["200"]  # prompt 4 right in both: 6 fixed, 0 broken
    assert d["diff"] == pytest.approx(0.6) and (d["mcnemar"]["b10"], d["mcnemar"]["b01"]) == (6, 0)
    d = out["differences"]["tuned - stretched"]["100"]  # 2 fixed (8, 9), 0 broken; 1 broken vs base (10)
    assert (d["mcnemar"]["b10"], d["mcnemar"]["b01"]) == (2, 0)
    assert out["differences"]["tuned - base"]["100"]["mcnemar"]["b01"] == 1


def test_compare_systems_refuses_models_scored_on_different_prompts():
    a = {"per_prompt": [[100, 0.5, True], [100, 0.9, False]]}
    b = {"per_prompt": [[100, 0.9, True], [100, 0.5, False]]}
    with pytest.raises(ValueError, match="different passkey prompts"):
        compare_systems({"base": a, "tuned": b})


def test_scoring_copy_is_bf16_and_leaves_the_training_weights(tiny_llama):
    model = load_model(str(tiny_llama))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    copy = scoring_copy(model, bf16_cpu=True)
    assert copy is not model and all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert scoring_copy(model, bf16_cpu=False) is model


@pytest.fixture(scope="module")
def lc_run(tiny_llama, tmp_path_factory):
    """A long_context run on pass-key rows, with a record of which model each passkey scoring saw."""
    root = tmp_path_factory.mktemp("lc")
    code, _, err = run_cli(["data", "passkey", root / "pk", "--lengths", "300,400", "--n-train", "8", "--n-val", "2",
                            "--model", tiny_llama], NoCapture())
    assert code == 0, err
    cfg = write_config(root / "lc.yaml", tiny_llama, root / "pk" / "train.jsonl", root / "run",
                       val=root / "pk" / "val.jsonl", recipe="long_context", rope_scaling=YARN_X2,
                       data={"max_length": 512}, train={"max_steps": 2, "batch_tokens": 512}, suites=[SUITE])
    seen = []
    real = long_context.run_passkey_suite

    def recording(model, tokenizer, suite, seed, batch_size):
        seen.append({"rope": model.config.rope_parameters["rope_type"],
                     "adapter": any("lora_" in n for n, _ in model.named_parameters())})
        return real(model, tokenizer, suite, seed, batch_size)

    mp = pytest.MonkeyPatch()
    mp.setattr(long_context, "run_passkey_suite", recording)
    try:
        code, _, err = run_cli(["train", cfg], NoCapture())
    finally:
        mp.undo()
    assert code == 0, err
    return root / "run", seen


def test_long_context_scores_base_stretched_and_tuned_on_the_same_prompts(lc_run):
    run, seen = lc_run
    # the stretched model before training, the base as shipped (no scaling), then the tuned one
    assert seen == [{"rope": "yarn", "adapter": False}, {"rope": "default", "adapter": False},
                    {"rope": "yarn", "adapter": True}]
    report = json.loads((run / "report.json").read_text())
    lc = report["long_context"]
    assert lc["lengths"] == [200, 300] and set(lc["accuracy"]) == {"base", "stretched", "tuned"}
    assert all(cell["n"] == 4 for per in lc["accuracy"].values() for cell in per.values())
    assert set(lc["differences"]) == {"tuned - base", "tuned - stretched"}
    assert lc["rope_scaling"] == YARN_X2 and set(lc["seconds"]) == {"score_before", "train", "score_tuned"}
    assert report["steps"] == 2 and report["data"]["read"] == 10
    text = (run / "report.md").read_text()
    assert "## Long context" in text and "| tuned - stretched |" in text and "(plots/passkey.png)" in text
    assert (run / "plots" / "passkey.png").stat().st_size > 0
    assert json.loads((run / "eval_before.json").read_text()).keys() == {"stretched", "base"}  # kept for --resume


def test_runs_report_writes_the_long_context_block(lc_run, tmp_path, capsys):
    run, _ = lc_run
    doc = tmp_path / "training.md"
    doc.write_text("# Training\n\n<!-- long-context results: begin (written by tuneforge; edits between the markers "
                   "are replaced) -->\n<!-- long-context results: end -->\n\nafter\n")
    code, out, err = run_cli(["runs", "report", run, "--into", doc, "--images", tmp_path / "img", "--command",
                              "make long-context-demo"], capsys)
    assert code == 0, err
    text = doc.read_text()
    assert "| stretched |" in text and "make long-context-demo" in text and text.endswith("after\n")
    assert (tmp_path / "img" / f"{run.name}-passkey.png").is_file()


@pytest.mark.parametrize("change, expected", [
    ({"rope_scaling": None}, "rope_scaling: recipe long_context trains a stretched context"),
    ({"suites": []}, "suites: recipe long_context scores a `kind: passkey` suite"),
])
def test_long_context_bad_config_is_one_line(tiny_llama, tmp_path, capsys, change, expected):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    sections = {"recipe": "long_context", "rope_scaling": YARN_X2, "suites": [SUITE]} | change
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, data, tmp_path / "run",
                       **{k: v for k, v in sections.items() if v is not None})
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_compare_systems_reports_accuracy_by_depth():
    a = {"per_prompt": [[100, 0.1, False], [100, 0.9, True], [100, 0.1, True], [100, 0.9, True]]}
    out = compare_systems({"base": a, "tuned": a})
    assert out["by_depth"]["tuned"] == {"100": {"0.1": 0.5, "0.9": 1.0}}


def test_a_report_without_the_section_is_refused_in_one_line(tmp_path):
    from tuneforge.errors import UserError
    from tuneforge.report import read_section

    (tmp_path / "report.md").write_text("# Run report\n\n## Long context\n\nthe table\n\n![loss](plots/loss.png)\n")
    assert read_section(tmp_path, "## Long context", "long_context").strip() == "the table"
    with pytest.raises(UserError, match="has no '## Reinforcement learning' section: is .* a finished rl run"):
        read_section(tmp_path, "## Reinforcement learning", "rl")
