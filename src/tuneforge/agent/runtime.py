"""The agent runtime: planner -> (caller -> tool -> observation)* -> summarizer, or stop on give up.

Episodes run in lockstep: at each turn every live episode that needs the planner gets it in one
batched generation, then the caller likewise, so a CPU evaluates many tasks about as fast as one;
the summarizer answers every concluded episode once all have ended, in one batch. Nothing an agent
writes can crash the loop: an unparseable reply, a tool that does not exist, malformed JSON or bad
arguments become an observation the agent sees next turn, and are counted. Single-model mode runs
the same loop with the backbone writing thought, decision and action (or answer) in one reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneforge.agent.roles import TaskHeader, context_segments, fit_to_length, parse_caller, read_backbone, read_plan
from tuneforge.agent.tools import ToolRegistry
from tuneforge.agent.trajectory import Call, Step
from tuneforge.data.formats import Segment

# (role, list of prompts as segment lists) -> replies; the runtime does not care how models are held.
Generate = Callable[[str, list[list[Segment]]], list[str]]

PARSE_HINT = ("could not read an action from the reply; write exactly two lines: "
              "'Action: TOOL_NAME' then 'Action Input: {\"key\": value}'")


@dataclass
class Episode:
    task: TaskHeader
    history: list[Step] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)
    final_answer: str | None = None
    gave_up: bool = False
    done: bool = False
    cut_off: bool = False  # the step limit ended it
    hallucinated_calls: int = 0  # calls to a tool not in the task's list
    parse_failures: int = 0  # replies without a readable decision or action
    bad_arguments: int = 0
    tool_errors: int = 0

    @property
    def steps(self) -> int:
        return len(self.history)


def _record(ep: Episode, role: str, reply: str, **parsed) -> None:
    ep.trace.append({"turn": len(ep.history), "role": role, "reply": reply, **parsed})


class AgentRuntime:
    def __init__(self, generate: Generate, registry: ToolRegistry, *, single_model: bool = False,
                 max_steps: int = 8, tokenizer=None, max_length: int = 2048, max_observation_chars: int = 1500,
                 parsing: str = "strict"):
        """`parsing`: "strict", or "lenient" as the α-UMi reference reads replies (agent/roles.py)."""
        self.parsing = parsing
        self.generate = generate
        self.registry = registry
        self.single_model = single_model
        self.max_steps = max_steps
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_observation_chars = max_observation_chars

    # ------------------------------------------------------------ prompts

    def _prompt(self, role: str, ep: Episode, thought: str | None = None) -> list[Segment]:
        segs = context_segments(role, ep.task, ep.history, current_thought=thought,
                                max_observation_chars=self.max_observation_chars)
        if self.tokenizer is not None:
            # Leave room for the reply: the oldest steps go first when a history outgrows the model.
            segs = fit_to_length(segs, self.tokenizer, self.max_length - 128)
        return segs

    def _ask(self, role: str, eps: list[Episode], thoughts: list[str | None] | None = None) -> list[str]:
        if not eps:
            return []
        thoughts = thoughts or [None] * len(eps)
        return self.generate(role, [self._prompt(role, ep, t) for ep, t in zip(eps, thoughts)])

    # ------------------------------------------------------------ tools

    def _execute(self, ep: Episode, call: Call | None) -> str:
        if call is None or not call.parsed:
            ep.parse_failures += 1
            return json.dumps({"error": PARSE_HINT if call is None else
                               f"the Action Input of {call.name} is not a JSON object; {PARSE_HINT}"})
        allowed = [t.name for t in ep.task.tools]
        result = self.registry.call(call.name, call.arguments, allowed=allowed)
        if result.error == "unknown_tool":
            ep.hallucinated_calls += 1
        elif result.error == "bad_arguments":
            ep.bad_arguments += 1
        elif result.error:
            ep.tool_errors += 1
        return result.observation

    def _step(self, ep: Episode, thought: str, decision: str | None, call: Call | None = None,
              observation: str | None = None, answer: str | None = None) -> None:
        ep.history.append(Step(thought=thought, decision=decision, call=call, observation=observation,
                               final_answer=answer))
        if len(ep.history) >= self.max_steps and not ep.done:
            ep.done, ep.cut_off = True, True

    # ------------------------------------------------------------ the loop

    def run(self, tasks: list[TaskHeader], chunk: int = 32) -> list[Episode]:
        """Every task to its end, `chunk` episodes in lockstep at a time: each turn asks a role once for
        all of them (batched), and a chunk's prompts stay few enough for the generator's prefix cache
        to keep each episode's last prompt until its next turn extends it."""
        episodes = [Episode(task) for task in tasks]
        finishers: list[tuple[Episode, str]] = []
        for start in range(0, len(episodes), chunk):
            group = episodes[start:start + chunk]
            while live := [ep for ep in group if not ep.done]:
                if self.single_model:
                    self._turn_single(live)
                else:
                    finishers += self._turn_roles(live)
        self._summarize(finishers)
        return episodes

    def _turn_roles(self, live: list[Episode]) -> list[tuple[Episode, str]]:
        """One turn of the planner and the caller; returns the episodes the planner ended with a
        conclusion (done from here on), with the plan's thought, for the summarizer."""
        plans = [read_plan(r, self.parsing) + (r,) for r in self._ask("planner", live)]
        callers, finishers = [], []
        for ep, (thought, decision, reply) in zip(live, plans):
            _record(ep, "planner", reply, thought=thought, decision=decision)
            if decision == "call":
                callers.append((ep, thought))
            elif decision == "finish":
                ep.done = True
                finishers.append((ep, thought))
            elif decision == "give_up":
                ep.gave_up = ep.done = True
                self._step(ep, thought, decision)
            else:  # no readable decision: say so and let the planner try again next turn
                ep.parse_failures += 1
                self._step(ep, thought, None, observation=json.dumps(
                    {"error": "end the reply with a line 'Next: caller', 'Next: conclusion' or 'Next: give up'"}))
        replies = self._ask("caller", [ep for ep, _ in callers], [t for _, t in callers])
        for (ep, thought), reply in zip(callers, replies):
            call = parse_caller(reply)
            observation = self._execute(ep, call)
            _record(ep, "caller", reply, call=_call_dict(call), observation=observation)
            self._step(ep, thought, "call", call or Call(name="", arguments=None, raw_arguments=reply), observation)
        return finishers

    def _summarize(self, finishers: list[tuple[Episode, str]]) -> None:
        """The summarizer's answers for every concluded episode at once: an answer ends its episode and
        changes no other, so asking once at the end gives each the same prompt as asking in its turn,
        in one large batch instead of a few rows per turn (decoding a few rows costs nearly as much
        as decoding many)."""
        replies = self._ask("summarizer", [ep for ep, _ in finishers], [t for _, t in finishers])
        for (ep, thought), reply in zip(finishers, replies):
            _record(ep, "summarizer", reply)
            ep.final_answer = reply.strip()
            self._step(ep, thought, "finish", answer=ep.final_answer)

    def _turn_single(self, live: list[Episode]) -> None:
        for ep, reply in zip(live, self._ask("backbone", live)):
            thought, decision, call, answer = read_backbone(reply, self.parsing)
            if decision == "call":
                observation = self._execute(ep, call)
                _record(ep, "backbone", reply, thought=thought, decision=decision, call=_call_dict(call),
                        observation=observation)
                self._step(ep, thought, "call", call or Call(name="", arguments=None, raw_arguments=reply),
                           observation)
            elif decision == "finish":
                _record(ep, "backbone", reply, thought=thought, decision=decision, answer=answer)
                ep.final_answer, ep.done = (answer or "").strip(), True
                self._step(ep, thought, "finish", answer=ep.final_answer)
            elif decision == "give_up":
                _record(ep, "backbone", reply, thought=thought, decision=decision)
                ep.gave_up = ep.done = True
                self._step(ep, thought, decision)
            else:
                _record(ep, "backbone", reply, thought=thought, decision=None)
                ep.parse_failures += 1
                self._step(ep, thought, None, observation=json.dumps(
                    {"error": "end the thought with a line 'Next: caller', 'Next: conclusion' or 'Next: give up'"}))


def _call_dict(call: Call | None) -> dict | None:
    return None if call is None else {"name": call.name, "arguments": call.arguments, "raw": call.raw_arguments}


def write_traces(episodes: list[Episode], path: Path) -> Path:
    """One JSON line per episode: the task, every role's reply, what was parsed and observed, the outcome."""
    from tuneforge.atomic import atomic_write_text

    lines = []
    for i, ep in enumerate(episodes):
        lines.append(json.dumps({
            "episode": i, "instruction": ep.task.instruction, "tools": [t.name for t in ep.task.tools],
            "final_answer": ep.final_answer, "gave_up": ep.gave_up, "cut_off": ep.cut_off, "steps": ep.steps,
            "hallucinated_calls": ep.hallucinated_calls, "parse_failures": ep.parse_failures,
            "bad_arguments": ep.bad_arguments, "tool_errors": ep.tool_errors, "trace": ep.trace,
        }, ensure_ascii=False))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)
