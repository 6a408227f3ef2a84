import pytest

from tuneforge.agent.evaluate import StepReplies, read_backbone, read_plan, score_replies, static_replies
from tuneforge.agent.trajectory import Call, Step, ToolSpec, Trajectory
from tuneforge.eval.agent_metrics import (
    EpisodeResult, StepPrediction, action_exact_match, answer_rouge_l, argument_f1, comparison_chart,
    comparison_table, difference_table, episode_metrics, episode_report, error_breakdown, error_table,
    hallucination_rate, interval_table, mean_argument_f1, normalize_value, paired_step_differences,
    parsing_table, per_task, plan_accuracy, step_error, step_intervals, step_mcnemar, step_metrics, step_report,
)


def c(name, arguments=None, raw=""):
    return Call(name=name, arguments=arguments, raw_arguments=raw)


# --------------------------------------------------------------------------- argument_f1


def test_argument_f1_zero_cases():
    gold = c("weather", {"city": "Paris"})
    assert argument_f1(gold, None) == 0.0  # no predicted call
    assert argument_f1(gold, c("search", {"city": "Paris"})) == 0.0  # wrong tool, same args
    assert argument_f1(gold, c("weather", None, raw="city=Paris")) == 0.0  # unparsed args
    assert argument_f1(c("weather", None, raw="{bad"), c("weather", {"city": "Paris"})) == 0.0


def test_argument_f1_empty_dicts():
    assert argument_f1(c("now", {}), c("now", {})) == 1.0  # no-argument call, same tool
    assert argument_f1(c("now", {}), c("now", {"tz": "UTC"})) == 0.0  # gold empty, pred not: P=0
    assert argument_f1(c("weather", {"city": "Paris"}), c("weather", {})) == 0.0  # pred empty


def test_argument_f1_all_keys_same():
    gold = c("weather", {"city": "Paris", "days": 3})
    assert argument_f1(gold, c("weather", {"days": 3, "city": "Paris"})) == 1.0


def test_argument_f1_one_value_differs():
    # city same (1), days differs (0.5): sum 1.5; P = 1.5/2, R = 1.5/2 -> F1 = 0.75
    gold = c("weather", {"city": "Paris", "days": 3})
    assert argument_f1(gold, c("weather", {"city": "Paris", "days": 4})) == pytest.approx(0.75)
    # only a wrong value for one of two gold keys plus an extra key: sum 0.5; P = 0.5/2, R = 0.5/2 -> 0.25
    assert argument_f1(gold, c("weather", {"days": 5, "units": "C"})) == pytest.approx(0.25)


def test_argument_f1_extra_predicted_key():
    # sum 2; P = 2/3, R = 2/2 -> F1 = 2 * (2/3) * 1 / (5/3) = 0.8
    gold = c("f", {"a": 1, "b": 2})
    assert argument_f1(gold, c("f", {"a": 1, "b": 2, "c": 3})) == pytest.approx(0.8)


def test_argument_f1_missing_key():
    # sum 1; P = 1/1, R = 1/2 -> F1 = 2/3
    gold = c("f", {"a": 1, "b": 2})
    assert argument_f1(gold, c("f", {"a": 1})) == pytest.approx(2 / 3)


def test_argument_f1_mixed_by_hand():
    # a same (1), b differs (0.5), c missing, d extra: sum 1.5; P = 1.5/3, R = 1.5/3 -> F1 = 0.5
    gold = c("f", {"a": 1, "b": 2, "c": 3})
    assert argument_f1(gold, c("f", {"a": 1, "b": 9, "d": 0})) == pytest.approx(0.5)
    # disjoint keys: P = R = 0 -> 0
    assert argument_f1(c("f", {"a": 1}), c("f", {"b": 1})) == 0.0


def test_argument_f1_numeric_normalisation():
    gold = c("f", {"n": 3, "x": 0.5})
    assert argument_f1(gold, c("f", {"n": "3", "x": ".5"})) == 1.0
    assert argument_f1(gold, c("f", {"n": 3.0, "x": " 0.50 "})) == 1.0
    assert argument_f1(gold, c("f", {"n": "3e0", "x": 0.5})) == 1.0
    assert argument_f1(gold, c("f", {"n": 4, "x": 0.5})) == pytest.approx(0.75)
    assert normalize_value(True) != normalize_value(1) and normalize_value(False) != normalize_value(0)
    assert normalize_value(True) != normalize_value("true")
    assert argument_f1(c("f", {"flag": True}), c("f", {"flag": 1})) == pytest.approx(0.5)
    assert normalize_value("inf") == "inf"  # not a plain decimal: stays a string
    assert normalize_value([1, "A "]) == normalize_value(["1.0", "a"])
    assert normalize_value({"k": "X"}) == normalize_value({"k": " x"})


def test_argument_f1_case_and_whitespace():
    gold = c("weather", {"city": "Paris"})
    assert argument_f1(gold, c("weather", {"city": "  PARIS "})) == 1.0
    assert argument_f1(gold, c("weather", {"city": "Lyon"})) == pytest.approx(0.5)  # P = R = 0.5
    # keys compare exactly
    assert argument_f1(gold, c("weather", {"City": "Paris"})) == 0.0


# --------------------------------------------------------------------------- step-wise metrics

TOOLS = ["search", "weather"]


def mixed_steps():
    return [
        # 1. right decision, right tool, exact args
        StepPrediction("call", "call", c("search", {"q": "x"}), c("search", {"q": "x"}), TOOLS),
        # 2. right decision, right tool, one value differs -> arg F1 0.75
        StepPrediction("call", "call", c("weather", {"city": "Paris", "days": 3}),
                       c("weather", {"city": "paris", "days": 4}), TOOLS),
        # 3. right decision, hallucinated tool
        StepPrediction("call", "call", c("search", {"q": "x"}), c("google", {"q": "x"}), TOOLS),
        # 4. wrong decision (finished instead of calling)
        StepPrediction("call", "finish", c("weather", {"city": "Rome"}), None, TOOLS, pred_answer="sunny"),
        # 5. right finish, same answer -> ROUGE-L 1
        StepPrediction("finish", "finish", None, None, TOOLS,
                       gold_answer="The capital of France is Paris",
                       pred_answer="The capital of France is Paris"),
        # 6. unparseable output on a finish step -> ROUGE-L 0
        StepPrediction("finish", None, None, None, TOOLS, gold_answer="it is sunny in Rome"),
        # 7. should give up, calls an unknown tool
        StepPrediction("give_up", "call", None, c("flights", {}), TOOLS),
    ]


def test_mixed_step_metrics_literal():
    steps = mixed_steps()
    assert plan_accuracy(steps) == pytest.approx(4 / 7)  # steps 1, 2, 3, 5
    assert action_exact_match(steps) == pytest.approx(2 / 4)  # steps 1, 2 of 4 call steps
    assert hallucination_rate(steps) == pytest.approx(2 / 7)  # steps 3, 7 over all 7 steps
    assert mean_argument_f1(steps) == pytest.approx((1 + 0.75 + 0 + 0) / 4)
    assert answer_rouge_l(steps) == pytest.approx(0.5)  # (1 + 0) / 2
    assert step_metrics(steps) == {
        "steps": 7, "call_steps": 4, "finish_steps": 2,
        "plan_accuracy": 0.5714, "action_em": 0.5, "hallucination_rate": 0.2857,
        "argument_f1": 0.4375, "rouge_l": 0.5,
    }


def test_rouge_only_on_finish_steps_with_reference():
    steps = [
        # a call step carrying answers is ignored
        StepPrediction("call", "finish", c("search", {}), None, TOOLS, gold_answer="a b", pred_answer="x y"),
        # a finish step without a reference is ignored
        StepPrediction("finish", "finish", None, None, TOOLS, gold_answer=None, pred_answer="zzz"),
        StepPrediction("finish", "finish", None, None, TOOLS, gold_answer="red apple", pred_answer="red apple"),
    ]
    assert answer_rouge_l(steps) == pytest.approx(1.0)
    m = step_metrics(steps)
    assert m["finish_steps"] == 2 and m["rouge_l"] == 1.0


def test_empty_denominators_are_none():
    assert step_metrics([]) == {
        "steps": 0, "call_steps": 0, "finish_steps": 0, "plan_accuracy": None, "action_em": None,
        "hallucination_rate": None, "argument_f1": None, "rouge_l": None,
    }
    only_give_up = [StepPrediction("give_up", "give_up", None, None, TOOLS)]
    m = step_metrics(only_give_up)
    assert m["plan_accuracy"] == 1.0 and m["hallucination_rate"] == 0.0
    assert m["action_em"] is None and m["argument_f1"] is None and m["rouge_l"] is None


def test_gold_call_step_without_gold_call_is_an_error():
    with pytest.raises(ValueError, match="gold_call"):
        action_exact_match([StepPrediction("call", "call", None, c("search", {}), TOOLS)])


# --------------------------------------------------------------------------- episodes


def test_episode_metrics():
    results = [
        EpisodeResult(success=True, steps=3, hallucinated_calls=0, parse_failures=0, gave_up=False),
        EpisodeResult(success=False, steps=5, hallucinated_calls=2, parse_failures=1, gave_up=False),
        EpisodeResult(success=False, steps=2, hallucinated_calls=0, parse_failures=0, gave_up=True),
        EpisodeResult(success=True, steps=4, hallucinated_calls=1, parse_failures=0, gave_up=False),
    ]
    assert episode_metrics(results) == {
        "episodes": 4, "success_rate": 0.5, "avg_steps": 3.5, "hallucinated_calls_per_episode": 0.75,
        "parse_failures_per_episode": 0.25, "give_up_rate": 0.25,
    }
    empty = episode_metrics([])
    assert empty["episodes"] == 0 and all(v is None for k, v in empty.items() if k != "episodes")


# --------------------------------------------------------------------------- comparisons


def rows():
    single = step_metrics(mixed_steps())
    three = dict(single, plan_accuracy=0.8, hallucination_rate=0.0, rouge_l=None)
    return {"single model": single, "three roles": three}


def test_comparison_table():
    table = comparison_table(rows())
    lines = table.strip().splitlines()
    assert lines[0] == "| metric | single model | three roles |"
    assert lines[1] == "|---|---:|---:|"
    assert "| plan accuracy (%) ↑ | 57.1 | 80.0 |" in lines
    assert "| hallucination rate (%) ↓ | 28.6 | 0.0 |" in lines
    assert "| answer ROUGE-L (%) ↑ | 50.0 | n/a |" in lines
    assert "| steps | 7 | 7 |" in lines
    # a metric missing for one system is n/a; unknown metrics keep their key as label
    t2 = comparison_table({"a": {"avg_steps": 3.5, "custom": 2}, "b": {}})
    assert "| avg steps ↓ | 3.50 | n/a |" in t2 and "| custom | 2 | n/a |" in t2
    with pytest.raises(ValueError):
        comparison_table({})


def test_comparison_chart(tmp_path):
    ep = episode_metrics([EpisodeResult(True, 3, 0, 0, False), EpisodeResult(False, 6, 2, 1, True)])
    data = {name: {**m, **ep} for name, m in rows().items()}
    out = comparison_chart(data, tmp_path / "deep" / "dir" / "cmp.png", "single vs three roles")
    assert out == tmp_path / "deep" / "dir" / "cmp.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["cmp.png"]  # no temp file left behind
    # overwriting an existing chart works
    comparison_chart({"only": {"plan_accuracy": 0.5}}, out, "again")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        comparison_chart({"x": {"steps": 3}}, tmp_path / "none.png", "nothing to chart")
    assert not (tmp_path / "none.png").exists()


# --------------------------------------------------------------------------- statistics over tasks

def with_tasks(steps, tasks):
    for i, (s, t) in enumerate(zip(steps, tasks)):
        s.task, s.step = t, i
    return steps


def test_step_intervals_resample_tasks_and_keep_the_step_level_point():
    steps = with_tasks(mixed_steps(), [0, 0, 0, 1, 1, 2, 2])
    assert per_task(steps, "plan_accuracy") == {0: (3.0, 3), 1: (1.0, 2), 2: (0.0, 2)}
    assert per_task(steps, "action_em") == {0: (2.0, 3), 1: (0.0, 1)}  # task 2 has no call step
    ci = step_intervals(steps)
    flat = step_metrics(steps)
    for metric in ("plan_accuracy", "action_em", "hallucination_rate", "argument_f1", "rouge_l"):
        assert ci[metric]["point"] == flat[metric]
        assert ci[metric]["lo"] <= ci[metric]["point"] <= ci[metric]["hi"]
    assert (ci["plan_accuracy"]["tasks"], ci["plan_accuracy"]["steps"]) == (3, 7)
    assert (ci["action_em"]["tasks"], ci["action_em"]["steps"]) == (2, 4)
    with pytest.raises(ValueError, match="task id"):
        step_intervals(mixed_steps())  # no task ids: never a silent step-level bootstrap


def test_paired_step_differences_and_mcnemar_pair_the_same_gold_steps():
    a = with_tasks(mixed_steps(), [0, 0, 0, 1, 1, 2, 2])
    b = with_tasks(mixed_steps(), [0, 0, 0, 1, 1, 2, 2])
    b[0].pred_decision = "finish"  # b wrong where a is right: plan and (no call) action
    b[0].pred_call = None
    b[3].pred_decision, b[3].pred_call = "call", c("weather", {"city": "Rome"})  # b right where a is wrong
    d = paired_step_differences(a, b)
    assert d["plan_accuracy"]["diff"] == pytest.approx(round(plan_accuracy(a) - plan_accuracy(b), 4))
    assert d["action_em"]["diff"] == pytest.approx(round(action_exact_match(a) - action_exact_match(b), 4))
    assert d["plan_accuracy"]["lo"] <= d["plan_accuracy"]["diff"] <= d["plan_accuracy"]["hi"]
    tests = step_mcnemar(a, b)
    assert (tests["plan_accuracy"]["b10"], tests["plan_accuracy"]["b01"]) == (1, 1)
    assert (tests["action_em"]["b10"], tests["action_em"]["b01"], tests["action_em"]["n"]) == (1, 1, 4)
    with pytest.raises(ValueError, match="same gold steps"):
        paired_step_differences(a, b[:-1])


def test_error_attribution_by_role():
    steps = mixed_steps()
    three = [step_error(s, single_model=False) for s in steps]
    assert three == [None, ("caller", "wrong args"), ("caller", "wrong tool"), ("planner", "wrong decision"),
                     None, ("planner", "no decision"), ("planner", "wrong decision")]
    poor = StepPrediction("finish", "finish", None, None, TOOLS, gold_answer="it is sunny in Rome",
                          pred_answer="the weather")
    assert step_error(poor, single_model=False) == ("summarizer", "wrong answer")
    assert step_error(poor, single_model=True) == ("backbone", "wrong answer")
    assert [step_error(s, single_model=True) for s in steps][1:4] == [
        ("backbone", "wrong args"), ("backbone", "wrong tool"), ("backbone", "wrong decision")]
    assert error_breakdown(steps + [poor], single_model=False) == {
        "steps": 8, "failed": 6, "by_role": {"planner": {"no decision": 1, "wrong decision": 2},
                                             "caller": {"wrong tool": 1, "wrong args": 1},
                                             "summarizer": {"wrong answer": 1}}}
    assert error_breakdown(steps, single_model=True)["by_role"] == {"backbone": {
        "no decision": 1, "wrong decision": 2, "wrong tool": 1, "wrong args": 1, "wrong answer": 0}}


def test_reports_and_tables():
    a = with_tasks(mixed_steps(), [0, 0, 0, 1, 1, 2, 2])
    b = with_tasks(mixed_steps(), [0, 0, 0, 1, 1, 2, 2])
    b[1].pred_decision = None
    rep = step_report({"three roles": a, "backbone": b}, {"three roles": False, "backbone": True}, "three roles")
    assert set(rep) == {"metrics", "paired", "mcnemar", "errors"}
    assert list(rep["paired"]) == ["backbone"] and set(rep["mcnemar"]["backbone"]) == {"plan_accuracy", "action_em"}
    table = interval_table(rep["metrics"])
    assert table.splitlines()[0] == "| metric | n (tasks / steps) | three roles | backbone |"
    lo, hi = rep["metrics"]["three roles"]["plan_accuracy"]["lo"], rep["metrics"]["three roles"]["plan_accuracy"]["hi"]
    assert f"| plan accuracy (%) ↑ | 3 / 7 | 57.1 [{100 * lo:.1f}, {100 * hi:.1f}] |" in table
    diffs = difference_table(rep["paired"], rep["mcnemar"], "three roles")
    assert "three roles − backbone | McNemar p |" in diffs.splitlines()[0]
    assert "| plan accuracy (%) ↑ | 3 / 7 | +14.3 [" in diffs and "| argument F1 (%) ↑ | 2 / 4 | " in diffs
    assert diffs.splitlines()[-1].endswith("| — |")  # ROUGE-L: no McNemar test
    both = parsing_table({"strict": rep["metrics"], "lenient": rep["metrics"]})
    assert both.splitlines()[0] == ("| metric | three roles (strict) | three roles (lenient) | backbone (strict) "
                                    "| backbone (lenient) |")
    errors = error_table(rep["errors"])
    assert "| planner: wrong decision | 2 | — |" in errors and "| backbone: no decision | — | 2 |" in errors
    results = {"three roles": [EpisodeResult(True, 3, 0, 0, False, task=0),
                               EpisodeResult(False, 5, 1, 0, False, task=1)],
               "backbone": [EpisodeResult(False, 4, 0, 1, False, task=0),
                            EpisodeResult(False, 2, 0, 0, True, task=1)]}
    ep = episode_report(results, "three roles")
    assert ep["metrics"]["three roles"]["success_rate"]["point"] == 0.5
    assert ep["paired"]["backbone"]["success_rate"]["diff"] == 0.5
    assert ep["mcnemar"]["backbone"]["success_rate"]["b10"] == 1


def test_comparison_chart_with_error_bars(tmp_path):
    steps = with_tasks(mixed_steps(), [0, 0, 0, 1, 1, 2, 2])
    out = comparison_chart({"x": step_metrics(steps)}, tmp_path / "c.png", "bars",
                           intervals={"x": step_intervals(steps)})
    assert out.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- strict vs lenient parsing


def test_lenient_parsing_reads_decisionless_replies_as_calls():
    assert read_plan("Add them.\nNext: caller", "strict") == ("Add them.", "call")
    assert read_plan("I will add the numbers", "strict") == ("I will add the numbers", None)
    assert read_plan("I will add the numbers", "lenient") == ("I will add the numbers", "call")
    assert read_plan("Done.\nNext: give up", "lenient")[1] == "give_up"  # a decision is never overridden
    action = 'I should add.\nAction: add\nAction Input: {"a": 1, "b": 2}'
    assert read_backbone(action, "strict")[1:3] == (None, None)
    _, decision, call, answer = read_backbone(action, "lenient")
    assert decision == "call" and call.name == "add" and call.arguments == {"a": 1, "b": 2} and answer is None
    assert read_backbone("no action here", "lenient")[1:] == (None, None, None)  # no Action line: still nothing
    assert read_backbone("Done.\nNext: conclusion\nIt is 3.", "lenient")[1:] == ("finish", None, "It is 3.")


def _traj():
    gold = Call("add", {"a": 1, "b": 2}, '{"a": 1, "b": 2}')
    return Trajectory("Add 1 and 2.", [ToolSpec("add")], [Step("Add.", "call", gold, "3"),
                                                         Step("Done.", "finish", final_answer="It is 3.")])


def test_strict_and_lenient_scores_come_from_one_generation():
    calls = []

    def fake(role, prompts):
        calls.append((role, len(prompts)))
        return {"planner": ["I will add", "Done.\nNext: conclusion"],
                "caller": ['Action: add\nAction Input: {"a": 1, "b": 2}'], "summarizer": ["It is 3."]}[role]

    replies = static_replies(fake, [_traj()], single_model=False)
    assert calls == [("planner", 2), ("caller", 1), ("summarizer", 1)]  # the caller ran on the decision-less plan
    strict, lenient = (score_replies(replies, [_traj()], False, p) for p in ("strict", "lenient"))
    assert strict[0].pred_decision is None and strict[0].pred_call is None
    assert lenient[0].pred_decision == "call" and lenient[0].pred_call.name == "add"
    assert step_metrics(strict)["plan_accuracy"] == 0.5 and step_metrics(lenient)["plan_accuracy"] == 1.0
    assert [(p.task, p.step) for p in lenient] == [(0, 0), (0, 1)]
    single = [StepReplies(0, 0, 'Action: add\nAction Input: {"a": 1, "b": 2}'), StepReplies(0, 1, "It is 3.")]
    assert [p.pred_decision for p in score_replies(single, [_traj()], True, "strict")] == [None, None]
    assert [p.pred_decision for p in score_replies(single, [_traj()], True, "lenient")] == ["call", None]
