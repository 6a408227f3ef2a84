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

Every metric is in 0..1 (or a per-episode count); a metric whose denominator is empty is None,
never 0, so "not measured" is not mistaken for "all wrong".
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tuneforge.agent.trajectory import Call
from tuneforge.eval.metrics import rouge_l


@dataclass
class StepPrediction:
    gold_decision: str  # "call" | "finish" | "give_up"
    pred_decision: str | None  # None when the output could not be parsed
    gold_call: Call | None  # on gold call steps
    pred_call: Call | None  # what the agent called at this step (None if it did not call / unparseable)
    tools: list[str]  # the task's tool names
    gold_answer: str | None = None  # on gold finish steps: the reference final answer
    pred_answer: str | None = None  # the predicted final answer on those steps


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    hallucinated_calls: int
    parse_failures: int
    gave_up: bool


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


def _call_steps(steps: Sequence[StepPrediction]) -> list[StepPrediction]:
    out = []
    for i, s in enumerate(steps):
        if s.gold_decision == "call":
            if s.gold_call is None:
                raise ValueError(f"step {i}: gold decision is 'call' but it has no gold_call")
            out.append(s)
    return out


def plan_accuracy(steps: Sequence[StepPrediction]) -> float | None:
    """Share of steps whose predicted decision equals the gold decision (None for no steps)."""
    return _mean(float(s.pred_decision == s.gold_decision) for s in steps)


def action_exact_match(steps: Sequence[StepPrediction]) -> float | None:
    """Over gold call steps: share where the agent called the gold tool (None if no call steps)."""
    return _mean(
        float(s.pred_call is not None and s.pred_call.name == s.gold_call.name) for s in _call_steps(steps)
    )


def hallucination_rate(steps: Sequence[StepPrediction]) -> float | None:
    """Over all steps: share where the agent called a tool not among the task's tools."""
    return _mean(float(s.pred_call is not None and s.pred_call.name not in s.tools) for s in steps)


def mean_argument_f1(steps: Sequence[StepPrediction]) -> float | None:
    """Mean :func:`argument_f1` over gold call steps (None if there are none)."""
    return _mean(argument_f1(s.gold_call, s.pred_call) for s in _call_steps(steps))


def answer_rouge_l(steps: Sequence[StepPrediction]) -> float | None:
    """Mean ROUGE-L F over gold finish steps with a reference answer (None if there are none)."""
    return _mean(
        rouge_l(s.pred_answer or "", s.gold_answer)
        for s in steps
        if s.gold_decision == "finish" and s.gold_answer is not None
    )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def step_metrics(steps: Sequence[StepPrediction]) -> dict:
    """All step-wise metrics, rounded to 4 decimals; None where the denominator is empty."""
    steps = list(steps)
    return {
        "steps": len(steps),
        "call_steps": len(_call_steps(steps)),
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


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def comparison_chart(rows: dict[str, dict], path: str | os.PathLike, title: str) -> Path:
    """Grouped bar chart (one group per metric, one bar per system) written atomically as PNG.

    Rates go in one panel in %, other non-count metrics (avg steps, per-episode counts) in a second
    panel when present; bookkeeping counts (steps, episodes) are left out. A missing / None value
    leaves a gap marked "n/a". Parent directories are created; the file is written to a temp file
    beside it, then moved into place with ``os.replace``.
    """
    if not rows:
        raise ValueError("comparison_chart needs at least one system")
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
            [scale * rows[s][k] for s in systems for k in ks if _is_number(rows[s].get(k))] or [1.0]
        )
        for j, system in enumerate(systems):
            xs = [i - 0.4 + bar_w * (j + 0.5) for i in range(len(ks))]
            vals = [rows[system].get(k) for k in ks]
            heights = [scale * v if _is_number(v) else 0.0 for v in vals]
            bars = ax.bar(xs, heights, bar_w, label=system)
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
