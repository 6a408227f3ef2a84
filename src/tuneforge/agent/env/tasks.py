"""Seeded multi-step tasks over the offline tool world, with gold trajectories and gold answers.

Every gold trajectory is *executed*: each call goes through :func:`world_registry` and the step's
observation is the registry's real output; later arguments are read back from earlier
observations. So a gold trajectory replays to the same observations by construction.

Splits (:func:`generate_tasks`):

- ``"train"``: the :data:`TRAIN_TEMPLATES`; about :data:`GIVE_UP_FRACTION` of the tasks are
  give-up tasks (a lookup of a name that is in no table fails, and the right move is
  ``give_up``; ``meta["gold_answer"]`` is None). Tool lists (gold tools plus 2-4 distractors)
  never include a :data:`HELD_OUT_TOOLS` tool.
- ``"test_id"``: the same templates, tools and give-up share as train, drawn from another random
  stream (:func:`write_world` also keeps its instructions disjoint from train's).
- ``"test_ood"``: the :data:`OOD_TEMPLATES` only, none of which appears in train:
  ``average_city_population`` and ``square_area`` / ``compound_growth`` use the held-out tools
  ``average`` and ``power``, which no train task ever offers, not even as a distractor;
  ``price_per_kg``, ``money_in_country_currency`` and ``date_weeks_later`` chain train tools in
  sequences no train template uses. Distractors come from all tools. No give-up tasks.

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
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from tuneforge.agent.env.tables import (
    CITIES, COUNTRIES, CURRENCY_NAMES, LENGTH_UNITS, MASS_UNITS, PRODUCTS, UNIT_NAMES, UNKNOWN_CITIES,
    UNKNOWN_COUNTRIES, UNKNOWN_PRODUCTS, USD_RATES, WORDS,
)
from tuneforge.agent.env.world import WORLD_TOOLS, world_registry
from tuneforge.agent.tools import ToolRegistry
from tuneforge.agent.trajectory import DECISIONS, Call, Step, ToolSpec, Trajectory
from tuneforge.errors import UserError

SPLITS = ("train", "test_id", "test_ood")
GIVE_UP_FRACTION = 0.05
HELD_OUT_TOOLS = ("power", "average")
_DRAW_TRIES = 50


# ---- recording executed steps ------------------------------------------------------------------

class _Recorder:
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


Built = tuple[str, "str | None", Any]  # (instruction, final answer, gold answer)


@dataclass(frozen=True)
class Template:
    name: str
    tools: tuple[str, ...]  # the tools the task needs (a give-up task: those of the task it imitates)
    build: Callable[[random.Random, _Recorder], Built]
    give_up: bool = False


# ---- small helpers -----------------------------------------------------------------------------

def _the(country: str) -> str:
    return f"the {country}" if country.startswith("United") else country


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _n(x: Any) -> str:
    return str(x)


def _money_word(rng: random.Random, code: str) -> str:
    return code if rng.random() < 0.5 else CURRENCY_NAMES[code]


def _other_currency(rng: random.Random, not_this: str) -> str:
    return rng.choice([c for c in sorted(USD_RATES) if c != not_this])


_DAY0, _DAY_SPAN = date(2000, 1, 1), 36 * 365


def _rand_date(rng: random.Random) -> date:
    return _DAY0 + timedelta(days=rng.randint(0, _DAY_SPAN))


def _rand_amount(rng: random.Random, lo: int = 2, hi: int = 500) -> int | float:
    return rng.randint(lo, hi) if rng.random() < 0.6 else round(rng.uniform(lo, hi), 2)


def _list_text(xs: list) -> str:
    return ", ".join(_n(x) for x in xs)


def _ordinal(k: int) -> str:
    return {1: "", 2: "second ", 3: "third ", 4: "fourth "}[k]


# ---- train templates ---------------------------------------------------------------------------

_CAPITAL_POP = ("What is the population of the capital of {c}?",
                "How many people live in the capital city of {c}?",
                "Look up how many inhabitants the capital of {c} has.")


def _capital_population(rng, rec) -> Built:
    country = rng.choice(sorted(COUNTRIES))
    the = _the(country)
    instruction = rng.choice(_CAPITAL_POP).format(c=the)
    info = rec.call(f"First I need to know the capital of {the}, so I'll look up the country.",
                    "country_info", {"country": country})
    capital = info["capital"]
    city = rec.call(f"The capital of {the} is {capital}. Now I'll look up {capital} to get its population.",
                    "city_info", {"city": capital})
    pop = city["population"]
    rec.finish(f"{capital} has a population of {pop}, which answers the question.")
    return instruction, f"The capital of {the} is {capital}, which has a population of {pop}.", pop


_COUNTRY_FACT = {
    "capital": ("capital", ("What is the capital of the country where {x} is located?",
                            "{x} lies in some country. What is that country's capital?")),
    "currency": ("currency", ("Which currency is used in the country where {x} is?",
                              "What currency code would I pay with in the country {x} belongs to?")),
    "continent": ("continent", ("On which continent is the country that {x} is in?",
                                "Which continent is the country of {x} part of?")),
    "official_language": ("official language", ("What is the official language of the country where {x} is?",
                                                "Which language is official in the country that contains {x}?")),
}


def _city_country_fact(rng, rec) -> Built:
    city = rng.choice(sorted(CITIES))
    fact = rng.choice(sorted(_COUNTRY_FACT))
    label, phrasings = _COUNTRY_FACT[fact]
    instruction = rng.choice(phrasings).format(x=city)
    info = rec.call(f"I'll look up {city} to find out which country it is in.", "city_info", {"city": city})
    country = info["country"]
    the = _the(country)
    cinfo = rec.call(f"{city} is in {the}. Now I'll look up {the} to get its {label}.",
                     "country_info", {"country": country})
    value = cinfo[fact]
    rec.finish(f"The {label} of {the} is {value}, so I can answer.")
    return instruction, f"{city} is in {the}, whose {label} is {value}.", value


_PRICE_IN = ("How much does the {p} cost in {m}?",
             "What is the price of the {p} expressed in {m}?")


def _product_price_in_currency(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    to = _other_currency(rng, PRODUCTS[product]["currency"])
    instruction = rng.choice(_PRICE_IN).format(p=product, m=_money_word(rng, to))
    info = rec.call(f"I need the price of the {product} first, so I'll look it up in the catalog.",
                    "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    conv = rec.call(f"The {product} costs {_n(price)} {cur}. I'll convert that amount to {to}.",
                    "convert_currency", {"amount": price, "from_currency": cur, "to_currency": to})
    rec.finish(f"{_n(price)} {cur} is {_n(conv)} {to}, which is the answer.")
    return instruction, f"The {product} costs {_n(price)} {cur}, which is {_n(conv)} {to}.", conv


_TOTAL_IN = ("How much do {q} units of the {p} cost in {m}?",
             "I want to buy {q} of the {p}. What is the total price in {m}?")


def _product_total_in_currency(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    q = rng.randint(2, 12)
    to = _other_currency(rng, PRODUCTS[product]["currency"])
    instruction = rng.choice(_TOTAL_IN).format(q=q, p=product, m=_money_word(rng, to))
    info = rec.call(f"I'll look up the unit price of the {product}.", "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    total = rec.call(f"One {product} costs {_n(price)} {cur}; I'll multiply by {q} for the total.",
                     "multiply", {"a": price, "b": q})
    conv = rec.call(f"{q} of them cost {_n(total)} {cur}. Now I'll convert that to {to}.",
                    "convert_currency", {"amount": total, "from_currency": cur, "to_currency": to})
    rec.finish(f"The total is {_n(conv)} {to}, so I'm done.")
    return instruction, f"{q} units of the {product} cost {_n(total)} {cur}, which is {_n(conv)} {to}.", conv


def _split_cost(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    q, k = rng.randint(2, 6), rng.randint(2, 6)
    instruction = (f"{k} friends buy {q} units of the {product} together and split the bill evenly. "
                   f"How much does each friend pay, in the product's own currency?")
    info = rec.call(f"I need the price of the {product}, so I'll look it up.", "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    total = rec.call(f"It costs {_n(price)} {cur} each. I'll multiply by {q} to get the bill.",
                     "multiply", {"a": price, "b": q})
    share = rec.call(f"The bill is {_n(total)} {cur}. Now I'll divide it by {k} friends.",
                     "divide", {"a": total, "b": k})
    rec.finish(f"Each friend pays {_n(share)} {cur}, which answers the question.")
    return instruction, f"Each of the {k} friends pays {_n(share)} {cur}.", share


_DISCOUNTS = (5, 10, 15, 20, 25, 30, 40, 50)


def _product_discount(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    pct = rng.choice(_DISCOUNTS)
    instruction = rng.choice((f"The {product} is {pct}% off today. What is its sale price?",
                              f"What does the {product} cost after a {pct}% discount?"))
    info = rec.call(f"I'll look up the regular price of the {product}.", "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    off = rec.call(f"The regular price is {_n(price)} {cur}. I'll work out {pct}% of it.",
                   "percentage", {"value": price, "percent": pct})
    sale = rec.call(f"The discount is {_n(off)} {cur}; I'll subtract it from the price.",
                    "subtract", {"a": price, "b": off})
    rec.finish(f"The sale price is {_n(sale)} {cur}, so I can answer.")
    return instruction, f"After {pct}% off, the {product} costs {_n(sale)} {cur}.", sale


def _product_weight(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    unit = rng.choice(("lb", "oz", "g"))
    instruction = rng.choice((f"How much does the {product} weigh in {UNIT_NAMES[unit]}?",
                              f"What is the weight of the {product} in {UNIT_NAMES[unit]}?"))
    info = rec.call(f"I'll look up the {product} to find its weight.", "product_info", {"product": product})
    kg = info["weight_kg"]
    w = rec.call(f"It weighs {_n(kg)} kg. I'll convert that to {UNIT_NAMES[unit]}.",
                 "convert_units", {"value": kg, "from_unit": "kg", "to_unit": unit})
    rec.finish(f"{_n(kg)} kg is {_n(w)} {UNIT_NAMES[unit]}, which is the answer.")
    return instruction, f"The {product} weighs {_n(w)} {UNIT_NAMES[unit]}.", w


def _date_shift(rng, rec) -> Built:
    d = _rand_date(rng).isoformat()
    n = rng.randint(1, 400)
    before = rng.random() < 0.3
    if before:
        instruction = rng.choice((f"What was the date {n} days before {d}?",
                                  f"Which date is {n} days earlier than {d}?"))
    else:
        instruction = rng.choice((f"What date is {n} days after {d}?", f"Which date comes {n} days after {d}?"))
    days = -n if before else n
    word = "before" if before else "after"
    out = rec.call(f"I'll add {days} days to {d}.", "add_days", {"date": d, "days": days})
    rec.finish(f"The date {n} days {word} {d} is {out}.")
    return instruction, f"{n} days {word} {d} is {out}.", out


def _weekday_after(rng, rec) -> Built:
    d = _rand_date(rng).isoformat()
    n = rng.randint(1, 400)
    instruction = rng.choice((f"What day of the week is it {n} days after {d}?",
                              f"On which weekday does the date {n} days after {d} fall?"))
    out = rec.call(f"First I'll find the date {n} days after {d}.", "add_days", {"date": d, "days": n})
    wd = rec.call(f"That date is {out}. Now I'll find its day of the week.", "weekday", {"date": out})
    rec.finish(f"{out} is a {wd}, so I can answer.")
    return instruction, f"{n} days after {d} is {out}, which is a {wd}.", wd


def _days_between(rng, rec) -> Built:
    d1 = _rand_date(rng)
    d2 = d1 + timedelta(days=rng.randint(1, 2000))
    a, b = d1.isoformat(), d2.isoformat()
    instruction = rng.choice((f"How many days are there from {a} to {b}?",
                              f"How many days separate {a} and {b}?"))
    days = rec.call(f"I'll count the days from {a} to {b}.", "days_between", {"start": a, "end": b})
    rec.finish(f"There are {days} days between the two dates.")
    return instruction, f"There are {days} days from {a} to {b}.", days


def _unit_conversion(rng, rec) -> Built:
    kind = rng.choice(("length", "mass", "temperature"))
    if kind == "temperature":
        src, dst = rng.sample(("C", "F", "K"), 2)
        v = rng.randint(200, 400) if src == "K" else rng.randint(-40, 120)
    else:
        src, dst = rng.sample(sorted(LENGTH_UNITS if kind == "length" else MASS_UNITS), 2)
        v = _rand_amount(rng, 1, 500)
    a, b = UNIT_NAMES[src], UNIT_NAMES[dst]
    instruction = rng.choice((f"Convert {_n(v)} {a} to {b}.", f"What is {_n(v)} {a} in {b}?"))
    out = rec.call(f"This is a unit conversion from {a} to {b}.", "convert_units",
                   {"value": v, "from_unit": src, "to_unit": dst})
    rec.finish(f"{_n(v)} {a} is {_n(out)} {b}, so I'm done.")
    return instruction, f"{_n(v)} {a} is {_n(out)} {b}.", out


def _population_difference(rng, rec) -> Built:
    a, b = rng.sample(sorted(CITIES), 2)
    if CITIES[a]["population"] < CITIES[b]["population"]:
        a, b = b, a
    instruction = rng.choice((f"How many more people live in {a} than in {b}?",
                              f"By how many inhabitants does the population of {a} exceed that of {b}?"))
    pa = rec.call(f"I need both populations. First I'll look up {a}.", "city_info", {"city": a})["population"]
    pb = rec.call(f"{a} has {pa} people. Next I'll look up {b}.", "city_info", {"city": b})["population"]
    diff = rec.call(f"{b} has {pb} people. I'll subtract to get the difference.", "subtract", {"a": pa, "b": pb})
    rec.finish(f"The difference is {diff}, which answers the question.")
    return instruction, f"{a} has {diff} more inhabitants than {b}.", diff


def _arithmetic_chain(rng, rec) -> Built:
    a, b, c = _rand_amount(rng, 2, 999), _rand_amount(rng, 2, 999), rng.randint(2, 30)
    instruction = rng.choice((f"What is ({_n(a)} + {_n(b)}) × {c}?",
                              f"Add {_n(a)} and {_n(b)}, then multiply the sum by {c}."))
    s = rec.call(f"I'll add {_n(a)} and {_n(b)} first.", "add", {"a": a, "b": b})
    p = rec.call(f"The sum is {_n(s)}. Now I'll multiply it by {c}.", "multiply", {"a": s, "b": c})
    rec.finish(f"The result is {_n(p)}.")
    return instruction, f"({_n(a)} + {_n(b)}) × {c} = {_n(p)}.", p


def _word_count(rng, rec) -> Built:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
    instruction = rng.choice((f'How many words are in the sentence "{text}"?',
                              f'Count the words in: "{text}"'))
    n = rec.call("I'll count the words with the word counter.", "word_count", {"text": text})
    rec.finish(f"The text has {n} words.")
    return instruction, f"The sentence has {n} words.", n


def _rand_numbers(rng: random.Random, k: int) -> list:
    xs = rng.sample(range(-50, 501), k)
    return [x + rng.choice((0.25, 0.5, 0.75)) if rng.random() < 0.2 else x for x in xs]


def _kth_in_sorted(rng, rec) -> Built:
    xs = _rand_numbers(rng, rng.randint(5, 8))
    k = rng.randint(2, 3)
    largest = rng.random() < 0.5
    which = "largest" if largest else "smallest"
    instruction = f"What is the {_ordinal(k)}{which} number among {_list_text(xs)}?"
    args: dict = {"numbers": xs}
    if largest:
        args["descending"] = True
    order = "largest first" if largest else "smallest first"
    out = rec.call(f"I'll sort the numbers {order} and take the one in position {k}.", "sort_numbers", args)
    x = out[k - 1]
    rec.finish(f"Position {k} of the sorted list is {_n(x)}.")
    return instruction, f"The {_ordinal(k)}{which} number is {_n(x)}.", x


def _max_number(rng, rec) -> Built:
    xs = _rand_numbers(rng, rng.randint(4, 9))
    instruction = rng.choice((f"Which is the largest of these numbers: {_list_text(xs)}?",
                              f"Find the maximum of {_list_text(xs)}."))
    m = rec.call("I'll use the max tool on the list.", "max_of", {"numbers": xs})
    rec.finish(f"The largest number is {_n(m)}.")
    return instruction, f"The largest number is {_n(m)}.", m


def _reverse_text(rng, rec) -> Built:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    instruction = rng.choice((f'Reverse the text "{text}".', f'What is "{text}" spelled backwards?'))
    r = rec.call("I'll reverse the text character by character.", "reverse_text", {"text": text})
    rec.finish("I have the reversed text.")
    return instruction, f'"{text}" reversed is "{r}".', r


# ---- give-up templates (train / test_id): a lookup of a name that is in no table ---------------

def _giveup_country(rng, rec) -> Built:
    country = rng.choice(UNKNOWN_COUNTRIES)
    instruction = rng.choice(_CAPITAL_POP).format(c=country)
    rec.call(f"First I need to know the capital of {country}, so I'll look up the country.",
             "country_info", {"country": country}, expect_error=True)
    rec.give_up(f"There is no country named {country} in the database, so I cannot answer this question.")
    return instruction, None, None


def _giveup_city(rng, rec) -> Built:
    city = rng.choice(UNKNOWN_CITIES)
    label, phrasings = _COUNTRY_FACT[rng.choice(sorted(_COUNTRY_FACT))]
    instruction = rng.choice(phrasings).format(x=city)
    rec.call(f"I'll look up {city} to find out which country it is in.", "city_info", {"city": city},
             expect_error=True)
    rec.give_up(f"The database has no city called {city}, so I cannot find its country's {label}.")
    return instruction, None, None


def _giveup_product(rng, rec) -> Built:
    product = rng.choice(UNKNOWN_PRODUCTS)
    to = _other_currency(rng, "")
    instruction = rng.choice(_PRICE_IN).format(p=product, m=_money_word(rng, to))
    rec.call(f"I need the price of the {product} first, so I'll look it up in the catalog.",
             "product_info", {"product": product}, expect_error=True)
    rec.give_up(f"The {product} is not in the catalog, so I cannot tell its price.")
    return instruction, None, None


# ---- out-of-distribution templates (test_ood only) ---------------------------------------------

def _average_city_population(rng, rec) -> Built:
    cities = rng.sample(sorted(CITIES), rng.randint(2, 3))
    names = " and ".join(cities) if len(cities) == 2 else f"{cities[0]}, {cities[1]} and {cities[2]}"
    instruction = f"What is the average population of {names}?"
    pops = []
    for i, c in enumerate(cities):
        thought = (f"I need each city's population. I'll start with {c}." if i == 0
                   else f"{cities[i - 1]} has {pops[-1]} people. Next is {c}.")
        pops.append(rec.call(thought, "city_info", {"city": c})["population"])
    mean = rec.call(f"{cities[-1]} has {pops[-1]} people. Now I'll average the populations.",
                    "average", {"numbers": pops})
    rec.finish(f"The average population is {_n(mean)}.")
    return instruction, f"The average population of {names} is {_n(mean)}.", mean


def _square_area(rng, rec) -> Built:
    unit = rng.choice(("ft", "yd"))
    side = rng.randint(5, 400)
    instruction = f"A square plot has sides of {side} {UNIT_NAMES[unit]}. What is its area in square meters?"
    m = rec.call(f"I'll convert the side from {UNIT_NAMES[unit]} to meters first.", "convert_units",
                 {"value": side, "from_unit": unit, "to_unit": "m"})
    area = rec.call(f"The side is {_n(m)} m. The area is the side squared.", "power", {"base": m, "exponent": 2})
    rec.finish(f"The area is {_n(area)} square meters.")
    return instruction, f"The plot's area is {_n(area)} square meters.", area


def _compound_growth(rng, rec) -> Built:
    x = rng.randint(10, 5000)
    f = rng.choice((1.02, 1.05, 1.1, 1.25, 1.5, 2, 3))
    years = rng.randint(2, 10)
    instruction = f"A quantity of {x} is multiplied by {_n(f)} every year. How large is it after {years} years?"
    g = rec.call(f"The total growth factor is {_n(f)} to the power {years}.", "power",
                 {"base": f, "exponent": years})
    out = rec.call(f"The factor is {_n(g)}. I'll multiply the starting quantity {x} by it.",
                   "multiply", {"a": x, "b": g})
    rec.finish(f"After {years} years the quantity is {_n(out)}.")
    return instruction, f"After {years} years it is {_n(out)}.", out


def _price_per_kg(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    instruction = f"How much does the {product} cost per kilogram of its weight, in its own currency?"
    info = rec.call(f"I'll look up the {product}'s price and weight.", "product_info", {"product": product})
    price, cur, kg = info["price"], info["currency"], info["weight_kg"]
    per = rec.call(f"It costs {_n(price)} {cur} and weighs {_n(kg)} kg. I'll divide the price by the weight.",
                   "divide", {"a": price, "b": kg})
    rec.finish(f"That is {_n(per)} {cur} per kilogram.")
    return instruction, f"The {product} costs {_n(per)} {cur} per kilogram.", per


def _money_in_country_currency(rng, rec) -> Built:
    country = rng.choice(sorted(COUNTRIES))
    cur0 = _other_currency(rng, COUNTRIES[country]["currency"])
    amount = _rand_amount(rng, 5, 2000)
    the = _the(country)
    instruction = f"How much is {_n(amount)} {_money_word(rng, cur0)} in the currency of {the}?"
    info = rec.call(f"I need to know which currency {the} uses, so I'll look up the country.",
                    "country_info", {"country": country})
    cur = info["currency"]
    out = rec.call(_cap(f"{the} uses {cur}. I'll convert {_n(amount)} {cur0} to {cur}."),
                   "convert_currency", {"amount": amount, "from_currency": cur0, "to_currency": cur})
    rec.finish(f"The amount is {_n(out)} {cur}.")
    return instruction, f"{_n(amount)} {cur0} is {_n(out)} {cur}, the currency of {the}.", out


def _date_weeks_later(rng, rec) -> Built:
    d = _rand_date(rng).isoformat()
    w = rng.randint(2, 30)
    instruction = f"What date is {w} weeks after {d}?"
    days = rec.call(f"{w} weeks is {w} times 7 days; I'll compute that.", "multiply", {"a": w, "b": 7})
    out = rec.call(f"That is {_n(days)} days. I'll add them to {d}.", "add_days", {"date": d, "days": days})
    rec.finish(f"{w} weeks after {d} is {out}.")
    return instruction, f"{w} weeks after {d} is {out}.", out


TRAIN_TEMPLATES: tuple[Template, ...] = (
    Template("capital_population", ("country_info", "city_info"), _capital_population),
    Template("city_country_fact", ("city_info", "country_info"), _city_country_fact),
    Template("product_price_in_currency", ("product_info", "convert_currency"), _product_price_in_currency),
    Template("product_total_in_currency", ("product_info", "multiply", "convert_currency"),
             _product_total_in_currency),
    Template("split_cost", ("product_info", "multiply", "divide"), _split_cost),
    Template("product_discount", ("product_info", "percentage", "subtract"), _product_discount),
    Template("product_weight", ("product_info", "convert_units"), _product_weight),
    Template("date_shift", ("add_days",), _date_shift),
    Template("weekday_after", ("add_days", "weekday"), _weekday_after),
    Template("days_between_dates", ("days_between",), _days_between),
    Template("unit_conversion", ("convert_units",), _unit_conversion),
    Template("population_difference", ("city_info", "subtract"), _population_difference),
    Template("arithmetic_chain", ("add", "multiply"), _arithmetic_chain),
    Template("word_count", ("word_count",), _word_count),
    Template("kth_in_sorted", ("sort_numbers",), _kth_in_sorted),
    Template("max_number", ("max_of",), _max_number),
    Template("reverse_text", ("reverse_text",), _reverse_text),
)

GIVE_UP_TEMPLATES: tuple[Template, ...] = (
    Template("giveup_country", ("country_info", "city_info"), _giveup_country, give_up=True),
    Template("giveup_city", ("city_info", "country_info"), _giveup_city, give_up=True),
    Template("giveup_product", ("product_info", "convert_currency"), _giveup_product, give_up=True),
)

OOD_TEMPLATES: tuple[Template, ...] = (
    Template("average_city_population", ("city_info", "average"), _average_city_population),
    Template("square_area", ("convert_units", "power"), _square_area),
    Template("compound_growth", ("power", "multiply"), _compound_growth),
    Template("price_per_kg", ("product_info", "divide"), _price_per_kg),
    Template("money_in_country_currency", ("country_info", "convert_currency"), _money_in_country_currency),
    Template("date_weeks_later", ("multiply", "add_days"), _date_weeks_later),
)

TEMPLATES: dict[str, Template] = {t.name: t for t in TRAIN_TEMPLATES + GIVE_UP_TEMPLATES + OOD_TEMPLATES}
TRAIN_TOOLS: tuple[str, ...] = tuple(t for t in WORLD_TOOLS if t not in HELD_OUT_TOOLS)


# ---- generation --------------------------------------------------------------------------------

def _build(template: Template, rng: random.Random, registry: ToolRegistry) -> tuple[str, list[Step], str | None, Any]:
    rec = _Recorder(registry)
    instruction, final, gold = template.build(rng, rec)
    for step in rec.steps:
        if step.decision == "finish":
            step.final_answer = final  # the summarizer's target lives on its step
    called = {s.call.name for s in rec.steps if s.call is not None}
    if not called <= set(template.tools):  # a template bug
        raise RuntimeError(f"template {template.name} called {sorted(called)} but declares {template.tools}")
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


def generate_tasks(n: int, seed: int = 0, split: str = "train", exclude: Iterable[str] = ()) -> list[Trajectory]:
    """``n`` tasks of ``split`` with executed gold trajectories, deterministic for (n, seed, split).

    Instructions are distinct within the list and never one of ``exclude``. When a template runs
    out of fresh instructions another template of the same kind is used; if every template is
    exhausted, train repeats an instruction and a test split raises :class:`UserError`.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UserError(f"the number of tasks must be a non-negative integer, got {n!r}")
    rng = random.Random(f"tuneforge-tool-world:{split}:{seed}")
    registry = world_registry()
    normal = OOD_TEMPLATES if split == "test_ood" else TRAIN_TEMPLATES
    n_give_up = give_up_count(n, split)
    plan = _spread(normal, n - n_give_up, rng) + _spread(GIVE_UP_TEMPLATES, n_give_up, rng)
    rng.shuffle(plan)
    pool = WORLD_TOOLS if split == "test_ood" else TRAIN_TOOLS
    seen = set(exclude)
    tasks = []
    for i, first in enumerate(plan):
        family = GIVE_UP_TEMPLATES if first.give_up else normal
        candidates = [first] + rng.sample([t for t in family if t is not first], len(family) - 1)
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
            built = template, instruction, steps, final, gold
        template, instruction, steps, final, gold = built
        seen.add(instruction)
        extra = sorted(set(pool) - set(template.tools))
        names = list(template.tools) + rng.sample(extra, rng.randint(2, 4))
        rng.shuffle(names)
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


def write_world(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0) -> dict[str, Path]:
    """Write train.json, test_id.json and test_ood.json under ``out_dir``; test instructions never
    repeat a train instruction. Returns {split: path}."""
    from tuneforge.atomic import atomic_write_text

    out_dir = Path(out_dir)
    train = generate_tasks(n_train, seed, "train")
    seen = {t.instruction for t in train}
    splits = {
        "train": train,
        "test_id": generate_tasks(n_test, seed, "test_id", exclude=seen),
        "test_ood": generate_tasks(n_test, seed, "test_ood", exclude=seen),
    }
    paths = {}
    for name, tasks in splits.items():
        paths[name] = out_dir / f"{name}.json"
        atomic_write_text(paths[name], dumps_tasks(tasks))
    return paths
