"""One role of the three-role agent played by another system's model: does that role lose the comparison?

The three roles are evaluated as trained, and again with one role's replies written by a baseline's
model. The baseline learned whole steps, so it is asked in that format (agent/roles.py,
whole_step_prompt): the backbone's role line, and for the caller or the summarizer the step's plan
left open, so that it writes the rest of its own step. (Asked in the role's format, the plan closed
and a new turn opened, it starts a new step and writes no call: 4.5 parse failures per episode, a
first run of this experiment, 2026-12-03.) Everything else is the same, so the paired differences
isolate what that role's own fine-tuning does. Step-wise and end to end on the run's test files,
with the intervals and McNemar's tests of `tuneforge agent eval`.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/agent_swap_role.py runs/agent --role caller \
        --system "backbone trained on" data/generated/toolworld/test_id.json data/generated/toolworld/test_ood.json

Writes RUN/swap-ROLE.md and RUN/swap-ROLE.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tuneforge.agent.evaluate import (evaluate_system, evaluation_key, file_results, load_trajectories,
                                      results_markdown, saved_outputs)
from tuneforge.agent.models import THREE_ROLES, RoleModels, read_agent_layout
from tuneforge.agent.roles import CONTINUES_THE_PLAN, whole_step_prompt
from tuneforge.atomic import atomic_write_text, write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("tests", nargs="+")
    ap.add_argument("--role", required=True, choices=["planner", "caller", "summarizer"])
    ap.add_argument("--system", default="backbone trained on", help="the baseline whose model plays the role")
    ap.add_argument("--max-tasks", type=int, default=80)
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--max-observation-chars", type=int, default=1500)
    args = ap.parse_args()

    tests = {}
    for f in args.tests:
        trajectories, _ = load_trajectories(f, "keep")
        tests[f] = trajectories[: args.max_tasks]
    roles = RoleModels(args.run, THREE_ROLES, max_new_tokens=args.max_new_tokens)
    other = RoleModels(args.run, args.system, max_new_tokens=args.max_new_tokens)

    def swapped(role, prompts):
        if role != args.role:
            return roles(role, prompts)
        # The baseline writes the role's part in the format it learned, whole steps: the backbone's role
        # line, and the caller's or summarizer's part as the rest of the step after the plan.
        replies = other(role, [whole_step_prompt(role, p) for p in prompts],
                        continue_final=role in CONTINUES_THE_PLAN)
        return [r.strip() for r in replies]

    name = f"three roles, {args.role} by {args.system}"
    kwargs = dict(tokenizer=roles.tokenizer, max_length=args.max_length, max_steps=args.max_steps,
                  max_observation_chars=args.max_observation_chars)
    # The three roles as the run's own evaluation scored them, when it ran with these settings (the same
    # weights, test files and limits): the comparison then costs one evaluation, not two.
    key = evaluation_key(args.run, read_agent_layout(args.run), args.tests, max_tasks=args.max_tasks,
                         max_steps=args.max_steps, max_new_tokens=args.max_new_tokens, max_length=args.max_length,
                         max_observation_chars=args.max_observation_chars)
    reference = saved_outputs(args.run, THREE_ROLES, key)
    print("three roles: " + ("the run's saved evaluation, same settings" if reference else "evaluating"))
    outputs = {THREE_ROLES: reference or evaluate_system(roles, tests, False, **kwargs),
               name: evaluate_system(swapped, tests, False, **kwargs)}
    results = {f: file_results({s: outputs[s][f] for s in outputs}, {s: False for s in outputs}, THREE_ROLES)
               for f in tests}
    out = args.run / f"swap-{args.role}"
    write_json(out.with_suffix(".json"), results)
    atomic_write_text(out.with_suffix(".md"), results_markdown(results, THREE_ROLES))
    print(json.dumps({f: r["systems"] for f, r in results.items()}, indent=1))
    print(f"written: {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
