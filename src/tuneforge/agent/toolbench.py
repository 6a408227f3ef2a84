"""Read and write ToolBench trajectories (the two layouts the α-UMi data comes in).

Each file is a JSON list (or JSONL) of tasks ``{tools, instruction, ...}`` with either

- ``conversations`` — the multi-agent layout: ``{from, value}`` turns where ``from`` is
  ``user`` (the first one is the instruction; later ones, e.g. "this is not the first time you try
  this task" reflection prompts, become ``Step.notes`` of the next step), ``assistant`` (a planner
  thought ending in ``Next: caller.`` / ``Next: conclusion.`` / ``Next: give up.``), ``caller``
  (``Action: NAME\\nAction Input: {json}``), ``observation`` and ``conclusion`` (the final answer);
- ``chains`` — a ReAct run: ``{role, content, function_call?, name?}`` messages. The system
  message (ToolBench's own prompt) is ignored; the first user message is the instruction (its
  ``\\n...\\nBegin!\\n`` wrapper removed); an assistant message with a ``function_call`` is a call
  step whose observation is the following ``function`` message; a call of the pseudo tool
  ``Finish`` with ``return_type: give_answer`` is a finish step (its ``final_answer`` is the answer)
  and ``give_up_and_restart`` a give-up step. An assistant message without a function call is a
  step without a decision (a problem) — except the last message of the chain, which is read as a
  finish step whose content is the final answer, with an empty thought (the run ended by simply
  answering).

Bad input is never a crash and never silently dropped: every anomaly becomes a :class:`Problem`
(where, turn index, reason) in the :class:`Report`, and ``policy`` says what happens to the
trajectory that has it: ``keep`` it (steps without a decision, unparsed calls and so on stay in,
and the counts match the file; a caller turn that cannot be read at all becomes a call with no
name whose ``raw_arguments`` hold the whole turn), ``skip`` it (counted in ``Report.skipped``), or ``reject`` the file
(:class:`UserError` naming the file, task, turn and reason).

Writing (:func:`write_toolbench`, :func:`to_conversations`) produces the ``conversations`` layout;
for a file read in that layout the round trip is exact (thoughts, raw action inputs and even a
stray observation are kept verbatim). An observation that follows no call is written last in its
step, after the step's conclusion — where ToolBench has the one such turn.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.agent.roles import parse_caller
from tuneforge.agent.trajectory import Call, Step, ToolSpec, Trajectory
from tuneforge.errors import UserError

POLICIES = ("keep", "skip", "reject")

# Decision suffix of a planner turn as ToolBench writes it, and back.
_LABEL_TO_DECISION = {"caller": "call", "conclusion": "finish", "give up": "give_up"}
_DECISION_TO_LABEL = {v: k for k, v in _LABEL_TO_DECISION.items()}
_NEXT = re.compile(r"Next: (caller|conclusion|give up)\.\s*\Z")
_CALLER = re.compile(r"\AAction: ([^\n]*)\nAction Input: (.*)\Z", re.S)
_FROM = ("user", "assistant", "caller", "observation", "conclusion")
_ROLES = ("system", "user", "assistant", "function")
FINISH_TOOL = "Finish"


@dataclass
class Problem:
    where: str  # "file.json[12]": the task
    index: int | None  # the turn (conversations) or message (chains) index; None for the whole task
    reason: str
    kind: str = ""  # a short stable tag for grouping, e.g. "no_decision"


@dataclass
class Report:
    path: str = ""
    tasks: int = 0  # items in the file
    kept: int = 0  # trajectories returned
    skipped: int = 0  # trajectories dropped by policy "skip"
    unreadable: int = 0  # items that could not become a trajectory at all (not an object, no turns)
    formats: Counter = field(default_factory=Counter)  # "conversations" / "chains" per task
    planner_steps: int = 0  # every assistant turn, with or without a decision
    decisions: Counter = field(default_factory=Counter)  # call / finish / give_up / None
    calls: int = 0
    observations: int = 0
    conclusions: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def problem_kinds(self) -> Counter:
        return Counter(p.kind or p.reason for p in self.problems)


# ----------------------------------------------------------------------------------------- helpers


def split_thought(value: str) -> tuple[str, str | None]:
    """A planner turn -> (thought, decision); the thought is exactly what precedes " Next: ..."."""
    m = _NEXT.search(value)
    if not m:
        return value, None
    head = value[: m.start()]
    # The one space before "Next:" is the separator unless it cannot be (nothing or more space before it).
    if head.endswith(" ") and head[:-1] and not head[-2].isspace():
        head = head[:-1]
    return head, _LABEL_TO_DECISION[m.group(1)]


def join_thought(thought: str, decision: str | None) -> str:
    """Inverse of :func:`split_thought`: the planner turn as ToolBench writes it."""
    if decision is None:
        return thought
    sep = "" if not thought or thought[-1].isspace() else " "
    return f"{thought}{sep}Next: {_DECISION_TO_LABEL[decision]}."


def parse_arguments(raw: str) -> dict | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def raw_arguments(call: Call) -> str:
    if call.raw_arguments or call.arguments is None:
        return call.raw_arguments
    return json.dumps(call.arguments, ensure_ascii=False)


def tool_spec(item: dict) -> ToolSpec:
    params = item.get("input", item.get("parameters", {}))
    return ToolSpec(name=str(item.get("Name", item.get("name", ""))),
                    description=str(item.get("function", item.get("description", "")) or ""),
                    parameters=params if params is not None else {})


class _Task:
    """Bookkeeping while one task is read: its problems and its trajectory's steps."""

    def __init__(self, where: str, report: Report):
        self.where, self.report = where, report
        self.problems: list[Problem] = []
        self.meta: dict = {}

    def problem(self, index: int | None, kind: str, reason: str) -> None:
        self.problems.append(Problem(self.where, index, reason, kind))


def _tools(task: _Task, raw) -> list[ToolSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        task.problem(None, "bad_tools", f"'tools' must be a list, got {type(raw).__name__}")
        return []
    tools = []
    for k, t in enumerate(raw):
        if not isinstance(t, dict) or not (t.get("Name") or t.get("name")):
            task.problem(None, "bad_tools", f"tools[{k}] has no Name")
            continue
        tools.append(tool_spec(t))
    return tools


def _check_call(task: _Task, index: int, call: Call, names: set[str]) -> None:
    if call.name not in names:
        task.problem(index, "unknown_tool", f"call to tool '{call.name}', which is not in the task's tool list")
    if call.arguments is None:
        task.problem(index, "bad_arguments", f"the action input of '{call.name}' is not a JSON object: "
                                             f"{call.raw_arguments[:80]!r}")


def _close_step(task: _Task, index: int | None, step: Step | None) -> None:
    """Problems only visible once a step is complete (the next planner turn or the end came)."""
    if step is None:
        return
    if step.decision == "call" and step.call is None:
        task.problem(index, "call_missing", "the planner decided to call a tool but no call follows")
    elif step.call is not None and step.observation is None:
        task.problem(index, "observation_missing", f"the call of '{step.call.name}' has no observation")
    if step.decision == "finish" and step.final_answer is None:
        task.problem(index, "conclusion_missing", "the planner decided to conclude but no conclusion follows")


# ------------------------------------------------------------------------- conversations layout


def _from_conversations(task: _Task, item: dict, turns: list) -> Trajectory:
    report = task.report
    tools = _tools(task, item.get("tools"))
    names = {t.name for t in tools}
    instruction = item.get("instruction")
    steps: list[Step] = []
    notes: list[str] = []
    first_user_seen = False
    step_start: int | None = None

    def current() -> Step | None:
        return steps[-1] if steps else None

    def placeholder() -> Step:
        nonlocal notes
        s = Step(thought="", decision=None, notes=notes)
        notes = []
        steps.append(s)
        return s

    for j, turn in enumerate(turns):
        frm = turn.get("from") if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if frm not in _FROM or not isinstance(value, str):
            what = f"unknown 'from' value {frm!r}" if frm not in _FROM else "its 'value' is not a string"
            task.problem(j, "unknown_role", f"turn dropped: {what}")
            continue
        if frm == "user":
            if j == 0:
                first_user_seen = True
                if instruction is None:
                    instruction = value
                elif value != instruction:
                    item_instruction, instruction = instruction, value
                    task.meta["instruction_field"] = item_instruction
            else:
                notes.append(value)
        elif frm == "assistant":
            _close_step(task, step_start, current())
            thought, decision = split_thought(value)
            report.planner_steps += 1
            report.decisions[decision] += 1
            if decision is None:
                task.problem(j, "no_decision", "planner turn without a decision "
                                               "('Next: caller.' / 'Next: conclusion.' / 'Next: give up.')")
            steps.append(Step(thought=thought, decision=decision, notes=notes))
            notes, step_start = [], j
        elif frm == "caller":
            report.calls += 1
            step = current()
            if step is None or notes or step.call is not None or step.observation is not None \
                    or step.final_answer is not None:
                task.problem(j, "caller_without_planner", "caller turn with no preceding planner step")
                step = placeholder()
            elif step.decision in ("finish", "give_up"):
                task.problem(j, "caller_after_decision", f"caller turn after the planner decided '{step.decision}'")
            m = _CALLER.match(value)
            parsed = None if m else parse_caller(value)  # the tolerant parser, for other spacing
            if m or parsed:
                name, raw = (m.group(1), m.group(2)) if m else (parsed.name, parsed.raw_arguments)
                step.call = Call(name=name, arguments=parse_arguments(raw), raw_arguments=raw)
                _check_call(task, j, step.call, names)
            else:
                task.problem(j, "bad_caller", f"caller turn is not 'Action: NAME' + 'Action Input: JSON': "
                                              f"{value[:80]!r}")
                step.call = Call(name="", arguments=None, raw_arguments=value)
        elif frm == "observation":
            report.observations += 1
            step = current()
            if step is not None and step.call is not None and step.observation is None and not notes:
                step.observation = value
            else:
                task.problem(j, "observation_without_call", "observation with no preceding call")
                if step is None or step.observation is not None or notes:
                    step = placeholder()
                step.observation = value  # kept; written after the step's other turns
        else:  # conclusion
            report.conclusions += 1
            step = current()
            if step is None or step.final_answer is not None or notes or \
                    (step.call is None and step.observation is not None):
                task.problem(j, "conclusion_without_planner", "conclusion with no preceding planner step")
                step = placeholder()
            elif step.decision != "finish":
                task.problem(j, "conclusion_after_decision",
                             f"conclusion after the planner decided {step.decision or 'nothing'}")
            step.final_answer = value
    _close_step(task, step_start, current())
    if not first_user_seen:
        task.problem(0, "no_instruction", "the conversation does not start with the user's instruction")
    return _trajectory(task, instruction, tools, steps, notes, len(turns) - 1, "a first user turn", "turn(s)")


def _trajectory(task: _Task, instruction, tools, steps: list[Step], notes: list[str], last: int,
                instruction_source: str, unit: str) -> Trajectory:
    """The end both layouts share: report a missing instruction and trailing user turns, build the result."""
    if not isinstance(instruction, str):
        task.problem(None, "no_instruction", f"no instruction (neither an 'instruction' field nor {instruction_source})")
        instruction = ""
    if notes:
        task.problem(last, "trailing_user", f"user {unit} after the last step")
        task.meta["trailing_notes"] = notes
    answers = [s.final_answer for s in steps if s.final_answer is not None]
    return Trajectory(instruction=instruction, tools=tools, steps=steps,
                      final_answer=answers[-1] if answers else None, where=task.where, meta=task.meta)


# -------------------------------------------------------------------------------- chains layout


def _chains_instruction(content: str) -> str:
    text = content.strip()
    if text.endswith("Begin!"):
        text = text[: -len("Begin!")].rstrip()
    return text


def _from_chains(task: _Task, item: dict, msgs: list) -> Trajectory:
    report = task.report
    tools = _tools(task, item.get("tools"))
    names = {t.name for t in tools}
    instruction = item.get("instruction")
    steps: list[Step] = []
    notes: list[str] = []
    seen_user = False
    step_start: int | None = None
    last_assistant = max((j for j, m in enumerate(msgs) if isinstance(m, dict) and m.get("role") == "assistant"),
                         default=-1)
    for j, msg in enumerate(msgs):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in _ROLES:
            task.problem(j, "unknown_role", f"message dropped: unknown role {role!r}")
            continue
        content = msg.get("content")
        content = content if isinstance(content, str) else ""
        if role == "system":
            continue
        if role == "user":
            if not seen_user:
                seen_user = True
                if not isinstance(instruction, str):
                    instruction = _chains_instruction(content)
            else:
                notes.append(content)
            continue
        if role == "function":
            report.observations += 1
            step = steps[-1] if steps else None
            if step is None or step.call is None or step.observation is not None or notes:
                task.problem(j, "observation_without_call", "function reply with no preceding call")
                if step is not None and step.observation is None and not notes:
                    step.observation = content
                continue
            if msg.get("name") not in (None, step.call.name):
                task.problem(j, "observation_name", f"function reply named '{msg.get('name')}' "
                                                    f"follows a call of '{step.call.name}'")
            step.observation = content
            continue
        # assistant
        _close_step(task, step_start, steps[-1] if steps else None)
        report.planner_steps += 1
        step_start = j
        fc = msg.get("function_call")
        step = Step(thought=content, decision=None, notes=notes)
        notes = []
        if isinstance(fc, dict) and fc.get("name") == FINISH_TOOL:
            raw = fc.get("arguments") if isinstance(fc.get("arguments"), str) else json.dumps(fc.get("arguments"))
            args = parse_arguments(raw)
            kind = args.get("return_type") if args else None
            if kind == "give_answer":
                step.decision = "finish"
                answer = args.get("final_answer")
                if isinstance(answer, str):
                    step.final_answer = answer
                    report.conclusions += 1
            elif kind == "give_up_and_restart":
                step.decision = "give_up"
            else:
                task.problem(j, "no_decision", f"Finish call with unreadable arguments {raw[:80]!r}")
        elif isinstance(fc, dict):
            report.calls += 1
            raw = fc.get("arguments")
            raw = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
            step.decision = "call"
            step.call = Call(name=str(fc.get("name", "")), arguments=parse_arguments(raw), raw_arguments=raw)
            _check_call(task, j, step.call, names)
        elif j == last_assistant:
            # The run ended with a plain answer: a finish step, no separate reasoning.
            step.thought, step.decision, step.final_answer = "", "finish", content
            report.conclusions += 1
        else:
            task.problem(j, "no_decision", "assistant message with neither a function call nor the final answer")
        report.decisions[step.decision] += 1
        steps.append(step)
    _close_step(task, step_start, steps[-1] if steps else None)
    return _trajectory(task, instruction, tools, steps, notes, len(msgs) - 1, "a user message", "message(s)")


# ------------------------------------------------------------------------------------ public API


def _load_items(path: Path) -> list:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    from tuneforge.data.sources import read_text

    text = read_text(path)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or too deep / too long a number
        what = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply" \
            if isinstance(e, RecursionError) else "a number with too many digits"
        try:  # JSON lines
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (ValueError, RecursionError):
            raise UserError(f"{path}: not JSON or JSON lines ({what})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of tasks, got {type(data).__name__}")
    return data


def read_toolbench(path, policy: str = "keep") -> tuple[list[Trajectory], Report]:
    """Trajectories from a ToolBench file (``conversations`` or ``chains`` per task) and a report."""
    if policy not in POLICIES:
        raise UserError(f"unknown policy '{policy}' for ToolBench data (use one of {', '.join(POLICIES)})")
    path = Path(path)
    items = _load_items(path)
    report = Report(path=str(path), tasks=len(items))
    out = []
    known = {"tools", "instruction", "conversations", "chains"}
    for i, item in enumerate(items):
        task = _Task(f"{path.name}[{i}]", report)
        traj = None
        if not isinstance(item, dict):
            task.problem(None, "unreadable", f"task is not an object but {type(item).__name__}")
        elif isinstance(item.get("conversations"), list):
            report.formats["conversations"] += 1
            traj = _from_conversations(task, item, item["conversations"])
        elif isinstance(item.get("chains"), list):
            report.formats["chains"] += 1
            traj = _from_chains(task, item, item["chains"])
        else:
            task.problem(None, "unreadable", "task has neither a 'conversations' nor a 'chains' list")
        if traj is not None:
            extra = {k: v for k, v in item.items() if k not in known}
            if extra:
                traj.meta["extra_fields"] = extra
        report.problems.extend(task.problems)
        if task.problems and policy == "reject":
            p = task.problems[0]
            at = f", turn {p.index}" if p.index is not None else ""
            raise UserError(f"{path}: task {i}{at}: {p.reason} (policy 'reject'; "
                            "'keep' keeps such tasks, 'skip' drops them)")
        if traj is None:
            report.unreadable += 1
        elif task.problems and policy == "skip":
            report.skipped += 1
        else:
            out.append(traj)
    report.kept = len(out)
    return out, report


def to_conversations(traj: Trajectory) -> list[dict]:
    """The trajectory as ToolBench multi-agent turns (``{from, value}``)."""
    turns = [{"from": "user", "value": traj.instruction}]
    answered = any(s.final_answer is not None for s in traj.steps)
    last_finish = max((k for k, s in enumerate(traj.steps) if s.decision == "finish"), default=len(traj.steps) - 1)
    for k, step in enumerate(traj.steps):
        turns += [{"from": "user", "value": n} for n in step.notes]
        turns.append({"from": "assistant", "value": join_thought(step.thought, step.decision)})
        if step.call is not None:
            # A caller turn that could not be read at all is kept whole in raw_arguments (no name).
            value = (f"Action: {step.call.name}\nAction Input: {raw_arguments(step.call)}" if step.call.name
                     else step.call.raw_arguments)
            turns.append({"from": "caller", "value": value})
            if step.observation is not None:
                turns.append({"from": "observation", "value": step.observation})
        answer = step.final_answer
        if answer is None and not answered and k == last_finish:
            answer = traj.final_answer  # a trajectory built elsewhere that only knows its last answer
        if answer is not None:
            turns.append({"from": "conclusion", "value": answer})
        if step.call is None and step.observation is not None:
            turns.append({"from": "observation", "value": step.observation})
    if not traj.steps and traj.final_answer is not None:
        turns.append({"from": "conclusion", "value": traj.final_answer})
    turns += [{"from": "user", "value": n} for n in traj.meta.get("trailing_notes", [])]
    return turns


def to_item(traj: Trajectory) -> dict:
    item = {"tools": [{"Name": t.name, "function": t.description, "input": t.parameters} for t in traj.tools],
            "instruction": traj.meta.get("instruction_field", traj.instruction),
            "conversations": to_conversations(traj)}
    item.update(traj.meta.get("extra_fields", {}))
    return item


def write_toolbench(trajectories: list[Trajectory], path) -> Path:
    """Write the ``conversations`` layout atomically (a temporary file, then ``os.replace``)."""
    from tuneforge.atomic import atomic_write_text

    text = json.dumps([to_item(t) for t in trajectories], ensure_ascii=False, indent=1) + "\n"
    return atomic_write_text(path, text)


_DECISION_WORDS = {"call": "call", "finish": "finish", "give_up": "give up", None: "no decision"}


def summary(report: Report) -> str:
    """One paragraph for people: what was read, what was wrong with it, what happened to it."""
    name = Path(report.path).name or "the file"
    fmts = " and ".join(f"{n:,} {k}" for k, n in sorted(report.formats.items())) or "no readable"
    dec = ", ".join(f"{report.decisions[d]:,} {_DECISION_WORDS[d]}"
                    for d in ("call", "finish", "give_up", None) if report.decisions.get(d))
    text = (f"Read {report.tasks:,} tasks from {name} ({fmts} layout): {report.planner_steps:,} planner steps"
            f"{' (' + dec + ')' if dec else ''}, {report.calls:,} tool calls, {report.observations:,} observations "
            f"and {report.conclusions:,} conclusions.")
    if report.problems:
        n_tasks = len({p.where for p in report.problems})
        kinds = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in report.problem_kinds.most_common())
        text += f" {len(report.problems):,} problems in {n_tasks:,} tasks ({kinds})."
    else:
        text += " No problems found."
    fate = []
    if report.skipped:
        fate.append(f"{report.skipped:,} tasks with problems were skipped")
    if report.unreadable:
        fate.append(f"{report.unreadable:,} unreadable tasks were left out")
    text += f" {report.kept:,} trajectories kept" + (f"; {'; '.join(fate)}." if fate else ".")
    return text
