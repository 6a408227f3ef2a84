"""Metrics for tool-using agents, after the α-UMi paper ("Small LLMs Are Weak Tool Learners").

Step-wise ("static") metrics: at every step the agent is fed the *gold* history and asked for the
next move only, so each step is scored on its own, independent of earlier mistakes:

- plan accuracy: the predicted decision ("call" / "finish" / "give_up") equals the gold one,
  over all steps (an unparseable output, ``pred_decision=None``, counts as wrong);
- action exact match: over gold call steps, the agent called the gold tool (by name);
- hallucination rate: over all steps, the agent called a tool that is not in the task's tools;
- argument F1: over gold call steps, see :func:`argument_f1`;
- answer ROUGE-L: over gold finish steps that have a reference answer, ROUGE-L F of the predicted
  final answer (an absent answer scores as the empty string, i.e. 0).

End-to-end metrics (:func:`episode_metrics`) summarise whole episodes the agent ran on its own.
:func:`comparison_table` and :func:`comparison_chart` put several systems (e.g. "single model"
vs "three roles") side by side.

Statistics (:func:`step_report`, :func:`episode_report`): every metric with a bootstrap interval
over tasks (steps of one task are correlated; see :mod:`tuneforge.eval.statistics`), paired
differences of one system minus the others on the same gold steps with McNemar's tests, and the
failed steps counted against the role that caused them (:func:`step_error`).

Every metric is in 0..1 (or a per-episode count); a metric whose denominator is empty is None,
never 0, so "not measured" is not mistaken for "all wrong".
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tuneforge.agent.trajectory import Call
from tuneforge.eval.metrics import rouge_l
from tuneforge.eval.statistics import bootstrap_ci, mcnemar, mean, paired_bootstrap_diff, ratio_of_sums


@dataclass
class StepPrediction:
    gold_decision: str  # "call" | "finish" | "give_up"
    pred_decision: str | None  # None when the output could not be parsed
    gold_call: Call | None  # on gold call steps
    pred_call: Call | None  # what the agent called at this step (None if it did not call / unparseable)
    tools: list[str]  # the task's tool names
    gold_answer: str | None = None  # on gold finish steps: the reference final answer
    pred_answer: str | None = None  # the predicted final answer on those steps
    task: int | str | None = None  # which task the step belongs to: the bootstrap resamples tasks
    step: int | None = None  # the step's index in its task, to pair two systems' predictions


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    hallucinated_calls: int
    parse_failures: int
    gave_up: bool
    task: int | str | None = None


# --------------------------------------------------------------------------- argument values

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def normalize_value(v):
    """The comparable form of an argument value (used by :func:`argument_f1`).

    - booleans stay booleans (``True`` is not ``1`` and not ``"true"``);
    - numbers compare by value: ints, floats and strings that are plain decimal numbers all become
      floats, so ``3 == 3.0 == "3" == " 3.0 "`` (``"inf"``, ``"nan"``, ``"0x10"`` stay strings);
    - other strings are stripped and lower-cased (``" Paris " == "paris"``);
    - lists / tuples compare element-wise, dicts key-by-key, both with values normalised this way;
    - anything else (None, ...) compares as is.
    """
    if isinstance(v, bool):
        return ("bool", v)  # tagged: in Python True == 1 == 1.0
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if _NUMBER.fullmatch(s):
            return float(s)
        return s.lower()
    if isinstance(v, (list, tuple)):
        return tuple(normalize_value(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted(((str(k), normalize_value(x)) for k, x in v.items()), key=lambda kv: kv[0]))
    return v


def _same_value(a, b) -> bool:
    try:
        return normalize_value(a) == normalize_value(b)
    except TypeError:  # exotic unhashable / incomparable values
        return a == b


def argument_f1(gold: Call, pred: Call | None) -> float:
    """F1 of the predicted call's arguments against the gold call's.

    0 if there is no predicted call, the tool names differ, or either side's arguments could not be
    parsed (``arguments is None``). Otherwise each key scores: present in both with the same value
    (see :func:`normalize_value`; keys themselves compare exactly) 1, present in both with another
    value 0.5, present on one side only 0. Precision = score sum over predicted keys / number of
    predicted keys, recall = score sum over gold keys / number of gold keys, F1 = 2PR / (P + R)
    (0 when P + R == 0). Two empty argument dicts (same tool, no arguments) score 1.0; exactly one
    empty side scores 0.
    """
    if pred is None or pred.name != gold.name:
        return 0.0
    if pred.arguments is None or gold.arguments is None:
        return 0.0
    g, p = gold.arguments, pred.arguments
    if not g and not p:
        return 1.0
    if not g or not p:
        return 0.0
    shared = sum(1.0 if _same_value(g[k], p[k]) else 0.5 for k in p if k in g)
    precision, recall = shared / len(p), shared / len(g)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- step-wise metrics


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


STEP_METRICS = ("plan_accuracy", "action_em", "hallucination_rate", "argument_f1", "rouge_l")


def step_score(metric: str, s: StepPrediction) -> float | None:
    """One step's score on a step-wise metric; None when the step is not in that metric's denominator.

    Every step-wise metric is the mean of these scores, so a metric over any set of tasks is
    (sum of scores) / (number of scored steps): what the task-level bootstrap resamples.
    """
    if metric == "plan_accuracy":
        return float(s.pred_decision == s.gold_decision)
    if metric == "hallucination_rate":
        return float(s.pred_call is not None and s.pred_call.name not in s.tools)
    if metric in ("action_em", "argument_f1"):
        if s.gold_decision != "call":
            return None
        if s.gold_call is None:
            raise ValueError(f"task {s.task} step {s.step}: gold decision is 'call' but it has no gold_call")
        if metric == "action_em":
            return float(s.pred_call is not None and s.pred_call.name == s.gold_call.name)
        return argument_f1(s.gold_call, s.pred_call)
    if metric == "rouge_l":
        if s.gold_decision != "finish" or s.gold_answer is None:
            return None
        return rouge_l(s.pred_answer or "", s.gold_answer)
    raise ValueError(f"unknown step-wise metric {metric!r}; known: {', '.join(STEP_METRICS)}")


def _scores(steps: Sequence[StepPrediction], metric: str) -> list[float]:
    return [v for s in steps if (v := step_score(metric, s)) is not None]


def plan_accuracy(steps: Sequence[StepPrediction]) -> float | None:
    """Share of steps whose predicted decision equals the gold decision (None for no steps)."""
    return _mean(_scores(steps, "plan_accuracy"))


def action_exact_match(steps: Sequence[StepPrediction]) -> float | None:
    """Over gold call steps: share where the agent called the gold tool (None if no call steps)."""
    return _mean(_scores(steps, "action_em"))


def hallucination_rate(steps: Sequence[StepPrediction]) -> float | None:
    """Over all steps: share where the agent called a tool not among the task's tools."""
    return _mean(_scores(steps, "hallucination_rate"))


def mean_argument_f1(steps: Sequence[StepPrediction]) -> float | None:
    """Mean :func:`argument_f1` over gold call steps (None if there are none)."""
    return _mean(_scores(steps, "argument_f1"))


def answer_rouge_l(steps: Sequence[StepPrediction]) -> float | None:
    """Mean ROUGE-L F over gold finish steps with a reference answer (None if there are none)."""
    return _mean(_scores(steps, "rouge_l"))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def step_metrics(steps: Sequence[StepPrediction]) -> dict:
    """All step-wise metrics, rounded to 4 decimals; None where the denominator is empty."""
    steps = list(steps)
    return {
        "steps": len(steps),
        "call_steps": sum(s.gold_decision == "call" for s in steps),
        "finish_steps": sum(s.gold_decision == "finish" for s in steps),
        "plan_accuracy": _r(plan_accuracy(steps)),
        "action_em": _r(action_exact_match(steps)),
        "hallucination_rate": _r(hallucination_rate(steps)),
        "argument_f1": _r(mean_argument_f1(steps)),
        "rouge_l": _r(answer_rouge_l(steps)),
    }


# --------------------------------------------------------------------------- end-to-end metrics


def episode_metrics(results: Sequence[EpisodeResult]) -> dict:
    """Summary of whole episodes, rounded to 4 decimals; all but "episodes" None when there are none."""
    results = list(results)
    return {
        "episodes": len(results),
        "success_rate": _r(_mean(float(r.success) for r in results)),
        "avg_steps": _r(_mean(float(r.steps) for r in results)),
        "hallucinated_calls_per_episode": _r(_mean(float(r.hallucinated_calls) for r in results)),
        "parse_failures_per_episode": _r(_mean(float(r.parse_failures) for r in results)),
        "give_up_rate": _r(_mean(float(r.gave_up) for r in results)),
    }


# --------------------------------------------------------------------------- uncertainty
# Intervals resample tasks, not steps (see tuneforge.eval.statistics): the steps of one task are
# correlated. Paired comparisons score both systems on the same resampled tasks and gold steps.

N_BOOT, SEED, LEVEL = 2000, 0, 0.95
EPISODE_METRICS = {"success_rate": "success", "avg_steps": "steps",
                   "hallucinated_calls_per_episode": "hallucinated_calls",
                   "parse_failures_per_episode": "parse_failures", "give_up_rate": "gave_up"}
MCNEMAR_STEP_METRICS = ("plan_accuracy", "action_em")  # right / wrong per step, so McNemar applies


def _step_keys(steps: Sequence[StepPrediction]) -> list[tuple]:
    """(task, step) per prediction; a missing task id is an error, never a silent step-level bootstrap."""
    keys, seen = [], Counter()
    for s in steps:
        if s.task is None:
            raise ValueError("step predictions need a task id (StepPrediction.task) for task-level statistics")
        index = s.step if s.step is not None else seen[s.task]
        seen[s.task] += 1
        keys.append((s.task, index))
    if len(set(keys)) != len(keys):
        raise ValueError("two step predictions share a (task, step)")
    return keys


def per_task(steps: Sequence[StepPrediction], metric: str) -> dict:
    """task -> (sum of the metric's step scores, number of scored steps), in order of first appearance;
    tasks with no scored step are left out (they are not in the metric's population)."""
    out: dict = {}
    for (task, _), s in zip(_step_keys(steps), steps):
        v = step_score(metric, s)
        if v is not None:
            num, den = out.get(task, (0.0, 0))
            out[task] = (num + v, den + 1)
    return out


def _ci(point, lo, hi, **n) -> dict:
    return {"point": _r(point), "lo": _r(lo), "hi": _r(hi), **n}


def step_intervals(steps: Sequence[StepPrediction], n_boot: int = N_BOOT, seed: int = SEED,
                   level: float = LEVEL) -> dict:
    """metric -> {point, lo, hi, tasks, steps}: each step-wise metric with its bootstrap interval over
    tasks (ratio of sums on every resample, so the point is the usual step-level metric)."""
    out = {}
    for metric in STEP_METRICS:
        pairs = list(per_task(steps, metric).values())
        out[metric] = _ci(*bootstrap_ci(pairs, ratio_of_sums, n_boot, seed, level),
                          tasks=len(pairs), steps=int(sum(d for _, d in pairs)))
    return out


def _aligned(a: Sequence[StepPrediction], b: Sequence[StepPrediction]) -> list[tuple]:
    """(key, a's prediction, b's prediction) for the same gold steps, in a's order."""
    b_of = dict(zip(_step_keys(b), b))
    keys = _step_keys(a)
    if set(keys) != set(b_of):
        raise ValueError("paired comparison needs both systems' predictions on the same gold steps")
    out = []
    for k, s in zip(keys, a):
        if s.gold_decision != b_of[k].gold_decision:
            raise ValueError(f"task {k[0]} step {k[1]}: the two systems were scored on different gold steps")
        out.append((k, s, b_of[k]))
    return out


def paired_step_differences(a: Sequence[StepPrediction], b: Sequence[StepPrediction], n_boot: int = N_BOOT,
                            seed: int = SEED, level: float = LEVEL) -> dict:
    """metric -> {diff, lo, hi, tasks, steps}: a minus b on the same gold steps, interval over tasks."""
    rows = _aligned(a, b)
    out = {}
    for metric in STEP_METRICS:
        sums: dict = {}
        for (task, _), sa, sb in rows:
            va, vb = step_score(metric, sa), step_score(metric, sb)
            if va is not None:  # same gold step, so scored for both or for neither
                na, nb, den = sums.get(task, (0.0, 0.0, 0))
                sums[task] = (na + va, nb + vb, den + 1)
        pa = [(na, d) for na, _, d in sums.values()]
        pb = [(nb, d) for _, nb, d in sums.values()]
        diff, lo, hi = paired_bootstrap_diff(pa, pb, ratio_of_sums, n_boot, seed, level)
        out[metric] = {"diff": _r(diff), "lo": _r(lo), "hi": _r(hi), "tasks": len(pa),
                       "steps": int(sum(d for _, d in pa))}
    return out


def step_mcnemar(a: Sequence[StepPrediction], b: Sequence[StepPrediction]) -> dict:
    """metric -> McNemar's test (see :func:`tuneforge.eval.statistics.mcnemar`) for plan accuracy and
    action EM, paired over the same gold steps (``b10``: steps a got right and b wrong)."""
    rows = _aligned(a, b)
    out = {}
    for metric in MCNEMAR_STEP_METRICS:
        pairs = [(step_score(metric, sa), step_score(metric, sb)) for _, sa, sb in rows]
        pairs = [(va == 1.0, vb == 1.0) for va, vb in pairs if va is not None]
        out[metric] = mcnemar([x for x, _ in pairs], [y for _, y in pairs])
    return out


def _episode_values(results: Sequence[EpisodeResult], metric: str) -> list[float]:
    return [float(getattr(r, EPISODE_METRICS[metric])) for r in results]


def _aligned_episodes(a: Sequence[EpisodeResult], b: Sequence[EpisodeResult]) -> tuple[list, list]:
    if len(a) != len(b) or [r.task for r in a] != [r.task for r in b]:
        raise ValueError("paired comparison needs both systems' episodes on the same tasks, in the same order")
    return list(a), list(b)


def episode_intervals(results: Sequence[EpisodeResult], n_boot: int = N_BOOT, seed: int = SEED,
                      level: float = LEVEL) -> dict:
    """metric -> {point, lo, hi, tasks}: per-episode means with bootstrap intervals (one episode per task)."""
    return {m: _ci(*bootstrap_ci(_episode_values(results, m), mean, n_boot, seed, level), tasks=len(results))
            for m in EPISODE_METRICS}


def paired_episode_differences(a: Sequence[EpisodeResult], b: Sequence[EpisodeResult], n_boot: int = N_BOOT,
                               seed: int = SEED, level: float = LEVEL) -> dict:
    a, b = _aligned_episodes(a, b)
    out = {}
    for m in EPISODE_METRICS:
        diff, lo, hi = paired_bootstrap_diff(_episode_values(a, m), _episode_values(b, m), mean, n_boot, seed, level)
        out[m] = {"diff": _r(diff), "lo": _r(lo), "hi": _r(hi), "tasks": len(a)}
    return out


def episode_mcnemar(a: Sequence[EpisodeResult], b: Sequence[EpisodeResult]) -> dict:
    a, b = _aligned_episodes(a, b)
    return {"success_rate": mcnemar([r.success for r in a], [r.success for r in b])}


# --------------------------------------------------------------------------- which role failed

# ROUGE-L F at or above which a step's final answer counts as right when attributing errors; the
# step-wise ROUGE-L metric itself is not thresholded.
ANSWER_OK = 0.5
ROLE_ERRORS = {  # the error kinds each role can cause, in table order
    "planner": ("no decision", "wrong decision"),
    "caller": ("wrong tool", "wrong args"),
    "summarizer": ("wrong answer",),
    "backbone": ("no decision", "wrong decision", "wrong tool", "wrong args", "wrong answer"),
}


def step_error(s: StepPrediction, single_model: bool) -> tuple[str, str] | None:
    """(role, kind) of the first thing that went wrong at this step, or None for a right step.

    The decision is checked first (the planner's; "no decision" when nothing readable was written),
    then on call steps the tool and then the arguments (the caller's: it wrote them given the
    planner's thought), then on finish steps with a reference the answer, poor below ``ANSWER_OK``
    ROUGE-L (the summarizer's). A single model plays every role, so its errors are the backbone's.
    """
    plan, call, summary = ("backbone",) * 3 if single_model else ("planner", "caller", "summarizer")
    if s.pred_decision != s.gold_decision:
        return plan, "no decision" if s.pred_decision is None else "wrong decision"
    if step_score("action_em", s) == 0.0:
        return call, "wrong tool"
    if s.gold_decision == "call" and argument_f1(s.gold_call, s.pred_call) < 1.0:
        return call, "wrong args"
    answer = step_score("rouge_l", s)
    if answer is not None and answer < ANSWER_OK:
        return summary, "wrong answer"
    return None


def error_breakdown(steps: Sequence[StepPrediction], single_model: bool) -> dict:
    """{"steps", "failed", "by_role": {role: {kind: count}}}: every failed step counted once, against
    the role that caused it (:func:`step_error`); every kind a role can cause is listed, zeros too."""
    roles = ("backbone",) if single_model else ("planner", "caller", "summarizer")
    by_role = {r: dict.fromkeys(ROLE_ERRORS[r], 0) for r in roles}
    failed = 0
    for s in steps:
        if (err := step_error(s, single_model)) is not None:
            by_role[err[0]][err[1]] += 1
            failed += 1
    return {"steps": len(steps), "failed": failed, "by_role": by_role}


def step_report(preds: dict[str, Sequence[StepPrediction]], single_model: dict[str, bool], reference: str,
                n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> dict:
    """Step-wise statistics of several systems on the same gold steps: intervals per system, paired
    differences and McNemar's tests of ``reference`` minus each other system (when ``reference`` is
    among them), and each system's errors by role."""
    others = [s for s in preds if s != reference] if reference in preds else []
    return {
        "metrics": {s: step_intervals(p, n_boot, seed, level) for s, p in preds.items()},
        "paired": {s: paired_step_differences(preds[reference], preds[s], n_boot, seed, level) for s in others},
        "mcnemar": {s: step_mcnemar(preds[reference], preds[s]) for s in others},
        "errors": {s: error_breakdown(p, single_model[s]) for s, p in preds.items()},
    }


def episode_report(results: dict[str, Sequence[EpisodeResult]], reference: str, n_boot: int = N_BOOT,
                   seed: int = SEED, level: float = LEVEL) -> dict:
    """End-to-end statistics: intervals per system, paired differences and McNemar on success."""
    others = [s for s in results if s != reference] if reference in results else []
    return {
        "metrics": {s: episode_intervals(r, n_boot, seed, level) for s, r in results.items()},
        "paired": {s: paired_episode_differences(results[reference], results[s], n_boot, seed, level)
                   for s in others},
        "mcnemar": {s: episode_mcnemar(results[reference], results[s]) for s in others},
    }


# --------------------------------------------------------------------------- comparisons

# metric key -> (label, direction); direction "up" = higher is better, "down" = lower is better,
# None = no better direction (counts). Order here is the row order of tables and charts.
METRIC_INFO: dict[str, tuple[str, str | None]] = {
    "steps": ("steps", None),
    "call_steps": ("call steps", None),
    "finish_steps": ("finish steps", None),
    "plan_accuracy": ("plan accuracy", "up"),
    "action_em": ("action EM", "up"),
    "hallucination_rate": ("hallucination rate", "down"),
    "argument_f1": ("argument F1", "up"),
    "rouge_l": ("answer ROUGE-L", "up"),
    "episodes": ("episodes", None),
    "success_rate": ("success rate", "up"),
    "avg_steps": ("avg steps", "down"),
    "hallucinated_calls_per_episode": ("hallucinated calls / episode", "down"),
    "parse_failures_per_episode": ("parse failures / episode", "down"),
    "give_up_rate": ("give-up rate", "down"),
}
# Metrics in 0..1, shown as percentages.
RATE_METRICS = frozenset(
    {"plan_accuracy", "action_em", "hallucination_rate", "argument_f1", "rouge_l", "success_rate", "give_up_rate"}
)
COUNT_METRICS = frozenset({"steps", "call_steps", "finish_steps", "episodes"})
_ARROWS = {"up": " ↑", "down": " ↓", None: ""}


def metric_label(key: str) -> str:
    """Display label with a better-direction arrow: "plan accuracy ↑", "hallucination rate ↓"."""
    label, direction = METRIC_INFO.get(key, (key, None))
    if key in RATE_METRICS:
        label += " (%)"
    return label + _ARROWS[direction]


def _metric_keys(rows: dict[str, dict]) -> list[str]:
    seen: list[str] = []
    for metrics in rows.values():
        for k in metrics:
            if k not in seen:
                seen.append(k)
    known = [k for k in METRIC_INFO if k in seen]
    return known + [k for k in seen if k not in METRIC_INFO]


def _fmt(key: str, v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if key in RATE_METRICS and isinstance(v, (int, float)):
        return f"{100 * v:.1f}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def comparison_table(rows: dict[str, dict]) -> str:
    """Markdown table: one column per system, one row per metric ("n/a" where None or missing).

    ``rows`` maps a system name to its metrics dict (from :func:`step_metrics` and/or
    :func:`episode_metrics`). Rates are shown as percentages with one decimal; labels carry
    ↑ (higher is better) or ↓ (lower is better).
    """
    if not rows:
        raise ValueError("comparison_table needs at least one system")
    systems = list(rows)
    lines = [
        "| metric | " + " | ".join(_cell(s) for s in systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for key in _metric_keys(rows):
        cells = [_fmt(key, rows[s].get(key)) for s in systems]
        lines.append(f"| {_cell(metric_label(key))} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_interval(key: str, ci: dict | None, value: str = "point", signed: bool = False) -> str:
    """ "77.3 [60.0, 90.1]": rates in % (differences of rates in percentage points), "n/a" when undefined."""
    if not ci or ci.get(value) is None:
        return "n/a"
    scale, spec = (100.0, ".1f") if key in RATE_METRICS else (1.0, ".2f")
    sign = "+" if signed else ""
    point = format(scale * ci[value], sign + spec)
    if ci.get("lo") is None or ci.get("hi") is None:
        return point
    return f"{point} [{format(scale * ci['lo'], spec)}, {format(scale * ci['hi'], spec)}]"


def _fmt_n(ci: dict | None) -> str:
    if not ci:
        return "n/a"
    return f"{ci['tasks']} / {ci['steps']}" if "steps" in ci else str(ci.get("tasks", "n/a"))


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _first(by_system: dict[str, dict], key: str) -> dict | None:
    return next((m[key] for m in by_system.values() if m.get(key)), None)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def interval_table(metrics: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per metric, "point [lo, hi]" per system and n as "tasks / steps" (the same
    gold steps for every system). ``metrics``: system -> metric -> {point, lo, hi, tasks[, steps]}."""
    if not metrics:
        raise ValueError("interval_table needs at least one system")
    systems = list(metrics)
    rows = [[metric_label(k), _fmt_n(_first(metrics, k)), *(_fmt_interval(k, metrics[s].get(k)) for s in systems)]
            for k in _metric_keys(metrics)]
    return _table(["metric", "n (tasks / steps)", *systems], rows)


def difference_table(paired: dict[str, dict[str, dict]], tests: dict[str, dict[str, dict]], reference: str) -> str:
    """Markdown: ``reference`` minus each other system, "diff [lo, hi]" (rates in percentage points),
    with McNemar's p-value where the metric is right/wrong per item ("—" elsewhere)."""
    if not paired:
        raise ValueError("difference_table needs at least one paired comparison")
    others = list(paired)
    header = ["metric", "n (tasks / steps)"]
    for b in others:
        header += [f"{reference} − {b}", "McNemar p"]
    rows = []
    for k in _metric_keys(paired):
        row = [metric_label(k), _fmt_n(_first(paired, k))]
        for b in others:
            test = tests.get(b, {}).get(k)
            row += [_fmt_interval(k, paired[b].get(k), "diff", signed=True), _fmt_p(test and test["p_value"])]
        rows.append(row)
    return _table(header, rows)


def parsing_table(by_parsing: dict[str, dict[str, dict[str, dict]]]) -> str:
    """Markdown: every system under every parsing side by side. ``by_parsing``: parsing -> system ->
    metric -> interval."""
    systems = list(dict.fromkeys(s for by_system in by_parsing.values() for s in by_system))
    # one system's parsings side by side: the difference parsing makes is what this table shows
    columns = [(p, s) for s in systems for p in by_parsing if s in by_parsing[p]]
    if not columns:
        raise ValueError("parsing_table needs at least one system")
    merged = {f"{s} ({p})": by_parsing[p][s] for p, s in columns}
    rows = [[metric_label(k), *(_fmt_interval(k, m.get(k)) for m in merged.values())]
            for k in _metric_keys(merged)]
    return _table(["metric", *merged], rows)


def error_table(errors: dict[str, dict]) -> str:
    """Markdown: failed steps by the role that caused them, one column per breakdown (from
    :func:`error_breakdown`); a role a system does not have is "—"."""
    if not errors:
        raise ValueError("error_table needs at least one breakdown")
    cols = list(errors)
    kinds = []
    for e in errors.values():
        kinds += [(r, k) for r, ks in e["by_role"].items() for k in ks if (r, k) not in kinds]
    rows = [["steps", *(str(errors[c]["steps"]) for c in cols)],
            ["failed steps", *(str(errors[c]["failed"]) for c in cols)]]
    rows += [[f"{r}: {k}", *(str(errors[c]["by_role"].get(r, {}).get(k, "—")) for c in cols)] for r, k in kinds]
    return _table(["", *cols], rows)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def comparison_chart(rows: dict[str, dict], path: str | os.PathLike, title: str,
                     intervals: dict[str, dict[str, dict]] | None = None) -> Path:
    """Grouped bar chart (one group per metric, one bar per system) written atomically as PNG.

    Rates go in one panel in %, other non-count metrics (avg steps, per-episode counts) in a second
    panel when present; bookkeeping counts (steps, episodes) are left out. A missing / None value
    leaves a gap marked "n/a". Parent directories are created; the file is written to a temp file
    beside it, then moved into place with ``os.replace``. ``intervals`` (system -> metric -> {lo,
    hi}) draws error bars where given.
    """
    if not rows:
        raise ValueError("comparison_chart needs at least one system")
    intervals = intervals or {}
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    systems = list(rows)
    # chartable: not a bookkeeping count, numeric for at least one system, numeric or absent elsewhere
    keys = [
        k for k in _metric_keys(rows)
        if k not in COUNT_METRICS
        and any(_is_number(rows[s].get(k)) for s in systems)
        and all(_is_number(rows[s].get(k)) or rows[s].get(k) is None for s in systems)
    ]
    rate_keys = [k for k in keys if k in RATE_METRICS]
    other_keys = [k for k in keys if k not in RATE_METRICS]
    panels = [(ks, pct) for ks, pct in ((rate_keys, True), (other_keys, False)) if ks]
    if not panels:
        raise ValueError("no numeric metrics to chart")

    widths = [max(3.0, 1.2 * len(ks) * max(1, len(systems)) ** 0.5) for ks, _ in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(sum(widths) + 1, 4.5), squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    bar_w = 0.8 / len(systems)
    for ax, (ks, pct) in zip(axes[0], panels):
        scale = 100.0 if pct else 1.0
        top = max(
            [scale * rows[s][k] for s in systems for k in ks if _is_number(rows[s].get(k))]
            + [scale * b["hi"] for s in systems for k in ks
               if _is_number((b := intervals.get(s, {}).get(k) or {}).get("hi"))]  # error bars fit too
            or [1.0]
        )
        for j, system in enumerate(systems):
            xs = [i - 0.4 + bar_w * (j + 0.5) for i in range(len(ks))]
            vals = [rows[system].get(k) for k in ks]
            heights = [scale * v if _is_number(v) else 0.0 for v in vals]
            bars = ax.bar(xs, heights, bar_w, label=system)
            bounds = [intervals.get(system, {}).get(k) or {} for k in ks]
            err = [(h, b.get("lo"), b.get("hi")) for h, b in zip(heights, bounds)]
            if any(lo is not None and hi is not None for _, lo, hi in err):
                # bars without an interval get a zero-length error bar
                yerr = [[max(0.0, h - scale * lo) if lo is not None and hi is not None else 0.0 for h, lo, hi in err],
                        [max(0.0, scale * hi - h) if lo is not None and hi is not None else 0.0 for h, lo, hi in err]]
                ax.errorbar(xs, heights, yerr=yerr, fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
            for x, v, h, bar in zip(xs, vals, heights, bars):
                text = "n/a" if not _is_number(v) else (f"{h:.1f}" if pct else f"{h:.2f}")
                ax.text(x, h + 0.01 * (100.0 if pct else top), text, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(ks)))
        ax.set_xticklabels([metric_label(k).replace(" (%)", "") for k in ks], rotation=20, ha="right", fontsize=8)
        if pct:
            ax.set_ylim(0, 105)
            ax.set_ylabel("%")
        else:
            ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)

    from tuneforge.atomic import atomic_savefig

    return atomic_savefig(fig, path)
