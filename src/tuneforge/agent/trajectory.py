"""One internal form for a tool-use trajectory, whatever file it came from.

A trajectory is a task instruction, the tools it may use, and planner steps. Each step is a
thought with a decision: "call" (then a tool call and its observation follow), "finish" (the final
answer follows) or "give_up". Readers keep the original text verbatim (thoughts, raw action
input) so a trajectory written back out matches the file it was read from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DECISIONS = ("call", "finish", "give_up")


@dataclass
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=dict)  # JSON-schema-like: {"type": "object", "properties": ..., "required": [...]}


@dataclass
class Call:
    name: str
    arguments: dict | None  # None when the action input is not a JSON object (a parse failure)
    raw_arguments: str = ""  # the action input exactly as written

    @property
    def parsed(self) -> bool:
        return self.arguments is not None


@dataclass
class Step:
    thought: str
    decision: str | None  # one of DECISIONS; None when the source gave none (a bad step, counted)
    call: Call | None = None  # when decision == "call"
    observation: str | None = None  # the tool's reply to `call`
    notes: list[str] = field(default_factory=list)  # extra user turns seen just before this step
    final_answer: str | None = None  # the answer written after this step (decision "finish"); a
    # trajectory may conclude more than once (ToolBench has one), so the answer belongs to the step


@dataclass
class Trajectory:
    instruction: str
    tools: list[ToolSpec]
    steps: list[Step]
    final_answer: str | None = None  # the last answer given (after the last "finish" step)
    where: str = ""  # "file.json[12]" for reports
    meta: dict = field(default_factory=dict)  # e.g. {"split": "test_ood", "gold_answer": ...}

    @property
    def tool_names(self) -> list[str]:
        return [t.name for t in self.tools]
