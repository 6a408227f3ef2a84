"""The fixed facts of the offline tool world, as plain Python literals.

Countries and cities carry rounded public-knowledge figures (populations are approximate city- or
country-proper counts, offsets are standard time without daylight saving); products are invented.
Exchange rates are fixed and illustrative, not market data. The world only has to be consistent
with itself: every gold answer is computed from these tables through the tools.
"""

from __future__ import annotations

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
    "Nimbus Kettle": {"price": 39.9, "currency": "EUR", "category": "kitchen", "weight_kg": 1.2,
                      "made_in": "Germany"},
    "Atlas Backpack": {"price": 74.5, "currency": "USD", "category": "outdoor", "weight_kg": 1.1,
                       "made_in": "United States"},
    "Sakura Teapot": {"price": 4800, "currency": "JPY", "category": "kitchen", "weight_kg": 0.6,
                      "made_in": "Japan"},
    "Highland Wool Scarf": {"price": 35, "currency": "GBP", "category": "clothing", "weight_kg": 0.25,
                            "made_in": "United Kingdom"},
    "Alpine Chronometer": {"price": 1250, "currency": "CHF", "category": "accessories", "weight_kg": 0.15,
                           "made_in": "Switzerland"},
    "Maple Snowshoe": {"price": 189, "currency": "CAD", "category": "outdoor", "weight_kg": 2.3,
                        "made_in": "Canada"},
    "Coral Snorkel Set": {"price": 89, "currency": "AUD", "category": "outdoor", "weight_kg": 0.9,
                          "made_in": "Australia"},
    "Monsoon Umbrella": {"price": 1499, "currency": "INR", "category": "accessories", "weight_kg": 0.5,
                         "made_in": "India"},
    "Jade Desk Lamp": {"price": 329, "currency": "CNY", "category": "home", "weight_kg": 1.8,
                       "made_in": "China"},
    "Samba Hammock": {"price": 260, "currency": "BRL", "category": "home", "weight_kg": 3.2,
                      "made_in": "Brazil"},
    "Tortilla Press": {"price": 650, "currency": "MXN", "category": "kitchen", "weight_kg": 2.7,
                       "made_in": "Mexico"},
    "Espresso Pro 3": {"price": 249, "currency": "EUR", "category": "kitchen", "weight_kg": 4.5,
                       "made_in": "Italy"},
    "Flamenco Guitar": {"price": 420, "currency": "EUR", "category": "music", "weight_kg": 2.1,
                        "made_in": "Spain"},
    "Papyrus Notebook": {"price": 180, "currency": "EGP", "category": "office", "weight_kg": 0.3,
                         "made_in": "Egypt"},
    "Savanna Binoculars": {"price": 2100, "currency": "ZAR", "category": "outdoor", "weight_kg": 0.7,
                           "made_in": "South Africa"},
    "Orbit Headset": {"price": 129, "currency": "USD", "category": "electronics", "weight_kg": 0.28,
                         "made_in": "United States"},
}

# Units of each currency per 1 USD (fixed, illustrative).
USD_RATES: dict[str, float] = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "CHF": 0.88, "CAD": 1.36, "AUD": 1.52,
    "INR": 83.0, "CNY": 7.2, "BRL": 5.0, "MXN": 17.0, "EGP": 48.0, "ZAR": 18.5,
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

UNIT_NAMES: dict[str, str] = {
    "m": "meters", "km": "kilometers", "cm": "centimeters", "mm": "millimeters", "mi": "miles", "yd": "yards",
    "ft": "feet", "in": "inches", "kg": "kilograms", "g": "grams", "mg": "milligrams", "t": "metric tons",
    "lb": "pounds", "oz": "ounces", "C": "degrees Celsius", "F": "degrees Fahrenheit", "K": "kelvin",
}

# Names that are in no table: the give-up tasks ask about them.
UNKNOWN_CITIES = ("Atlantis", "Eldoria", "Port Veylan", "Mirrowdale", "Khar Zadun", "Lumen Bay")
UNKNOWN_COUNTRIES = ("Freedonia", "Genovia", "Elbonia", "Syldavia", "Borduria", "Latveria")
UNKNOWN_PRODUCTS = ("Quantum Toaster", "Hover Skates", "Aether Lantern", "Comet Blender", "Velvet Drone")

# Words for the text tasks.
WORDS = (
    "amber", "apple", "bright", "river", "silent", "garden", "window", "yellow", "forest", "little",
    "morning", "quiet", "stone", "bridge", "summer", "winter", "candle", "copper", "meadow", "ocean",
    "paper", "planet", "rabbit", "ribbon", "silver", "sunny", "thunder", "valley", "velvet", "whisper",
    "cloud", "lantern", "harbor", "island", "jungle", "kitten", "ladder", "marble", "needle", "orange",
    "pepper", "puzzle", "rocket", "saddle", "tunnel", "violet", "walnut", "zebra", "cactus", "dragon",
)
