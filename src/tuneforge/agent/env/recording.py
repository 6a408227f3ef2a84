"""What every tool-world template is built from: a recorder that executes gold calls through the
registry (so observations are real and later arguments are read back from them), the
:class:`Template` type, and small helpers for writing instructions."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Callable

from tuneforge.agent.env.tables import CURRENCY_NAMES, USD_RATES
from tuneforge.agent.tools import ToolRegistry
from tuneforge.agent.trajectory import Call, Step

# ---- recording executed steps ------------------------------------------------------------------

class Recorder:
    """Runs gold calls through the registry and records them as steps."""

    def __init__(self, registry: ToolRegistry):
        self.registry = registry
        self.steps: list[Step] = []

    def call(self, thought: str, name: str, args: dict, expect_error: bool = False) -> Any:
        result = self.registry.call(name, args)
        if result.ok == expect_error:  # a bug in a template, not a user mistake
            raise RuntimeError(f"gold call {name}({args}) gave {result.observation}")
        self.steps.append(Step(thought=thought, decision="call",
                               call=Call(name=name, arguments=dict(args), raw_arguments=json.dumps(args)),
                               observation=result.observation))
        return json.loads(result.observation)

    def finish(self, thought: str) -> None:
        self.steps.append(Step(thought=thought, decision="finish"))

    def give_up(self, thought: str) -> None:
        self.steps.append(Step(thought=thought, decision="give_up"))


LONG_CHAIN = 3  # calls from which a template counts as a long chain

Built = tuple[str, "str | None", Any]  # (instruction, final answer, gold answer)


@dataclass(frozen=True)
class Template:
    name: str
    tools: tuple[str, ...]  # the tools the task needs (a give-up task: those of the task it imitates)
    calls: int  # how many calls its gold trajectory makes (checked when a task is built)
    build: Callable[[random.Random, Recorder], Built]
    give_up: bool = False

    @property
    def long(self) -> bool:
        """A dependent chain of 3 or more calls: what the ``long_share`` of a split is drawn from."""
        return self.calls >= LONG_CHAIN


# ---- small helpers -----------------------------------------------------------------------------

def with_the(country: str) -> str:
    return f"the {country}" if country.startswith("United") else country


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def fmt(x: Any) -> str:
    return str(x)


def money_word(rng: random.Random, code: str) -> str:
    return code if rng.random() < 0.5 else CURRENCY_NAMES[code]


def other_currency(rng: random.Random, not_this: str) -> str:
    return rng.choice([c for c in sorted(USD_RATES) if c != not_this])


_DAY0, _DAY_SPAN = date(2000, 1, 1), 36 * 365


def rand_date(rng: random.Random) -> date:
    return _DAY0 + timedelta(days=rng.randint(0, _DAY_SPAN))


def rand_amount(rng: random.Random, lo: int = 2, hi: int = 500) -> int | float:
    return rng.randint(lo, hi) if rng.random() < 0.6 else round(rng.uniform(lo, hi), 2)


def list_text(xs: list) -> str:
    return ", ".join(fmt(x) for x in xs)


def ordinal(k: int) -> str:
    return {1: "", 2: "second ", 3: "third ", 4: "fourth "}[k]
