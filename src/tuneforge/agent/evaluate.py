"""Agent evaluation: step-wise (gold history fed at every step) and end to end on the tool world.

Step-wise, the system is run as it would be at that step: the planner (or backbone) decides; the
caller is asked only when the planner said "call", and the summarizer only when it said "finish",
both given the planner's own thought. So a planner mistake costs the caller's action too, as it
would in a real episode. End to end, the runtime plays whole tasks against the offline tools.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.agent.roles import context_segments, fit_to_length, parse_backbone, parse_caller, parse_planner
from tuneforge.agent.runtime import AgentRuntime, Episode, Generate
from tuneforge.agent.trajectory import Trajectory
from tuneforge.errors import UserError
from tuneforge.models.load import SAFE, LoadPolicy
from tuneforge.run_dir import RunDir
from tuneforge.atomic import atomic_write_text, write_json
from tuneforge.eval.agent_metrics import EpisodeResult, StepPrediction, episode_metrics, step_metrics


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


def static_predictions(generate: Generate, trajectories: list[Trajectory], single_model: bool, tokenizer=None,
                       max_length: int = 2048, max_observation_chars: int = 1500) -> list[StepPrediction]:
    points = [(t, i) for t in trajectories for i, s in enumerate(t.steps) if s.decision is not None]

    def prompt(role, t, i, thought=None):
        segs = context_segments(role, t, t.steps[:i], current_thought=thought, notes=t.steps[i].notes,
                                max_observation_chars=max_observation_chars)
        return _fit(segs, tokenizer, max_length)

    preds = []
    if single_model:
        replies = generate("backbone", [prompt("backbone", t, i) for t, i in points])
        for (t, i), reply in zip(points, replies):
            _, decision, call, answer = parse_backbone(reply)
            preds.append(_prediction(t, i, decision, call if decision == "call" else None,
                                     answer if decision == "finish" else None))
        return preds
    plans = [parse_planner(r) for r in generate("planner", [prompt("planner", t, i) for t, i in points])]
    callers = [k for k, (_, d) in enumerate(plans) if d == "call"]
    finishers = [k for k, (_, d) in enumerate(plans) if d == "finish"]
    calls = generate("caller", [prompt("caller", *points[k], plans[k][0]) for k in callers])
    answers = generate("summarizer", [prompt("summarizer", *points[k], plans[k][0]) for k in finishers])
    call_of = {k: parse_caller(r) for k, r in zip(callers, calls)}
    answer_of = {k: r.strip() for k, r in zip(finishers, answers)}
    for k, ((t, i), (_, decision)) in enumerate(zip(points, plans)):
        preds.append(_prediction(t, i, decision, call_of.get(k), answer_of.get(k)))
    return preds


def _prediction(t: Trajectory, i: int, decision, call, answer) -> StepPrediction:
    gold = t.steps[i]
    return StepPrediction(gold_decision=gold.decision, pred_decision=decision,
                          gold_call=gold.call if gold.decision == "call" else None, pred_call=call,
                          tools=t.tool_names, gold_answer=gold.final_answer if gold.decision == "finish" else None,
                          pred_answer=answer)


def is_world_task(t: Trajectory) -> bool:
    return "gold_answer" in t.meta


def end_to_end(generate: Generate, trajectories: list[Trajectory], single_model: bool, *, tokenizer=None,
               max_length: int = 2048, max_steps: int = 8, max_observation_chars: int = 1500
               ) -> tuple[list[Episode], list[EpisodeResult]]:
    from tuneforge.agent.env import answers_match, world_registry
    from tuneforge.agent.roles import TaskHeader

    runtime = AgentRuntime(generate, world_registry(), single_model=single_model, max_steps=max_steps,
                           tokenizer=tokenizer, max_length=max_length, max_observation_chars=max_observation_chars)
    episodes = runtime.run([TaskHeader(t.instruction, t.tools) for t in trajectories])
    results = []
    for t, ep in zip(trajectories, episodes):
        gold = t.meta.get("gold_answer")
        success = ep.gave_up if gold is None else (not ep.gave_up and answers_match(ep.final_answer, gold))
        results.append(EpisodeResult(success=success, steps=ep.steps, hallucinated_calls=ep.hallucinated_calls,
                                     parse_failures=ep.parse_failures, gave_up=ep.gave_up))
    return episodes, results


def evaluate_system(generate: Generate, trajectories: list[Trajectory], single_model: bool, *, tokenizer=None,
                    max_length: int = 2048, max_steps: int = 8, max_observation_chars: int = 1500,
                    trace_path: Path | None = None) -> dict:
    """Step-wise metrics, plus end-to-end ones when the tasks come from the tool world."""
    preds = static_predictions(generate, trajectories, single_model, tokenizer, max_length, max_observation_chars)
    out = step_metrics(preds)
    world = [t for t in trajectories if is_world_task(t)]
    if world:
        episodes, results = end_to_end(generate, world, single_model, tokenizer=tokenizer, max_length=max_length,
                                       max_steps=max_steps, max_observation_chars=max_observation_chars)
        out |= episode_metrics(results)
        if trace_path is not None:
            from tuneforge.agent.runtime import write_traces

            write_traces(episodes, trace_path)
    return out


def write_results(results: dict, run: Path) -> Path:
    """agent_results.json, agent.md (one table per test file) and a chart per test file."""
    from tuneforge.eval.agent_metrics import comparison_chart, comparison_table

    files = RunDir(run)
    write_json(files.agent_results, results)
    lines = ["# Agent evaluation", "",
             "Step-wise metrics feed the gold history at every step; end-to-end metrics (tool world only) "
             "let the agent run whole tasks against the offline tools.", ""]
    for name, rows in results.items():
        slug = Path(name).stem
        comparison_chart(rows, files.plots / f"agent-{slug}.png", f"{slug}: single model vs three roles")
        lines += [f"## {name}", "", comparison_table(rows), "", f"![{slug}](plots/agent-{slug}.png)", ""]
    path = files.agent_md
    atomic_write_text(path, "\n".join(lines))
    return path



SYSTEMS = {"single model": True, "three roles": False}


def evaluate_run(run: Path, test_files: list[str], *, max_tasks: int | None = 100, max_steps: int = 8,
                 max_new_tokens: int = 96, max_length: int = 2048, max_observation_chars: int = 1500,
                 single: bool = True, roles: bool = True, log=print, policy: LoadPolicy = SAFE) -> dict:
    """Evaluate a trained agent run (both systems it holds) on each test file; writes agent.md and JSON."""
    from tuneforge.agent.models import RoleModels, read_agent_layout

    run = Path(run)
    layout = read_agent_layout(run)
    tests = {}
    for f in test_files:
        trajectories, summary = load_trajectories(f, "keep")
        tests[f] = trajectories[:max_tasks] if max_tasks else trajectories
        log(f"{summary}; evaluating on {len(tests[f])} tasks")
    wanted = {name: is_single for name, is_single in SYSTEMS.items()
              if (single and is_single and layout.get("single")) or (roles and not is_single)}
    results: dict[str, dict] = {f: {} for f in tests}
    for system, is_single in wanted.items():
        generate = RoleModels(run, single_model=is_single, max_new_tokens=max_new_tokens, policy=policy)
        for f, trajectories in tests.items():
            log(f"{system} on {f}...")
            trace = RunDir(run).traces / f"{Path(f).stem}-{system.replace(' ', '-')}.jsonl"
            results[f][system] = evaluate_system(generate, trajectories, is_single, tokenizer=generate.tokenizer,
                                                 max_length=max_length, max_steps=max_steps,
                                                 max_observation_chars=max_observation_chars, trace_path=trace)
        del generate
    path = write_results(results, run)
    log(f"results: {path}")
    return results
