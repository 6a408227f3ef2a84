import json
import re
from typing import Literal

import pytest

from tuneforge.agent.env import (
    DISTRACTORS, EXTRA_TOOLS, GIVE_UP_TEMPLATES, HELD_OUT_TOOLS, LONG_SHARE, NEAR_DUPLICATES, OOD_TEMPLATES,
    TEMPLATES, TRAIN_TEMPLATES, TRAIN_TOOLS, WORLD_TOOLS, answers_match, generate_tasks, near_duplicates, read_tasks,
    trajectory_from_dict, trajectory_to_dict, world_registry, write_world,
)
from tuneforge.agent.env.tables import ORDERS, UNKNOWN_ORDERS
from tuneforge.agent.env.tasks import dumps_tasks, numbers_in
from tuneforge.agent.tools import Tool, ToolRegistry, from_python, prepare_arguments, validate_arguments
from tuneforge.agent.trajectory import ToolSpec
from tuneforge.errors import UserError


def _tool(fn=None, **props) -> Tool:
    required = [k for k, v in props.items() if not v.pop("optional", False)]
    return Tool("t", "a test tool", {"type": "object", "properties": props, "required": required},
                fn or (lambda **kw: kw))


# ---- argument validation -----------------------------------------------------------------------

def test_validate_accepts_good_arguments():
    t = _tool(x={"type": "number"}, n={"type": "integer"}, s={"type": "string"},
              flag={"type": "boolean", "optional": True})
    assert validate_arguments(t, {"x": 1.5, "n": 3, "s": "hi"}) is None
    assert validate_arguments(t, {"x": 2, "n": 3, "s": "", "flag": False}) is None
    assert prepare_arguments(t, {"x": 2, "n": 3, "s": "", "flag": None}) == ({"x": 2, "n": 3, "s": ""}, None)
    assert "must be a number" in validate_arguments(t, {"x": None, "n": 3, "s": ""})  # required: no null


@pytest.mark.parametrize("args, fragment", [
    ([1, 2], "must be a JSON object"),
    (None, "must be a JSON object"),
    ({"n": 1}, "missing required argument 'x'"),
    ({"x": 1, "n": 1, "zzz": 3}, "unknown argument 'zzz'"),
    ({"x": "abc", "n": 1}, "must be a number"),
    ({"x": True, "n": 1}, "must be a number"),
    ({"x": float("nan"), "n": 1}, "must be a number"),
    ({"x": 1, "n": True}, "must be an integer"),
    ({"x": 1, "n": 2.5}, "must be an integer"),
    ({"x": 1, "n": "2.5"}, "must be an integer"),
])
def test_validate_rejects(args, fragment):
    t = _tool(x={"type": "number"}, n={"type": "integer"})
    err = validate_arguments(t, args)
    assert err is not None and fragment in err
    if "missing" in fragment or "unknown" in fragment:
        assert "takes: x, n" in err  # the message says what the tool accepts


def test_validate_string_boolean_array_enum():
    t = _tool(s={"type": "string"}, b={"type": "boolean"}, xs={"type": "array", "items": {"type": "number"}},
              u={"type": "string", "enum": ["m", "km"]})
    ok = {"s": "a", "b": True, "xs": [1, 2.5], "u": "km"}
    assert validate_arguments(t, ok) is None
    assert "must be a string" in validate_arguments(t, {**ok, "s": 5})
    assert "true or false" in validate_arguments(t, {**ok, "b": "true"})  # strings are not flags
    assert "must be an array" in validate_arguments(t, {**ok, "xs": "1,2"})
    assert "'xs'[1]" in validate_arguments(t, {**ok, "xs": [1, "two"]})
    err = validate_arguments(t, {**ok, "u": "KM"})
    assert "must be one of" in err and '"km"' in err


def test_numeric_strings_are_converted():
    t = _tool(x={"type": "number"}, n={"type": "integer"}, xs={"type": "array", "items": {"type": "integer"}})
    args, err = prepare_arguments(t, {"x": " 2.5 ", "n": "3", "xs": ["4", 5.0]})
    assert err is None and args == {"x": 2.5, "n": 3, "xs": [4, 5]}
    assert isinstance(args["n"], int) and all(isinstance(v, int) for v in args["xs"])
    assert prepare_arguments(t, {"x": "1e3", "n": 3.0, "xs": []})[0] == {"x": 1000.0, "n": 3, "xs": []}


def test_bad_tool_definitions_are_user_errors():
    with pytest.raises(UserError):
        Tool("bad name!", "", {"type": "object", "properties": {}}, lambda: 1)
    with pytest.raises(UserError):
        Tool("t", "", {"type": "object", "properties": {"x": {"type": "complex"}}}, lambda x: x)
    with pytest.raises(UserError):
        Tool("t", "", {"type": "object", "properties": {}, "required": ["x"]}, lambda: 1)
    t = Tool("t", "", {"type": "object", "properties": {}}, lambda: 1)
    with pytest.raises(UserError, match="two tools"):
        ToolRegistry([t, t])


# ---- the registry ------------------------------------------------------------------------------

def _boom(x: int) -> int:
    """Always fails."""
    raise ValueError(f"cannot handle {x}")


def _missing(key: str) -> str:
    """Looks up a key that is never there."""
    return {}[key]


def test_registry_calls_and_observations():
    reg = world_registry()
    r = reg.call("add", {"a": 2, "b": 3})
    assert r.ok and r.error is None and r.observation == "5" and r.value == 5
    assert reg.call("add", {"a": "2", "b": 0.5}).observation == "2.5"  # numeric string accepted
    assert reg.call("divide", {"a": 1, "b": 3}).observation == "0.3333"  # floats rounded
    assert reg.call("add", {"a": 0.1, "b": 0.2}).observation == "0.3"
    assert reg.call("divide", {"a": 6, "b": 2}).observation == "3"  # integral floats as ints
    obs = reg.call("city_info", {"city": "paris"}).observation
    assert json.loads(obs)["country"] == "France"
    assert list(json.loads(obs)) == sorted(json.loads(obs))  # sorted keys
    assert "add" in reg and "nope" not in reg and len(reg) == len(reg.names)


def test_unknown_tool_is_reported_not_raised():
    reg = world_registry()
    r = reg.call("ad", {"a": 1, "b": 2}, allowed=["add", "weekday"])
    assert r.error == "unknown_tool" and not r.ok
    msg = json.loads(r.observation)["error"]
    assert "'ad'" in msg and "Did you mean 'add'" in msg and "add, weekday" in msg
    assert "city_info" not in msg  # only the tools the task offers are named
    # a real tool that the task does not offer is a hallucination too
    r = reg.call("city_info", {"city": "Paris"}, allowed=["add"])
    assert r.error == "unknown_tool" and "Available tools: add." in r.observation
    assert reg.call(None, {}).error == "unknown_tool"


def test_bad_arguments_and_tool_errors_become_observations():
    reg = ToolRegistry([from_python(_boom), from_python(_missing)])
    r = reg.call("_boom", {"x": 4})
    assert r.error == "tool_error" and json.loads(r.observation) == {"error": "_boom failed: cannot handle 4"}
    assert "Traceback" not in r.observation
    r = reg.call("_missing", {"key": "k"})
    assert r.error == "tool_error" and "failed: k" in r.observation  # KeyError without repr quotes
    r = reg.call("_boom", {"x": "four"})
    assert r.error == "bad_arguments" and "must be an integer" in r.observation
    w = world_registry()
    assert w.call("divide", {"a": 1, "b": 0}).error == "tool_error"
    assert w.call("city_info", {"city": "Atlantis"}).error == "tool_error"
    assert w.call("convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"}).error == "tool_error"
    assert w.call("add_days", {"date": "2024-02-30", "days": 1}).error == "tool_error"
    assert w.call("convert_units", {"value": 1, "from_unit": "parsec", "to_unit": "m"}).error == "bad_arguments"


def test_specs():
    reg = world_registry()
    specs = reg.specs(["weekday", "add"])
    assert [s.name for s in specs] == ["weekday", "add"] and isinstance(specs[0], ToolSpec)
    assert specs[1].parameters["required"] == ["a", "b"]
    specs[1].parameters["required"].append("c")  # a copy: the registry is unchanged
    assert reg["add"].parameters["required"] == ["a", "b"]
    assert len(reg.specs()) == len(reg)
    with pytest.raises(UserError):
        reg.specs(["nope"])


def test_from_python():
    def cost(weight: float, count: int, express: bool = False, zone: Literal["eu", "us"] = "eu",
             tags: list[str] = []) -> float:  # noqa: B006
        """Shipping cost of a parcel.

        Longer explanation.

        Args:
            weight: Parcel weight in kg,
                measured on the scale.
            count (int): How many parcels.
            express: Next-day delivery.

        Returns:
            The price.
        """
        return weight * count * (2 if express else 1) + len(tags)

    t = from_python(cost)
    assert t.name == "cost" and t.description == "Shipping cost of a parcel. Longer explanation."
    props = t.parameters["properties"]
    assert props["weight"] == {"type": "number", "description": "Parcel weight in kg, measured on the scale."}
    assert props["count"] == {"type": "integer", "description": "How many parcels."}
    assert props["express"]["type"] == "boolean"
    assert props["zone"] == {"type": "string", "enum": ["eu", "us"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert t.parameters["required"] == ["weight", "count"]
    reg = ToolRegistry([t])
    assert reg.call("cost", {"weight": 1.5, "count": "2", "express": True}).observation == "6"
    assert reg.call("cost", {"weight": 1, "count": 1, "zone": "asia"}).error == "bad_arguments"
    assert from_python(cost, name="ship", description="d").spec == ToolSpec(
        "ship", "d", t.parameters)

    def untyped(x):
        return x

    with pytest.raises(UserError, match="type hint"):
        from_python(untyped)

    def star(*xs: int) -> int:
        return 0

    with pytest.raises(UserError):
        from_python(star)


# ---- the world ---------------------------------------------------------------------------------

def test_world_has_varied_tools():
    reg = world_registry()
    assert len(reg) >= 14 and reg.names == list(WORLD_TOOLS)
    types = {p["type"] for t in reg for p in t.parameters["properties"].values()}
    assert {"string", "number", "integer", "boolean", "array"} <= types
    assert json.loads(reg.call("convert_units", {"value": 100, "from_unit": "C", "to_unit": "F"}).observation) == 212
    eur = {"amount": 92, "from_currency": "EUR", "to_currency": "USD"}
    assert reg.call("convert_currency", eur).observation == "100"
    assert reg.call("weekday", {"date": "2024-01-01"}).observation == '"Monday"'
    assert reg.call("days_between", {"start": "2024-01-01", "end": "2024-03-01"}).observation == "60"
    assert reg.call("sort_numbers", {"numbers": [3, 1, 2], "descending": True}).observation == "[3, 2, 1]"
    capital = json.loads(reg.call("country_info", {"country": "japan"}).observation)["capital"]
    assert json.loads(reg.call("city_info", {"city": capital}).observation)["country"] == "Japan"


@pytest.fixture(scope="module")
def splits():
    train = generate_tasks(200, seed=1, split="train")
    seen = {t.instruction for t in train}
    return {
        "train": train,
        "test_id": generate_tasks(60, seed=1, split="test_id", exclude=seen),
        "test_ood": generate_tasks(60, seed=1, split="test_ood", exclude=seen),
    }


def test_generation_is_deterministic(splits):
    for split in ("train", "test_ood"):
        assert dumps_tasks(generate_tasks(30, 1, split)) == dumps_tasks(generate_tasks(30, 1, split))
    assert dumps_tasks(generate_tasks(30, 1, "train")) != dumps_tasks(generate_tasks(30, 2, "train"))
    assert generate_tasks(0, 1, "train") == []
    with pytest.raises(UserError):
        generate_tasks(5, 1, "dev")


def test_gold_trajectories_replay_and_answer(splits):
    reg = world_registry()
    for split, tasks in splits.items():
        assert len({t.instruction for t in tasks}) == len(tasks)
        for t in tasks:
            assert t.meta["split"] == split
            names = set(t.tool_names)
            assert len(t.tool_names) == len(names)
            calls = [s for s in t.steps if s.decision == "call"]
            assert calls and t.steps[-1].decision in ("finish", "give_up")
            assert all(s.decision == "call" for s in t.steps[:-1])
            for s in calls:
                assert s.call.name in names  # the task offers its gold tools
                assert json.loads(s.call.raw_arguments) == s.call.arguments
                assert reg.call(s.call.name, s.call.arguments, allowed=t.tool_names).observation == s.observation
            if t.steps[-1].decision == "finish":
                assert all(reg.call(s.call.name, s.call.arguments).ok for s in calls)
                assert t.meta["gold_answer"] is not None
                assert answers_match(t.final_answer, t.meta["gold_answer"]), t.final_answer
            else:
                assert t.final_answer is None and t.meta["gold_answer"] is None
                assert not reg.call(calls[-1].call.name, calls[-1].call.arguments).ok
    assert not {t.instruction for t in splits["train"]} & {t.instruction for s in ("test_id", "test_ood")
                                                            for t in splits[s]}


def test_give_up_tasks_in_train(splits):
    give_up = [t for t in splits["train"] if t.steps[-1].decision == "give_up"]
    assert len(give_up) == 10  # 5% of 200
    assert {t.meta["template"] for t in give_up} <= {g.name for g in GIVE_UP_TEMPLATES}
    assert all(json.loads(t.steps[-2].observation).get("error") for t in give_up)
    assert not any(t.steps[-1].decision == "give_up" for t in splits["test_ood"])


def test_ood_split_is_held_out(splits):
    train, id_, ood = splits["train"], splits["test_id"], splits["test_ood"]
    train_offered = {n for t in train for n in t.tool_names}
    gold_tools = lambda ts: {s.call.name for t in ts for s in t.steps if s.call}  # noqa: E731
    unseen = gold_tools(ood) - train_offered
    assert len(unseen) >= 2 and set(HELD_OUT_TOOLS) <= unseen
    assert not set(HELD_OUT_TOOLS) & {n for t in id_ for n in t.tool_names}
    train_templates = {t.meta["template"] for t in train}
    ood_templates = {t.meta["template"] for t in ood}
    assert ood_templates == {t.name for t in OOD_TEMPLATES} and not ood_templates & train_templates
    assert {t.meta["template"] for t in id_} <= {t.name for t in TRAIN_TEMPLATES + GIVE_UP_TEMPLATES}
    # OOD templates chain tools in sequences that no train template uses
    seqs = lambda ts: {tuple(s.call.name for s in t.steps if s.call) for t in ts}  # noqa: E731
    assert not seqs(ood) & seqs(train)
    assert len(train_templates) >= 12 + 1


def test_serialisation_round_trip(tmp_path, splits):
    for t in splits["train"][:20] + splits["test_ood"][:5]:
        d = json.loads(json.dumps(trajectory_to_dict(t)))
        assert trajectory_from_dict(d) == t
    with pytest.raises(UserError, match="missing 'instruction'"):
        trajectory_from_dict({"tools": [], "steps": []})
    with pytest.raises(UserError, match="decision"):
        trajectory_from_dict({"instruction": "x", "tools": [], "steps": [{"thought": "", "decision": "run"}]})
    paths = write_world(tmp_path / "world", n_train=40, n_test=10, seed=3)
    assert sorted(paths) == ["test_id", "test_ood", "train"]
    again = write_world(tmp_path / "again", n_train=40, n_test=10, seed=3)
    for k in paths:
        assert paths[k].read_text() == again[k].read_text()
    train = read_tasks(paths["train"])
    assert len(train) == 40 and dumps_tasks(train) == dumps_tasks(generate_tasks(40, 3, "train"))
    assert len(read_tasks(paths["test_ood"])) == 10
    assert not {t.instruction for t in train} & {t.instruction for t in read_tasks(paths["test_id"])}


# ---- answer matching ---------------------------------------------------------------------------

@pytest.mark.parametrize("pred, gold, ok", [
    ("The population is 2100000.", 2100000, True),
    ("About 2,100,000 people live there.", 2100000, True),
    ("It is 2.1e6.", 2100000, True),
    ("The total is 130.11 USD.", 130.1087, True),  # within 1%
    ("The total is 128 USD.", 130.1087, False),
    ("It costs 99 EUR, i.e. 101.5 USD", 101.0, True),  # any number in the answer
    ("It is -5 degrees.", -5, True),
    ("It is 5 degrees.", -5, False),
    ("The answer is 0.", 0, True),
    ("The answer is 0.0000001.", 0, True),  # absolute tolerance
    ("I could not find it.", 42, False),
    ("The answer is 42", "42", True),  # a numeric string is compared as a number
    ("The capital is Paris.", "Paris", True),
    ("the currency is EUR!", "EUR", True),
    ("It is in Europe", "europe.", True),
    ("São Paulo is in Brazil", "Sao Paulo", True),
    ("The continent is North  America.", "North America", True),
    ("Paris", "Parisian", False),
    ("the currency is euro", "EUR", False),  # whole words only
    ("It is 2025-02-27.", "2025-02-27", True),
    ("It is 2025-02-28.", "2025-02-27", False),
    (None, 3, False),
    ("anything", None, False),
])
def test_answers_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_numbers_in():
    assert numbers_in("a 1,234.5 b -3 c 2e3 d .5 e x2") == [1234.5, -3.0, 2000.0, 0.5]


# ---- the harder world: near-duplicate distractors, long chains, arguments from observations -------

_STOP = {"the", "and", "for", "not", "its", "are", "give", "from", "with", "into", "returns", "number", "numbers",
         "text", "value", "one"}


def _stems(name, reg):
    return {w[:5] for w in re.findall(r"[a-z]+", reg[name].description.lower()) if len(w) >= 3 and w not in _STOP}


def _look_alike(a, b, reg) -> bool:
    """Share a name token, or two description word stems, or the same parameter types."""
    shape = lambda n: sorted(p["type"] for p in reg[n].parameters["properties"].values())  # noqa: E731
    return (bool((set(a.split("_")) & set(b.split("_"))) - {"of"}) or len(_stems(a, reg) & _stems(b, reg)) >= 2
            or shape(a) == shape(b))


def test_near_duplicates_are_real_look_alike_tools_that_answer_differently():
    reg = world_registry()
    assert set(NEAR_DUPLICATES) == set(WORLD_TOOLS) and len(WORLD_TOOLS) >= 30
    for tool, alikes in NEAR_DUPLICATES.items():
        assert alikes and tool not in alikes
        for d in alikes:
            assert d in reg and _look_alike(tool, d, reg), (tool, d)
    money = {"amount": 100, "from_currency": "EUR", "to_currency": "USD"}
    assert reg.call("convert_currency", money).observation != reg.call("legacy_convert_currency", money).observation
    assert "Deprecated" in reg["legacy_convert_currency"].description
    day = {"date": "2024-01-05", "days": 1}  # a Friday
    assert reg.call("add_days", day).observation == '"2024-01-06"'
    assert reg.call("add_business_days", day).observation == '"2024-01-08"'
    assert reg.call("business_days_between", {"start": "2024-01-05", "end": "2024-01-08"}).observation == "1"
    assert reg.call("city_info_v1", {"city": "Paris"}).error == "tool_error"  # retired: a clear error
    assert reg.call("country_population", {"country": "France"}).observation == "68000000"
    assert reg.call("country_population", {"country": "Paris"}).error == "tool_error"
    assert reg.call("reverse_words", {"text": "a bc"}).observation == '"bc a"'
    assert reg.call("char_count", {"text": "a bc"}).observation == "4"
    assert reg.call("product_by_sku", {"sku": "Nimbus Kettle"}).error == "tool_error"  # a SKU, not a name
    order = json.loads(reg.call("order_info", {"order_id": sorted(ORDERS)[0]}).observation)
    assert json.loads(reg.call("product_by_sku", {"sku": order["sku"]}).observation)["sku"] == order["sku"]
    assert not set(UNKNOWN_ORDERS) & set(ORDERS)
    assert all(reg.call("order_info", {"order_id": o}).error == "tool_error" for o in UNKNOWN_ORDERS)


def test_tasks_offer_near_duplicate_distractors(splits):
    reg = world_registry()
    for split, tasks in splits.items():
        pool = set(WORLD_TOOLS) if split == "test_ood" else set(TRAIN_TOOLS)
        for t in tasks:
            gold = TEMPLATES[t.meta["template"]].tools
            offered = set(t.tool_names)
            assert set(gold) <= offered and offered <= pool
            assert len(offered) == len(gold) + DISTRACTORS + EXTRA_TOOLS
            near = [n for n in near_duplicates(gold) if n in pool]
            alike = offered & set(near)
            assert len(alike) >= min(DISTRACTORS, len(near)), (t.meta["template"], t.tool_names)
            assert all(any(_look_alike(g, d, reg) for g in gold) for d in alike)
    # a distractor's look-alike is often one a model must also learn to call: many are gold elsewhere
    gold_somewhere = {n for t in TRAIN_TEMPLATES for n in t.tools}
    distractors = {d for t in splits["train"] for d in set(t.tool_names) - set(TEMPLATES[t.meta["template"]].tools)}
    assert len(gold_somewhere & distractors) >= 15


def _calls(t):
    return [s for s in t.steps if s.decision == "call"]


def test_chain_lengths(splits):
    for split in ("train", "test_id"):
        normal = [t for t in splits[split] if t.meta["gold_answer"] is not None]
        lengths = [len(_calls(t)) for t in normal]
        assert max(lengths) == 5 and {1, 2, 3, 4, 5} <= set(lengths)
        long = sum(n >= 3 for n in lengths)
        assert abs(long - LONG_SHARE * len(normal)) <= 1  # the promised share, to the task
    assert sum(len(_calls(t)) >= 3 for t in splits["test_ood"]) >= len(splits["test_ood"]) // 2
    for t in TEMPLATES.values():  # each template makes exactly the calls it declares
        assert 1 <= t.calls <= 5
    assert sum(t.calls >= 3 for t in TRAIN_TEMPLATES) >= 12 and sum(t.calls >= 4 for t in TRAIN_TEMPLATES) >= 6


def _from_observation(t) -> bool:
    """Some call argument is a value the instruction does not hold but an earlier observation does."""
    calls = _calls(t)
    for i, s in enumerate(calls):
        for v in s.call.arguments.values():
            shown = v if isinstance(v, str) else json.dumps(v)
            if shown not in t.instruction and any(shown in c.observation for c in calls[:i]):
                return True
    return False


def test_arguments_are_read_from_earlier_observations(splits):
    by_template = {}
    for t in splits["train"]:
        by_template.setdefault(t.meta["template"], []).append(_from_observation(t))
    reading = {name for name, flags in by_template.items() if all(flags)}
    assert len(reading) >= 12, sorted(reading)
    assert {"order_total_in_currency", "order_price_local", "order_delivery_weekday", "capital_population_share",
            "order_shipping_weight"} <= reading
    for t in splits["train"]:  # an order task's instruction names only the order: SKU, city, date are read
        if t.meta["template"].startswith("order_"):
            first = json.loads(_calls(t)[0].observation)
            assert first["sku"] not in t.instruction and first["placed_on"] not in t.instruction


def test_difficulty_knobs():
    easy = generate_tasks(40, 2, "train", distractors=0, extra_tools=0, long_share=0.0)
    for t in easy:
        assert set(t.tool_names) == set(TEMPLATES[t.meta["template"]].tools)
        assert t.meta["gold_answer"] is None or len(_calls(t)) <= 2
    hard = generate_tasks(40, 2, "train", distractors=5, extra_tools=1, long_share=1.0)
    assert all(len(_calls(t)) >= 3 for t in hard if t.meta["gold_answer"] is not None)
    assert all(len(t.tool_names) == len(TEMPLATES[t.meta["template"]].tools) + 6 for t in hard)
    assert dumps_tasks(hard) == dumps_tasks(generate_tasks(40, 2, "train", distractors=5, extra_tools=1,
                                                           long_share=1.0))
    for bad in ({"distractors": -1}, {"extra_tools": 1.5}, {"long_share": 2}, {"long_share": True}):
        with pytest.raises(UserError):
            generate_tasks(3, 0, "train", **bad)


def test_write_world_takes_the_knobs(tmp_path):
    paths = write_world(tmp_path / "w", n_train=30, n_test=8, seed=4, distractors=1, extra_tools=0, long_share=1.0)
    again = write_world(tmp_path / "w2", n_train=30, n_test=8, seed=4, distractors=1, extra_tools=0, long_share=1.0)
    for split, path in paths.items():
        assert path.read_text() == again[split].read_text()
        for t in read_tasks(path):
            assert len(t.tool_names) == len(TEMPLATES[t.meta["template"]].tools) + 1
    train = read_tasks(paths["train"])
    assert not {t.instruction for t in train} & {t.instruction for t in read_tasks(paths["test_id"])}
    assert not {n for t in train for n in t.tool_names} & set(HELD_OUT_TOOLS)
