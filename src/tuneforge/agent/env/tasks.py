"""Seeded multi-step tasks over the offline tool world, with gold trajectories and gold answers.

Every gold trajectory is *executed*: each call goes through :func:`world_registry` and the step's
observation is the registry's real output; later arguments are read back from earlier
observations. So a gold trajectory replays to the same observations by construction. The templates
live in :mod:`.templates` (short ones, give-up ones), :mod:`.chains` (3-5 dependent calls) and
:mod:`.ood_templates`.

Splits (:func:`generate_tasks`):

- ``"train"``: the :data:`TRAIN_TEMPLATES`; about :data:`GIVE_UP_FRACTION` of the tasks are
  give-up tasks (a lookup of a name or order id that is in no table fails, and the right move is
  ``give_up``; ``meta["gold_answer"]`` is None). ``long_share`` of the other tasks come from
  templates of 3 or more calls. Tool lists never include a :data:`HELD_OUT_TOOLS` tool.
- ``"test_id"``: the same templates, tools, long share and give-up share as train, drawn from
  another random stream (:func:`write_world` also keeps its instructions disjoint from train's).
- ``"test_ood"``: the :data:`OOD_TEMPLATES` only, none of which appears in train:
  ``average_city_population``, ``average_capital_population`` and ``square_area`` /
  ``compound_growth`` use the held-out tools ``average`` and ``power``, which no train task ever
  offers, not even as a distractor; the others chain train tools in sequences no train template
  uses. Distractors come from all tools. No give-up tasks.

Every task offers its gold tools, ``distractors`` near-duplicates of them (:mod:`.distractors`)
and ``extra_tools`` other tools, shuffled.

A task is a :class:`~tuneforge.agent.trajectory.Trajectory` with ``meta`` = ``{"gold_answer",
"template", "split", "id"}``. :func:`answers_match` scores a predicted final answer against the
gold one; :func:`trajectory_to_dict` / :func:`trajectory_from_dict` give a JSON-ready form, and
:func:`write_world` writes ``train.json``, ``test_id.json``, ``test_ood.json``.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable

from tuneforge.agent.env.distractors import offered_tools
from tuneforge.agent.env.ood_templates import OOD_TEMPLATES
from tuneforge.agent.env.recording import Recorder, Template
from tuneforge.agent.env.templates import GIVE_UP_TEMPLATES, TRAIN_TEMPLATES
from tuneforge.agent.env.world import WORLD_TOOLS, world_registry
from tuneforge.agent.tools import ToolRegistry
from tuneforge.agent.trajectory import DECISIONS, Call, Step, ToolSpec, Trajectory
from tuneforge.errors import UserError

SPLITS = ("train", "test_id", "test_ood")
GIVE_UP_FRACTION = 0.05
HELD_OUT_TOOLS = ("power", "average")
_DRAW_TRIES = 50

# The difficulty knobs' defaults (write_world and generate_tasks take them as arguments).
DISTRACTORS = 3  # near-duplicate tools offered per task
EXTRA_TOOLS = 2  # other tools offered per task
LONG_SHARE = 0.6  # share of (non-give-up) tasks from templates of 3-5 calls

TEMPLATES: dict[str, Template] = {t.name: t for t in TRAIN_TEMPLATES + GIVE_UP_TEMPLATES + OOD_TEMPLATES}
TRAIN_TOOLS: tuple[str, ...] = tuple(t for t in WORLD_TOOLS if t not in HELD_OUT_TOOLS)


# ---- generation --------------------------------------------------------------------------------

def _build(template: Template, rng: random.Random, registry: ToolRegistry) -> tuple[str, list[Step], str | None, Any]:
    rec = Recorder(registry)
    instruction, final, gold = template.build(rng, rec)
    for step in rec.steps:
        if step.decision == "finish":
            step.final_answer = final  # the summarizer's target lives on its step
    called = [s.call.name for s in rec.steps if s.call is not None]
    if not set(called) <= set(template.tools) or len(called) != template.calls:  # a template bug
        raise RuntimeError(f"template {template.name} called {called} but declares {template.tools}, "
                           f"{template.calls} calls")
    return instruction, rec.steps, final, gold


def _spread(templates: tuple[Template, ...], k: int, rng: random.Random) -> list[Template]:
    """k templates, as even a spread as k allows, in random order."""
    order = list(templates)
    rng.shuffle(order)
    out = [order[i % len(order)] for i in range(k)]
    rng.shuffle(out)
    return out


def give_up_count(n: int, split: str) -> int:
    return 0 if split == "test_ood" else int(n * GIVE_UP_FRACTION + 0.5)


def _check_knobs(distractors: int, extra_tools: int, long_share: float) -> None:
    for name, v in (("distractors", distractors), ("extra_tools", extra_tools)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"{name} must be a non-negative integer, got {v!r}")
    if isinstance(long_share, bool) or not isinstance(long_share, (int, float)) or not 0 <= long_share <= 1:
        raise UserError(f"long_share must be a number from 0 to 1, got {long_share!r}")


def generate_tasks(n: int, seed: int = 0, split: str = "train", exclude: Iterable[str] = (), *,
                   distractors: int = DISTRACTORS, extra_tools: int = EXTRA_TOOLS,
                   long_share: float = LONG_SHARE) -> list[Trajectory]:
    """``n`` tasks of ``split`` with executed gold trajectories, deterministic for the arguments.

    Each task offers its gold tools, ``distractors`` near-duplicates of them and ``extra_tools``
    other tools. ``long_share`` of the tasks that are not give-up tasks come from templates of 3 or
    more calls (when the split has both kinds). Instructions are distinct within the list and never
    one of ``exclude``. When a template runs out of fresh instructions another template of the
    same kind (give-up or not; long or short first) is used; if every template is exhausted, train
    repeats an instruction and a test split raises :class:`UserError`.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UserError(f"the number of tasks must be a non-negative integer, got {n!r}")
    _check_knobs(distractors, extra_tools, long_share)
    rng = random.Random(f"tuneforge-tool-world:{split}:{seed}")
    registry = world_registry()
    normal = OOD_TEMPLATES if split == "test_ood" else TRAIN_TEMPLATES
    long = tuple(t for t in normal if t.long)
    short = tuple(t for t in normal if not t.long)
    n_give_up = give_up_count(n, split)
    n_long = round((n - n_give_up) * long_share) if long and short else (n - n_give_up if long else 0)
    plan = (_spread(long, n_long, rng) + _spread(short, n - n_give_up - n_long, rng)
            + _spread(GIVE_UP_TEMPLATES, n_give_up, rng))
    rng.shuffle(plan)
    pool = WORLD_TOOLS if split == "test_ood" else TRAIN_TOOLS
    seen = set(exclude)
    tasks = []
    for i, first in enumerate(plan):
        family = GIVE_UP_TEMPLATES if first.give_up else normal
        # same length class first, so running out of instructions keeps the promised long share
        alike = [t for t in family if t is not first and t.long == first.long]
        others = [t for t in family if t is not first and t.long != first.long]
        candidates = [first] + rng.sample(alike, len(alike)) + rng.sample(others, len(others))
        built = None
        for template in candidates:
            for _ in range(_DRAW_TRIES):
                instruction, steps, final, gold = _build(template, rng, registry)
                if instruction not in seen:
                    built = template, instruction, steps, final, gold
                    break
            if built:
                break
        if built is None:
            if split != "train":
                raise UserError(f"cannot draw {n} distinct {split} tasks that differ from the excluded ones; "
                                f"ask for fewer")
            built = first, *_build(first, rng, registry)
        template, instruction, steps, final, gold = built
        seen.add(instruction)
        names = offered_tools(template.tools, pool, rng, distractors, extra_tools)
        tasks.append(Trajectory(
            instruction=instruction,
            tools=registry.specs(names),
            steps=steps,
            final_answer=final,
            where=f"{split}.json[{i}]",
            meta={"gold_answer": gold, "template": template.name, "split": split, "id": f"{split}-{seed}-{i}"},
        ))
    return tasks


# ---- scoring -----------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|(?<![\w.])[-+]?\.\d+")


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` ("1,234.5", "-3", "2e3"; thousands commas allowed)."""
    out = []
    for m in _NUMBER_RE.finditer(text):
        try:
            out.append(float(m.group(0).replace(",", "")))
        except ValueError:
            continue
    return out


def normalize_answer(text: str) -> str:
    """Lowercase, accents removed, punctuation turned into spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def _as_gold_number(gold: Any) -> float | None:
    if isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):
        return float(gold)
    if isinstance(gold, str) and re.fullmatch(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*", gold):
        return float(gold)
    return None


def answers_match(predicted: str | None, gold: Any) -> bool:
    """Does a predicted final answer state the gold answer?

    Numeric gold (a number, or a string that is one number): some number written in the
    prediction is within relative tolerance 1e-2 (absolute 1e-6) of it. Other gold: its
    normalised text (:func:`normalize_answer`) appears in the normalised prediction as whole
    words. A None gold (a give-up task) or a missing prediction never matches.
    """
    if predicted is None or gold is None:
        return False
    g = _as_gold_number(gold)
    if g is not None:
        return any(math.isclose(p, g, rel_tol=1e-2, abs_tol=1e-6) for p in numbers_in(str(predicted)))
    want = normalize_answer(gold)
    return bool(want) and f" {want} " in f" {normalize_answer(predicted)} "


# ---- serialisation -----------------------------------------------------------------------------

def trajectory_to_dict(t: Trajectory) -> dict:
    """A JSON-ready dict of a trajectory (the field names of the dataclasses)."""
    return {
        "instruction": t.instruction,
        "tools": [{"name": s.name, "description": s.description, "parameters": s.parameters} for s in t.tools],
        "steps": [
            {
                "thought": s.thought,
                "decision": s.decision,
                "call": None if s.call is None else {"name": s.call.name, "arguments": s.call.arguments,
                                                     "raw_arguments": s.call.raw_arguments},
                "observation": s.observation,
                "notes": list(s.notes),
                "final_answer": s.final_answer,
            }
            for s in t.steps
        ],
        "final_answer": t.final_answer,
        "where": t.where,
        "meta": t.meta,
    }


def _need(d: Any, key: str, kind: type | tuple, where: str, optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        if optional:
            return None
        raise UserError(f"{where}: missing {key!r}")
    if not isinstance(d[key], kind):
        raise UserError(f"{where}: {key!r} has the wrong type ({type(d[key]).__name__})")
    return d[key]


def trajectory_from_dict(d: dict, where: str = "") -> Trajectory:
    """The inverse of :func:`trajectory_to_dict`; a malformed dict raises :class:`UserError`."""
    here = where or (str(d.get("where") or "trajectory") if isinstance(d, dict) else "trajectory")
    tools = []
    for i, s in enumerate(_need(d, "tools", list, here)):
        w = f"{here} tools[{i}]"
        tools.append(ToolSpec(name=_need(s, "name", str, w), description=_need(s, "description", str, w, True) or "",
                              parameters=_need(s, "parameters", dict, w, True) or {}))
    steps = []
    for i, s in enumerate(_need(d, "steps", list, here)):
        w = f"{here} steps[{i}]"
        decision = _need(s, "decision", str, w, True)
        if decision is not None and decision not in DECISIONS:
            raise UserError(f"{w}: decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        c = _need(s, "call", dict, w, True)
        call = None
        if c is not None:
            wc = f"{w} call"
            call = Call(name=_need(c, "name", str, wc), arguments=_need(c, "arguments", dict, wc, True),
                        raw_arguments=_need(c, "raw_arguments", str, wc, True) or "")
        steps.append(Step(thought=_need(s, "thought", str, w, True) or "", decision=decision, call=call,
                          observation=_need(s, "observation", str, w, True),
                          notes=list(_need(s, "notes", list, w, True) or []),
                          final_answer=_need(s, "final_answer", str, w, True)))
    return Trajectory(
        instruction=_need(d, "instruction", str, here),
        tools=tools,
        steps=steps,
        final_answer=_need(d, "final_answer", str, here, True),
        where=_need(d, "where", str, here, True) or "",
        meta=dict(_need(d, "meta", dict, here, True) or {}),
    )


def dumps_tasks(tasks: Iterable[Trajectory]) -> str:
    """A JSON list, one trajectory per line."""
    rows = [json.dumps(trajectory_to_dict(t), ensure_ascii=False) for t in tasks]
    return "[\n" + ",\n".join(rows) + "\n]\n" if rows else "[]\n"


def read_tasks(path: str | Path) -> list[Trajectory]:
    """Trajectories from a file written by :func:`write_world`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of trajectories")
    return [trajectory_from_dict(d, f"{path.name}[{i}]") for i, d in enumerate(data)]


def write_world(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0, *,
                distractors: int = DISTRACTORS, extra_tools: int = EXTRA_TOOLS,
                long_share: float = LONG_SHARE) -> dict[str, Path]:
    """Write train.json, test_id.json and test_ood.json under ``out_dir``; test instructions never
    repeat a train instruction. The knobs are :func:`generate_tasks`'s, the same for every split.
    Returns {split: path}."""
    from tuneforge.atomic import atomic_write_text

    knobs = {"distractors": distractors, "extra_tools": extra_tools, "long_share": long_share}
    out_dir = Path(out_dir)
    train = generate_tasks(n_train, seed, "train", **knobs)
    seen = {t.instruction for t in train}
    splits = {
        "train": train,
        "test_id": generate_tasks(n_test, seed, "test_id", exclude=seen, **knobs),
        "test_ood": generate_tasks(n_test, seed, "test_ood", exclude=seen, **knobs),
    }
    paths = {}
    for name, tasks in splits.items():
        paths[name] = out_dir / f"{name}.json"
        atomic_write_text(paths[name], dumps_tasks(tasks))
    return paths
