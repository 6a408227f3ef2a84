"""A tool registry: named Python callables with JSON-schema parameters, called safely.

A :class:`Tool` is a name, a description, a JSON-schema-like ``parameters`` object and a function.
:class:`ToolRegistry` calls tools by name with a dict of arguments and never raises for the
agent's mistakes: every call gives a :class:`ToolResult` whose ``observation`` is a compact JSON
string the agent reads and whose ``error`` is None or one of :data:`ERROR_KINDS`:

- ``"unknown_tool"``: no such tool (a hallucination), or one outside the task's ``allowed`` tools;
  the observation names the tools that may be called, nothing else;
- ``"bad_arguments"``: the arguments fail :func:`validate_arguments`;
- ``"tool_error"``: the function raised (any ``Exception``); its message goes into the observation.

Argument checking is lenient where a small model's slip is unambiguous and strict elsewhere:

- ``"integer"`` takes an ``int``, a float with an integral value (``3.0``) or a numeric string
  (``"3"``, ``" 3 "``), all converted to ``int``; never a ``bool``, never ``2.5`` or ``"2.5"``;
- ``"number"`` takes an ``int`` or ``float`` or a numeric string (``"2.5"``, ``"1e3"``),
  converted to a number; never a ``bool``, never NaN or infinity;
- ``"string"`` takes only a ``str``; ``"boolean"`` only a ``bool`` (``"true"`` is refused: a
  string where a flag belongs is more often a wrong argument than a spelling);
- ``"array"`` takes a ``list``, and checks (and converts) each item against ``"items"``;
- ``enum`` values must match exactly (after any numeric conversion); unknown keys are refused;
  ``null`` for an optional argument means "not given" (its default applies).

Observations are ``json.dumps`` of the function's return value with sorted keys; floats are
rounded (:func:`clean_number`) so float noise (``0.30000000000000004``) never reaches the agent.
:func:`from_python` builds a :class:`Tool` from a plain, type-hinted, documented function.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable, Iterable

from tuneforge.agent.trajectory import ToolSpec
from tuneforge.errors import UserError

ERROR_KINDS = ("unknown_tool", "bad_arguments", "tool_error")
JSON_TYPES = ("string", "number", "integer", "boolean", "array")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def _check_schema(name: str, parameters: dict) -> None:
    where = f"tool {name!r}"
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise UserError(f"{where}: parameters must be a JSON-schema object ({{'type': 'object', ...}})")
    props = parameters.get("properties", {})
    if not isinstance(props, dict):
        raise UserError(f"{where}: 'properties' must be a mapping of parameter name to schema")
    for key, schema in props.items():
        if not isinstance(schema, dict) or schema.get("type") not in JSON_TYPES:
            raise UserError(f"{where}: parameter {key!r} needs a 'type' among {', '.join(JSON_TYPES)}")
        items = schema.get("items")
        if items is not None and (not isinstance(items, dict) or items.get("type") not in JSON_TYPES[:4]):
            raise UserError(f"{where}: parameter {key!r} has 'items' without a scalar 'type'")
        if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
            raise UserError(f"{where}: parameter {key!r} has an 'enum' that is not a non-empty list")
    required = parameters.get("required", [])
    if not isinstance(required, list) or any(r not in props for r in required):
        raise UserError(f"{where}: 'required' must list names among its properties")


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise UserError(f"tool name {self.name!r} must be letters, digits, '_', '.' or '-' (at most 64)")
        if not callable(self.fn):
            raise UserError(f"tool {self.name!r}: fn is not callable")
        _check_schema(self.name, self.parameters)

    @property
    def properties(self) -> dict:
        return self.parameters.get("properties", {})

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=copy.deepcopy(self.parameters))


@dataclass
class ToolResult:
    observation: str  # what the agent reads: JSON of the return value, or {"error": message}
    error: str | None = None  # None on success, else one of ERROR_KINDS
    value: Any = None  # the function's (cleaned) return value on success

    @property
    def ok(self) -> bool:
        return self.error is None


# ---- argument checking -------------------------------------------------------------------------

_NUMERIC_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def _as_number(v: Any) -> int | float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else None
    if isinstance(v, str) and _NUMERIC_RE.match(v.strip()):
        s = v.strip()
        if re.match(r"^[-+]?\d+$", s):
            return int(s)
        x = float(s)
        return x if math.isfinite(x) else None
    return None


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), type(v).__name__)


def _convert(schema: dict, v: Any, label: str) -> tuple[Any, str | None]:
    """(converted value, None) or (None, error message) for one value against one schema."""
    kind = schema["type"]
    out: Any = v
    if kind == "string":
        if not isinstance(v, str):
            return None, f"argument {label} must be a string, got {_type_name(v)}"
    elif kind == "boolean":
        if not isinstance(v, bool):
            return None, f"argument {label} must be true or false, got {_type_name(v)}"
    elif kind == "number":
        out = _as_number(v)
        if out is None:
            return None, f"argument {label} must be a number, got {_type_name(v)} {json.dumps(v, default=str)}"
    elif kind == "integer":
        x = _as_number(v)
        if x is None or (isinstance(x, float) and not x.is_integer()):
            return None, f"argument {label} must be an integer, got {_type_name(v)} {json.dumps(v, default=str)}"
        out = int(x)
    elif kind == "array":
        if not isinstance(v, list):
            return None, f"argument {label} must be an array, got {_type_name(v)}"
        items = schema.get("items")
        if items is not None:
            out = []
            for i, item in enumerate(v):
                c, err = _convert(items, item, f"{label}[{i}]")
                if err:
                    return None, err
                out.append(c)
    if "enum" in schema and out not in schema["enum"]:
        allowed = ", ".join(json.dumps(e) for e in schema["enum"])
        return None, f"argument {label} must be one of {allowed}; got {json.dumps(v, default=str)}"
    return out, None


def prepare_arguments(tool: Tool, args: Any) -> tuple[dict | None, str | None]:
    """(arguments converted to their declared types, None), or (None, what is wrong with them)."""
    props, required = tool.properties, tool.required
    takes = ", ".join(props) if props else "no arguments"
    if not isinstance(args, dict):
        return None, (f"arguments for {tool.name} must be a JSON object, got {_type_name(args)} "
                      f"({tool.name} takes: {takes})")
    missing = [k for k in required if k not in args]
    if missing:
        return None, f"missing required argument {missing[0]!r} ({tool.name} takes: {takes})"
    unknown = [k for k in args if k not in props]
    if unknown:
        return None, f"unknown argument {unknown[0]!r} ({tool.name} takes: {takes})"
    out = {}
    for k, v in args.items():
        if v is None and k not in required:  # null for an optional argument: left to its default
            continue
        c, err = _convert(props[k], v, repr(k))
        if err:
            return None, err
        out[k] = c
    return out, None


def validate_arguments(tool: Tool, args: Any) -> str | None:
    """None when ``args`` are acceptable for ``tool`` (after the conversions in the module doc),
    else an error message naming the first problem."""
    return prepare_arguments(tool, args)[1]


# ---- observations ------------------------------------------------------------------------------

def clean_number(x: float) -> int | float | str:
    """A float rounded for display: 12 significant digits first (drops float noise), then 4 decimals
    (4 significant digits below 1); integral values become ints; NaN/inf become strings."""
    if not math.isfinite(x):
        return str(x)
    r = float(f"{x:.12g}")
    r = round(r, 4) if abs(r) >= 1 else float(f"{r:.4g}")
    if r.is_integer() and abs(r) < 1e15:
        return int(r)
    return r


def _jsonable(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
        return v
    if isinstance(v, float):
        return clean_number(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        return [_jsonable(x) for x in items]
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    return str(v)


def to_observation(value: Any) -> str:
    """The compact JSON text of a return value, keys sorted, floats cleaned."""
    return json.dumps(_jsonable(value), sort_keys=True, ensure_ascii=False)


def _error_observation(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def _exception_message(e: Exception) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1:  # str(KeyError) adds quotes
        msg = str(e.args[0])
    else:
        msg = str(e)
    return msg or type(e).__name__


# ---- the registry ------------------------------------------------------------------------------

class ToolRegistry:
    """Tools by name. ``call`` never raises for a bad call; see the module doc."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, tool: Tool) -> Tool:
        if not isinstance(tool, Tool):
            raise UserError(f"expected a Tool, got {type(tool).__name__} (wrap a function with from_python)")
        if tool.name in self._tools:
            raise UserError(f"two tools are named {tool.name!r}")
        self._tools[tool.name] = tool
        return tool

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self):
        return iter(self._tools.values())

    def __getitem__(self, name: str) -> Tool:
        if name not in self._tools:
            raise UserError(f"no tool named {name!r}; tools: {', '.join(self._tools)}")
        return self._tools[name]

    def specs(self, names: Iterable[str] | None = None) -> list[ToolSpec]:
        """Specs of all tools (registry order), or of ``names`` in the order given."""
        names = self.names if names is None else list(names)
        return [self[n].spec for n in names]

    def call(self, name: str, args: Any, allowed: Iterable[str] | None = None) -> ToolResult:
        """Run a tool. ``allowed`` (the task's tool names) makes any other tool count as unknown."""
        visible = self.names if allowed is None else [n for n in allowed if n in self._tools]
        if not isinstance(name, str) or name not in visible:
            shown = name if isinstance(name, str) else json.dumps(name, default=str)
            msg = f"unknown tool {shown!r}."
            close = difflib.get_close_matches(shown, visible, n=1, cutoff=0.6)
            if close:
                msg += f" Did you mean {close[0]!r}?"
            msg += f" Available tools: {', '.join(visible) if visible else 'none'}."
            return ToolResult(_error_observation(msg), "unknown_tool")
        tool = self._tools[name]
        kwargs, err = prepare_arguments(tool, args)
        if err:
            return ToolResult(_error_observation(f"bad arguments for {name}: {err}"), "bad_arguments")
        try:
            value = _jsonable(tool.fn(**kwargs))
            observation = to_observation(value)
        except Exception as e:  # any failure of the tool is the agent's observation, never a crash
            return ToolResult(_error_observation(f"{name} failed: {_exception_message(e)}"), "tool_error")
        return ToolResult(observation, None, value)


# ---- tools from plain functions ----------------------------------------------------------------

_PY_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_for(hint: Any, where: str) -> dict:
    if hint in _PY_TYPES:
        return {"type": _PY_TYPES[hint]}
    origin, hargs = typing.get_origin(hint), typing.get_args(hint)
    if hint is list or origin is list:
        if not hargs:
            return {"type": "array"}
        if hargs[0] in _PY_TYPES:
            return {"type": "array", "items": {"type": _PY_TYPES[hargs[0]]}}
    if origin is typing.Literal and hargs:
        kinds = {type(a) for a in hargs}
        if len(kinds) == 1 and next(iter(kinds)) in _PY_TYPES:
            return {"type": _PY_TYPES[next(iter(kinds))], "enum": list(hargs)}
    raise UserError(f"{where}: type {hint!r} is not supported (use str, int, float, bool, list[...] or Literal[...])")


_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Params|Returns|Raises|Yields|Examples?|Notes?)\s*:\s*$")
_ARG_SECTIONS = ("Args", "Arguments", "Parameters", "Params")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description: the text before the first section, {param: description from Args:})."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    desc: list[str] = []
    params: dict[str, str] = {}
    section = current = None
    entry_indent = None
    for line in lines:
        text, indent = line.strip(), len(line) - len(line.lstrip())
        m = _SECTION_RE.match(text)
        if m and indent == 0:
            section, current, entry_indent = m.group(1), None, None
            continue
        if section is None:
            desc.append(text)
            continue
        if section not in _ARG_SECTIONS or not text:
            continue
        if entry_indent is None:
            entry_indent = indent
        e = re.match(r"^(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", text)
        if e and indent == entry_indent:
            current = e.group(1)
            params[current] = e.group(3).strip()
        elif current:
            params[current] = (params[current] + " " + text).strip()
    return " ".join(" ".join(desc).split()), params


def from_python(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
    """A Tool from a plain function: each parameter needs a type hint (str, int, float, bool,
    list, list[T], Literal[...]); parameters without defaults are required. The description is
    the docstring before its ``Args:`` section, parameter descriptions come from ``Args:``
    entries (``name: text`` or ``name (type): text``)."""
    tool_name = name or getattr(fn, "__name__", None)
    if not tool_name or tool_name == "<lambda>":
        raise UserError("from_python needs a name for an anonymous function")
    try:
        hints = typing.get_type_hints(fn, include_extras=False)
    except Exception as e:
        raise UserError(f"tool {tool_name!r}: cannot read type hints ({e})") from e
    doc_desc, doc_params = _parse_docstring(inspect.getdoc(fn) or "")
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        where = f"tool {tool_name!r}, parameter {p.name!r}"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise UserError(f"{where}: *args / **kwargs cannot be described as tool parameters")
        if p.kind is p.POSITIONAL_ONLY:
            raise UserError(f"{where}: positional-only parameters cannot be passed by name")
        if p.name not in hints:
            raise UserError(f"{where}: add a type hint (str, int, float, bool or list)")
        schema = _schema_for(hints[p.name], where)
        if p.name in doc_params:
            schema["description"] = doc_params[p.name]
        props[p.name] = schema
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    return Tool(
        name=tool_name,
        description=description if description is not None else doc_desc,
        parameters={"type": "object", "properties": props, "required": required},
        fn=fn,
    )
