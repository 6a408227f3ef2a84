"""Agent evaluation: step-wise (gold history fed at every step) and end to end on the tool world.

Step-wise, the system is run as it would be at that step: the planner (or backbone) decides; the
caller is asked only when the planner said "call", and the summarizer only when it said "finish",
both given the planner's own thought. So a planner mistake costs the caller's action too, as it
would in a real episode. End to end, the runtime plays whole tasks against the offline tools.

Replies are generated once and read twice: strictly (a reply without a "Next: ..." line has no
decision) and leniently, as the α-UMi reference pipeline does (a planner reply without one is a
call, so the caller is asked for it too; a backbone reply without one but with an "Action:" line is
that call). Every system the run holds is evaluated, and statistics over tasks (intervals, paired
differences against the three roles, McNemar's tests, errors by role) come with every metric.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneforge.agent.roles import PARSINGS, context_segments, fit_to_length, parse_caller, read_backbone, read_plan
from tuneforge.agent.runtime import AgentRuntime, Episode, Generate, write_traces
from tuneforge.agent.trajectory import Call, Trajectory
from tuneforge.atomic import atomic_write_text, write_json
from tuneforge.errors import UserError
from tuneforge.eval.agent_metrics import (ANSWER_OK, LEVEL, N_BOOT, SEED, EpisodeResult, StepPrediction,
                                          comparison_chart, difference_table, episode_metrics, episode_report,
                                          error_table, interval_table, parsing_table, step_metrics, step_report)
from tuneforge.models.load import SAFE, LoadPolicy
from tuneforge.run_dir import RunDir


def load_trajectories(path: str | Path, policy: str = "keep", problems: list | None = None
                      ) -> tuple[list[Trajectory], str]:
    """ToolBench files (conversations or chains) or tool-world files; returns trajectories and a summary
    line. Problems found (file, task, turn, reason) are appended to `problems` when given."""
    from tuneforge.agent.env import read_tasks
    from tuneforge.agent.toolbench import read_toolbench, summary

    path = Path(path)
    if not path.is_file():
        raise UserError(f"trajectory file {path} does not exist")
    head = path.read_text(encoding="utf-8")[:20000]
    if '"conversations"' in head or '"chains"' in head:
        trajectories, report = read_toolbench(path, policy)
        if problems is not None:
            problems += [{"where": p.where, "turn": p.index, "kind": p.kind, "reason": p.reason}
                         for p in report.problems]
        return trajectories, summary(report)
    trajectories = read_tasks(path)
    return trajectories, f"{path}: {len(trajectories)} tool-world tasks"


def _fit(segs, tokenizer, max_length):
    return fit_to_length(segs, tokenizer, max_length) if tokenizer is not None else segs




@dataclass
class StepReplies:
    """What the models wrote at one gold step, before parsing: strict and lenient scores are two
    readings of the same generations."""
    task: int  # index of the trajectory in the list evaluated
    step: int
    plan: str  # the planner's reply, or the backbone's
    call: str | None = None  # the caller's reply: asked whenever the lenient reading of the plan is a call
    answer: str | None = None  # the summarizer's reply: asked when the plan says finish


def static_replies(generate: Generate, trajectories: list[Trajectory], single_model: bool, tokenizer=None,
                   max_length: int = 2048, max_observation_chars: int = 1500) -> list[StepReplies]:
    """One batched generation per role over every scored step of every trajectory given."""
    points = [(k, i) for k, t in enumerate(trajectories) for i, s in enumerate(t.steps) if s.decision is not None]

    def prompt(role, k, i, thought=None):
        t = trajectories[k]
        segs = context_segments(role, t, t.steps[:i], current_thought=thought, notes=t.steps[i].notes,
                                max_observation_chars=max_observation_chars)
        return _fit(segs, tokenizer, max_length)

    role = "backbone" if single_model else "planner"
    replies = [StepReplies(k, i, r) for (k, i), r in zip(points, generate(role, [prompt(role, *p) for p in points]))]
    if single_model:
        return replies
    # The lenient reading sends more steps to the caller than the strict one (decision-less plans);
    # the strict scores ignore those extra caller replies.
    plans = [read_plan(r.plan, "lenient") for r in replies]
    callers = [r for r, (_, d) in zip(replies, plans) if d == "call"]
    finishers = [r for r, (_, d) in zip(replies, plans) if d == "finish"]
    thought = {id(r): t for r, (t, _) in zip(replies, plans)}
    for r, reply in zip(callers, generate("caller", [prompt("caller", r.task, r.step, thought[id(r)])
                                                     for r in callers])):
        r.call = reply
    for r, reply in zip(finishers, generate("summarizer", [prompt("summarizer", r.task, r.step, thought[id(r)])
                                                           for r in finishers])):
        r.answer = reply
    return replies


def score_replies(replies: list[StepReplies], trajectories: list[Trajectory], single_model: bool,
                  parsing: str = "strict") -> list[StepPrediction]:
    """Step predictions under one parsing ("strict" or "lenient"), each with its task id."""
    if parsing not in PARSINGS:
        raise ValueError(f"parsing must be one of {PARSINGS}, not {parsing!r}")
    preds = []
    for r in replies:
        t = trajectories[r.task]
        if single_model:
            _, decision, call, answer = read_backbone(r.plan, parsing)
            preds.append(_prediction(t, r, decision, call if decision == "call" else None,
                                     answer if decision == "finish" else None))
            continue
        _, decision = read_plan(r.plan, parsing)
        call = parse_caller(r.call) if decision == "call" and r.call is not None else None
        answer = r.answer.strip() if decision == "finish" and r.answer is not None else None
        preds.append(_prediction(t, r, decision, call, answer))
    return preds


def static_predictions(generate: Generate, trajectories: list[Trajectory], single_model: bool, tokenizer=None,
                       max_length: int = 2048, max_observation_chars: int = 1500,
                       parsing: str = "strict") -> list[StepPrediction]:
    replies = static_replies(generate, trajectories, single_model, tokenizer, max_length, max_observation_chars)
    return score_replies(replies, trajectories, single_model, parsing)


def _prediction(t: Trajectory, r: StepReplies, decision, call, answer) -> StepPrediction:
    gold = t.steps[r.step]
    return StepPrediction(gold_decision=gold.decision, pred_decision=decision,
                          gold_call=gold.call if gold.decision == "call" else None, pred_call=call,
                          tools=t.tool_names, gold_answer=gold.final_answer if gold.decision == "finish" else None,
                          pred_answer=answer, task=r.task, step=r.step)


def is_world_task(t: Trajectory) -> bool:
    return "gold_answer" in t.meta


def end_to_end(generate: Generate, trajectories: list[Trajectory], single_model: bool, *, tokenizer=None,
               max_length: int = 2048, max_steps: int = 8, max_observation_chars: int = 1500,
               chunk: int = 64) -> tuple[list[Episode], list[EpisodeResult]]:
    """Whole episodes on the tool world, `chunk` tasks in lockstep at a time (AgentRuntime.run); results
    carry the task's index."""
    from tuneforge.agent.env import answers_match, world_registry
    from tuneforge.agent.roles import TaskHeader

    runtime = AgentRuntime(generate, world_registry(), single_model=single_model, max_steps=max_steps,
                           tokenizer=tokenizer, max_length=max_length, max_observation_chars=max_observation_chars)
    episodes = runtime.run([TaskHeader(t.instruction, t.tools) for t in trajectories], chunk=chunk)
    results = []
    for k, (t, ep) in enumerate(zip(trajectories, episodes)):
        gold = t.meta.get("gold_answer")
        success = ep.gave_up if gold is None else (not ep.gave_up and answers_match(ep.final_answer, gold))
        results.append(EpisodeResult(success=success, steps=ep.steps, hallucinated_calls=ep.hallucinated_calls,
                                     parse_failures=ep.parse_failures, gave_up=ep.gave_up, task=k))
    return episodes, results


@dataclass
class SystemOutput:
    """One system on one test file: step predictions per parsing, and episodes (tool world only)."""
    steps: dict[str, list[StepPrediction]]
    episodes: list[EpisodeResult] | None = None


def _split(items: list, sizes: list[int]) -> list[list]:
    out, at = [], 0
    for n in sizes:
        out.append(items[at:at + n])
        at += n
    return out


def evaluate_system(generate: Generate, tests: dict[str, list[Trajectory]], single_model: bool, *,
                    tokenizer=None, max_length: int = 2048, max_steps: int = 8, max_observation_chars: int = 1500,
                    trace_paths: dict[str, Path] | None = None) -> dict[str, SystemOutput]:
    """One system on every test file. All files share each role's generation calls (step-wise) and one
    lockstep run of episodes (end to end), so a role's model is asked as few times as possible."""
    files = list(tests)
    flat = [t for f in files for t in tests[f]]
    replies = static_replies(generate, flat, single_model, tokenizer, max_length, max_observation_chars)
    out, first = {}, 0
    for f in files:
        end = first + len(tests[f])
        # task ids back to indices within the file
        mine = [StepReplies(r.task - first, r.step, r.plan, r.call, r.answer) for r in replies if first <= r.task < end]
        out[f] = SystemOutput({p: score_replies(mine, tests[f], single_model, p) for p in PARSINGS})
        first = end
    world = {f: [t for t in tests[f] if is_world_task(t)] for f in files}
    if any(world.values()):
        episodes, results = end_to_end(generate, [t for f in files for t in world[f]], single_model,
                                       tokenizer=tokenizer, max_length=max_length, max_steps=max_steps,
                                       max_observation_chars=max_observation_chars)
        sizes = [len(world[f]) for f in files]
        for f, eps, res in zip(files, _split(episodes, sizes), _split(results, sizes)):
            if not eps:
                continue
            # task ids within the file's world tasks, so both systems pair up episode by episode
            out[f].episodes = [EpisodeResult(r.success, r.steps, r.hallucinated_calls, r.parse_failures,
                                             r.gave_up, task=k) for k, r in enumerate(res)]
            if trace_paths and f in trace_paths:
                write_traces(eps, trace_paths[f])
    return out


def file_results(outputs: dict[str, SystemOutput], single_model: dict[str, bool], reference: str) -> dict:
    """Everything agent_results.json holds for one test file (see write_results)."""
    by_parsing = {p: {s: o.steps[p] for s, o in outputs.items()} for p in PARSINGS}
    out = {
        "systems": {s: step_metrics(by_parsing["strict"][s]) for s in outputs},
        "step_wise": {p: step_report(by_parsing[p], single_model, reference) for p in PARSINGS},
    }
    episodes = {s: o.episodes for s, o in outputs.items() if o.episodes is not None}
    if episodes:
        for s, results in episodes.items():
            out["systems"][s] |= episode_metrics(results)
        out["end_to_end"] = episode_report(episodes, reference)
    return out


def _with_end_to_end(res: dict, parsing: str, key: str) -> dict:
    """A step-wise section (metrics, paired or mcnemar) per system, with the end-to-end one merged in."""
    merged = {s: dict(v) for s, v in res["step_wise"][parsing][key].items()}
    for s, v in res.get("end_to_end", {}).get(key, {}).items():
        merged.setdefault(s, {}).update(v)
    return merged


INTRO = f"""# Agent evaluation

Step-wise metrics feed the gold history at every step; end-to-end metrics (tool world only) let the
agent run whole tasks against the offline tools.

Every value is `point [lo, hi]`: a {LEVEL:.0%} percentile bootstrap interval over **tasks** ({N_BOOT}
resamples, seed {SEED}): the steps of one task are correlated, so tasks, not steps, are resampled.
n is tasks / steps (or episodes). Rates are in %, their differences in percentage points.

**Parsing.** Strict: a planner or backbone reply without a `Next: ...` decision line counts as no
decision (wrong). Lenient (the α-UMi reference pipeline): a planner reply without a decision line is
a call and the caller runs; a backbone reply without one but with an `Action:` line is that call.
Both readings score the same generations. End-to-end episodes use the runtime's (strict) parsing.
"""

NO_DIFFERENCE = (f"A difference whose {LEVEL:.0%} interval contains 0 is **no difference**: the data cannot tell "
                 "the two systems apart on that metric. McNemar's test is paired over the same gold steps "
                 "(episodes, for success): exact binomial below 25 discordant pairs, chi-square with continuity "
                 "correction from 25 on.")


def results_markdown(results: dict, reference: str, chart_of: dict[str, str] | None = None) -> str:
    """agent.md: per test file, the metrics with intervals, the paired differences, strict vs lenient
    parsing and the failed steps by role."""
    lines = [INTRO]
    for name, res in results.items():
        stepwise = res["step_wise"]
        strict = stepwise["strict"]
        some = next(iter(strict["metrics"].values()))["plan_accuracy"]
        episodes = next(iter(res.get("end_to_end", {}).get("metrics", {}).values()), {}).get("success_rate")
        lines += [f"## {name}", "",
                  f"{some['tasks']} tasks, {some['steps']} scored steps"
                  + (f", {episodes['tasks']} episodes." if episodes else "."), "",
                  "### Metrics (strict parsing)", "", interval_table(_with_end_to_end(res, "strict", "metrics"))]
        for parsing in PARSINGS:
            paired = _with_end_to_end(res, parsing, "paired")
            if paired:
                lines += [f"### {reference.capitalize()} minus each baseline ({parsing} parsing)", "",
                          difference_table(paired, _with_end_to_end(res, parsing, "mcnemar"), reference)]
        if any(_with_end_to_end(res, p, "paired") for p in PARSINGS):
            lines += [NO_DIFFERENCE, ""]
        lines += ["### Strict vs lenient parsing (step-wise)", "",
                  parsing_table({p: stepwise[p]["metrics"] for p in PARSINGS}),
                  f"### Failed steps by role (an answer is poor below ROUGE-L {ANSWER_OK})", "",
                  error_table({f"{s} ({p})": stepwise[p]["errors"][s] for s in strict["errors"] for p in PARSINGS})]
        if chart_of and name in chart_of:
            lines += [f"![{Path(name).stem}]({chart_of[name]})", ""]
    return "\n".join(lines)


def write_results(results: dict, run: Path, reference: str = "three roles") -> Path:
    """agent_results.json, agent.md and a chart per test file (error bars: the intervals).

    agent_results.json: test file -> {
      "systems": system -> point metrics (strict parsing; step-wise and end-to-end, as before),
      "step_wise": {"strict" | "lenient": {"metrics": system -> metric -> {point, lo, hi, tasks, steps},
                    "paired": baseline -> metric -> {diff, lo, hi, tasks, steps}  (reference minus baseline),
                    "mcnemar": baseline -> {plan_accuracy, action_em} -> {n, b01, b10, method, statistic, p_value},
                    "errors": system -> {steps, failed, by_role: role -> kind -> count}}},
      "end_to_end": {"metrics", "paired", "mcnemar" (success_rate)}  (tool-world files only)}
    """
    files = RunDir(run)
    write_json(files.agent_results, results)
    charts = {}
    for name, res in results.items():
        slug = Path(name).stem
        comparison_chart(res["systems"], files.plots / f"agent-{slug}.png", f"{slug}: " + " vs ".join(res["systems"]),
                         intervals=_with_end_to_end(res, "strict", "metrics"))
        charts[name] = f"plots/agent-{slug}.png"
    path = files.agent_md
    atomic_write_text(path, results_markdown(results, reference, charts))
    return path


def _newest_write(folder: Path) -> int:
    return max((f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()), default=0)


def evaluation_key(run: Path, layout: dict, test_files: list, *, max_tasks, max_steps: int, max_new_tokens: int,
                   max_length: int, max_observation_chars: int) -> dict:
    """What a finished system's results depend on: the settings, the layout, and when every weight
    folder was last written (retraining invalidates them)."""
    folders = [layout["base"], *layout["roles"].values(), *(layout.get("baselines") or {}).values()]
    return {"tests": [str(f) for f in test_files], "max_tasks": max_tasks, "max_steps": max_steps,
            "max_new_tokens": max_new_tokens, "max_length": max_length,
            "max_observation_chars": max_observation_chars, "layout": layout,
            "written": {f: _newest_write(run / f) for f in folders if (run / f).is_dir()}}


def saved_part_path(run: Path, system: str) -> Path:
    return RunDir(run).eval_parts / f"{system.replace(' ', '-')}.json"


def saved_outputs(run: Path, system: str, key: dict) -> dict[str, SystemOutput] | None:
    """A system's outputs kept by an earlier evaluation of this run with the same key, or None."""
    return _load_part(saved_part_path(run, system), key)


def _save_part(path: Path, key: dict, output: dict[str, SystemOutput]) -> None:
    write_json(path, {"key": key, "files": {
        f: {"steps": {p: [asdict(s) for s in preds] for p, preds in o.steps.items()},
            "episodes": [asdict(e) for e in o.episodes] if o.episodes is not None else None}
        for f, o in output.items()}})


def _load_part(path: Path, key: dict) -> dict[str, SystemOutput] | None:
    """A system's outputs saved by an earlier evaluation with the same key, or None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != json.loads(json.dumps(key)):  # compared as JSON holds it
        return None

    def prediction(d: dict) -> StepPrediction:
        return StepPrediction(**(d | {k: Call(**d[k]) if d[k] else None for k in ("gold_call", "pred_call")}))

    return {f: SystemOutput({p: [prediction(x) for x in preds] for p, preds in o["steps"].items()},
                            [EpisodeResult(**e) for e in o["episodes"]] if o["episodes"] is not None else None)
            for f, o in data["files"].items()}


def evaluate_run(run: Path, test_files: list[str], *, max_tasks: int | None = 100, max_steps: int = 8,
                 max_new_tokens: int = 96, max_length: int = 2048, max_observation_chars: int = 1500,
                 single: bool = True, roles: bool = True, log=print, policy: LoadPolicy = SAFE) -> dict:
    """Evaluate every system a trained agent run holds (the three roles, each baseline; `single` /
    `roles` False leaves the baselines / the roles out) on each test file; writes agent.md and JSON."""
    # Loading models pulls in torch and transformers: imported here so reading trajectory files
    # (`agent inspect`) stays light.
    from tuneforge.agent.models import THREE_ROLES, RoleModels, read_agent_layout, systems

    run = Path(run)
    layout = read_agent_layout(run)
    tests = {}
    for f in test_files:
        trajectories, summary = load_trajectories(f, "keep")
        tests[f] = trajectories[:max_tasks] if max_tasks else trajectories
        log(f"{summary}; evaluating on {len(tests[f])} tasks")
    wanted = [s for s in systems(layout) if (s == THREE_ROLES and roles) or (s != THREE_ROLES and single)]
    outputs: dict[str, dict[str, SystemOutput]] = {}
    single_model = {}
    key = evaluation_key(run, layout, test_files, max_tasks=max_tasks, max_steps=max_steps,
                         max_new_tokens=max_new_tokens, max_length=max_length,
                         max_observation_chars=max_observation_chars)
    for system in wanted:
        # Each system's results are kept as it finishes: an evaluation stopped part way (hours on a CPU)
        # restarts at the first system not yet done.
        part = saved_part_path(run, system)
        single_model[system] = system != THREE_ROLES
        saved = _load_part(part, key)
        if saved is not None:
            log(f"{system}: evaluated before with the same weights and settings ({part}); reused")
            outputs[system] = saved
            continue
        generate = RoleModels(run, system=system, max_new_tokens=max_new_tokens, policy=policy)
        log(f"{system} on {', '.join(tests)}...")
        traces = {f: RunDir(run).traces / f"{Path(f).stem}-{system.replace(' ', '-')}.jsonl" for f in tests}
        outputs[system] = evaluate_system(generate, tests, generate.single_model, tokenizer=generate.tokenizer,
                                          max_length=max_length, max_steps=max_steps,
                                          max_observation_chars=max_observation_chars, trace_paths=traces)
        _save_part(part, key, outputs[system])
        del generate
    results = {f: file_results({s: outputs[s][f] for s in wanted}, single_model, THREE_ROLES) for f in tests}
    path = write_results(results, run, THREE_ROLES)
    log(f"results: {path}")
    return results
