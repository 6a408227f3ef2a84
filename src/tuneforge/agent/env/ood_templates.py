"""The out-of-distribution templates (test_ood only): none appears in train. Some use the held-out
tools (``power``, ``average``) that no train task ever offers; the others chain train tools in
sequences no train template uses."""

from __future__ import annotations

from tuneforge.agent.env.recording import (
    Built, Template, capitalize, fmt, money_word, other_currency, rand_amount, rand_date, with_the,
)
from tuneforge.agent.env.tables import CITIES, COUNTRIES, ORDERS, PRODUCTS, UNIT_NAMES, USD_RATES

# ---- out-of-distribution templates (test_ood only) ---------------------------------------------

def _average_city_population(rng, rec) -> Built:
    cities = rng.sample(sorted(CITIES), 3)  # always 3: a template makes a fixed number of calls
    names = f"{cities[0]}, {cities[1]} and {cities[2]}"
    instruction = f"What is the average population of {names}?"
    pops = []
    for i, c in enumerate(cities):
        thought = (f"I need each city's population. I'll start with {c}." if i == 0
                   else f"{cities[i - 1]} has {pops[-1]} people. Next is {c}.")
        pops.append(rec.call(thought, "city_info", {"city": c})["population"])
    mean = rec.call(f"{cities[-1]} has {pops[-1]} people. Now I'll average the populations.",
                    "average", {"numbers": pops})
    rec.finish(f"The average population is {fmt(mean)}.")
    return instruction, f"The average population of {names} is {fmt(mean)}.", mean


def _square_area(rng, rec) -> Built:
    unit = rng.choice(("ft", "yd"))
    side = rng.randint(5, 400)
    instruction = f"A square plot has sides of {side} {UNIT_NAMES[unit]}. What is its area in square meters?"
    m = rec.call(f"I'll convert the side from {UNIT_NAMES[unit]} to meters first.", "convert_units",
                 {"value": side, "from_unit": unit, "to_unit": "m"})
    area = rec.call(f"The side is {fmt(m)} m. The area is the side squared.", "power", {"base": m, "exponent": 2})
    rec.finish(f"The area is {fmt(area)} square meters.")
    return instruction, f"The plot's area is {fmt(area)} square meters.", area


def _compound_growth(rng, rec) -> Built:
    x = rng.randint(10, 5000)
    f = rng.choice((1.02, 1.05, 1.1, 1.25, 1.5, 2, 3))
    years = rng.randint(2, 10)
    instruction = f"A quantity of {x} is multiplied by {fmt(f)} every year. How large is it after {years} years?"
    g = rec.call(f"The total growth factor is {fmt(f)} to the power {years}.", "power",
                 {"base": f, "exponent": years})
    out = rec.call(f"The factor is {fmt(g)}. I'll multiply the starting quantity {x} by it.",
                   "multiply", {"a": x, "b": g})
    rec.finish(f"After {years} years the quantity is {fmt(out)}.")
    return instruction, f"After {years} years it is {fmt(out)}.", out


def _price_per_kg(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    instruction = f"How much does the {product} cost per kilogram of its weight, in its own currency?"
    info = rec.call(f"I'll look up the {product}'s price and weight.", "product_info", {"product": product})
    price, cur, kg = info["price"], info["currency"], info["weight_kg"]
    per = rec.call(f"It costs {fmt(price)} {cur} and weighs {fmt(kg)} kg. I'll divide the price by the weight.",
                   "divide", {"a": price, "b": kg})
    rec.finish(f"That is {fmt(per)} {cur} per kilogram.")
    return instruction, f"The {product} costs {fmt(per)} {cur} per kilogram.", per


def _money_in_country_currency(rng, rec) -> Built:
    country = rng.choice(sorted(COUNTRIES))
    cur0 = other_currency(rng, COUNTRIES[country]["currency"])
    amount = rand_amount(rng, 5, 2000)
    the = with_the(country)
    instruction = f"How much is {fmt(amount)} {money_word(rng, cur0)} in the currency of {the}?"
    info = rec.call(f"I need to know which currency {the} uses, so I'll look up the country.",
                    "country_info", {"country": country})
    cur = info["currency"]
    out = rec.call(capitalize(f"{the} uses {cur}. I'll convert {fmt(amount)} {cur0} to {cur}."),
                   "convert_currency", {"amount": amount, "from_currency": cur0, "to_currency": cur})
    rec.finish(f"The amount is {fmt(out)} {cur}.")
    return instruction, f"{fmt(amount)} {cur0} is {fmt(out)} {cur}, the currency of {the}.", out


def _date_weeks_later(rng, rec) -> Built:
    d = rand_date(rng).isoformat()
    w = rng.randint(2, 30)
    instruction = f"What date is {w} weeks after {d}?"
    days = rec.call(f"{w} weeks is {w} times 7 days; I'll compute that.", "multiply", {"a": w, "b": 7})
    out = rec.call(f"That is {fmt(days)} days. I'll add them to {d}.", "add_days", {"date": d, "days": days})
    rec.finish(f"{w} weeks after {d} is {out}.")
    return instruction, f"{w} weeks after {d} is {out}.", out


def _average_capital_population(rng, rec) -> Built:
    a, b = rng.sample(sorted(COUNTRIES), 2)
    ta, tb = with_the(a), with_the(b)
    instruction = f"What is the average population of the capitals of {ta} and {tb}?"
    pops = []
    for country, the in ((a, ta), (b, tb)):
        k = rec.call(f"I need the capital of {the}, so I'll look up the country.", "country_info",
                     {"country": country})
        pops.append(rec.call(f"The capital of {the} is {k['capital']}; I'll look up its population.", "city_info",
                             {"city": k["capital"]})["population"])
    mean = rec.call(f"The capitals have {pops[0]} and {pops[1]} people. I'll average them.", "average",
                    {"numbers": pops})
    rec.finish(f"The average is {fmt(mean)}.")
    return instruction, f"The capitals of {ta} and {tb} have {fmt(mean)} people on average.", mean


def _order_exchange_rate(rng, rec) -> Built:
    order = rng.choice(sorted(ORDERS))
    to = rng.choice(sorted(USD_RATES))
    instruction = (f"What is the exchange rate from the currency the item of order {order} is priced in to "
                   f"{money_word(rng, to)}?")
    o = rec.call(f"I'll look up order {order} to find its product.", "order_info", {"order_id": order})
    p = rec.call(f"The product is SKU {o['sku']}; I'll look it up for its currency.", "product_by_sku",
                 {"sku": o["sku"]})
    rate = rec.call(f"It is priced in {p['currency']}. I'll get the rate from {p['currency']} to {to}.",
                    "exchange_rate", {"from_currency": p["currency"], "to_currency": to})
    rec.finish(f"One {p['currency']} buys {fmt(rate)} {to}.")
    return instruction, f"The rate from {p['currency']} to {to} is {fmt(rate)}.", rate


def _order_delivery_day_of_year(rng, rec) -> Built:
    order = rng.choice(sorted(ORDERS))
    instruction = f"Order {order} arrives after its delivery time. Which day of its year is the delivery date?"
    o = rec.call(f"I'll look up order {order} for its date and delivery time.", "order_info", {"order_id": order})
    end = rec.call(f"It takes {o['business_days']} business days from {o['placed_on']}.", "add_business_days",
                   {"date": o["placed_on"], "days": o["business_days"]})
    n = rec.call(f"It arrives on {end}. Now I'll find the day number within the year.", "day_of_year",
                 {"date": end})
    rec.finish(f"{end} is day {n} of its year.")
    return instruction, f"Order {order} arrives on {end}, day {n} of the year.", n


OOD_TEMPLATES: tuple[Template, ...] = (
    Template("average_city_population", ("city_info", "average"), 4, _average_city_population),
    Template("square_area", ("convert_units", "power"), 2, _square_area),
    Template("compound_growth", ("power", "multiply"), 2, _compound_growth),
    Template("price_per_kg", ("product_info", "divide"), 2, _price_per_kg),
    Template("money_in_country_currency", ("country_info", "convert_currency"), 2, _money_in_country_currency),
    Template("date_weeks_later", ("multiply", "add_days"), 2, _date_weeks_later),
    Template("average_capital_population", ("country_info", "city_info", "average"), 5,
             _average_capital_population),
    Template("order_exchange_rate", ("order_info", "product_by_sku", "exchange_rate"), 3, _order_exchange_rate),
    Template("order_delivery_day_of_year", ("order_info", "add_business_days", "day_of_year"), 3,
             _order_delivery_day_of_year),
)
