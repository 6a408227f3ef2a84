"""The long train / test_id templates: dependent chains of 3-5 calls.

In each, a later call needs a value that only an earlier observation holds: an order's SKU,
quantity, city or date (the instruction gives just the order id), a capital's name, a computed
total. So a system that skips a step, or reads the wrong field, cannot reach the gold answer.
"""

from __future__ import annotations

from tuneforge.agent.env.recording import Built, Template, capitalize, fmt, money_word, other_currency, with_the
from tuneforge.agent.env.tables import COUNTRIES, ORDERS, PRODUCTS, UNIT_NAMES

_SKU_CURRENCY = {row["sku"]: row["currency"] for row in PRODUCTS.values()}

ORDER_TOTAL = ("What did order {o} cost in total, in {m}?",
               "Work out the full price of order {o} (every unit) in {m}.")


def _order_total_in_currency(rng, rec) -> Built:
    order = rng.choice(sorted(ORDERS))
    to = other_currency(rng, _SKU_CURRENCY[ORDERS[order]["sku"]])  # a real conversion: never the price's own
    instruction = rng.choice(ORDER_TOTAL).format(o=order, m=money_word(rng, to))
    o = rec.call(f"I'll look up order {order} to see what was bought and how many.", "order_info",
                 {"order_id": order})
    p = rec.call(f"The order is {o['quantity']} of SKU {o['sku']}. I'll look that SKU up for its price.",
                 "product_by_sku", {"sku": o["sku"]})
    total = rec.call(f"It is the {p['product']} at {fmt(p['price'])} {p['currency']}; I'll multiply by "
                     f"{o['quantity']}.", "multiply", {"a": p["price"], "b": o["quantity"]})
    conv = rec.call(f"That is {fmt(total)} {p['currency']}. I'll convert it to {to}.", "convert_currency",
                    {"amount": total, "from_currency": p["currency"], "to_currency": to})
    rec.finish(f"The order cost {fmt(conv)} {to}.")
    return instruction, f"Order {order} cost {fmt(total)} {p['currency']}, which is {fmt(conv)} {to}.", conv


def _order_delivery_weekday(rng, rec) -> Built:
    order = rng.choice(sorted(ORDERS))
    instruction = rng.choice((f"On which day of the week will order {order} be delivered?",
                              f"Order {order} arrives after its delivery time. What weekday is that?"))
    o = rec.call(f"I need order {order}'s date and delivery time, so I'll look it up.", "order_info",
                 {"order_id": order})
    end = rec.call(f"It was placed on {o['placed_on']} and takes {o['business_days']} business days, so I'll add "
                   f"business days, not calendar days.", "add_business_days",
                   {"date": o["placed_on"], "days": o["business_days"]})
    wd = rec.call(f"It arrives on {end}. Now I'll find the weekday.", "weekday", {"date": end})
    rec.finish(f"{end} is a {wd}.")
    return instruction, f"Order {order} is delivered on {end}, a {wd}.", wd


def _order_days_in_transit(rng, rec) -> Built:
    order = rng.choice(sorted(ORDERS))
    instruction = rng.choice((f"How many calendar days, weekends included, does order {order} take to arrive?",
                              f"Counting every day, how long is order {order} on its way?"))
    o = rec.call(f"I'll look up order {order} for its date and delivery time.", "order_info", {"order_id": order})
    end = rec.call(f"It takes {o['business_days']} business days from {o['placed_on']}; I'll find the arrival "
                   f"date first.", "add_business_days", {"date": o["placed_on"], "days": o["business_days"]})
    days = rec.call(f"It arrives on {end}. Now I'll count the calendar days from {o['placed_on']}.",
                    "days_between", {"start": o["placed_on"], "end": end})
    rec.finish(f"It is on its way for {days} days.")
    return instruction, f"Order {order} takes {days} calendar days, arriving on {end}.", days


def _order_price_local(rng, rec) -> Built:
    order = rng.choice(sorted(ORDERS))
    instruction = rng.choice((f"What is the unit price of the item in order {order}, in the currency of the "
                              f"country it ships to?",
                              f"Express the price of one unit of order {order}'s product in the local currency "
                              f"of its destination."))
    o = rec.call(f"I'll look up order {order} to find the product and where it ships.", "order_info",
                 {"order_id": order})
    p = rec.call(f"It ships to {o['ship_to']}. First the product: I'll look up SKU {o['sku']}.", "product_by_sku",
                 {"sku": o["sku"]})
    c = rec.call(f"The {p['product']} costs {fmt(p['price'])} {p['currency']}. Now which country is "
                 f"{o['ship_to']} in?", "city_info", {"city": o["ship_to"]})
    k = rec.call(f"{o['ship_to']} is in {with_the(c['country'])}. I'll look up its currency.", "country_info",
                 {"country": c["country"]})
    cur = k["currency"]
    out = rec.call(f"{capitalize(with_the(c['country']))} uses {cur}. I'll convert {fmt(p['price'])} "
                   f"{p['currency']} to {cur}.", "convert_currency",
                   {"amount": p["price"], "from_currency": p["currency"], "to_currency": cur})
    rec.finish(f"One unit costs {fmt(out)} {cur}.")
    return instruction, f"One {p['product']} costs {fmt(p['price'])} {p['currency']}, or {fmt(out)} {cur}.", out


def _order_shipping_weight(rng, rec) -> Built:
    order = rng.choice(sorted(ORDERS))
    unit = rng.choice(("lb", "oz", "g"))
    instruction = rng.choice((f"How heavy is the whole of order {order}, in {UNIT_NAMES[unit]}?",
                              f"What do all the items of order {order} weigh together, in {UNIT_NAMES[unit]}?"))
    o = rec.call(f"I'll look up order {order} for the product and quantity.", "order_info", {"order_id": order})
    p = rec.call(f"It is {o['quantity']} of SKU {o['sku']}; I'll look up the SKU's weight.", "product_by_sku",
                 {"sku": o["sku"]})
    kg = rec.call(f"One weighs {fmt(p['weight_kg'])} kg; I'll multiply by {o['quantity']}.", "multiply",
                  {"a": p["weight_kg"], "b": o["quantity"]})
    w = rec.call(f"That is {fmt(kg)} kg. I'll convert it to {UNIT_NAMES[unit]}.", "convert_units",
                 {"value": kg, "from_unit": "kg", "to_unit": unit})
    rec.finish(f"The order weighs {fmt(w)} {UNIT_NAMES[unit]}.")
    return instruction, f"Order {order} weighs {fmt(kg)} kg, which is {fmt(w)} {UNIT_NAMES[unit]}.", w


def _capital_population_share(rng, rec) -> Built:
    country = rng.choice(sorted(COUNTRIES))
    the = with_the(country)
    instruction = rng.choice((f"What percentage of the population of {the} lives in its capital?",
                              f"What share of {the}'s people, in percent, live in the capital city?",
                              f"How many percent of the inhabitants of {the} live in its capital?"))
    k = rec.call(f"I'll look up {the} for its capital and population.", "country_info", {"country": country})
    c = rec.call(f"The capital is {k['capital']} and the country has {k['population']} people. Now the "
                 f"capital's population.", "city_info", {"city": k["capital"]})
    x = rec.call(f"{k['capital']} has {c['population']} people. For a percentage I'll multiply by 100 first.",
                 "multiply", {"a": c["population"], "b": 100})
    share = rec.call(f"Now I'll divide {fmt(x)} by the country's {k['population']}.", "divide",
                     {"a": x, "b": k["population"]})
    rec.finish(f"{fmt(share)}% of the people live in the capital.")
    return instruction, f"{fmt(share)}% of the people of {the} live in {k['capital']}.", share


def _weight_difference(rng, rec) -> Built:
    a, b = rng.sample(sorted(PRODUCTS), 2)
    if PRODUCTS[a]["weight_kg"] < PRODUCTS[b]["weight_kg"]:
        a, b = b, a
    unit = rng.choice(("lb", "oz", "g"))
    instruction = rng.choice((f"How much heavier is the {a} than the {b}, in {UNIT_NAMES[unit]}?",
                              f"By how many {UNIT_NAMES[unit]} does the {a} outweigh the {b}?"))
    wa = rec.call(f"I'll look up the {a}'s weight first.", "product_info", {"product": a})["weight_kg"]
    wb = rec.call(f"The {a} weighs {fmt(wa)} kg. Now the {b}.", "product_info", {"product": b})["weight_kg"]
    d = rec.call(f"The {b} weighs {fmt(wb)} kg. I'll subtract.", "subtract", {"a": wa, "b": wb})
    out = rec.call(f"The difference is {fmt(d)} kg. I'll convert it to {UNIT_NAMES[unit]}.", "convert_units",
                   {"value": d, "from_unit": "kg", "to_unit": unit})
    rec.finish(f"It is {fmt(out)} {UNIT_NAMES[unit]} heavier.")
    return instruction, f"The {a} is {fmt(out)} {UNIT_NAMES[unit]} heavier than the {b}.", out


def _discount_in_currency(rng, rec) -> Built:
    product = rng.choice(sorted(PRODUCTS))
    pct = rng.choice((10, 15, 20, 25, 30, 40))
    to = other_currency(rng, PRODUCTS[product]["currency"])
    instruction = rng.choice((f"The {product} is {pct}% off. What is the sale price in {money_word(rng, to)}?",
                              f"After a {pct}% discount, what does the {product} cost in {money_word(rng, to)}?"))
    p = rec.call(f"I'll look up the {product}'s regular price.", "product_info", {"product": product})
    off = rec.call(f"It costs {fmt(p['price'])} {p['currency']}. I'll work out {pct}% of that.", "percentage",
                   {"value": p["price"], "percent": pct})
    sale = rec.call(f"The discount is {fmt(off)} {p['currency']}; I'll subtract it.", "subtract",
                    {"a": p["price"], "b": off})
    out = rec.call(f"The sale price is {fmt(sale)} {p['currency']}. I'll convert it to {to}.", "convert_currency",
                   {"amount": sale, "from_currency": p["currency"], "to_currency": to})
    rec.finish(f"The sale price is {fmt(out)} {to}.")
    return instruction, f"After {pct}% off the {product} costs {fmt(sale)} {p['currency']}, or {fmt(out)} {to}.", out


CHAIN_TEMPLATES: tuple[Template, ...] = (
    Template("order_total_in_currency", ("order_info", "product_by_sku", "multiply", "convert_currency"), 4,
             _order_total_in_currency),
    Template("order_delivery_weekday", ("order_info", "add_business_days", "weekday"), 3, _order_delivery_weekday),
    Template("order_days_in_transit", ("order_info", "add_business_days", "days_between"), 3,
             _order_days_in_transit),
    Template("order_price_local", ("order_info", "product_by_sku", "city_info", "country_info", "convert_currency"),
             5, _order_price_local),
    Template("order_shipping_weight", ("order_info", "product_by_sku", "multiply", "convert_units"), 4,
             _order_shipping_weight),
    Template("capital_population_share", ("country_info", "city_info", "multiply", "divide"), 4,
             _capital_population_share),
    Template("weight_difference", ("product_info", "subtract", "convert_units"), 4, _weight_difference),
    Template("discount_in_currency", ("product_info", "percentage", "subtract", "convert_currency"), 4,
             _discount_in_currency),
)
