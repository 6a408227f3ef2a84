"""Context extension (recipe: long_context): long examples (e.g. `tuneforge data passkey` rows) -> the
target cross-entropy on a model whose RoPE is stretched by `rope_scaling` -> the `passkey` suite, scored on
the same prompts by three models, so that the two changes are measured apart:

- base:      the model as shipped, no scaling (what the user has);
- stretched: the same weights with `rope_scaling` applied, before training (what scaling alone does;
             `eval.stretched: false` leaves it out, saving a third of the scoring);
- tuned:     stretched and trained.

Per prompt length: accuracy with a 95% bootstrap interval over prompts, and tuned minus each of the
other two, paired on the same prompts, with McNemar's test.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from tuneforge.config import Config, SuiteConfig
from tuneforge.docs_block import copy_images, shift_headings, write_block
from tuneforge.errors import UserError
from tuneforge.eval.passkey import run_passkey_suite, scoring_copy, suite_lengths
from tuneforge.eval.statistics import bootstrap_ci, mcnemar, paired_bootstrap_diff
from tuneforge.models.load import load_model
from tuneforge.models.rope import trained_context
from tuneforge.recipes.sft import SFT, sft_data
from tuneforge.report import insert_section, read_section, write_report
from tuneforge.run_dir import PLOTS, RunDir
from tuneforge.train.session import Session

SYSTEMS = ("base", "stretched", "tuned")
WHAT = {"base": "the model as shipped", "stretched": "the same weights with the scaling, untrained",
        "tuned": "stretched and trained"}
PASSKEY_PLOT = "passkey.png"
HEAD = "## Long context"


def passkey_suite(cfg: Config) -> SuiteConfig:
    """The config's first suite of kind passkey: the grid the three models are scored on."""
    suite = next((s for s in cfg.suites if s.kind == "passkey"), None)
    if suite is None:
        raise UserError("suites: recipe long_context scores a `kind: passkey` suite before and after training; add "
                        "suites: [{name: passkey, kind: passkey, context_multiples: [1, 2]}]")
    return suite


class LongContext(SFT):
    name = "long_context"

    def check(self, cfg: Config) -> None:
        if cfg.rope_scaling is None:
            raise UserError("rope_scaling: recipe long_context trains a stretched context; add e.g. "
                            "rope_scaling: {type: yarn, factor: 2}")
        passkey_suite(cfg)

    def run(self, s: Session) -> Path:
        cfg = s.cfg
        suite = passkey_suite(cfg)
        s.load_model()
        data = sft_data(s)
        s.start()
        s.prepare(data.train)
        bf16_cpu = s.amp is not None and s.device.type == "cpu"

        def score(model) -> dict:
            scorer = scoring_copy(model, bf16_cpu)
            try:
                return run_passkey_suite(scorer, s.tokenizer, suite, cfg.seed, cfg.eval.batch_size)
            finally:
                del scorer
                gc.collect()

        def score_before() -> dict:
            out = {}
            if cfg.eval.stretched:  # the session's model before training (an adapter starts as the identity)
                s.log("passkey: scoring the stretched model before training...")
                out["stretched"] = score(s.model)
            s.log("passkey: scoring the base model as shipped (no rope_scaling)...")
            base = load_model(s.model_path, dtype=torch.bfloat16 if bf16_cpu else torch.float32,
                              policy=s.policy).to(s.device)
            out["base"] = score(base)
            del base
            return out

        before, seconds = None, {}
        if cfg.eval.before_after and cfg.eval.base:
            started = time.perf_counter()
            before = s.evaluate_once(score_before, f"passkey: {len(suite_lengths(suite, s.model.config))} lengths x "
                                                   f"{len(suite.depths)} depths x {suite.per_cell} prompts per model")
            seconds["score_before"] = round(time.perf_counter() - started)
        started = time.perf_counter()
        result = s.fit(data.train, data.val)
        if s.is_main:
            s.save_artifact()
        seconds["train"] = round(time.perf_counter() - started)
        summary = s.summary(result) | {
            "train_examples": data.account.train, "val_examples": len(data.val),
            "truncated_examples": data.account.truncated, "dropped_examples": data.account.lost,
            "data": data.account.as_dict()}
        if s.is_main and cfg.eval.before_after:
            s.log("passkey: scoring the tuned model...")
            started = time.perf_counter()
            results = dict(before or {}) | {"tuned": score(s.model)}
            seconds["score_tuned"] = round(time.perf_counter() - started)
            summary["long_context"] = compare_systems(results) | {
                "rope_scaling": cfg.rope_scaling.model_dump(exclude_none=True),
                "trained_context": trained_context(s.model.config),
                "suite": suite.model_dump(include={"name", "lengths", "context_multiples", "depths", "per_cell"}),
                "samples": {name: r.get("samples", []) for name, r in results.items()}, "seconds": seconds}
        return s.finish(summary, write=_write_long_context_report)

    def outputs(self, run: Path) -> dict[str, Path]:
        return super().outputs(run) | {"passkey plot": RunDir(run).plots / PASSKEY_PLOT}


# ---------------------------------------------------------------- statistics

def _by_length(result: dict) -> dict[int, list[bool]]:
    out: dict[int, list[bool]] = {}
    for length, _, right in result["per_prompt"]:
        out.setdefault(int(length), []).append(bool(right))
    return out


def compare_systems(results: dict[str, dict], reference: str = "tuned") -> dict:
    """Per length: each model's accuracy with its 95% bootstrap interval over prompts; `reference` minus
    each other model paired on the same prompts (bootstrap interval, McNemar's test). Every model must
    have been scored on the same suite and seed (the same prompts in the same order)."""
    grids = {name: _by_length(r) for name, r in results.items()}
    cells = {name: [tuple(p[:2]) for p in r["per_prompt"]] for name, r in results.items()}
    if len({tuple(c) for c in cells.values()}) > 1:
        raise ValueError("the models were scored on different passkey prompts; they cannot be paired")
    lengths = sorted(next(iter(grids.values())))
    accuracy = {}
    for name in (n for n in SYSTEMS if n in grids):
        accuracy[name] = {}
        for length in lengths:
            point, lo, hi = bootstrap_ci([float(x) for x in grids[name][length]])
            accuracy[name][str(length)] = {"acc": point, "lo": lo, "hi": hi, "n": len(grids[name][length])}
    differences = {}
    for other in (n for n in SYSTEMS if n in grids and n != reference):
        differences[f"{reference} - {other}"] = {}
        for length in lengths:
            a, b = grids[reference][length], grids[other][length]
            diff, lo, hi = paired_bootstrap_diff([float(x) for x in a], [float(x) for x in b])
            differences[f"{reference} - {other}"][str(length)] = {"diff": diff, "lo": lo, "hi": hi,
                                                                  "mcnemar": mcnemar(a, b)}
    by_depth = {name: {str(length): {f"{depth:g}": sum(bool(p[2]) for p in r["per_prompt"] if p[:2] == [length, depth])
                                     / sum(p[:2] == [length, depth] for p in r["per_prompt"])
                                     for depth in sorted({p[1] for p in r["per_prompt"] if p[0] == length})}
                    for length in lengths} for name, r in results.items() if name in SYSTEMS}
    return {"lengths": lengths, "accuracy": accuracy, "differences": differences, "by_depth": by_depth}


# ---------------------------------------------------------------- report

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def _length(n: int, trained: int | None) -> str:
    return f"{n:,} tokens" + (f" ({round(n / trained, 2):g}x)" if trained else "")


def long_context_lines(lc: dict) -> list[str]:
    rope, trained = lc["rope_scaling"], lc.get("trained_context")
    lengths = lc["lengths"]
    header = " | ".join(_length(n, trained) for n in lengths)
    lines = [HEAD, "",
             f"Pass-key accuracy (%) by prompt length, with 95% bootstrap intervals over prompts; `rope_scaling`: "
             f"{rope['type']} x{rope['factor']:g}. "
             + " ".join(f"**{name}**: {WHAT[name]};" for name in lc["accuracy"])
             + " the same prompts for each" + (f"; the model was trained at {trained:,} tokens (1x)." if trained
                                                 else "."), "",
             f"| model | {header} |",
             "|---|" + "---:|" * len(lengths)]
    for name, per in lc["accuracy"].items():
        cells = [f"{_pct(c['acc'])} [{_pct(c['lo'])}, {_pct(c['hi'])}] (n = {c['n']})" for c in
                 (per[str(n)] for n in lengths)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if lc["differences"]:
        lines += ["", "Differences in points, paired on the same prompts (bootstrap interval; McNemar's "
                      "test, p):", "", f"| comparison | {header} |",
                  "|---|" + "---:|" * len(lengths)]
        for name, per in lc["differences"].items():
            cells = []
            for n in lengths:
                d = per[str(n)]
                cells.append("-" if d["diff"] is None else
                             f"{100 * d['diff']:+.0f} [{100 * d['lo']:+.0f}, {100 * d['hi']:+.0f}], "
                             f"p = {d['mcnemar']['p_value']:.2g}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    depth_rows = [(name, n, per[str(n)]) for name in SYSTEMS if name in lc.get("by_depth", {})
                  for per in [lc["by_depth"][name]] for n in lengths]
    if depth_rows:
        depths = list(depth_rows[0][2])
        lines += ["", "Accuracy (%) by where the key sits (0 = start of the filler, 1 = just before the question):", "",
                  "| model | length | " + " | ".join(f"depth {d}" for d in depths) + " |",
                  "|---|---:|" + "---:|" * len(depths)]
        lines += [f"| {name} | {n:,} | " + " | ".join(_pct(cell.get(d)) for d in depths) + " |"
                  for name, n, cell in depth_rows]
    samples = [(name, s) for name in SYSTEMS for s in lc.get("samples", {}).get(name, [])]
    if samples:
        lines += ["", "Replies (the first two prompts of each length):", "",
                  "| model | length | depth | key | reply |", "|---|---:|---:|---|---|"]
        lines += [f"| {name} | {s['length']:,} | {s['depth']:g} | {s['key']} | "
                  f"{s['prediction'].replace('|', '/') or '(empty)'} |" for name, s in samples]
    return lines + [""]


def plot_passkey(run: Path, lc: dict) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneforge.atomic import atomic_savefig

    lengths = lc["lengths"]
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    shown = len(lc["accuracy"])
    for i, (name, per) in enumerate(lc["accuracy"].items()):
        xs = [j + (i - (shown - 1) / 2) * 0.12 for j in range(len(lengths))]  # side by side, centred on the length
        acc = [100 * per[str(n)]["acc"] for n in lengths]
        err = [[100 * (per[str(n)]["acc"] - per[str(n)]["lo"]) for n in lengths],
               [100 * (per[str(n)]["hi"] - per[str(n)]["acc"]) for n in lengths]]
        ax.errorbar(xs, acc, yerr=err, fmt="o-", capsize=4, label=name)
    ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("pass-key accuracy (%), 95% interval")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend()
    return atomic_savefig(fig, RunDir(run).plots / PASSKEY_PLOT)


def _write_long_context_report(run: Path, summary: dict) -> None:
    path = write_report(run, summary)
    lc = summary.get("long_context")
    if not lc:
        return
    lines = long_context_lines(lc)
    if plot_passkey(run, lc):
        lines += [f"![passkey]({PLOTS}/{PASSKEY_PLOT})", ""]
    insert_section(path, lines)


def publish(run: Path, doc: Path, images: Path, command: str, wall_seconds: float | None = None) -> Path:
    """Put a long_context run's results (report.md's section and chart) into `doc` between its long-context
    results markers (`make long-context-demo`: docs/training.md)."""
    files = RunDir(run)
    body = read_section(run, HEAD, "long_context")
    summary = files.report() or {}
    took = summary.get("long_context", {}).get("seconds", {})
    note = f"{summary.get('steps')} optimizer steps. " + ", ".join(
        f"{what.replace('_', ' ')} {sec / 60:.1f} min" for what, sec in took.items()) + "."
    body = copy_images(body, [files.plots / PASSKEY_PLOT], run.name, images, doc)
    return write_block(doc, "long-context", shift_headings(body, 1), command, wall_seconds, note)
