"""Which tools a task offers besides its gold ones: near-duplicate distractors, then a few others.

A task that offers only unrelated extra tools lets a model pick by name alone. ToolBench-style
settings offer look-alikes, so every task here offers, for its gold tools, tools that share a name
token or description words with them (:data:`NEAR_DUPLICATES`) but give a different result or an
error for the same request (``convert_currency`` vs ``legacy_convert_currency``, ``add_days`` vs
``add_business_days``, ``city_info`` vs ``country_population``...). All are real tools of the
world, so calling one gives a real observation.
"""

from __future__ import annotations

import random
from typing import Iterable

# tool -> its look-alikes, most confusable first. Never a tool that answers the same request with
# the same result (sort_numbers is not listed for max_of: sorting descending gives the maximum too).
NEAR_DUPLICATES: dict[str, tuple[str, ...]] = {
    "add": ("add_days", "add_business_days"),
    "subtract": ("percent_change", "divide"),
    "multiply": ("percentage", "power", "add"),
    "divide": ("modulo", "percent_change", "multiply"),
    "power": ("multiply",),
    "percentage": ("percent_change", "multiply"),
    "modulo": ("divide",),
    "percent_change": ("percentage", "subtract"),
    "convert_units": ("convert_area", "convert_currency"),
    "convert_currency": ("legacy_convert_currency", "exchange_rate", "convert_units"),
    "convert_area": ("convert_units",),
    "exchange_rate": ("convert_currency", "legacy_convert_currency"),
    "legacy_convert_currency": ("convert_currency", "exchange_rate"),
    "add_days": ("add_business_days", "add", "days_between"),
    "days_between": ("business_days_between", "add_days"),
    "weekday": ("day_of_year",),
    "add_business_days": ("add_days", "business_days_between"),
    "business_days_between": ("days_between", "add_business_days"),
    "day_of_year": ("weekday",),
    "city_info": ("city_info_v1", "country_population", "country_info"),
    "country_info": ("country_population", "city_info"),
    "product_info": ("product_by_sku", "order_info"),
    "country_population": ("city_info",),  # not country_info: it holds the population too
    "city_info_v1": ("city_info",),
    "product_by_sku": ("product_info", "order_info"),
    "order_info": ("product_by_sku", "product_info"),
    "word_count": ("char_count",),
    "reverse_text": ("reverse_words",),
    "sort_numbers": ("min_of",),
    "max_of": ("min_of",),
    "average": ("max_of", "min_of"),
    "char_count": ("word_count",),
    "reverse_words": ("reverse_text",),
    "min_of": ("max_of", "sort_numbers"),
}


def near_duplicates(gold: Iterable[str]) -> list[str]:
    """The look-alikes of the gold tools that are not gold tools themselves, most confusable first
    (round-robin over the gold tools), without repeats."""
    gold = list(dict.fromkeys(gold))
    out: list[str] = []
    for rank in range(max(len(NEAR_DUPLICATES[g]) for g in gold) if gold else 0):
        for g in gold:
            ds = NEAR_DUPLICATES[g]
            if rank < len(ds) and ds[rank] not in gold and ds[rank] not in out:
                out.append(ds[rank])
    return out


def offered_tools(gold: Iterable[str], pool: Iterable[str], rng: random.Random, distractors: int = 3,
                  extra_tools: int = 2) -> list[str]:
    """The tool names a task offers, shuffled: its gold tools; ``distractors`` near-duplicates of them
    (drawn from the most confusable ones available in ``pool``; topped up from the rest of ``pool``
    when the gold tools have fewer look-alikes); and ``extra_tools`` other tools of ``pool``."""
    gold = list(dict.fromkeys(gold))
    pool = [t for t in pool if t not in gold]
    near = [t for t in near_duplicates(gold) if t in pool]
    # most confusable first, but not always the same ones: sample from twice as many as needed
    chosen = rng.sample(near[:2 * distractors], min(distractors, len(near[:2 * distractors])))
    rest = [t for t in pool if t not in chosen]
    chosen += rng.sample(rest, min(len(rest), distractors - len(chosen) + extra_tools))
    names = gold + chosen
    rng.shuffle(names)
    return names
