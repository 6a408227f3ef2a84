"""Before/after evaluation: scored on the same items with intervals, and sized to a time budget."""

from __future__ import annotations

import time

import pytest

from tuneforge.config import EvalConfig
from tuneforge.data.formats import Example, Segment
from tuneforge.eval import before_after
from tuneforge.eval.before_after import MIN_TIMED_EXAMPLES, compare, score_generations


def test_compare_pairs_the_same_items():
    refs = ["a", "b", "c", "d"]
    out = compare("exact_match", before=["a", "x", "x", "x"], after=["a", "b", "c", "x"], refs=refs)
    assert out["n"] == 4 and out["difference"][0] == pytest.approx(0.5)  # 3/4 - 1/4
    lo, hi = out["difference"][1:]
    assert lo <= 0.5 <= hi
    assert (out["mcnemar"]["b10"], out["mcnemar"]["b01"]) == (2, 0)  # two items fixed, none broken
    assert "mcnemar" not in compare("token_f1", ["a"], ["a"], ["a"])


def _examples(n: int) -> list[Example]:
    return [Example([Segment("user", f"q{i}", False), Segment("assistant", f"a{i}", True)]) for i in range(n)]


def test_a_time_budget_scores_what_fits_and_says_so(monkeypatch):
    calls = []

    def slow_generate(model, tok, prompts, **kw):  # 0.05 s a batch, always right
        calls.append(len(prompts))
        time.sleep(0.05)
        return [p[-1]["content"].replace("q", "a") for p in prompts]

    monkeypatch.setattr(before_after, "generate", slow_generate)
    cfg = EvalConfig(batch_size=16, metric="exact_match")
    said = []
    out = score_generations(None, None, _examples(200), cfg, bf16=False, time_budget_s=0.12, log=said.append)
    # the first batch of 16 took ~0.05 s: 2 batches fit in 0.12 s, raised to the floor of 64 examples
    assert out["n"] == MIN_TIMED_EXAMPLES == len(out["predictions"]) and out["score"] == 1.0
    assert said and "64 of 200 held-out examples" in said[0]
    assert calls[0] == 16
    full = score_generations(None, None, _examples(200), cfg, bf16=False)
    assert full["n"] == 200


def test_a_run_reports_before_and_after_with_intervals(tmp_path, tiny_llama, dates_data, capsys):
    import json

    from conftest import run_cli, write_config

    cfg = write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run", dates_data[1],
                       train={"max_steps": 2, "batch_tokens": 256}, eval={"max_examples": 8, "time_budget_s": 30})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    ev = json.loads((tmp_path / "run" / "report.json").read_text())["evaluation"]
    assert ev["examples"] == ev["n"] == 8 and len(ev["before_ci"]) == len(ev["after_ci"]) == 2
    assert ev["difference"][0] == pytest.approx(ev["after"] - ev["before"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| base |" in report and "95% interval" in report and "paired over the same 8 items" in report
    assert "| tuned |" in (tmp_path / "run" / "adapter" / "README.md").read_text()
