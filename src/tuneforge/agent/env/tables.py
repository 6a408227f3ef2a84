"""The fixed facts of the offline tool world, as plain Python literals (orders: from a fixed rule).

Countries and cities carry rounded public-knowledge figures (populations are approximate city- or
country-proper counts, offsets are standard time without daylight saving); products are invented.
Exchange rates are fixed and illustrative, not market data. The world only has to be consistent
with itself: every gold answer is computed from these tables through the tools.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

COUNTRIES: dict[str, dict] = {
    "France": {"capital": "Paris", "currency": "EUR", "continent": "Europe", "population": 68_000_000,
               "official_language": "French", "calling_code": "+33"},
    "Germany": {"capital": "Berlin", "currency": "EUR", "continent": "Europe", "population": 84_000_000,
                "official_language": "German", "calling_code": "+49"},
    "Italy": {"capital": "Rome", "currency": "EUR", "continent": "Europe", "population": 59_000_000,
              "official_language": "Italian", "calling_code": "+39"},
    "Spain": {"capital": "Madrid", "currency": "EUR", "continent": "Europe", "population": 48_000_000,
              "official_language": "Spanish", "calling_code": "+34"},
    "United Kingdom": {"capital": "London", "currency": "GBP", "continent": "Europe", "population": 67_000_000,
                       "official_language": "English", "calling_code": "+44"},
    "Switzerland": {"capital": "Bern", "currency": "CHF", "continent": "Europe", "population": 8_800_000,
                    "official_language": "German", "calling_code": "+41"},
    "United States": {"capital": "Washington", "currency": "USD", "continent": "North America",
                      "population": 335_000_000, "official_language": "English", "calling_code": "+1"},
    "Canada": {"capital": "Ottawa", "currency": "CAD", "continent": "North America", "population": 40_000_000,
               "official_language": "English", "calling_code": "+1"},
    "Mexico": {"capital": "Mexico City", "currency": "MXN", "continent": "North America",
               "population": 129_000_000, "official_language": "Spanish", "calling_code": "+52"},
    "Brazil": {"capital": "Brasilia", "currency": "BRL", "continent": "South America", "population": 203_000_000,
               "official_language": "Portuguese", "calling_code": "+55"},
    "Japan": {"capital": "Tokyo", "currency": "JPY", "continent": "Asia", "population": 124_000_000,
              "official_language": "Japanese", "calling_code": "+81"},
    "China": {"capital": "Beijing", "currency": "CNY", "continent": "Asia", "population": 1_410_000_000,
              "official_language": "Chinese", "calling_code": "+86"},
    "India": {"capital": "New Delhi", "currency": "INR", "continent": "Asia", "population": 1_430_000_000,
              "official_language": "Hindi", "calling_code": "+91"},
    "Australia": {"capital": "Canberra", "currency": "AUD", "continent": "Oceania", "population": 26_600_000,
                  "official_language": "English", "calling_code": "+61"},
    "Egypt": {"capital": "Cairo", "currency": "EGP", "continent": "Africa", "population": 105_000_000,
              "official_language": "Arabic", "calling_code": "+20"},
    "South Africa": {"capital": "Pretoria", "currency": "ZAR", "continent": "Africa", "population": 60_000_000,
                     "official_language": "English", "calling_code": "+27"},
}

CITIES: dict[str, dict] = {
    # capitals
    "Paris": {"country": "France", "population": 2_100_000, "utc_offset": 1, "elevation_m": 35},
    "Berlin": {"country": "Germany", "population": 3_850_000, "utc_offset": 1, "elevation_m": 34},
    "Rome": {"country": "Italy", "population": 2_750_000, "utc_offset": 1, "elevation_m": 21},
    "Madrid": {"country": "Spain", "population": 3_330_000, "utc_offset": 1, "elevation_m": 657},
    "London": {"country": "United Kingdom", "population": 8_870_000, "utc_offset": 0, "elevation_m": 11},
    "Bern": {"country": "Switzerland", "population": 134_000, "utc_offset": 1, "elevation_m": 540},
    "Washington": {"country": "United States", "population": 690_000, "utc_offset": -5, "elevation_m": 7},
    "Ottawa": {"country": "Canada", "population": 1_020_000, "utc_offset": -5, "elevation_m": 70},
    "Mexico City": {"country": "Mexico", "population": 9_200_000, "utc_offset": -6, "elevation_m": 2240},
    "Brasilia": {"country": "Brazil", "population": 2_820_000, "utc_offset": -3, "elevation_m": 1172},
    "Tokyo": {"country": "Japan", "population": 14_000_000, "utc_offset": 9, "elevation_m": 40},
    "Beijing": {"country": "China", "population": 21_900_000, "utc_offset": 8, "elevation_m": 44},
    "New Delhi": {"country": "India", "population": 250_000, "utc_offset": 5.5, "elevation_m": 216},
    "Canberra": {"country": "Australia", "population": 460_000, "utc_offset": 10, "elevation_m": 578},
    "Cairo": {"country": "Egypt", "population": 10_000_000, "utc_offset": 2, "elevation_m": 23},
    "Pretoria": {"country": "South Africa", "population": 741_000, "utc_offset": 2, "elevation_m": 1339},
    # other cities
    "New York": {"country": "United States", "population": 8_300_000, "utc_offset": -5, "elevation_m": 10},
    "Los Angeles": {"country": "United States", "population": 3_820_000, "utc_offset": -8, "elevation_m": 93},
    "Toronto": {"country": "Canada", "population": 2_800_000, "utc_offset": -5, "elevation_m": 76},
    "Vancouver": {"country": "Canada", "population": 660_000, "utc_offset": -8, "elevation_m": 2},
    "Sydney": {"country": "Australia", "population": 5_300_000, "utc_offset": 10, "elevation_m": 3},
    "Melbourne": {"country": "Australia", "population": 5_000_000, "utc_offset": 10, "elevation_m": 31},
    "Osaka": {"country": "Japan", "population": 2_750_000, "utc_offset": 9, "elevation_m": 12},
    "Munich": {"country": "Germany", "population": 1_510_000, "utc_offset": 1, "elevation_m": 519},
    "Lyon": {"country": "France", "population": 520_000, "utc_offset": 1, "elevation_m": 173},
    "Barcelona": {"country": "Spain", "population": 1_640_000, "utc_offset": 1, "elevation_m": 12},
    "Milan": {"country": "Italy", "population": 1_370_000, "utc_offset": 1, "elevation_m": 120},
    "Zurich": {"country": "Switzerland", "population": 420_000, "utc_offset": 1, "elevation_m": 408},
    "Manchester": {"country": "United Kingdom", "population": 550_000, "utc_offset": 0, "elevation_m": 38},
    "Mumbai": {"country": "India", "population": 12_400_000, "utc_offset": 5.5, "elevation_m": 14},
    "Shanghai": {"country": "China", "population": 24_900_000, "utc_offset": 8, "elevation_m": 4},
    "Sao Paulo": {"country": "Brazil", "population": 11_450_000, "utc_offset": -3, "elevation_m": 760},
    "Guadalajara": {"country": "Mexico", "population": 1_380_000, "utc_offset": -6, "elevation_m": 1566},
    "Alexandria": {"country": "Egypt", "population": 5_200_000, "utc_offset": 2, "elevation_m": 5},
    "Cape Town": {"country": "South Africa", "population": 4_770_000, "utc_offset": 2, "elevation_m": 25},
}

# Invented products; prices are in the product's own currency.
PRODUCTS: dict[str, dict] = {
    "Nimbus Kettle": {"sku": "NK-433", "price": 39.9, "currency": "EUR", "category": "kitchen", "weight_kg": 1.2,
                      "made_in": "Germany"},
    "Atlas Backpack": {"sku": "AB-137", "price": 74.5, "currency": "USD", "category": "outdoor", "weight_kg": 1.1,
                       "made_in": "United States"},
    "Sakura Teapot": {"sku": "ST-544", "price": 4800, "currency": "JPY", "category": "kitchen", "weight_kg": 0.6,
                      "made_in": "Japan"},
    "Highland Wool Scarf": {"sku": "HW-285", "price": 35, "currency": "GBP", "category": "clothing", "weight_kg": 0.25,
                            "made_in": "United Kingdom"},
    "Alpine Chronometer": {"sku": "AC-100", "price": 1250, "currency": "CHF", "category": "accessories",
                           "weight_kg": 0.15, "made_in": "Switzerland"},
    "Maple Snowshoe": {"sku": "MS-359", "price": 189, "currency": "CAD", "category": "outdoor", "weight_kg": 2.3,
                        "made_in": "Canada"},
    "Coral Snorkel Set": {"sku": "CS-174", "price": 89, "currency": "AUD", "category": "outdoor", "weight_kg": 0.9,
                          "made_in": "Australia"},
    "Monsoon Umbrella": {"sku": "MU-396", "price": 1499, "currency": "INR", "category": "accessories", "weight_kg": 0.5,
                         "made_in": "India"},
    "Jade Desk Lamp": {"sku": "JD-322", "price": 329, "currency": "CNY", "category": "home", "weight_kg": 1.8,
                       "made_in": "China"},
    "Samba Hammock": {"sku": "SH-581", "price": 260, "currency": "BRL", "category": "home", "weight_kg": 3.2,
                      "made_in": "Brazil"},
    "Tortilla Press": {"sku": "TP-655", "price": 650, "currency": "MXN", "category": "kitchen", "weight_kg": 2.7,
                       "made_in": "Mexico"},
    "Espresso Pro 3": {"sku": "EP-211", "price": 249, "currency": "EUR", "category": "kitchen", "weight_kg": 4.5,
                       "made_in": "Italy"},
    "Flamenco Guitar": {"sku": "FG-248", "price": 420, "currency": "EUR", "category": "music", "weight_kg": 2.1,
                        "made_in": "Spain"},
    "Papyrus Notebook": {"sku": "PN-507", "price": 180, "currency": "EGP", "category": "office", "weight_kg": 0.3,
                         "made_in": "Egypt"},
    "Savanna Binoculars": {"sku": "SB-618", "price": 2100, "currency": "ZAR", "category": "outdoor", "weight_kg": 0.7,
                           "made_in": "South Africa"},
    "Orbit Headset": {"sku": "OH-470", "price": 129, "currency": "USD", "category": "electronics", "weight_kg": 0.28,
                         "made_in": "United States"},
}

# Units of each currency per 1 USD (fixed, illustrative).
USD_RATES: dict[str, float] = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "CHF": 0.88, "CAD": 1.36, "AUD": 1.52,
    "INR": 83.0, "CNY": 7.2, "BRL": 5.0, "MXN": 17.0, "EGP": 48.0, "ZAR": 18.5,
}

# The "2015" rates only the deprecated legacy_convert_currency uses: a near-duplicate that gives a
# real but different answer, so picking it over convert_currency is a visible mistake.
LEGACY_USD_RATES: dict[str, float] = {
    "USD": 1.0, "EUR": 0.9, "GBP": 0.65, "JPY": 121.0, "CHF": 0.96, "CAD": 1.28, "AUD": 1.33,
    "INR": 64.0, "CNY": 6.3, "BRL": 3.3, "MXN": 15.9, "EGP": 7.7, "ZAR": 12.8,
}

CURRENCY_NAMES: dict[str, str] = {
    "USD": "US dollars", "EUR": "euros", "GBP": "British pounds", "JPY": "Japanese yen", "CHF": "Swiss francs",
    "CAD": "Canadian dollars", "AUD": "Australian dollars", "INR": "Indian rupees", "CNY": "Chinese yuan",
    "BRL": "Brazilian reais", "MXN": "Mexican pesos", "EGP": "Egyptian pounds", "ZAR": "South African rand",
}

# Linear units: size of one unit in the dimension's base unit (metre, kilogram).
LENGTH_UNITS: dict[str, float] = {
    "m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "yd": 0.9144, "ft": 0.3048, "in": 0.0254,
}
MASS_UNITS: dict[str, float] = {
    "kg": 1.0, "g": 0.001, "mg": 1e-6, "t": 1000.0, "lb": 0.45359237, "oz": 0.028349523125,
}
TEMPERATURE_UNITS = ("C", "F", "K")
# Area units (square metres per unit): only convert_area, the near-duplicate of convert_units, uses them.
AREA_UNITS: dict[str, float] = {"m2": 1.0, "km2": 1e6, "ha": 1e4, "acre": 4046.8564224, "ft2": 0.09290304}

UNIT_NAMES: dict[str, str] = {
    "m": "meters", "km": "kilometers", "cm": "centimeters", "mm": "millimeters", "mi": "miles", "yd": "yards",
    "ft": "feet", "in": "inches", "kg": "kilograms", "g": "grams", "mg": "milligrams", "t": "metric tons",
    "lb": "pounds", "oz": "ounces", "C": "degrees Celsius", "F": "degrees Fahrenheit", "K": "kelvin",
}

# Orders: the id is the only thing a task's instruction gives, so the product (by SKU), quantity,
# destination city, order date and delivery time must all be read from order_info's observation.
# Delivery times count business days (Monday to Friday). There are too many rows to write out (each
# order template needs hundreds of distinct instructions across train and test), so they come from
# a fixed rule: a string-seeded random.Random gives the same rows on every machine and Python 3.
# Orders ship abroad: the destination is never in the country the product is made in.
def _orders(n: int = 240) -> dict[str, dict]:
    rng = random.Random("tuneforge-tool-world-orders")
    names, cities = sorted(PRODUCTS), sorted(CITIES)
    out = {}
    for number in rng.sample(range(10000, 100000), n):
        product = rng.choice(names)
        out[f"ORD-{number}"] = {
            "sku": PRODUCTS[product]["sku"],
            "quantity": rng.randint(1, 9),
            "ship_to": rng.choice([c for c in cities if CITIES[c]["country"] != PRODUCTS[product]["made_in"]]),
            "placed_on": (date(2020, 1, 1) + timedelta(days=rng.randint(0, 5 * 365))).isoformat(),
            "business_days": rng.randint(2, 15),
        }
    return out


ORDERS: dict[str, dict] = _orders()

# Names that are in no table: the give-up tasks ask about them.
UNKNOWN_CITIES = ("Atlantis", "Eldoria", "Port Veylan", "Mirrowdale", "Khar Zadun", "Lumen Bay")
UNKNOWN_COUNTRIES = ("Freedonia", "Genovia", "Elbonia", "Syldavia", "Borduria", "Latveria")
UNKNOWN_ORDERS = ("ORD-00000", "ORD-00417", "ORD-03141", "ORD-07007", "ORD-09999")  # below every real id
UNKNOWN_PRODUCTS = ("Quantum Toaster", "Hover Skates", "Aether Lantern", "Comet Blender", "Velvet Drone")

# Words for the text tasks.
WORDS = (
    "amber", "apple", "bright", "river", "silent", "garden", "window", "yellow", "forest", "little",
    "morning", "quiet", "stone", "bridge", "summer", "winter", "candle", "copper", "meadow", "ocean",
    "paper", "planet", "rabbit", "ribbon", "silver", "sunny", "thunder", "valley", "velvet", "whisper",
    "cloud", "lantern", "harbor", "island", "jungle", "kitten", "ladder", "marble", "needle", "orange",
    "pepper", "puzzle", "rocket", "saddle", "tunnel", "violet", "walnut", "zebra", "cactus", "dragon",
)
