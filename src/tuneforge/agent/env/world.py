"""The offline tool world: deterministic tools over the shipped tables (no network, no clock).

Tools (:data:`WORLD_TOOLS`, in this order):

- arithmetic: ``add``, ``subtract``, ``multiply``, ``divide``, ``power``, ``percentage``, ``modulo``,
  ``percent_change``
- conversions: ``convert_units`` (length, mass, temperature), ``convert_currency`` (fixed rates),
  ``convert_area``, ``exchange_rate``, ``legacy_convert_currency`` (deprecated: other, older rates)
- dates: ``add_days``, ``days_between``, ``weekday``, ``add_business_days``, ``business_days_between``,
  ``day_of_year``
- lookups: ``city_info``, ``country_info``, ``product_info``, ``country_population``, ``city_info_v1``
  (retired: always an error), ``product_by_sku``, ``order_info``
- text and lists: ``word_count``, ``reverse_text``, ``sort_numbers``, ``max_of``, ``average``,
  ``char_count``, ``reverse_words``, ``min_of``

The tools after the first 19 exist mostly as near-duplicates of others (see :mod:`.distractors`):
alike in name and description but giving a different result or an error for the same request, so
choosing the right tool takes reading its description. Several are also gold tools of some task,
so a model cannot learn to just avoid them.

Bad inputs raise ``ValueError`` / ``KeyError`` / ``ZeroDivisionError``; the registry turns them into
``tool_error`` observations. Lookups ignore case, accents and extra spaces.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date, timedelta
from typing import Literal

from tuneforge.agent.env.tables import (
    AREA_UNITS, CITIES, COUNTRIES, LEGACY_USD_RATES, LENGTH_UNITS, MASS_UNITS, ORDERS, PRODUCTS, TEMPERATURE_UNITS,
    USD_RATES,
)
from tuneforge.agent.tools import Tool, ToolRegistry, from_python

Unit = Literal[tuple(LENGTH_UNITS) + tuple(MASS_UNITS) + TEMPERATURE_UNITS]  # type: ignore[valid-type]
Currency = Literal[tuple(USD_RATES)]  # type: ignore[valid-type]
AreaUnit = Literal[tuple(AREA_UNITS)]  # type: ignore[valid-type]

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MAX_ABS = 1e15


def _finite(x: float, what: str) -> float:
    if not math.isfinite(x) or abs(x) > _MAX_ABS:
        raise ValueError(f"{what} is too large")
    return x


# ---- arithmetic --------------------------------------------------------------------------------

def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return _finite(a + b, "the sum")


def subtract(a: float, b: float) -> float:
    """Subtract b from a (returns a - b).

    Args:
        a: The number to subtract from.
        b: The number to subtract.
    """
    return _finite(a - b, "the difference")


def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return _finite(a * b, "the product")


def divide(a: float, b: float) -> float:
    """Divide a by b (returns a / b).

    Args:
        a: The dividend.
        b: The divisor; must not be zero.
    """
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return _finite(a / b, "the quotient")


def power(base: float, exponent: float) -> float:
    """Raise base to the power exponent.

    Args:
        base: The base.
        exponent: The exponent (at most 100 in absolute value).
    """
    if abs(exponent) > 100:
        raise ValueError("the exponent must be between -100 and 100")
    if base == 0 and exponent < 0:
        raise ZeroDivisionError("zero cannot be raised to a negative power")
    if base < 0 and not float(exponent).is_integer():
        raise ValueError("a negative base needs a whole-number exponent")
    try:
        return _finite(float(base) ** exponent, "the result")
    except OverflowError:
        raise ValueError("the result is too large") from None


def percentage(value: float, percent: float) -> float:
    """Compute percent % of value (returns value * percent / 100).

    Args:
        value: The whole amount.
        percent: The percentage to take, e.g. 15 for 15%.
    """
    return _finite(value * percent / 100, "the result")


def modulo(a: float, b: float) -> float:
    """Give the remainder when a is divided by b (a mod b), not the quotient.

    Args:
        a: The dividend.
        b: The divisor; must not be zero.
    """
    if b == 0:
        raise ZeroDivisionError("modulo by zero")
    return _finite(math.fmod(a, b), "the remainder")


def percent_change(old: float, new: float) -> float:
    """Compute the percent change from old to new, as a percentage of old (returns
    (new - old) / old * 100).

    Args:
        old: The starting value; must not be zero.
        new: The final value.
    """
    if old == 0:
        raise ZeroDivisionError("the starting value is zero")
    return _finite((new - old) / old * 100, "the change")


# ---- conversions -------------------------------------------------------------------------------

def _to_kelvin(v: float, unit: str) -> float:
    return {"C": v + 273.15, "F": (v - 32) * 5 / 9 + 273.15, "K": v}[unit]


def _from_kelvin(k: float, unit: str) -> float:
    return {"C": k - 273.15, "F": (k - 273.15) * 9 / 5 + 32, "K": k}[unit]


def convert_units(value: float, from_unit: Unit, to_unit: Unit) -> float:
    """Convert a length, mass or temperature between units. Length: m, km, cm, mm, mi, yd, ft, in.
    Mass: kg, g, mg, t, lb, oz. Temperature: C, F, K.

    Args:
        value: The amount to convert.
        from_unit: The unit of value.
        to_unit: The unit to convert to (same kind of quantity).
    """
    for table in (LENGTH_UNITS, MASS_UNITS):
        if from_unit in table and to_unit in table:
            return _finite(value * table[from_unit] / table[to_unit], "the result")
    if from_unit in TEMPERATURE_UNITS and to_unit in TEMPERATURE_UNITS:
        k = _to_kelvin(value, from_unit)
        if k < 0:
            raise ValueError("that temperature is below absolute zero")
        return _from_kelvin(k, to_unit)
    raise ValueError(f"cannot convert {from_unit} to {to_unit}: they measure different things")


def convert_currency(amount: float, from_currency: Currency, to_currency: Currency) -> float:
    """Convert an amount of money between currencies at the world's fixed exchange rates.

    Args:
        amount: The amount of money.
        from_currency: The currency code of amount, e.g. USD.
        to_currency: The currency code to convert to, e.g. EUR.
    """
    return _finite(amount / USD_RATES[from_currency] * USD_RATES[to_currency], "the result")


def convert_area(value: float, from_unit: AreaUnit, to_unit: AreaUnit) -> float:
    """Convert an area between units: m2, km2, ha (hectare), acre, ft2. Only areas, not lengths or
    masses.

    Args:
        value: The area to convert.
        from_unit: The unit of value.
        to_unit: The unit to convert to.
    """
    return _finite(value * AREA_UNITS[from_unit] / AREA_UNITS[to_unit], "the result")


def exchange_rate(from_currency: Currency, to_currency: Currency) -> float:
    """Give the world's fixed exchange rate: how many units of to_currency one unit of
    from_currency buys. Converts no amount.

    Args:
        from_currency: The currency code to convert from, e.g. USD.
        to_currency: The currency code to convert to, e.g. EUR.
    """
    return USD_RATES[to_currency] / USD_RATES[from_currency]


def legacy_convert_currency(amount: float, from_currency: Currency, to_currency: Currency) -> float:
    """Deprecated: convert an amount of money between currencies at the frozen 2015 exchange rates,
    kept only for old invoices. Use convert_currency for the world's current rates.

    Args:
        amount: The amount of money.
        from_currency: The currency code of amount, e.g. USD.
        to_currency: The currency code to convert to, e.g. EUR.
    """
    return _finite(amount / LEGACY_USD_RATES[from_currency] * LEGACY_USD_RATES[to_currency], "the result")


# ---- dates -------------------------------------------------------------------------------------

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _parse_date(text: str, what: str) -> date:
    text = text.strip()
    if not _DATE_RE.match(text):
        raise ValueError(f"{what} must be a date written YYYY-MM-DD, got {text!r}")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a valid calendar date") from None


def add_days(date: str, days: int) -> str:
    """Add a number of days to a date (negative days go back in time).

    Args:
        date: The start date, YYYY-MM-DD.
        days: How many days to add.
    """
    start = _parse_date(date, "date")
    try:
        return (start + timedelta(days=days)).isoformat()
    except OverflowError:
        raise ValueError("the resulting date is out of range") from None


def days_between(start: str, end: str) -> int:
    """Count the days from start to end (negative when end is before start).

    Args:
        start: The first date, YYYY-MM-DD.
        end: The second date, YYYY-MM-DD.
    """
    return (_parse_date(end, "end") - _parse_date(start, "start")).days


def weekday(date: str) -> str:
    """Give the day of the week of a date.

    Args:
        date: The date, YYYY-MM-DD.
    """
    return WEEKDAYS[_parse_date(date, "date").weekday()]


_MAX_BUSINESS_DAYS = 20_000  # about 80 years: bounds the day-by-day walks below


def add_business_days(date: str, days: int) -> str:
    """Add business days (Monday to Friday) to a date, skipping Saturdays and Sundays; negative
    days go back in time.

    Args:
        date: The start date, YYYY-MM-DD.
        days: How many business days to add.
    """
    current = _parse_date(date, "date")
    if abs(days) > _MAX_BUSINESS_DAYS:
        raise ValueError(f"days must be between -{_MAX_BUSINESS_DAYS} and {_MAX_BUSINESS_DAYS}")
    step, left = (1 if days >= 0 else -1), abs(days)
    try:
        while left:
            current += timedelta(days=step)
            left -= current.weekday() < 5
    except OverflowError:
        raise ValueError("the resulting date is out of range") from None
    return current.isoformat()


def business_days_between(start: str, end: str) -> int:
    """Count the business days (Monday to Friday) from start to end, counting end but not start
    (negative when end is before start).

    Args:
        start: The first date, YYYY-MM-DD.
        end: The second date, YYYY-MM-DD.
    """
    a, b = _parse_date(start, "start"), _parse_date(end, "end")
    sign = 1 if b >= a else -1
    lo, hi = min(a, b), max(a, b)
    if (hi - lo).days > _MAX_BUSINESS_DAYS * 2:
        raise ValueError("the dates are too far apart")
    return sign * sum((lo + timedelta(days=i)).weekday() < 5 for i in range(1, (hi - lo).days + 1))


def day_of_year(date: str) -> int:
    """Give the day number of a date within its year (1 for January 1st).

    Args:
        date: The date, YYYY-MM-DD.
    """
    return _parse_date(date, "date").timetuple().tm_yday


# ---- lookups -----------------------------------------------------------------------------------

def normalize_name(text: str) -> str:
    """Lowercase, accents removed, punctuation dropped, spaces collapsed: the key lookups use."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _lookup(table: dict[str, dict], name: str, kind: str, key: str, by: str = "named") -> dict:
    index = {normalize_name(k): k for k in table}
    found = index.get(normalize_name(name))
    if found is None:
        raise KeyError(f"no {kind} {by} {name!r} in the database")
    return {key: found, **table[found]}


# The catalog keyed by SKU, for product_by_sku (product_info looks products up by name).
_PRODUCTS_BY_SKU = {row["sku"]: {"product": name, **{k: v for k, v in row.items() if k != "sku"}}
                    for name, row in PRODUCTS.items()}


def city_info(city: str) -> dict:
    """Look up a city: its country, population, UTC offset in hours and elevation in meters.

    Args:
        city: The city name, e.g. Paris.
    """
    return _lookup(CITIES, city, "city", "city")


def country_info(country: str) -> dict:
    """Look up a country: its capital, currency code, continent, population, official language
    and calling code.

    Args:
        country: The country name, e.g. France.
    """
    return _lookup(COUNTRIES, country, "country", "country")


def product_info(product: str) -> dict:
    """Look up a product in the catalog by name: its SKU code, price, the currency of the price,
    category, weight in kg and the country it is made in.

    Args:
        product: The product name, e.g. Nimbus Kettle.
    """
    return _lookup(PRODUCTS, product, "product", "product")


def country_population(country: str) -> int:
    """Give the population of a whole country (not of a city).

    Args:
        country: The country name, e.g. France.
    """
    return _lookup(COUNTRIES, country, "country", "country")["population"]


def city_info_v1(city: str) -> dict:
    """Deprecated: the retired first version of the city lookup. It no longer answers; use
    city_info.

    Args:
        city: The city name, e.g. Paris.
    """
    raise ValueError("city_info_v1 was retired; use city_info")


def product_by_sku(sku: str) -> dict:
    """Look up a product in the catalog by its SKU code (e.g. NK-433), not by its name: the
    product name, price, the currency of the price, category, weight in kg and the country it is
    made in.

    Args:
        sku: The product's SKU code, e.g. NK-433.
    """
    return _lookup(_PRODUCTS_BY_SKU, sku, "product", "sku", by="with SKU")


def order_info(order_id: str) -> dict:
    """Look up an order by its id (e.g. ORD-52445): the SKU of the product ordered, the quantity,
    the city it ships to, the date it was placed and its delivery time in business days.

    Args:
        order_id: The order id, e.g. ORD-52445.
    """
    return _lookup(ORDERS, order_id, "order", "order_id", by="with id")


# ---- text and lists ----------------------------------------------------------------------------

def word_count(text: str) -> int:
    """Count the words (whitespace-separated) in a text.

    Args:
        text: The text.
    """
    return len(text.split())


def reverse_text(text: str) -> str:
    """Reverse a text character by character.

    Args:
        text: The text to reverse.
    """
    return text[::-1]


def sort_numbers(numbers: list[float], descending: bool = False) -> list[float]:
    """Sort a list of numbers, smallest first unless descending is true.

    Args:
        numbers: The numbers to sort.
        descending: Sort largest first.
    """
    return sorted(numbers, reverse=descending)


def max_of(numbers: list[float]) -> float:
    """Give the largest number in a list.

    Args:
        numbers: A non-empty list of numbers.
    """
    if not numbers:
        raise ValueError("the list is empty")
    return max(numbers)


def average(numbers: list[float]) -> float:
    """Give the arithmetic mean of a list of numbers.

    Args:
        numbers: A non-empty list of numbers.
    """
    if not numbers:
        raise ValueError("the list is empty")
    return _finite(sum(numbers) / len(numbers), "the mean")


def char_count(text: str) -> int:
    """Count the characters in a text, spaces included (not the words).

    Args:
        text: The text.
    """
    return len(text)


def reverse_words(text: str) -> str:
    """Reverse the order of the words in a text; each word keeps its spelling.

    Args:
        text: The text whose words to reverse.
    """
    return " ".join(reversed(text.split()))


def min_of(numbers: list[float]) -> float:
    """Give the smallest number in a list.

    Args:
        numbers: A non-empty list of numbers.
    """
    if not numbers:
        raise ValueError("the list is empty")
    return min(numbers)


_FUNCTIONS = (
    add, subtract, multiply, divide, power, percentage,
    convert_units, convert_currency,
    add_days, days_between, weekday,
    city_info, country_info, product_info,
    word_count, reverse_text, sort_numbers, max_of, average,
    # near-duplicates, added to make choosing a tool take reading (see .distractors)
    modulo, percent_change,
    convert_area, exchange_rate, legacy_convert_currency,
    add_business_days, business_days_between, day_of_year,
    country_population, city_info_v1, product_by_sku, order_info,
    char_count, reverse_words, min_of,
)

WORLD_TOOLS: tuple[str, ...] = tuple(f.__name__ for f in _FUNCTIONS)


def world_tools() -> list[Tool]:
    return [from_python(f) for f in _FUNCTIONS]


def world_registry() -> ToolRegistry:
    """A registry holding every tool of the world (fresh each call; the tools are stateless)."""
    return ToolRegistry(world_tools())
