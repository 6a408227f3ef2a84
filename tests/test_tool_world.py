import json
from typing import Literal

import pytest

from tuneforge.agent.env import (
    GIVE_UP_TEMPLATES, HELD_OUT_TOOLS, OOD_TEMPLATES, TRAIN_TEMPLATES, WORLD_TOOLS, answers_match, generate_tasks,
    read_tasks, trajectory_from_dict, trajectory_to_dict, world_registry, write_world,
)
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
