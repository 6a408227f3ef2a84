"""The agent's roles, their prompts, targets and output parsers: one place for training and runtime.

Global-to-local progressive fine-tuning (after α-UMi): a *backbone* model is first trained on whole
steps (reasoning, decision and the call or the answer, all in one reply); copies of it are then
trained as three roles, each with loss only on its own output:

- **planner** — reasons about the state and decides: ``Next: caller`` / ``Next: conclusion`` /
  ``Next: give up``;
- **caller** — turns the planner's latest thought into one tool call, ``Action: NAME`` and
  ``Action Input: {json}``;
- **summarizer** — writes the final answer once the planner concludes.

Every role sees the same conversation; only one line of the system prompt and the last turns differ:

    system     the shared skeleton (task format, tools) and the role's line (ROLE_LINES)
    user       the task instruction
    ...        per earlier step: its notes (user turns, e.g. a retry reminder), the step as the
               backbone writes it (assistant: thought, "Next: ...", then the action lines or the
               answer) and, after a call, the tool result (user: "Observation: ...")
    user       notes of the current step, if any
    assistant  caller / summarizer only: the planner's current output ("{thought}\\nNext: ...")
    assistant  the target — the only segment with train=True

So history is written exactly as the backbone writes its own output, which keeps the roles on
the backbone's format. Targets and history are stripped of surrounding whitespace; tool
arguments are written as canonical JSON (``json.dumps``) whenever they parsed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from tuneforge.agent.trajectory import DECISIONS, Call, Step, ToolSpec, Trajectory
from tuneforge.data.formats import Example, Segment

ROLES = ("backbone", "planner", "caller", "summarizer")
DECISION_LABELS = {"call": "caller", "finish": "conclusion", "give_up": "give up"}  # "Next: <label>"
OBSERVATION_CHARS = 1500
DESCRIPTION_CHARS = 200
TRUNCATED = " [truncated]"
OBSERVATION_PREFIX = "Observation: "

assert set(DECISION_LABELS) == set(DECISIONS)


@dataclass
class TaskHeader:
    """What a role needs to know about a task before any step: the runtime's stand-in for a Trajectory."""

    instruction: str
    tools: list[ToolSpec] = field(default_factory=list)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown agent role {role!r} (one of {', '.join(ROLES)})")


# ------------------------------------------------------------------------------------- prompts


def _type_of(schema) -> str:
    if not isinstance(schema, dict):
        return "any"
    enum = schema.get("enum")
    if enum:
        return "|".join(str(v) for v in enum) if isinstance(enum, (list, tuple)) else str(enum)
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type_of(schema.get('items'))}]"
    return str(kind)


def render_signature(parameters) -> str | None:
    """`a: number, b?: string` for a JSON-schema object (`?` marks optional); None for other shapes.

    Every prompt repeats the tool list, so a signature instead of the raw schema cuts prompts by
    about half with the real tokenizer (what the model must know is names, types and choices).
    """
    if not isinstance(parameters, dict):
        return None
    props = parameters.get("properties")
    if not isinstance(props, dict):
        return "" if not parameters else None
    required = parameters.get("required") or []
    required = {required} if isinstance(required, str) else \
        {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
    return ", ".join(f"{k}{'' if k in required else '?'}: {_type_of(v)}" for k, v in props.items())


def render_tools(tools: list[ToolSpec], description_chars: int = DESCRIPTION_CHARS) -> str:
    """One line per tool: a signature (or, for schemas of another shape, compact JSON) and the
    description (shortened)."""
    lines = []
    for t in tools:
        desc = " ".join((t.description or "").split())
        if len(desc) > description_chars:
            desc = desc[: description_chars - 3].rstrip() + "..."
        signature = render_signature(t.parameters if t.parameters is not None else {})
        if signature is None:
            params = json.dumps(t.parameters, ensure_ascii=False, separators=(",", ":"))
            head = f"{t.name}: Parameters: {params}"
        else:
            head = f"{t.name}({signature})"
        lines.append(f"- {head}: {desc}" if desc else f"- {head}")
    return "\n".join(lines) if lines else "(no tools)"


_STEP_FORMAT = (
    "Earlier steps are shown as they were written: reasoning that ends in a line 'Next: caller', "
    "'Next: conclusion' or 'Next: give up', then the tool call or the answer; a tool's result comes "
    "back as a message starting with 'Observation:'."
)

# One skeleton for the backbone and every role, as in the α-UMi reference: the same tools, history
# format and instructions, and one line saying which part of the step this model writes. So stage 2
# starts from prompts the stage-1 backbone already knows, and what it learned there carries over.
_SKELETON = (
    "You are an agent that completes the user's task by using the tools listed below, one step per reply. "
    "A step is brief reasoning about what is known so far and what is still missing, then one decision line:\n"
    "Next: caller - then a line 'Action: <tool name>' and a line 'Action Input: <JSON object with the "
    "arguments>';\n"
    "Next: conclusion - then the final answer for the user, based only on what the tool results showed;\n"
    "Next: give up - when the task cannot be done with these tools.\n"
    + _STEP_FORMAT
)

ROLE_LINES = {
    "backbone": "You write the whole step: the reasoning, the decision line, then the tool call or the answer.",
    "planner": "You write the reasoning and the decision line of this step only; a caller writes the tool call "
               "and a summarizer the answer.",
    "caller": "You write the tool call of this step only, for the reasoning and decision above: the line "
              "'Action: ...' and the line 'Action Input: ...', nothing else.",
    "summarizer": "You write the final answer of this step only, for the reasoning and decision above; say "
                  "plainly what could not be found.",
}


def system_prompt(role: str, tools: list[ToolSpec]) -> str:
    _check_role(role)
    return f"{_SKELETON}\n{ROLE_LINES[role]}\n\nTools:\n{render_tools(tools)}"


# ------------------------------------------------------------------------- outputs and targets


def render_arguments(call: Call) -> str:
    if call.arguments is not None:
        return json.dumps(call.arguments, ensure_ascii=False)
    return call.raw_arguments.strip()


def render_plan(thought: str, decision: str | None) -> str:
    """The planner's output: the thought, then "Next: <label>" on its own line."""
    thought = (thought or "").strip()
    if decision is None:
        return thought
    line = f"Next: {DECISION_LABELS[decision]}"
    return f"{thought}\n{line}" if thought else line


def render_call(call: Call) -> str:
    """The caller's output."""
    return f"Action: {call.name.strip()}\nAction Input: {render_arguments(call)}"


def render_step(step: Step) -> str:
    """A whole step as the backbone writes it (also how every earlier step appears in history)."""
    text = render_plan(step.thought, step.decision)
    tail = None
    if step.call is not None:
        tail = render_call(step.call)
    elif step.final_answer is not None:
        tail = step.final_answer.strip()
    if tail:
        text = f"{text}\n{tail}" if text else tail
    return text


def render_observation(text: str, max_chars: int = OBSERVATION_CHARS) -> str:
    text = (text or "").strip()
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + TRUNCATED
    return OBSERVATION_PREFIX + text


def target(role: str, step: Step) -> str | None:
    """The role's training target for this step, or None when the step gives that role no example."""
    return _target(role, step)[0]


def _target(role: str, step: Step) -> tuple[str | None, str | None]:
    """(target, reason it is skipped): reason is None for steps that simply are not this role's."""
    _check_role(role)
    if step.decision is None:
        return None, "no_decision"
    call_ok = step.call is not None and step.call.parsed
    call_why = "no_call" if step.call is None else "unparsed_call"
    if role == "planner":
        return render_plan(step.thought, step.decision), None
    if role == "caller":
        if step.decision != "call":
            return None, None
        return (render_call(step.call), None) if call_ok else (None, call_why)
    if role == "summarizer":
        if step.decision != "finish":
            return None, None
        return (step.final_answer.strip(), None) if step.final_answer is not None else (None, "no_answer")
    # backbone
    if step.decision == "call" and not call_ok:
        return None, call_why
    if step.decision == "finish" and step.final_answer is None:
        return None, "no_answer"
    return render_step(Step(step.thought, step.decision, step.call if step.decision == "call" else None,
                            final_answer=step.final_answer if step.decision == "finish" else None)), None


# ------------------------------------------------------------------------------------- context


def context_segments(role: str, task, history: list[Step], current_thought: str | None = None,
                     notes: list[str] | None = None,
                     max_observation_chars: int = OBSERVATION_CHARS) -> list[Segment]:
    """Everything a role is conditioned on (all train=False); append the target or generate after it.

    ``task`` is a :class:`Trajectory` or a :class:`TaskHeader` (anything with ``instruction`` and
    ``tools``); ``history`` the steps before the current one; ``notes`` the current step's extra
    user turns; ``current_thought`` the planner's thought for this step (caller and summarizer).
    """
    _check_role(role)
    if current_thought is not None and role in ("backbone", "planner"):
        raise ValueError(f"the {role} writes its own thought; current_thought is for the caller and summarizer")
    segs = [Segment("system", system_prompt(role, task.tools), False),
            Segment("user", task.instruction, False)]
    for step in history:
        segs += [Segment("user", n, False) for n in step.notes]
        text = render_step(step)
        segs.append(Segment("assistant", text, False))
        if step.observation is not None:
            segs.append(Segment("user", render_observation(step.observation, max_observation_chars), False))
    segs += [Segment("user", n, False) for n in (notes or [])]
    if current_thought is not None:
        segs.append(Segment("assistant", render_plan(current_thought, "call" if role == "caller" else "finish"),
                            False))
    return segs


# The parts a whole-step model writes after the step's plan, in the same assistant turn.
CONTINUES_THE_PLAN = ("caller", "summarizer")


def whole_step_prompt(role: str, segments: list[Segment]) -> list[Segment]:
    """A role's prompt as a whole-step model (the backbone, a single-model baseline) is asked for that
    role's part, in the format it was trained on: the backbone's role line, and for the caller and the
    summarizer the step's plan as an assistant turn left open, which the model continues with the rest
    of its own step (generate with continue_final). Asked in the role's own format (the plan closed,
    a new turn), a whole-step model starts a new step instead (measured: docs/agent.md)."""
    _check_role(role)
    system = segments[0]
    if system.role != "system" or ROLE_LINES[role] not in system.text:
        raise ValueError(f"not a {role} prompt: its system message lacks the {role}'s role line")
    out = [Segment("system", system.text.replace(ROLE_LINES[role], ROLE_LINES["backbone"]), False), *segments[1:]]
    if role in CONTINUES_THE_PLAN and out[-1].role != "assistant":
        raise ValueError(f"a {role} prompt ends with the step's plan (an assistant turn)")
    return out


def role_examples(traj: Trajectory, role: str, skipped: Counter | None = None,
                  max_observation_chars: int = OBSERVATION_CHARS) -> list[Example]:
    """Teacher-forced examples of one role: gold history, one target per suitable step.

    planner: every step with a decision; caller: every call step with a parsed call; summarizer:
    every finish step with an answer; backbone: every step whose whole output is known. Steps that
    would break a role (no decision, a missing or unparsed call, a missing answer) are left out and
    counted in ``skipped`` by reason.
    """
    _check_role(role)
    out = []
    for i, step in enumerate(traj.steps):
        tgt, why = _target(role, step)
        if tgt is None:
            if why is not None and skipped is not None:
                skipped[why] += 1
            continue
        thought = step.thought if role in ("caller", "summarizer") else None
        segs = context_segments(role, traj, traj.steps[:i], current_thought=thought, notes=step.notes,
                                max_observation_chars=max_observation_chars)
        segs.append(Segment("assistant", tgt, True))
        meta = {"role": role, "step": i, "trajectory": traj.where, "decision": step.decision,
                "tools": traj.tool_names}
        if step.call is not None and step.decision == "call":
            meta["call"] = {"name": step.call.name, "arguments": step.call.arguments}
        if step.decision == "finish" and step.final_answer is not None:
            meta["answer"] = step.final_answer
        out.append(Example(segs, where=f"{traj.where} step {i} ({role})", meta=meta))
    return out


def build_role_examples(trajectories: list[Trajectory], role: str,
                        max_observation_chars: int = OBSERVATION_CHARS) -> tuple[list[Example], Counter]:
    """:func:`role_examples` over many trajectories, with the skip counts by reason."""
    skipped: Counter = Counter()
    out = []
    for traj in trajectories:
        out += role_examples(traj, role, skipped, max_observation_chars)
    return out, skipped


def trajectory_example(traj: Trajectory, max_observation_chars: int = OBSERVATION_CHARS) -> Example | None:
    """The backbone's examples of one trajectory as one sequence, every step's output a target.

    This is how the α-UMi reference trains its backbone (whole trajectories), and it is the same
    objective as the per-step examples: under causal attention each step's target sees exactly the
    tokens its per-step example shows (tested token by token), but the shared start is read once per
    trajectory instead of once per step. None when the sequence cannot stand for the per-step
    examples (no step has a target, or a step's history form differs from its target form).
    """
    segs = [Segment("system", system_prompt("backbone", traj.tools), False), Segment("user", traj.instruction, False)]
    last_target = -1
    for step in traj.steps:
        segs += [Segment("user", n, False) for n in step.notes]
        tgt, _ = _target("backbone", step)
        text = render_step(step)
        if tgt is not None and tgt != text:
            return None
        segs.append(Segment("assistant", text, tgt is not None))
        if tgt is not None:
            last_target = len(segs)
        if step.observation is not None:
            segs.append(Segment("user", render_observation(step.observation, max_observation_chars), False))
    if last_target < 0:
        return None
    targets = sum(s.train for s in segs)
    return Example(segs[:last_target], where=f"{traj.where} (backbone, {targets} steps in one sequence)",
                   meta={"role": "backbone", "steps": targets, "trajectory": traj.where, "tools": traj.tool_names})


def backbone_examples(trajectories: list[Trajectory], tokenizer, max_length: int,
                      max_observation_chars: int = OBSERVATION_CHARS) -> tuple[list[Example], Counter, int]:
    """Whole-trajectory examples where they fit in `max_length` tokens; the others as their per-step
    examples (fitted to the length), so no step is lost. Returns examples, skipped steps by reason,
    and how many trajectories were split into steps."""
    skipped: Counter = Counter()
    out, split = [], 0
    for traj in trajectories:
        whole = trajectory_example(traj, max_observation_chars)
        if whole is not None and _n_tokens(whole.segments, tokenizer) <= max_length:
            role_examples(traj, "backbone", skipped, max_observation_chars)  # counts the skipped steps only
            out.append(whole)
            continue
        split += whole is not None
        out += [Example(fit_to_length(e.segments, tokenizer, max_length), e.where, e.meta)
                for e in role_examples(traj, "backbone", skipped, max_observation_chars)]
    return out, skipped, split


# -------------------------------------------------------------------------------- length fitting

_OMITTED = re.compile(r"\A\[(\d+) earlier steps? omitted\]\Z")


def _omitted_note(n: int) -> str:
    return f"[{n} earlier step{'s' if n != 1 else ''} omitted]"


def _is_observation(seg: Segment) -> bool:
    return seg.role == "user" and seg.text.startswith(OBSERVATION_PREFIX)


def _n_tokens(segs: list[Segment], tokenizer) -> int:
    from tuneforge.data.render import encode

    return len(encode(Example(list(segs)), tokenizer, max_length=1 << 30).ids)


def _layout(segments: list[Segment]) -> tuple[int, int, int, list[list[Segment]]]:
    """(end of head, omitted before, start of protected tail, history groups), one group per step."""
    i = 1 if segments and segments[0].role == "system" else 0
    if i < len(segments) and segments[i].role == "user":
        i += 1
    head_end, omitted = i, 0
    if i < len(segments) and segments[i].role == "user" and _OMITTED.match(segments[i].text):
        omitted = int(_OMITTED.match(segments[i].text).group(1))
        i += 1
    t = max((k for k, s in enumerate(segments) if s.train), default=len(segments))
    k = t
    if k > i and segments[k - 1].role == "assistant":  # the planner's current output (caller, summarizer)
        k -= 1
    while k > i and segments[k - 1].role == "user" and not _is_observation(segments[k - 1]):
        k -= 1  # the current step's notes
    groups: list[list[Segment]] = []
    cur: list[Segment] = []
    for seg in segments[i:k]:
        has_step = any(s.role == "assistant" for s in cur)
        if has_step and (seg.role == "assistant" or (seg.role == "user" and not _is_observation(seg))):
            groups.append(cur)
            cur = []
        cur.append(seg)
    if cur:
        groups.append(cur)
    return head_end, omitted, k, groups


def fit_to_length(segments: list[Segment], tokenizer, max_length: int) -> list[Segment]:
    """Drop the oldest earlier steps (notes, step and observation together) until the example fits.

    The system prompt, the instruction, the current step's notes and planner output, and the target
    always stay; a user turn "[N earlier steps omitted]" takes the dropped steps' place. If even
    the shortest form is too long, the segments come back unchanged (the encoder truncates).
    """
    if _n_tokens(segments, tokenizer) <= max_length:
        return segments
    head_end, omitted, tail_start, groups = _layout(segments)
    if not groups:
        return segments

    def dropped(d: int) -> list[Segment]:
        kept = [s for g in groups[d:] for s in g]
        return (segments[:head_end] + [Segment("user", _omitted_note(omitted + d), False)] + kept
                + segments[tail_start:])

    if _n_tokens(dropped(len(groups)), tokenizer) > max_length:
        return segments
    lo, hi = 1, len(groups)  # the smallest d that fits lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if _n_tokens(dropped(mid), tokenizer) <= max_length:
            hi = mid
        else:
            lo = mid + 1
    return dropped(lo)


# ------------------------------------------------------------------------------------- parsers

_NEXT = re.compile(r"(?:^|(?<=\s))\**Next\**[ \t]*:\**[ \t]*(caller|call|conclusion|finish|give[ _-]?up)\.?\**[ \t]*"
                   r"(?=\r?\n|\Z)", re.I)
_FENCE_LINE = re.compile(r"^[ \t]*```[\w-]*[ \t]*$\n?", re.M)
_ACTION = re.compile(r"Action[ \t]*:[ \t]*(.*?)[ \t]*(?=Action[ \t]*Input[ \t]*:|\n|\Z)", re.I)
_ACTION_INPUT = re.compile(r"Action[ \t]*Input\s*:\s*", re.I)


def _decision(label: str) -> str:
    label = label.lower().replace("_", " ").replace("-", " ")
    return {"caller": "call", "call": "call", "conclusion": "finish", "finish": "finish"}.get(label, "give_up")


def _strip_fences(text: str) -> str:
    text = _FENCE_LINE.sub("", text).strip()
    if text.startswith("```"):
        text = re.sub(r"\A```[\w-]*", "", text)
    if text.endswith("```"):
        text = text[:-3]
    return text.strip()


def parse_planner(text: str) -> tuple[str, str | None]:
    """(thought, decision); decision None when no "Next: ..." line is found."""
    m = _NEXT.search(text or "")
    if not m:
        return (text or "").strip(), None
    return text[: m.start()].strip(), _decision(m.group(1))


def parse_caller(text: str) -> Call | None:
    """The call in a caller output; None when there is no "Action: NAME". Arguments are None when
    the action input is missing or not a JSON object (``raw_arguments`` keeps what was written)."""
    body = _strip_fences(text or "")
    m = _ACTION.search(body)
    if not m:
        return None
    name = m.group(1).strip().strip("`'\"*").strip()
    if not name:
        return None
    rest = body[m.end():]
    mi = _ACTION_INPUT.search(rest)
    if not mi:
        return Call(name=name, arguments=None, raw_arguments="")
    raw = _strip_fences(rest[mi.end():])
    arguments = None
    try:
        value, _ = json.JSONDecoder().raw_decode(raw)
        arguments = value if isinstance(value, dict) else None
    except (ValueError, RecursionError):  # not JSON, or JSON nested too deep / a number too long for Python
        pass
    return Call(name=name, arguments=arguments, raw_arguments=raw)


def parse_backbone(text: str) -> tuple[str, str | None, Call | None, str | None]:
    """(thought, decision, call, final answer) from a backbone reply; call only for "call", answer
    only for "finish" (None when empty)."""
    m = _NEXT.search(text or "")
    if not m:
        return (text or "").strip(), None, None, None
    thought, decision, rest = text[: m.start()].strip(), _decision(m.group(1)), text[m.end():]
    if decision == "call":
        return thought, decision, parse_caller(rest), None
    if decision == "finish":
        return thought, decision, None, rest.strip() or None
    return thought, decision, None, None


# Strict parsing: a reply without a "Next: ..." line has no decision. Lenient: as the α-UMi reference
# pipeline reads replies (a planner reply without one goes to the caller). Both are reported side by
# side, since strict parsing hits the less-trained system hardest.
PARSINGS = ("strict", "lenient")


def read_plan(reply: str, parsing: str) -> tuple[str, str | None]:
    """(thought, decision) of a planner reply. Strict: decision None without a "Next: ..." line.
    Lenient, as the α-UMi reference pipeline does: a reply with no decision line goes to the caller."""
    thought, decision = parse_planner(reply)
    if decision is None and parsing == "lenient":
        decision = "call"
    return thought, decision


def read_backbone(reply: str, parsing: str) -> tuple[str, str | None, Call | None, str | None]:
    """(thought, decision, call, answer) of a backbone reply. Strict: nothing without a decision line.
    Lenient: a reply with no decision line but an "Action: NAME" line is read as that call."""
    thought, decision, call, answer = parse_backbone(reply)
    if decision is None and parsing == "lenient" and (call := parse_caller(reply)) is not None:
        return thought, "call", call, None
    return thought, decision, call, answer
