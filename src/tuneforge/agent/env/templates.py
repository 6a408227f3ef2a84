"""The train / test_id templates of the tool world, and the give-up templates.

Each template draws its values from the rng, executes its gold calls through a
:class:`~.recording.Recorder` and returns (instruction, final answer, gold answer). Arguments a
later call needs are taken from the earlier observations, never from the drawn values, so a
trajectory is only right if the tools were read. See :mod:`.chains` for the 3-5 call templates.
"""

from __future__ import annotations

import random
from datetime import timedelta

from tuneforge.agent.env.chains import CHAIN_TEMPLATES, ORDER_TOTAL
from tuneforge.agent.env.recording import (
    Built, Template, capitalize, fmt, list_text, money_word, ordinal, other_currency, rand_amount, rand_date,
    with_the,
)
from tuneforge.agent.env.tables import (
    CITIES, COUNTRIES, LENGTH_UNITS, MASS_UNITS, PRODUCTS, UNIT_NAMES, UNKNOWN_CITIES, UNKNOWN_COUNTRIES,
    UNKNOWN_ORDERS, UNKNOWN_PRODUCTS, WORDS,
)

# ---- train templates ---------------------------------------------------------------------------

_CAPITAL_POP = ("What is the population of the capital of {c}?",
                "How many people live in the capital city of {c}?",
                "Look up how many inhabitants the capital of {c} has.")


def _capital_population(rng, rec) -> Built:
    country = rng.choice(sorted(COUNTRIES))
    the = with_the(country)
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
    the = with_the(country)
    cinfo = rec.call(f"{city} is in {the}. Now I'll look up {the} to get its {label}.",
                     "country_info", {"country": country})
    value = cinfo[fact]
    rec.finish(f"The {label} of {the} is {value}, so I can answer.")
    return instruction, f"{city} is in {the}, whose {label} is {value}.", value


_PRICE_IN = ("How much does the {p} cost in {m}?",
             "What is the price of the {p} expressed in {m}?")


def _product_price_in_currency(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    to = other_currency(rng, PRODUCTS[product]["currency"])
    instruction = rng.choice(_PRICE_IN).format(p=product, m=money_word(rng, to))
    info = rec.call(f"I need the price of the {product} first, so I'll look it up in the catalog.",
                    "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    conv = rec.call(f"The {product} costs {fmt(price)} {cur}. I'll convert that amount to {to}.",
                    "convert_currency", {"amount": price, "from_currency": cur, "to_currency": to})
    rec.finish(f"{fmt(price)} {cur} is {fmt(conv)} {to}, which is the answer.")
    return instruction, f"The {product} costs {fmt(price)} {cur}, which is {fmt(conv)} {to}.", conv


_TOTAL_IN = ("How much do {q} units of the {p} cost in {m}?",
             "I want to buy {q} of the {p}. What is the total price in {m}?")


def _product_total_in_currency(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    q = rng.randint(2, 12)
    to = other_currency(rng, PRODUCTS[product]["currency"])
    instruction = rng.choice(_TOTAL_IN).format(q=q, p=product, m=money_word(rng, to))
    info = rec.call(f"I'll look up the unit price of the {product}.", "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    total = rec.call(f"One {product} costs {fmt(price)} {cur}; I'll multiply by {q} for the total.",
                     "multiply", {"a": price, "b": q})
    conv = rec.call(f"{q} of them cost {fmt(total)} {cur}. Now I'll convert that to {to}.",
                    "convert_currency", {"amount": total, "from_currency": cur, "to_currency": to})
    rec.finish(f"The total is {fmt(conv)} {to}, so I'm done.")
    return instruction, f"{q} units of the {product} cost {fmt(total)} {cur}, which is {fmt(conv)} {to}.", conv


def _split_cost(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    q, k = rng.randint(2, 6), rng.randint(2, 6)
    instruction = (f"{k} friends buy {q} units of the {product} together and split the bill evenly. "
                   f"How much does each friend pay, in the product's own currency?")
    info = rec.call(f"I need the price of the {product}, so I'll look it up.", "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    total = rec.call(f"It costs {fmt(price)} {cur} each. I'll multiply by {q} to get the bill.",
                     "multiply", {"a": price, "b": q})
    share = rec.call(f"The bill is {fmt(total)} {cur}. Now I'll divide it by {k} friends.",
                     "divide", {"a": total, "b": k})
    rec.finish(f"Each friend pays {fmt(share)} {cur}, which answers the question.")
    return instruction, f"Each of the {k} friends pays {fmt(share)} {cur}.", share


_DISCOUNTS = (5, 10, 15, 20, 25, 30, 40, 50)


def _product_discount(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    pct = rng.choice(_DISCOUNTS)
    instruction = rng.choice((f"The {product} is {pct}% off today. What is its sale price?",
                              f"What does the {product} cost after a {pct}% discount?"))
    info = rec.call(f"I'll look up the regular price of the {product}.", "product_info", {"product": product})
    price, cur = info["price"], info["currency"]
    off = rec.call(f"The regular price is {fmt(price)} {cur}. I'll work out {pct}% of it.",
                   "percentage", {"value": price, "percent": pct})
    sale = rec.call(f"The discount is {fmt(off)} {cur}; I'll subtract it from the price.",
                    "subtract", {"a": price, "b": off})
    rec.finish(f"The sale price is {fmt(sale)} {cur}, so I can answer.")
    return instruction, f"After {pct}% off, the {product} costs {fmt(sale)} {cur}.", sale


def _product_weight(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    unit = rng.choice(("lb", "oz", "g"))
    instruction = rng.choice((f"How much does the {product} weigh in {UNIT_NAMES[unit]}?",
                              f"What is the weight of the {product} in {UNIT_NAMES[unit]}?"))
    info = rec.call(f"I'll look up the {product} to find its weight.", "product_info", {"product": product})
    kg = info["weight_kg"]
    w = rec.call(f"It weighs {fmt(kg)} kg. I'll convert that to {UNIT_NAMES[unit]}.",
                 "convert_units", {"value": kg, "from_unit": "kg", "to_unit": unit})
    rec.finish(f"{fmt(kg)} kg is {fmt(w)} {UNIT_NAMES[unit]}, which is the answer.")
    return instruction, f"The {product} weighs {fmt(w)} {UNIT_NAMES[unit]}.", w


def _date_shift(rng, rec) -> Built:
    d = rand_date(rng).isoformat()
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
    d = rand_date(rng).isoformat()
    n = rng.randint(1, 400)
    instruction = rng.choice((f"What day of the week is it {n} days after {d}?",
                              f"On which weekday does the date {n} days after {d} fall?"))
    out = rec.call(f"First I'll find the date {n} days after {d}.", "add_days", {"date": d, "days": n})
    wd = rec.call(f"That date is {out}. Now I'll find its day of the week.", "weekday", {"date": out})
    rec.finish(f"{out} is a {wd}, so I can answer.")
    return instruction, f"{n} days after {d} is {out}, which is a {wd}.", wd


def _days_between(rng, rec) -> Built:
    d1 = rand_date(rng)
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
        v = rand_amount(rng, 1, 500)
    a, b = UNIT_NAMES[src], UNIT_NAMES[dst]
    instruction = rng.choice((f"Convert {fmt(v)} {a} to {b}.", f"What is {fmt(v)} {a} in {b}?"))
    out = rec.call(f"This is a unit conversion from {a} to {b}.", "convert_units",
                   {"value": v, "from_unit": src, "to_unit": dst})
    rec.finish(f"{fmt(v)} {a} is {fmt(out)} {b}, so I'm done.")
    return instruction, f"{fmt(v)} {a} is {fmt(out)} {b}.", out


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
    a, b, c = rand_amount(rng, 2, 999), rand_amount(rng, 2, 999), rng.randint(2, 30)
    instruction = rng.choice((f"What is ({fmt(a)} + {fmt(b)}) × {c}?",
                              f"Add {fmt(a)} and {fmt(b)}, then multiply the sum by {c}."))
    s = rec.call(f"I'll add {fmt(a)} and {fmt(b)} first.", "add", {"a": a, "b": b})
    p = rec.call(f"The sum is {fmt(s)}. Now I'll multiply it by {c}.", "multiply", {"a": s, "b": c})
    rec.finish(f"The result is {fmt(p)}.")
    return instruction, f"({fmt(a)} + {fmt(b)}) × {c} = {fmt(p)}.", p


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
    instruction = f"What is the {ordinal(k)}{which} number among {list_text(xs)}?"
    args: dict = {"numbers": xs}
    if largest:
        args["descending"] = True
    order = "largest first" if largest else "smallest first"
    out = rec.call(f"I'll sort the numbers {order} and take the one in position {k}.", "sort_numbers", args)
    x = out[k - 1]
    rec.finish(f"Position {k} of the sorted list is {fmt(x)}.")
    return instruction, f"The {ordinal(k)}{which} number is {fmt(x)}.", x


def _max_number(rng, rec) -> Built:
    xs = _rand_numbers(rng, rng.randint(4, 9))
    instruction = rng.choice((f"Which is the largest of these numbers: {list_text(xs)}?",
                              f"Find the maximum of {list_text(xs)}."))
    m = rec.call("I'll use the max tool on the list.", "max_of", {"numbers": xs})
    rec.finish(f"The largest number is {fmt(m)}.")
    return instruction, f"The largest number is {fmt(m)}.", m


def _reverse_text(rng, rec) -> Built:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    instruction = rng.choice((f'Reverse the text "{text}".', f'What is "{text}" spelled backwards?'))
    r = rec.call("I'll reverse the text character by character.", "reverse_text", {"text": text})
    rec.finish("I have the reversed text.")
    return instruction, f'"{text}" reversed is "{r}".', r


# ---- twins of the near-duplicate tools: so a model cannot learn to just avoid them ----------------

def _business_days(rng, rec) -> Built:
    d1 = rand_date(rng)
    d2 = d1 + timedelta(days=rng.randint(3, 400))
    a, b = d1.isoformat(), d2.isoformat()
    instruction = rng.choice((f"How many business days are there from {a} to {b}?",
                              f"Counting Monday to Friday only, how many working days pass from {a} to {b}?"))
    n = rec.call(f"Only weekdays count, so I'll count the business days from {a} to {b}.",
                 "business_days_between", {"start": a, "end": b})
    rec.finish(f"There are {n} business days.")
    return instruction, f"There are {n} business days from {a} to {b}.", n


def _deadline_weekday(rng, rec) -> Built:
    d = rand_date(rng).isoformat()
    n = rng.randint(2, 60)
    instruction = rng.choice((f"A job starts on {d} and takes {n} business days. On which weekday does it end?",
                              f"Which day of the week is {n} working days after {d}?"))
    end = rec.call(f"Weekends don't count, so I'll add {n} business days to {d}.", "add_business_days",
                   {"date": d, "days": n})
    wd = rec.call(f"That lands on {end}. Now I'll find its day of the week.", "weekday", {"date": end})
    rec.finish(f"{end} is a {wd}.")
    return instruction, f"{n} business days after {d} is {end}, a {wd}.", wd


def _char_count(rng, rec) -> Built:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
    instruction = rng.choice((f'How many characters, spaces included, are in "{text}"?',
                              f'Count the characters (with spaces) of: "{text}"'))
    n = rec.call("I'll count the characters, not the words.", "char_count", {"text": text})
    rec.finish(f"The text has {n} characters.")
    return instruction, f"The text has {n} characters.", n


def _reverse_words(rng, rec) -> Built:
    text = " ".join(rng.sample(WORDS, rng.randint(3, 6)))
    instruction = rng.choice((f'Reverse the order of the words in "{text}".',
                              f'Write the words of "{text}" in reverse order.'))
    r = rec.call("The words change order but keep their spelling, so I'll reverse the words.", "reverse_words",
                 {"text": text})
    rec.finish("I have the words in reverse order.")
    return instruction, f'In reverse word order: "{r}".', r


def _min_number(rng, rec) -> Built:
    xs = _rand_numbers(rng, rng.randint(4, 9))
    instruction = rng.choice((f"Which is the smallest of these numbers: {list_text(xs)}?",
                              f"Find the minimum of {list_text(xs)}."))
    m = rec.call("I'll use the min tool on the list.", "min_of", {"numbers": xs})
    rec.finish(f"The smallest number is {fmt(m)}.")
    return instruction, f"The smallest number is {fmt(m)}.", m


def _country_population_gap(rng, rec) -> Built:
    a, b = rng.sample(sorted(COUNTRIES), 2)
    if COUNTRIES[a]["population"] < COUNTRIES[b]["population"]:
        a, b = b, a
    ta, tb = with_the(a), with_the(b)
    instruction = rng.choice((f"How many more people live in {ta} than in {tb}?",
                              f"By how much does the population of {ta} exceed that of {tb}?"))
    pa = rec.call(f"These are countries, so I'll get the population of {ta} first.", "country_population",
                  {"country": a})
    pb = rec.call(f"{capitalize(ta)} has {pa} people. Next, {tb}.", "country_population", {"country": b})
    diff = rec.call(f"{capitalize(tb)} has {pb} people. I'll subtract.", "subtract", {"a": pa, "b": pb})
    rec.finish(f"The difference is {diff}.")
    return instruction, f"{capitalize(ta)} has {diff} more inhabitants than {tb}.", diff


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
    to = other_currency(rng, "")
    instruction = rng.choice(_PRICE_IN).format(p=product, m=money_word(rng, to))
    rec.call(f"I need the price of the {product} first, so I'll look it up in the catalog.",
             "product_info", {"product": product}, expect_error=True)
    rec.give_up(f"The {product} is not in the catalog, so I cannot tell its price.")
    return instruction, None, None


def _giveup_order(rng, rec) -> Built:
    order = rng.choice(UNKNOWN_ORDERS)
    instruction = rng.choice(ORDER_TOTAL).format(o=order, m=money_word(rng, other_currency(rng, "")))
    rec.call(f"Everything I need is in order {order}, so I'll look the order up first.",
             "order_info", {"order_id": order}, expect_error=True)
    rec.give_up(f"There is no order {order} in the database, so I cannot work out its total.")
    return instruction, None, None


TRAIN_TEMPLATES: tuple[Template, ...] = (
    Template("capital_population", ("country_info", "city_info"), 2, _capital_population),
    Template("city_country_fact", ("city_info", "country_info"), 2, _city_country_fact),
    Template("product_price_in_currency", ("product_info", "convert_currency"), 2, _product_price_in_currency),
    Template("product_total_in_currency", ("product_info", "multiply", "convert_currency"), 3,
             _product_total_in_currency),
    Template("split_cost", ("product_info", "multiply", "divide"), 3, _split_cost),
    Template("product_discount", ("product_info", "percentage", "subtract"), 3, _product_discount),
    Template("product_weight", ("product_info", "convert_units"), 2, _product_weight),
    Template("date_shift", ("add_days",), 1, _date_shift),
    Template("weekday_after", ("add_days", "weekday"), 2, _weekday_after),
    Template("days_between_dates", ("days_between",), 1, _days_between),
    Template("unit_conversion", ("convert_units",), 1, _unit_conversion),
    Template("population_difference", ("city_info", "subtract"), 3, _population_difference),
    Template("arithmetic_chain", ("add", "multiply"), 2, _arithmetic_chain),
    Template("word_count", ("word_count",), 1, _word_count),
    Template("kth_in_sorted", ("sort_numbers",), 1, _kth_in_sorted),
    Template("max_number", ("max_of",), 1, _max_number),
    Template("reverse_text", ("reverse_text",), 1, _reverse_text),
    Template("business_days", ("business_days_between",), 1, _business_days),
    Template("deadline_weekday", ("add_business_days", "weekday"), 2, _deadline_weekday),
    Template("char_count", ("char_count",), 1, _char_count),
    Template("reverse_words", ("reverse_words",), 1, _reverse_words),
    Template("min_number", ("min_of",), 1, _min_number),
    Template("country_population_gap", ("country_population", "subtract"), 3, _country_population_gap),
) + CHAIN_TEMPLATES

GIVE_UP_TEMPLATES: tuple[Template, ...] = (
    Template("giveup_country", ("country_info", "city_info"), 1, _giveup_country, give_up=True),
    Template("giveup_city", ("city_info", "country_info"), 1, _giveup_city, give_up=True),
    Template("giveup_product", ("product_info", "convert_currency"), 1, _giveup_product, give_up=True),
    Template("giveup_order", ("order_info", "product_by_sku"), 1, _giveup_order, give_up=True),
)
