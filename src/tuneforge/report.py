"""Run report: the loss-curve PNG and the Markdown/JSON summary with before/after metrics."""

from __future__ import annotations

from pathlib import Path

from tuneforge.atomic import atomic_savefig, atomic_write_text
from tuneforge.data.account import DataAccount
from tuneforge.errors import UserError
from tuneforge.run_dir import LOSS_PLOT, PLOTS, RunDir
from tuneforge.atomic import write_json


def plot_loss(run: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    rows = RunDir(run).metrics()
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per target token")
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    ax.legend()
    return atomic_savefig(fig, RunDir(run).loss_plot)


REWARD_PLOT = "reward.png"


def plot_reward(run: Path) -> Path | None:
    """plots/reward.png: the mean reward of each step's sampled completions, +- their standard deviation
    (recipe rl's metrics.jsonl `reward_mean`, `reward_std`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in RunDir(run).metrics() if "reward_mean" in r]
    if not rows:
        return None
    steps, mean = [r["step"] for r in rows], [r["reward_mean"] for r in rows]
    std = [r.get("reward_std", 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2,
                    label="+- std over the step's completions")
    ax.plot(steps, mean, linewidth=1.2, label="mean reward of the step's completions")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    ax.legend()
    return atomic_savefig(fig, RunDir(run).plots / REWARD_PLOT)


def write_report(run: Path, summary: dict) -> Path:
    write_json(RunDir(run).report_json, summary)
    lines = [f"# Run report: {run.name}", ""]
    for key in ("model", "method", "trainable_params", "total_params", "steps", "wall_time_s",
                "train_examples", "val_examples", "truncated_examples", "dropped_examples", "final_train_loss",
                "best_val_loss", "stopped_early", "train_tokens_per_s", "peak_memory_gb", "artifact_mb"):
        if key in summary:
            lines.append(f"- **{key}**: {summary[key]}")
        if key == "dropped_examples" and "data" in summary:  # where every record read went (data/account.py)
            lines.append(f"- **data**: {DataAccount.from_dict(summary['data']).line()}")
    ev = summary.get("evaluation")
    if ev:
        lines += ["", f"## Before / after ({ev['metric']}, {ev['examples']} held-out examples)", ""]
        lines += before_after_table(ev)
        if ev.get("samples"):
            lines += ["", "### Samples", "", "| prompt | reference | base | tuned |", "|---|---|---|---|"]
            for s in ev["samples"]:
                cells = [s[k].replace("|", "\\|").replace("\n", " ")[:80] for k in ("prompt", "reference", "base", "tuned")]
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![loss]({PLOTS}/{LOSS_PLOT})", ""]
    path = RunDir(run).report_md
    atomic_write_text(path, "\n".join(lines))
    return path


def _interval(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""


def before_after_table(ev: dict) -> list[str]:
    """Scores with their 95% bootstrap intervals over the items, and the paired difference (sft's
    eval/before_after.compare); a run scored without them shows the bare scores."""
    base = f"{ev['before']:.4f}" if ev["before"] is not None else "(not scored)"
    lines = [f"| model | {ev['metric']} | 95% interval |", "|---|---|---|",
             f"| base | {base} | {_interval(ev.get('before_ci'))} |",
             f"| tuned | {ev['after']:.4f} | {_interval(ev.get('after_ci'))} |"]
    diff = ev.get("difference")
    if diff and diff[0] is not None:
        lines += ["", f"Tuned minus base, paired over the same {ev.get('n', ev['examples'])} items: "
                      f"{diff[0]:+.4f} {_interval(diff[1:])} (bootstrap, 2,000 resamples)"
                  + (f"; McNemar p = {ev['mcnemar']['p_value']:.2g} ({ev['mcnemar']['b10']} items fixed, "
                     f"{ev['mcnemar']['b01']} broken)" if ev.get("mcnemar") else "") + "."]
    return lines


def insert_section(path: Path, lines: list[str]) -> None:
    """Put a recipe's own section into report.md just before the loss plot (or at the end)."""
    from tuneforge.atomic import atomic_write_text

    text = path.read_text()
    marker = "![loss]"
    at = text.index(marker) if marker in text else len(text)
    atomic_write_text(path, text[:at] + "\n".join(lines) + "\n" + text[at:])


def read_section(run: Path, head: str, kind: str) -> str:
    """The body of a recipe's own report.md section (what `insert_section` put there), up to the next
    section or the loss plot; refused in one line when the run has none."""
    path = RunDir(run).report_md
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if head not in text:
        raise UserError(f"{path} has no '{head}' section: is {run} a finished {kind} run?")
    body = text[text.index(head) + len(head):]
    for end in ("\n## ", "![loss]"):  # the next section, or the loss plot report.md puts after this one
        body = body[:body.index(end)] if end in body else body
    return body
