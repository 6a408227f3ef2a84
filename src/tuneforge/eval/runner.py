"""`tuneforge eval`: run task suites over one or several models and put the results side by side.

    results = evaluate_models(["base=default", "tuned=runs/lora"], cfg.suites, Path("eval-out"))
    violations = gate(model_scores(results, "tuned"), model_scores(results, "base"), ["exact_match:0.01"])

A model spec is "default"/"base" (the embedded model), a run directory, an adapter folder, a
(merged) model folder or a hub id, optionally prefixed with "LABEL=". Each model is loaded once and
runs every suite; out_dir gets results.json, results.md (one table: rows suite/metric, columns
models) and results.png (one bar group per suite's headline metric), each written atomically.

The promotion gate compares a candidate with a baseline: a rule "SUITE/METRIC[:tol]" or
"METRIC[:tol]" (every suite that reports METRIC) fails when the candidate is worse than the baseline
by more than tol (absolute; "2%" = relative to the baseline). Lower is better for the metrics named
in LOWER_IS_BETTER; higher for all others. The CLI exits 1 when any rule fails.
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path

from tuneforge.config import SuiteConfig
from tuneforge.errors import UserError
from tuneforge.models.load import SAFE, LoadPolicy
from tuneforge.eval.suites import main_metric, run_suite

EMBEDDED = ("default", "base")
# The one place that says which metrics improve downwards (exact names, then name endings).
LOWER_IS_BETTER = {"perplexity", "loss", "bits_per_byte", "gap", "ece", "brier"}
LOWER_IS_BETTER_SUFFIXES = ("_loss", "_gap", "_perplexity", "_error")


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.endswith(LOWER_IS_BETTER_SUFFIXES)


def _say(msg: str) -> None:
    print(f"[tuneforge] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Models


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """("label", "path") from "label=path"; (None, spec) when no label is given."""
    head, sep, tail = spec.partition("=")
    if sep and head and tail and "/" not in head and "\\" not in head and not Path(spec).exists():
        return head.strip(), tail.strip()
    return None, spec.strip()


def _default_label(path: str) -> str:
    if path in EMBEDDED:
        return "base"
    p = Path(path)
    if p.name in ("adapter", "model") and p.parent.name:
        return p.parent.name
    return p.name or path


def model_labels(specs: list[str]) -> list[tuple[str, str]]:
    """(label, path) per spec; duplicate labels get "#2", "#3"."""
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for spec in specs:
        label, path = parse_model_spec(spec)
        if not path:
            raise UserError(f"--model {spec!r}: empty model path")
        label = label or _default_label(path)
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label}#{seen[label]}", path))
    return out


def load_model_spec(path: str, policy: LoadPolicy = SAFE):
    """(model, tokenizer) for the embedded model, a run/adapter/model folder or a hub id, on the best device."""
    import torch

    from tuneforge.models.load import load_model, load_tokenizer, resolve_model_path
    from tuneforge.models.merge import load_for_inference

    if path in EMBEDDED:
        resolved = resolve_model_path(None)
        model, tok = load_model(resolved, policy=policy), load_tokenizer(resolved, policy)
    elif Path(path).expanduser().exists():
        model, tok = load_for_inference(Path(path).expanduser(), policy=policy)
    else:
        resolved = resolve_model_path(path)  # a hub id (a missing local path fails here, named)
        model, tok = load_model(resolved, policy=policy), load_tokenizer(resolved, policy)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tok


# ---------------------------------------------------------------------------------------------
# Running


def _check_suites(suites: list[SuiteConfig]) -> None:
    if not suites:
        raise UserError("no suites to run: add a `suites:` list to the config (name, kind, data, ...)")
    names = [s.name for s in suites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"suites: names must be unique; repeated: {', '.join(dup)}")


def evaluate_models(models: list[str], suites: list[SuiteConfig], out_dir: Path, seed: int = 0,
                    batch_size: int = 16, policy: LoadPolicy = SAFE) -> dict:
    """Run every suite on every model; write results.json/.md/.png into out_dir; return the results."""
    if not models:
        raise UserError("no model to evaluate: pass --model (default, a run directory, a folder or a hub id)")
    _check_suites(suites)
    labelled = model_labels(models)
    results: dict = {
        "models": [{"label": label, "spec": path} for label, path in labelled],
        "suites": {s.name: {"kind": s.kind, "data": s.data, "shots": s.shots,
                            "metric": s.metric if s.kind == "generate" else None} for s in suites},
        "results": {},
        "seconds": {},
    }
    for label, path in labelled:
        _say(f"loading {label} ({path})")
        model, tok = load_model_spec(path, policy)
        per_suite: dict[str, dict] = {}
        started = time.time()
        for suite in suites:
            t = time.time()
            res = run_suite(model, tok, suite, seed=seed, batch_size=batch_size)
            per_suite[suite.name] = res
            head = main_metric(suite, res)
            value = res.get(head) if head else None
            shown = f"{head} {value:.4f}" if isinstance(value, (int, float)) else "done"
            n = res.get("n", res.get("n_probes", "?"))
            _say(f"{label} / {suite.name}: {shown} (n={n}, {time.time() - t:.1f}s)")
        results["results"][label] = per_suite
        results["seconds"][label] = round(time.time() - started, 1)
        del model, tok
        gc.collect()
    for suite in suites:
        first = results["results"][labelled[0][0]].get(suite.name, {})
        results["suites"][suite.name]["main_metric"] = main_metric(suite, first)
    write_results(results, Path(out_dir))
    return results


def model_scores(results: dict, label: str) -> dict[str, dict]:
    """{suite: {metric: value}} of one model in an evaluate_models result."""
    if label not in results.get("results", {}):
        raise UserError(f"no results for model '{label}'; have: {', '.join(results.get('results', {}))}")
    return results["results"][label]


# ---------------------------------------------------------------------------------------------
# Output


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    if not _is_number(v):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _arrow(metric: str) -> str:
    return "↓" if lower_is_better(metric) else "↑"


SKIP_ROWS = {"n", "tokens", "chance"}  # context, not scores (nor are counts named n_*)


def metric_rows(results: dict) -> list[tuple[str, str]]:
    """(suite, metric) rows of the table: each suite's scalar metrics, its headline metric first."""
    rows: list[tuple[str, str]] = []
    for suite, info in results["suites"].items():
        names: list[str] = []
        for per_suite in results["results"].values():
            for k, v in per_suite.get(suite, {}).items():
                if _is_number(v) and k not in SKIP_ROWS and not k.startswith("n_") and k not in names:
                    names.append(k)
        head = info.get("main_metric")
        if head in names:
            names.remove(head)
            names.insert(0, head)
        rows += [(suite, m) for m in names]
    return rows


def markdown_table(results: dict) -> str:
    labels = list(results["results"])
    lines = ["| suite | metric | " + " | ".join(_cell(lb) for lb in labels) + " |",
             "|---|---|" + "---:|" * len(labels)]
    shown: set[str] = set()
    for suite, metric in metric_rows(results):
        first = next((r[suite] for r in results["results"].values() if suite in r), {})
        n = first.get("n", first.get("n_probes"))
        suite_cell = "" if suite in shown else (f"{suite} (n={n})" if n is not None else suite)
        shown.add(suite)
        cells = [_fmt(results["results"][lb].get(suite, {}).get(metric)) for lb in labels]
        lines.append(f"| {_cell(suite_cell)} | {metric} {_arrow(metric)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(results: dict) -> str:
    labels = ", ".join(f"**{m['label']}** = `{m['spec']}`" for m in results["models"])
    lines = ["# Evaluation", "", f"Models: {labels}", "", markdown_table(results), "![results](results.png)", ""]
    gate_info = results.get("gate")
    if gate_info:
        verdict = "PASSED" if not gate_info["violations"] else "FAILED"
        lines += [f"## Promotion gate: {verdict}", "",
                  f"`{gate_info['candidate']}` against baseline `{gate_info['baseline']}`; rules: "
                  + ", ".join(f"`{r}`" for r in gate_info["rules"]), ""]
        lines += [f"- {v}" for v in gate_info["violations"]] or ["- every rule holds"]
        lines.append("")
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> Path | None:
    """One panel per suite (its headline metric), one bar per model; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["results"])
    panels = [(s, info["main_metric"]) for s, info in results["suites"].items() if info.get("main_metric")]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 2.2 + 1.0 * len(labels)) * len(panels) / 1.4, 3.8),
                             dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (suite, metric) in zip(axes[0], panels):
        values = [results["results"][lb].get(suite, {}).get(metric) for lb in labels]
        heights = [v if _is_number(v) else 0.0 for v in values]
        bars = ax.bar(range(len(labels)), heights, color=[colors[i % len(colors)] for i in range(len(labels))])
        for bar, v in zip(bars, values):
            ax.annotate(_fmt(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{suite}\n{metric} {_arrow(metric)}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(min(0.0, *heights) * 1.15, (max(0.0, *heights) * 1.15) or 1.0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def write_results(results: dict, out_dir: Path) -> None:
    from tuneforge.atomic import write_json
    from tuneforge.atomic import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    plot_results(results, out_dir / "results.png")


# ---------------------------------------------------------------------------------------------
# Promotion gate


def parse_rule(rule: str) -> tuple[str | None, str, float, bool]:
    """(suite or None, metric, tolerance, relative) from "SUITE/METRIC[:tol]" or "METRIC[:tol]"."""
    text = rule.strip()
    tol_text = "0"
    if ":" in text:
        text, tol_text = text.rsplit(":", 1)
    suite, _, metric = text.rpartition("/")
    metric = metric.strip()
    relative = tol_text.strip().endswith("%")
    try:
        tol = float(tol_text.strip().rstrip("%"))
    except ValueError:
        tol = float("nan")
    if not metric or (suite == "" and "/" in text) or not math.isfinite(tol) or tol < 0:
        raise UserError(f"--fail-if-worse {rule!r}: expected SUITE/METRIC[:TOLERANCE] or METRIC[:TOLERANCE] "
                        "with a non-negative tolerance, e.g. qa/exact_match:0.01 or perplexity:2%")
    return (suite.strip() or None), metric, (tol / 100 if relative else tol), relative


def gate(results_new: dict, baseline: dict, rules: list[str]) -> list[str]:
    """Violations (human-readable lines) of the rules by the candidate against the baseline.

    Both inputs map suite -> {metric: value} (model_scores of an evaluate_models result). A rule that
    matches no suite/metric in the baseline is a mistake in the rule: UserError, not a silent pass.
    """
    violations: list[str] = []
    for rule in rules:
        suite_name, metric, tol, relative = parse_rule(rule)
        targets = [suite_name] if suite_name else list(baseline)
        matched = [s for s in targets if _is_number(baseline.get(s, {}).get(metric))]
        if not matched:
            have = sorted({f"{s}/{m}" for s, r in baseline.items() for m, v in r.items() if _is_number(v)})
            raise UserError(f"--fail-if-worse {rule!r}: the baseline has no "
                            f"{f'{suite_name}/' if suite_name else ''}{metric}; available: {', '.join(have)}")
        for s in matched:
            base = float(baseline[s][metric])
            new = results_new.get(s, {}).get(metric)
            if not _is_number(new):
                violations.append(f"{s}/{metric}: missing from the candidate's results (baseline {base:.4f})")
                continue
            allowed = tol * abs(base) if relative else tol
            down = lower_is_better(metric)
            worse_by = (new - base) if down else (base - new)
            if worse_by > allowed + 1e-12:
                tol_text = f"{tol * 100:g}% ({allowed:.4g})" if relative else f"{tol:g}"
                violations.append(
                    f"{s}/{metric}: {new:.4f} vs baseline {base:.4f}: worse by {worse_by:.4f} "
                    f"(tolerance {tol_text}; {'lower' if down else 'higher'} is better)")
    return violations


def evaluate_with_gate(model: str, baseline_model: str, suites: list[SuiteConfig], out_dir: Path,
                       rules: list[str], seed: int = 0, batch_size: int = 16,
                       policy: LoadPolicy = SAFE) -> tuple[dict, list[str]]:
    """Evaluate baseline and candidate side by side, then apply the gate; results.* include the verdict."""
    for rule in rules:
        parse_rule(rule)  # fail on a malformed rule before loading any model
    (base_label, b_spec), (cand_label, c_spec) = (model_labels([spec])[0] for spec in (baseline_model, model))
    if base_label == cand_label:
        base_label, cand_label = "baseline", "candidate"
    results = evaluate_models([f"{base_label}={b_spec}", f"{cand_label}={c_spec}"], suites, out_dir, seed,
                              batch_size, policy)
    violations = gate(model_scores(results, cand_label), model_scores(results, base_label), rules)
    results["gate"] = {"baseline": base_label, "candidate": cand_label, "rules": list(rules),
                       "violations": violations, "passed": not violations}
    write_results(results, Path(out_dir))
    return results, violations


def run_eval_command(config: str | Path, models: list[str], out: str | Path | None = None,
                     baseline: str | None = None, fail_if_worse: list[str] = (), suite_names: list[str] = (),
                     overrides: list[str] = (), policy: LoadPolicy = SAFE) -> int:
    """The whole `tuneforge eval` command; returns the exit code (0, or 1 when the gate fails).

    With a baseline, exactly one --model is the candidate; without one, --fail-if-worse is refused.
    """
    from tuneforge.config import load_config

    cfg = load_config(config, list(overrides))
    suites = list(cfg.suites)
    if "bias" in suite_names and not any(s.name == "bias" for s in suites):
        # `--suite bias` works with any config: the shipped default probe set.
        from tuneforge.config import SuiteConfig

        suites.append(SuiteConfig(name="bias", kind="bias"))
    if suite_names:
        known = [s.name for s in suites]
        unknown = [n for n in suite_names if n not in known]
        if unknown:
            raise UserError(f"--suite {', '.join(unknown)}: no such suite in {config}; have: {', '.join(known)}")
        suites = [s for s in suites if s.name in suite_names]
    _check_suites(suites)
    models = list(models) or ([cfg.model] if cfg.model else ["default"])
    out_dir = Path(out) if out else Path(cfg.output_dir) / "eval"
    if fail_if_worse and not baseline:
        raise UserError("--fail-if-worse needs --baseline MODEL to compare against")
    if baseline:
        if len(models) != 1:
            raise UserError(f"--baseline compares one candidate: pass exactly one --model (got {len(models)})")
        results, violations = evaluate_with_gate(models[0], baseline, suites, out_dir,
                                                 list(fail_if_worse), seed=cfg.seed, policy=policy)
    else:
        results, violations = evaluate_models(models, suites, out_dir, seed=cfg.seed, policy=policy), []
    print(markdown_table(results))
    if baseline and fail_if_worse:
        if violations:
            print("promotion gate FAILED:")
            for v in violations:
                print(f"  {v}")
        else:
            print("promotion gate passed")
    print(f"results: {out_dir / 'results.md'}")
    return 1 if violations else 0


# ---------------------------------------------------------------------------------------------
# lm-evaluation-harness (optional)


def run_lm_eval(model_spec: str, tasks: list[str], out_dir: str | Path, limit: int | None = None,
                policy: LoadPolicy = SAFE) -> dict:
    """Run lm-evaluation-harness tasks on one of our models; writes out_dir/lm_eval.json."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UserError("lm-evaluation-harness is not installed: pip install lm-eval (an optional extra); "
                        "or use tuneforge's own suites (`suites:` in the config)") from None
    if not tasks:
        raise UserError("lm-eval: name at least one task, e.g. hellaswag")
    _, path = parse_model_spec(model_spec)
    model, tok = load_model_spec(path, policy)
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok), tasks=list(tasks), limit=limit)
    summary = {"model": model_spec, "tasks": list(tasks), "limit": limit, "results": (out or {}).get("results", {})}
    from tuneforge.atomic import write_json

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "lm_eval.json", json.loads(json.dumps(summary, default=str)))
    return summary
