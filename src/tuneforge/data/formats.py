"""Turn raw records in the formats users bring into Examples: a list of role-tagged segments.

Every recipe speaks `Example`: which text belongs to which role, and which parts carry loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.data.sources import Record
from tuneforge.errors import UserError

FORMATS = ("alpaca", "messages", "prompt_completion", "text")
_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                 "model": "assistant", "bot": "assistant", "system": "system", "tool": "tool",
                 "function": "tool", "observation": "tool"}


@dataclass
class Segment:
    role: str  # system | user | assistant | tool | text
    text: str
    train: bool  # whether this segment's tokens carry loss


@dataclass
class Example:
    segments: list[Segment]
    where: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """The last trained assistant text: the answer evaluation compares against."""
        for seg in reversed(self.segments):
            if seg.role == "assistant":
                return seg.text
        return ""

    def prompt_segments(self) -> list[Segment]:
        """Everything before the last assistant turn: what generation is conditioned on."""
        idx = max((i for i, s in enumerate(self.segments) if s.role == "assistant"), default=len(self.segments))
        return self.segments[:idx]


def detect_format(data: dict) -> str | None:
    if "messages" in data or "conversations" in data:
        return "messages"
    if "instruction" in data and "output" in data:
        return "alpaca"
    if "prompt" in data and "completion" in data:
        return "prompt_completion"
    if "text" in data:
        return "text"
    # A record that is clearly meant as one format but lacks a field: let the converter name it.
    if "instruction" in data:
        return "alpaca"
    if "prompt" in data:
        return "prompt_completion"
    return None


def _need_str(rec: Record, key: str, allow_empty: bool = False) -> str:
    if key not in rec.data or rec.data[key] is None:
        raise UserError(f"{rec.where}: missing field '{key}'")
    value = rec.data[key]
    if not isinstance(value, str):
        raise UserError(f"{rec.where}: field '{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise UserError(f"{rec.where}: field '{key}' is empty")
    return value


def _alpaca(rec: Record, system: str | None) -> list[Segment]:
    instruction = _need_str(rec, "instruction")
    extra = rec.data.get("input") or ""
    if not isinstance(extra, str):
        raise UserError(f"{rec.where}: field 'input' must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    own = rec.data.get("system")
    if own is not None and not isinstance(own, str):
        raise UserError(f"{rec.where}: field 'system' must be a string, got {type(own).__name__}")
    segs = [Segment("system", own or system, False)] if (own or system) else []
    return segs + [Segment("user", user, False), Segment("assistant", _need_str(rec, "output"), True)]


def _messages(rec: Record, system: str | None) -> list[Segment]:
    key = "messages" if "messages" in rec.data else "conversations"
    if key not in rec.data:
        raise UserError(f"{rec.where}: missing field 'messages' (or ShareGPT 'conversations')")
    msgs = rec.data[key]
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{rec.where}: field '{key}' must be a non-empty list of messages")
    segs = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise UserError(f"{rec.where}: {key}[{i}] must be an object with role/content (or from/value)")
        role_raw = m.get("role", m.get("from"))
        text = m.get("content", m.get("value"))
        if role_raw is None or text is None:
            raise UserError(f"{rec.where}: {key}[{i}] needs 'role' and 'content' (OpenAI) or 'from' and 'value' (ShareGPT)")
        role = _ROLE_ALIASES.get(str(role_raw).lower())
        if role is None:
            raise UserError(f"{rec.where}: {key}[{i}] has unknown role '{role_raw}' "
                            f"(known: {', '.join(sorted(set(_ROLE_ALIASES)))})")
        if not isinstance(text, str):
            raise UserError(f"{rec.where}: {key}[{i}] content must be a string, got {type(text).__name__}")
        train = role == "assistant" and m.get("train", m.get("weight", 1)) not in (False, 0)
        segs.append(Segment(role, text, bool(train)))
    if not any(s.role == "assistant" for s in segs):
        raise UserError(f"{rec.where}: no assistant message to learn from")
    if system and segs[0].role != "system":
        segs.insert(0, Segment("system", system, False))
    return segs


def _prompt_completion(rec: Record, system: str | None) -> list[Segment]:
    segs = [Segment("system", system, False)] if system else []
    return segs + [Segment("user", _need_str(rec, "prompt"), False),
                   Segment("assistant", _need_str(rec, "completion"), True)]


def _text(rec: Record, system: str | None) -> list[Segment]:
    return [Segment("text", _need_str(rec, "text"), True)]


_CONVERTERS = {"alpaca": _alpaca, "messages": _messages, "prompt_completion": _prompt_completion, "text": _text}


def to_examples(records: list[Record], fmt: str = "auto", system_prompt: str | None = None,
                bad: list[str] | None = None) -> list[Example]:
    """One Example per record. A malformed or empty record raises, or with `bad` given is skipped and
    its one-line reason appended there."""
    examples = []
    for rec in records:
        try:
            kind = detect_format(rec.data) if fmt == "auto" else fmt
            if kind is None:
                raise UserError(
                    f"{rec.where}: cannot tell the format from fields {sorted(rec.data)}; expected alpaca "
                    "(instruction/input/output), messages, prompt/completion or text — or set data.format"
                )
            examples.append(Example(_CONVERTERS[kind](rec, system_prompt), rec.where))
        except UserError as e:
            if bad is None:
                raise
            bad.append(str(e))
    return examples
