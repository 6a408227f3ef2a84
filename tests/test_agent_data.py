"""Agent data: ToolBench reading/writing, per-role examples, prompts, masks, parsers, length fitting."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.agent.roles import (
    OBSERVATION_CHARS,
    ROLE_LINES,
    ROLES,
    TaskHeader,
    backbone_examples,
    build_role_examples,
    context_segments,
    fit_to_length,
    parse_backbone,
    parse_caller,
    parse_planner,
    render_call,
    render_plan,
    render_step,
    role_examples,
    system_prompt,
    target,
    trajectory_example,
    whole_step_prompt,
)
from conftest import shared_toolbench
from tuneforge.agent.toolbench import read_toolbench, summary, to_conversations, write_toolbench
from tuneforge.agent.trajectory import Call, Step, ToolSpec, Trajectory
from tuneforge.data.formats import Segment
from tuneforge.data.render import encode
from tuneforge.errors import UserError

DATA = shared_toolbench() or Path("/work/shared/data/toolbench")
OOD = DATA / "out_of_domain.json"
STAGE1 = DATA / "raw_data_stage_1.json"
needs_data = pytest.mark.skipif(not OOD.is_file() or not STAGE1.is_file(), reason="shared ToolBench data not present")
END = "<|im_end|>"


@pytest.fixture(scope="module")
def ood():
    return read_toolbench(OOD)


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from tuneforge.models.load import load_tokenizer

    return load_tokenizer(str(tiny_llama))


def trained_text(example, tok, max_length: int = 4096) -> str:
    enc = encode(example, tok, max_length)
    assert not enc.truncated
    return tok.decode([i for i, m in zip(enc.ids, enc.mask) if m])


TOOLS = [ToolSpec("get_weather", "Weather for a city. " * 30, {"city": "string"}), ToolSpec("get_time", "", {})]


def sample_trajectory() -> Trajectory:
    """Every decision once, a note, an unparsed call and a step without a decision."""
    return Trajectory(
        instruction="What is the weather in Paris, and what time is it there?",
        tools=TOOLS,
        steps=[
            Step("I need the weather first.", "call", Call("get_weather", {"city": "Paris"}, '{"city": "Paris"}'),
                 observation='{"temp": 21, "sky": "clear"}'),
            Step("Hmm.", None),
            Step("Now the time.", "call", Call("get_time", None, "{oops"), observation="error: bad input",
                 notes=["Try again, differently."]),
            Step("Now the time, properly.", "call", Call("get_time", {}, "{}"), observation='"14:05"'),
            Step("I know both.", "finish", final_answer="It is 21 degrees and clear in Paris; the time is 14:05."),
        ],
        final_answer="It is 21 degrees and clear in Paris; the time is 14:05.",
        where="sample[0]",
    )


# ------------------------------------------------------------------------------- real ToolBench


@needs_data
def test_out_of_domain_counts(ood):
    trajs, rep = ood
    assert rep.tasks == 400 and len(trajs) == 400 and rep.formats == Counter(conversations=400)
    assert rep.planner_steps == 1658 == sum(len(t.steps) for t in trajs)
    assert rep.decisions == Counter({"call": 1146, "finish": 294, "give_up": 107, None: 111})
    assert (rep.calls, rep.observations, rep.conclusions) == (1146, 1147, 294)
    # 623 user turns: 400 instructions, the rest are notes of the step that follows them
    assert sum(len(s.notes) for t in trajs for s in t.steps) + sum(len(t.meta.get("trailing_notes", []))
                                                                   for t in trajs) == 623 - 400
    assert all(t.instruction for t in trajs)
    assert rep.problem_kinds == Counter(no_decision=111, observation_without_call=1)
    stray = [p for p in rep.problems if p.kind == "observation_without_call"]
    assert stray[0].where == "out_of_domain.json[273]" and stray[0].index == 10
    assert all(s.call.parsed for t in trajs for s in t.steps if s.call)
    text = summary(rep)
    assert "1,658 planner steps" in text and "111 no decision" in text and "400 trajectories kept" in text


@needs_data
def test_out_of_domain_round_trip_exact(ood, tmp_path):
    trajs, _ = ood
    raw = json.loads(OOD.read_text())
    for traj, item in zip(trajs, raw):
        assert to_conversations(traj) == item["conversations"], traj.where
    out = write_toolbench(trajs, tmp_path / "copy.json")
    assert json.loads(out.read_text()) == raw
    assert [p.name for p in tmp_path.iterdir()] == ["copy.json"]  # no temporary file left behind


@needs_data
def test_out_of_domain_skip_policy():
    trajs, rep = read_toolbench(OOD, policy="skip")
    assert rep.skipped == 100 and len(trajs) == rep.kept == 300
    assert rep.planner_steps == 1658  # counts describe the file, not what was kept
    assert all(s.decision is not None for t in trajs for s in t.steps)
    assert "100 tasks with problems were skipped" in summary(rep)


@needs_data
def test_chains_file():
    trajs, rep = read_toolbench(STAGE1)
    assert len(trajs) == 20 and rep.formats == Counter(chains=20)
    assert rep.calls == 59 and rep.observations == 59 and rep.planner_steps == 88
    assert rep.decisions == Counter({"call": 59, "finish": 14, "give_up": 6, None: 9})
    raw = json.loads(STAGE1.read_text())
    for traj, item in zip(trajs, raw):
        assert traj.instruction == item["instruction"] and "Begin!" not in traj.instruction
        calls = [s for s in traj.steps if s.decision == "call"]
        assert calls and all(s.call.parsed and s.observation is not None for s in calls)
        assert all(s.call.name in traj.tool_names for s in calls)
        assert traj.steps[-1].decision in ("finish", "give_up")
    finished = [t for t in trajs if t.steps[-1].decision == "finish"]
    assert len(finished) == 14 and all(t.final_answer == t.steps[-1].final_answer for t in finished)
    assert sum(len(s.notes) for t in trajs for s in t.steps) == 12  # the "valid": false retry prompts
    assert all(p.kind == "no_decision" and p.index is not None for p in rep.problems) and len(rep.problems) == 9


# ---------------------------------------------------------------------------------- bad input


def _bad_items() -> list:
    tools = [{"Name": "get_weather", "function": "weather", "input": {"city": "string"}}]
    ok = [{"from": "user", "value": "Weather in Paris?"},
          {"from": "assistant", "value": "Let me look. Next: caller."},
          {"from": "caller", "value": 'Action: get_weather\nAction Input: {"city": "Paris"}'},
          {"from": "observation", "value": "sunny"},
          {"from": "assistant", "value": "Done. Next: conclusion."},
          {"from": "conclusion", "value": "Sunny."}]
    return [
        {"tools": tools, "instruction": "Weather in Paris?", "conversations": ok},  # 0: fine
        {"tools": tools, "instruction": "Weather in Paris?",  # 1: no decision
         "conversations": ok[:1] + [{"from": "assistant", "value": "Thinking..."}] + ok[1:]},
        {"tools": tools, "instruction": "Weather in Paris?",  # 2: unknown tool
         "conversations": ok[:2] + [{"from": "caller", "value": "Action: get_moon\nAction Input: {}"}] + ok[3:]},
        {"tools": tools, "instruction": "Weather in Paris?",  # 3: malformed action input
         "conversations": ok[:2] + [{"from": "caller", "value": 'Action: get_weather\nAction Input: {"city": '}]
         + ok[3:]},
        {"tools": tools, "instruction": "Weather in Paris?",  # 4: unknown from
         "conversations": ok[:4] + [{"from": "critic", "value": "meh"}] + ok[4:]},
        {"tools": tools, "instruction": "Weather in Paris?",  # 5: caller with no planner step
         "conversations": ok[:1] + ok[2:]},
        {"tools": tools, "instruction": "Weather?", "chains": [  # 6: chains, unknown tool + bad JSON
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "\nWeather?\nBegin!\n"},
            {"role": "assistant", "content": "Try it.", "function_call": {"name": "get_sun", "arguments": "{x"}},
            {"role": "function", "name": "get_sun", "content": "no such tool"},
            {"role": "assistant", "content": "",
             "function_call": {"name": "Finish", "arguments": '{"return_type": "give_up_and_restart"}'}}]},
        "not a task",  # 7: unreadable
    ]


@pytest.fixture
def bad_file(tmp_path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad_items()))
    return path


def test_bad_input_reported_with_where_index_reason(bad_file):
    trajs, rep = read_toolbench(bad_file)  # keep
    by_task = {}
    for p in rep.problems:
        by_task.setdefault(p.where, []).append(p)
    assert "bad.json[0]" not in by_task
    assert [(p.index, p.kind) for p in by_task["bad.json[1]"]] == [(1, "no_decision")]
    assert [(p.index, p.kind) for p in by_task["bad.json[2]"]] == [(2, "unknown_tool")]
    assert "get_moon" in by_task["bad.json[2]"][0].reason
    assert [(p.index, p.kind) for p in by_task["bad.json[3]"]] == [(2, "bad_arguments")]
    assert [(p.index, p.kind) for p in by_task["bad.json[4]"]] == [(4, "unknown_role")]
    assert "critic" in by_task["bad.json[4]"][0].reason
    assert (1, "caller_without_planner") in [(p.index, p.kind) for p in by_task["bad.json[5]"]]
    assert {(p.index, p.kind) for p in by_task["bad.json[6]"]} == {(2, "unknown_tool"), (2, "bad_arguments")}
    assert [(p.index, p.kind) for p in by_task["bad.json[7]"]] == [(None, "unreadable")]
    assert all(p.reason for p in rep.problems)
    # keep: problem steps stay in, as they were
    assert rep.tasks == 8 and len(trajs) == 7 and rep.unreadable == 1
    t = {x.where: x for x in trajs}
    assert [s.decision for s in t["bad.json[1]"].steps] == [None, "call", "finish"]
    assert t["bad.json[1]"].steps[0].thought == "Thinking..."
    assert t["bad.json[2]"].steps[0].call.name == "get_moon"
    bad_call = t["bad.json[3]"].steps[0].call
    assert bad_call.arguments is None and bad_call.raw_arguments == '{"city": ' and not bad_call.parsed
    assert len(t["bad.json[4]"].steps) == 2  # the unknown turn is dropped (and reported)
    assert t["bad.json[5]"].steps[0].call.name == "get_weather" and t["bad.json[5]"].steps[0].decision is None
    assert t["bad.json[6]"].steps[0].call.arguments is None and t["bad.json[6]"].steps[-1].decision == "give_up"
    assert rep.decisions[None] == 1 and rep.planner_steps == 4 * 2 + 3 + 1 + 2
    # role examples leave out what the problems break, and count it
    skipped = Counter()
    assert role_examples(t["bad.json[3]"], "caller", skipped) == [] and skipped == Counter(unparsed_call=1)
    assert len(role_examples(t["bad.json[3]"], "planner")) == 2
    skipped = Counter()
    assert len(role_examples(t["bad.json[1]"], "planner", skipped)) == 2 and skipped == Counter(no_decision=1)


def test_bad_input_policies(bad_file):
    trajs, rep = read_toolbench(bad_file, policy="skip")
    assert [t.where for t in trajs] == ["bad.json[0]"]
    assert rep.skipped == 6 and rep.unreadable == 1 and rep.kept == 1
    assert len(rep.problems) == 8  # still reported
    with pytest.raises(UserError, match=r"bad\.json: task 1, turn 1: planner turn without a decision"):
        read_toolbench(bad_file, policy="reject")
    with pytest.raises(UserError, match="unknown policy"):
        read_toolbench(bad_file, policy="ignore")
    with pytest.raises(UserError, match="no such file"):
        read_toolbench(bad_file.parent / "missing.json")


def test_written_sample_reads_back(tmp_path):
    traj = sample_trajectory()
    path = write_toolbench([traj], tmp_path / "s.json")
    (back,), rep = read_toolbench(path)
    assert [(s.thought, s.decision, s.notes, s.observation, s.final_answer) for s in back.steps] == \
           [(s.thought, s.decision, s.notes, s.observation, s.final_answer) for s in traj.steps]
    assert back.steps[2].call.raw_arguments == "{oops" and back.final_answer == traj.final_answer
    assert rep.problem_kinds == Counter(no_decision=1, bad_arguments=1)


# --------------------------------------------------------------------------------- prompts


def test_system_prompts():
    for role in ROLES:
        text = system_prompt(role, TOOLS)
        # ToolBench's own parameter shape ({"city": "string"}) is not a JSON schema: shown as JSON
        assert '- get_weather: Parameters: {"city":"string"}: Weather for a city.' in text
        assert "- get_time()" in text
        line = next(x for x in text.splitlines() if x.startswith("- get_weather"))
        assert len(line) < 260 and "..." in line  # the 600-character description is cut
    assert len({system_prompt(r, TOOLS) for r in ROLES}) == 4
    with pytest.raises(ValueError):
        system_prompt("critic", TOOLS)


def test_role_prompts_differ_from_the_backbone_by_the_role_line_only():
    """One skeleton (tools, history format, instructions) as in the α-UMi reference: stage 2 starts from
    the prompt stage 1 trained on, with one line saying which part of the step the model writes."""
    backbone = system_prompt("backbone", TOOLS).splitlines()
    for role in ROLES[1:]:
        lines = system_prompt(role, TOOLS).splitlines()
        assert len(lines) == len(backbone)
        differ = [i for i, (a, b) in enumerate(zip(backbone, lines)) if a != b]
        assert len(differ) == 1 and lines[differ[0]] == ROLE_LINES[role]
        assert backbone[differ[0]] == ROLE_LINES["backbone"]


def test_whole_step_prompt_is_the_backbone_context_with_the_plan_left_open():
    """A whole-step model asked for the caller's or summarizer's part sees what it saw in training: the
    backbone's prompt and history, then its own step up to the decision line, to be continued."""
    traj = sample_trajectory()
    for k, role in ((0, "caller"), (4, "summarizer")):
        step, history = traj.steps[k], traj.steps[:k]
        asked = whole_step_prompt(role, context_segments(role, traj, history, current_thought=step.thought))
        assert asked[:-1] == context_segments("backbone", traj, history)
        rest = render_call(step.call) if role == "caller" else step.final_answer
        assert f"{asked[-1].text}\n{rest}" == render_step(step)
    planner = whole_step_prompt("planner", context_segments("planner", traj, traj.steps[:1]))
    assert planner == context_segments("backbone", traj, traj.steps[:1])
    with pytest.raises(ValueError, match="role line"):
        whole_step_prompt("caller", context_segments("planner", traj, []))


def test_json_schema_tools_render_as_signatures():
    schema = {"type": "object", "properties": {"a": {"type": "number"}, "unit": {"type": "string", "enum": ["m", "km"]},
                                               "xs": {"type": "array", "items": {"type": "integer"}}},
              "required": ["a", "xs"]}
    text = system_prompt("caller", [ToolSpec("f", "Do f.", schema)])
    assert "- f(a: number, unit?: m|km, xs: list[integer]): Do f." in text


def test_context_segments_runtime_form():
    traj = sample_trajectory()
    header = TaskHeader(traj.instruction, traj.tools)
    long = Step("Look.", "call", Call("get_time", {}, "{}"), observation="x" * 5000)
    segs = context_segments("caller", header, [long], current_thought="Call get_weather for Paris.")
    assert not any(s.train for s in segs)
    assert [s.role for s in segs] == ["system", "user", "assistant", "user", "assistant"]
    assert segs[1].text == traj.instruction
    assert segs[2].text == "Look.\nNext: caller\nAction: get_time\nAction Input: {}"
    assert segs[3].text == "Observation: " + "x" * OBSERVATION_CHARS + " [truncated]"
    assert segs[4].text == "Call get_weather for Paris.\nNext: caller"
    summ = context_segments("summarizer", header, [long], current_thought="Enough.")
    assert summ[-1].text == "Enough.\nNext: conclusion"
    planner = context_segments("planner", traj, traj.steps[:3], notes=["Be quick."])
    assert planner[-1] == Segment("user", "Be quick.", False)
    assert Segment("user", "Try again, differently.", False) in planner  # step 2's note, before step 2
    with pytest.raises(ValueError):
        context_segments("planner", header, [], current_thought="x")


# ---------------------------------------------------------------------------- targets and masks


def _check_role_masks(traj, tok, max_length: int = 4096):
    for role in ROLES:
        for ex in role_examples(traj, role):
            assert [s.train for s in ex.segments].count(True) == 1 and ex.segments[-1].train
            assert ex.meta["role"] == role and ex.meta["trajectory"] == traj.where
            step = traj.steps[ex.meta["step"]]
            assert trained_text(ex, tok, max_length) == target(role, step) + END, ex.where


def test_role_masks_token_by_token(tok):
    traj = sample_trajectory()
    counts = {role: len(role_examples(traj, role)) for role in ROLES}
    assert counts == {"backbone": 3, "planner": 4, "caller": 2, "summarizer": 1}
    ex = {role: role_examples(traj, role) for role in ROLES}
    assert trained_text(ex["caller"][0], tok) == 'Action: get_weather\nAction Input: {"city": "Paris"}' + END
    assert trained_text(ex["caller"][1], tok) == "Action: get_time\nAction Input: {}" + END
    assert trained_text(ex["planner"][0], tok) == "I need the weather first.\nNext: caller" + END
    assert trained_text(ex["planner"][-1], tok) == "I know both.\nNext: conclusion" + END
    assert trained_text(ex["summarizer"][0], tok) == traj.final_answer + END
    assert trained_text(ex["backbone"][0], tok) == (
        'I need the weather first.\nNext: caller\nAction: get_weather\nAction Input: {"city": "Paris"}' + END)
    assert trained_text(ex["backbone"][-1], tok) == "I know both.\nNext: conclusion\n" + traj.final_answer + END
    # the caller sees the planner's thought for its step (untrained); the planner does not see the call
    assert ex["caller"][1].segments[-2] == Segment("assistant", "Now the time, properly.\nNext: caller", False)
    assert "Action:" not in "".join(s.text for s in ex["planner"][0].segments[1:])
    give_up = Trajectory("Do the impossible.", TOOLS, [Step("No tool can do this.", "give_up")], where="g[0]")
    assert trained_text(role_examples(give_up, "backbone")[0], tok) == "No tool can do this.\nNext: give up" + END
    assert role_examples(give_up, "caller") == role_examples(give_up, "summarizer") == []
    _check_role_masks(traj, tok)
    _check_role_masks(give_up, tok)


@needs_data
def test_role_masks_on_real_trajectories(ood, tok):
    trajs, _ = ood
    for i in (0, 273):  # a failed run with retry notes; the one with two conclusions
        _check_role_masks(trajs[i], tok, 1 << 15)  # the tiny byte-level tokenizer needs many tokens
    sizes = {role: build_role_examples(trajs, role) for role in ROLES}
    assert {r: len(x) for r, (x, _) in sizes.items()} == {"backbone": 1547, "planner": 1547, "caller": 1146,
                                                          "summarizer": 294}
    assert all(skipped == Counter(no_decision=111) for _, skipped in sizes.values())


# ------------------------------------------------------------------------------------ parsers


@needs_data
def test_parsers_round_trip_real_targets(ood):
    trajs, _ = ood
    for traj in trajs:
        for step in traj.steps:
            if step.decision is None:
                continue
            assert parse_planner(target("planner", step)) == (step.thought.strip(), step.decision)
            thought, decision, call, answer = parse_backbone(target("backbone", step) or "")
            if target("backbone", step) is not None:
                assert (thought, decision) == (step.thought.strip(), step.decision)
            if step.decision == "call":
                got = parse_caller(target("caller", step))
                assert (got.name, got.arguments) == (step.call.name, step.call.arguments)
                assert (call.name, call.arguments) == (step.call.name, step.call.arguments) and answer is None
            elif step.decision == "finish":
                assert call is None and answer == step.final_answer.strip()
                assert target("summarizer", step) == step.final_answer.strip()


def test_parsers_tolerant():
    assert parse_planner("Check it. Next: caller.") == ("Check it.", "call")  # ToolBench's own form
    assert parse_planner("  Done.\n\n**Next: Conclusion**  \n") == ("Done.", "finish")
    assert parse_planner("Next: give up") == ("", "give_up")
    assert parse_planner("Next: call the weather tool with Paris.") == ("Next: call the weather tool with Paris.",
                                                                        None)
    assert parse_planner("I will think more.") == ("I will think more.", None)
    call = parse_caller('```\nAction:  get_weather \nAction Input:\n```json\n{"city": "Paris"}\n```\n```')
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    call = parse_caller('Action: get_weather Action Input: {"city": "Paris"} and then more text')
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    bad = parse_caller('Action: get_weather\nAction Input: {"city": Paris}')
    assert bad.name == "get_weather" and bad.arguments is None and bad.raw_arguments == '{"city": Paris}'
    assert parse_caller("Action: get_weather").arguments is None
    assert parse_caller('Action: f\nAction Input: ["not", "an", "object"]').arguments is None
    assert parse_caller("I would call the weather tool.") is None
    assert parse_backbone("Hmm.\nNext: caller\nAction: get_time\nAction Input: {}")[2] == Call("get_time", {}, "{}")
    assert parse_backbone("Hmm.\nNext: conclusion\n\n  Sunny.\n") == ("Hmm.", "finish", None, "Sunny.")
    assert parse_backbone("Hmm.\nNext: conclusion") == ("Hmm.", "finish", None, None)
    assert parse_backbone("Hmm.\nNext: give up") == ("Hmm.", "give_up", None, None)
    assert parse_backbone("no idea") == ("no idea", None, None, None)
    step = Step("  Think.  ", "call", Call("f", {"a": [1, "é"]}, '{"a":[1,"é"]}'))
    assert render_plan(step.thought, step.decision) == "Think.\nNext: caller"
    assert render_call(step.call) == 'Action: f\nAction Input: {"a": [1, "é"]}'


# ------------------------------------------------------------------------------ length fitting


def _long_trajectory(n: int = 8) -> Trajectory:
    steps = [Step(f"Thought number {k}.", "call", Call("get_time", {"k": k}, json.dumps({"k": k})),
                  observation=f"result {k} " + "z" * 150) for k in range(n)]
    steps.append(Step("All done.", "finish", final_answer="The final answer."))
    return Trajectory("Collect eight results.", [ToolSpec("get_time", "time", {})], steps,
                      final_answer="The final answer.", where="long[0]")


def _n(segs, tok) -> int:
    from tuneforge.data.formats import Example

    return len(encode(Example(segs), tok, 1 << 30).ids)


def test_fit_to_length_drops_oldest_steps_first(tok):
    traj = _long_trajectory()
    for role in ("summarizer", "planner"):
        ex = role_examples(traj, role)[-1]
        full = _n(ex.segments, tok)
        assert fit_to_length(ex.segments, tok, full) is ex.segments  # fits: unchanged
        budget = full - 300
        fitted = fit_to_length(ex.segments, tok, budget)
        assert _n(fitted, tok) <= budget
        assert fitted[:2] == ex.segments[:2] and fitted[-1] == ex.segments[-1]  # system, instruction, target
        if role == "summarizer":
            assert fitted[-2] == ex.segments[-2]  # the planner's current thought stays
        kept = [int(s.text.split()[2].rstrip(".")) for s in fitted if s.text.startswith("Thought number")]
        assert kept and kept == list(range(8 - len(kept), 8)) and len(kept) < 8  # a suffix: oldest went first
        note = fitted[2]
        assert note.role == "user" and note.text == f"[{8 - len(kept)} earlier steps omitted]"
        # every kept step still has its call and observation
        n_obs = sum(s.text.startswith("Observation: result") for s in fitted)
        assert n_obs == len(kept)
        # fitting again is stable and counts all omitted steps
        again = fit_to_length(fitted, tok, budget - 150)
        assert again[2].text.startswith("[") and int(again[2].text[1:].split()[0]) > 8 - len(kept)
    # even system + instruction + target do not fit: returned as is
    ex = role_examples(traj, "planner")[-1]
    assert fit_to_length(ex.segments, tok, 20) is ex.segments


def test_other_shapes_jsonl_plain_answer_bad_caller(tmp_path):
    items = [
        {"tools": [{"Name": "f", "function": "x", "input": {}}], "instruction": "Q", "conversations": [
            {"from": "user", "value": "Q"}, {"from": "assistant", "value": "t Next: caller."},
            {"from": "caller", "value": "call f please"}, {"from": "observation", "value": "o"},
            {"from": "assistant", "value": "t2 Next: conclusion."}, {"from": "conclusion", "value": "A"},
            {"from": "user", "value": "late"}]},
        {"tools": [], "chains": [{"role": "user", "content": "\nHi\nBegin!\n"},
                                 {"role": "assistant", "content": "Hello there."}]},
    ]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    (conv, chain), rep = read_toolbench(path)
    assert [(p.where, p.index, p.kind) for p in rep.problems] == [("x.jsonl[0]", 2, "bad_caller"),
                                                                  ("x.jsonl[0]", 6, "trailing_user")]
    assert conv.steps[0].call.arguments is None and to_conversations(conv) == items[0]["conversations"]
    # a chain that ends in a plain assistant message: a finish step with that answer and no thought
    assert chain.instruction == "Hi" and rep.formats == Counter(conversations=1, chains=1)
    assert [(s.thought, s.decision, s.final_answer) for s in chain.steps] == [("", "finish", "Hello there.")]
    assert role_examples(chain, "planner")[0].segments[-1].text == "Next: conclusion"


def _same_objective(traj, tok):
    """Every per-step backbone example is a prefix of the whole-trajectory sequence, token for token,
    with its target tokens trained there too; and the sequence trains nothing else."""
    whole = encode(trajectory_example(traj), tok, 1 << 30)
    trained = set()
    for e in role_examples(traj, "backbone"):
        step = encode(e, tok, 1 << 30)
        n = len(step.ids)
        assert whole.ids[:n] == step.ids, e.where
        mine = {i for i, m in enumerate(step.mask) if m}
        assert mine and all(whole.mask[i] for i in mine), e.where
        trained |= mine
    assert trained == {i for i, m in enumerate(whole.mask) if m}


def test_whole_trajectory_is_the_per_step_objective(tok):
    _same_objective(sample_trajectory(), tok)
    _same_objective(_long_trajectory(), tok)
    assert trajectory_example(Trajectory("x", TOOLS, [Step("Hmm.", None)], where="t")) is None


@needs_data
def test_whole_trajectory_is_the_per_step_objective_on_real_trajectories(ood, tok):
    trajectories, _ = ood
    for traj in trajectories[:20]:
        if trajectory_example(traj) is not None:
            _same_objective(traj, tok)


def test_backbone_examples_split_what_does_not_fit(tok):
    long, short = _long_trajectory(), sample_trajectory()
    n_long = _n(trajectory_example(long).segments, tok)
    examples, skipped, split = backbone_examples([short, long], tok, max_length=n_long - 1)
    assert split == 1
    assert examples[0].meta["steps"] == 3  # the sample's three backbone steps, in one sequence
    assert len(examples) == 1 + len(role_examples(long, "backbone"))  # the long one as its steps, none lost
    assert all(_n(e.segments, tok) <= n_long - 1 for e in examples[1:])
    assert skipped == build_role_examples([short, long], "backbone")[1]
    examples, _, split = backbone_examples([short, long], tok, max_length=n_long)
    assert split == 0 and len(examples) == 2
