"""Property-based fuzzing of everything that reads user input: whatever comes in, the answer is a result
or a UserError (one line, for the CLI's `error:`), never another exception; the server answers 2xx or a
4xx JSON error in OpenAI's shape, never 500, and stays up.

Budgets are small (tiny model, <= 50 examples per property, no deadline) so this runs in the normal suite.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
import hypothesis  # noqa: E402,F811
from hypothesis import strategies as st  # noqa: E402

from conftest import running_server  # noqa: E402
from tuneforge.errors import UserError  # noqa: E402

# TUNEFORGE_FUZZ_EXAMPLES=2000 for a longer hunt; the default keeps the suite fast.
N = int(os.environ.get("TUNEFORGE_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=N, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
FUZZ_SERVER = settings(FUZZ, max_examples=max(1, N * 4 // 5))


def mostly(valid, wild):
    """Valid values 3 times in 4, so inputs get past the first checks to the deep code; wild ones otherwise.
    (Not st.one_of(valid, valid, valid, wild): hypothesis flattens nested one_ofs, so the many branches of a
    wild union would outvote the valid one.)"""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else wild)


def _one_line(e: UserError) -> None:
    text = str(e)
    assert text and "\n" not in text and "\r" not in text, f"UserError message is not one line: {text!r}"


# ---- shared strategies -----------------------------------------------------------------------

# Keys the readers look for, plus noise: random data mostly misses every branch otherwise.
DATA_KEYS = ["instruction", "input", "output", "system", "messages", "conversations", "role", "content", "from",
             "value", "prompt", "completion", "text", "train", "weight", "chosen", "rejected", "data"]
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", "wizard", "", "ASSISTANT"]
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(ROLES))


def json_values(keys: list[str]):
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), inner, max_size=5),
                        max_leaves=20)


def records(keys: list[str]):
    return st.dictionaries(st.sampled_from(keys), json_values(keys), max_size=6)


def _message_lists():
    msg = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": scalars | st.lists(scalars, max_size=2)})
    return st.lists(msg, max_size=4)


def _plausible_records():
    """Records close to a real format, so the converters' deeper checks run too."""
    return st.one_of(
        st.fixed_dictionaries({"instruction": scalars, "output": scalars},
                              optional={"input": scalars, "system": scalars}),
        st.fixed_dictionaries({"messages": _message_lists() | scalars}),
        st.fixed_dictionaries({"prompt": scalars, "completion": scalars}),
        st.fixed_dictionaries({"text": scalars}),
        records(DATA_KEYS),
    )


def _lines(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


file_bodies = st.one_of(
    st.binary(max_size=200),
    st.lists(_plausible_records(), max_size=5).map(_lines),
    st.lists(_plausible_records(), max_size=5).map(lambda rows: json.dumps(rows).encode()),
    st.lists(st.one_of(_plausible_records().map(json.dumps), st.text(max_size=30)), max_size=5)
    .map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def _write(tmp: Path, suffix: str, body: bytes) -> Path:
    path = tmp / f"fuzz{suffix}"
    path.write_bytes(body)
    return path


# ---- data readers ----------------------------------------------------------------------------

@FUZZ
@given(body=file_bodies, suffix=st.sampled_from([".jsonl", ".json"]),
       fmt=st.sampled_from(["auto", "alpaca", "messages", "prompt_completion", "text"]),
       system=st.none() | st.text(max_size=8))
def test_data_readers_never_crash(body, suffix, fmt, system):
    from tuneforge.data.formats import to_examples
    from tuneforge.data.sources import read_records

    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), suffix, body)
        try:
            examples = to_examples(read_records(str(path)), fmt, system or None)
        except UserError as e:
            _one_line(e)
            return
    for ex in examples:
        assert ex.segments and ex.where
        for seg in ex.segments:
            assert isinstance(seg.text, str), (ex.where, seg)
            assert seg.role in ("system", "user", "assistant", "tool", "text")


@FUZZ
@given(rows=st.lists(_plausible_records() | records(["prompt", "chosen", "rejected", "system", "role", "content",
                                                      "from", "value"]), min_size=1, max_size=4),
       chosen_lists=st.booleans())
def test_preference_reader_never_crashes(rows, chosen_lists):
    from tuneforge.data.preference import to_pairs
    from tuneforge.data.sources import read_records

    if chosen_lists:  # TRL's conversational form
        rows = [r | {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": r.get("text")}],
                     "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]}
                for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), ".jsonl", _lines(rows))
        try:
            pairs, _ = to_pairs(read_records(str(path)))
        except UserError as e:
            _one_line(e)
            return
    for p in pairs:
        assert isinstance(p.chosen, str) and isinstance(p.rejected, str) and p.prompt
        assert all(isinstance(s.text, str) for s in p.prompt)


# ---- config loader ---------------------------------------------------------------------------

def _config_keys() -> list[str]:
    from tuneforge.config import _SECTIONS

    keys = {k for model in _SECTIONS.values() for k in model.model_fields}
    return sorted(keys | {"name", "lora", "full", "prefix", "calibration", "agent", "preference"})


CONFIG_KEYS = _config_keys()
SECTIONS = ["data", "train", "eval", "calibration", "agent", "preference", "method", "suites", "model", "recipe"]
yaml_scalars = (st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=True)
                | st.text(max_size=10) | st.sampled_from(["lora", "full", "prefix", "calibration", "agent",
                                                          "preference", "auto", "chatml", "x.jsonl", "a\x00b"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=5), inner, max_size=4),
                           max_leaves=15)
config_dicts = st.dictionaries(st.sampled_from(SECTIONS + CONFIG_KEYS) | st.integers(0, 3) | st.none(),
                               yaml_values, max_size=6)
overrides = st.lists(st.text(alphabet="abcdeilmnorstxy._=[]{}:0123 ", max_size=20)
                     | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["train.lr", "method", "method.r",
                                                                           "data.train", "model", "train.lr.x",
                                                                           "data", "recipe", ".", "a..b"]),
                                 st.text(max_size=8)), max_size=3)


@FUZZ
@given(raw=config_dicts, extra=overrides)
def test_config_loader_never_crashes(raw, extra):
    from tuneforge.config import Config, load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        try:
            cfg = load_config(path, extra)
        except UserError as e:
            _one_line(e)
            return
    assert isinstance(cfg, Config)


@FUZZ
@given(text=st.text(max_size=200) | st.lists(st.sampled_from(["model: x", "data:", "  train: a", "- 1", ": :",
                                                               "  - [", "train: {lr: }", "\t", "&a b", "*a",
                                                               "!!python/object:os.system x", "key: 'unclosed",
                                                               "method: lora", "recipe: agent"]),
                                             max_size=6).map("\n".join))
def test_config_text_never_crashes(text):
    from tuneforge.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except UserError as e:
            _one_line(e)


# ---- calibration questions and grading -------------------------------------------------------

Q_KEYS = ["question", "target", "targets", "answer", "answers", "options", "context", "passage", "source",
          "correct", "label", "output", "grader", "split", "where"]
option_values = st.one_of(
    st.lists(st.text(max_size=8) | st.integers(-5, 5), max_size=5),
    st.dictionaries(st.sampled_from(["A", "B", "C", "a", " b", "Z", "1"]), st.text(max_size=6), max_size=4),
    st.lists(st.sampled_from(["A. bank", "B) river", "(C) sea", "D. ", "x"]), max_size=4).map("\n".join),
    scalars,
)
question_records = st.fixed_dictionaries(
    {"question": scalars},
    optional={"target": scalars | st.sampled_from(["A", "(B)", "C. sea", "bank"]),
              "answers": st.lists(scalars, max_size=3), "options": option_values, "context": scalars,
              "source": scalars, "correct": scalars, "label": scalars, "output": scalars}) | records(Q_KEYS)


@FUZZ
@given(rows=st.lists(question_records, max_size=5))
def test_calibration_question_loader_never_crashes(rows):
    from tuneforge.calibration.questions import is_graded_file, load_graded, load_questions, question_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), ".jsonl", _lines(rows))
        for load in (load_questions, load_graded, is_graded_file):
            try:
                load(str(path))
            except UserError as e:
                _one_line(e)
    for row in rows:
        try:
            question_from_dict(row)
        except UserError as e:
            _one_line(e)


answers = st.text(max_size=40) | st.lists(st.sampled_from(["A", "(B)", "answer is", "C.", " ", "1,200", "-3.5",
                                                            "the", "bank", "\n", "**", "Answer:", "x2", ".5",
                                                            "9" * 30]), max_size=6).map("".join)


@FUZZ
@given(answer=answers, question=st.text(max_size=20), targets=st.lists(answers, max_size=3),
       options=st.none() | st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=5),
       graders=st.lists(st.sampled_from(["choice", "numeric", "exact", "substring"]), min_size=1, max_size=4),
       tolerance=st.floats(0, 1))
def test_grader_never_crashes(answer, question, targets, options, graders, tolerance):
    from tuneforge.calibration.grade import grade
    from tuneforge.calibration.questions import Question

    q = Question(question, targets or (options[:1] if options else []), options)
    g = grade(answer, q, graders=graders, tolerance=tolerance)
    assert isinstance(g.correct, bool) and g.grader in ("choice", "numeric", "exact", "substring", "empty")


# ---- agent parsers ---------------------------------------------------------------------------

agent_text = st.text(max_size=80) | st.lists(
    st.sampled_from(["Next: caller", "Next: conclusion.", "**Next**: give up", "Next:call", "\n", "Action: ",
                     "Action Input: ", "search", '{"q": 1}', "{", "[" * 30, "```json", "```", "Thought", " ",
                     '{"a": ' + "9" * 5000 + "}", "\r\n"]), max_size=8).map("".join)


@FUZZ
@given(text=agent_text)
def test_agent_parsers_never_crash(text):
    from tuneforge.agent.roles import parse_backbone, parse_caller, parse_planner

    thought, decision = parse_planner(text)
    assert isinstance(thought, str) and decision in (None, "call", "finish", "give_up")
    call = parse_caller(text)
    assert call is None or (isinstance(call.name, str) and call.name and
                            (call.arguments is None or isinstance(call.arguments, dict)))
    t, d, c, a = parse_backbone(text)
    assert isinstance(t, str) and d in (None, "call", "finish", "give_up") and (a is None or isinstance(a, str))


TB_KEYS = ["tools", "instruction", "conversations", "chains", "from", "value", "role", "content",
           "function_call", "name", "arguments", "Name", "function", "input", "return_type", "final_answer"]
SCHEMA_KEYS = ["type", "properties", "required", "enum", "items", "description", "object", "array", "string"]
# Tool parameter schemas: JSON-schema-like, with every field possibly of the wrong kind.
schemas = mostly(st.fixed_dictionaries(
    {"type": st.just("object") | scalars,
     "properties": mostly(st.dictionaries(st.text(max_size=4), json_values(SCHEMA_KEYS) | scalars, min_size=1,
                                          max_size=3), scalars)},
    optional={"required": mostly(st.lists(st.text(max_size=3) | json_values(SCHEMA_KEYS), min_size=1, max_size=3),
                                 scalars)}), json_values(SCHEMA_KEYS))
tool_items = st.fixed_dictionaries({"Name": st.sampled_from(["f", "search"]) | scalars},
                                   optional={"input": schemas, "parameters": schemas, "function": scalars,
                                             "description": scalars}) | scalars
turns = st.fixed_dictionaries({"from": st.sampled_from(["user", "assistant", "caller", "observation", "conclusion",
                                                        "x"]) | scalars,
                               "value": st.sampled_from(["Do it", "think Next: caller.", "ok Next: conclusion.",
                                                         "Next: give up.", "Action: f\nAction Input: {}",
                                                         "Action: f\nAction Input: [", "done"]) | scalars})
chain_msgs = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "function", "bot"]) | scalars,
     "content": st.text(max_size=10) | scalars},
    optional={"function_call": st.fixed_dictionaries(
        {"name": st.sampled_from(["f", "Finish"]) | scalars,
         "arguments": st.sampled_from(['{"return_type": "give_answer", "final_answer": "x"}',
                                       '{"return_type": "give_up_and_restart"}', "{", "{}"]) | json_values(TB_KEYS)})
        | scalars, "name": scalars})
tb_items = st.one_of(
    st.fixed_dictionaries({"conversations": st.lists(turns, max_size=6)},
                          optional={"tools": st.lists(tool_items, max_size=2) | scalars, "instruction": scalars}),
    st.fixed_dictionaries({"chains": st.lists(chain_msgs, max_size=6)},
                          optional={"tools": st.lists(tool_items | json_values(TB_KEYS), max_size=2),
                                    "instruction": scalars}),
    json_values(TB_KEYS),
)
tb_files = st.one_of(
    st.lists(tb_items, max_size=4).map(lambda items: json.dumps(items).encode()),
    st.lists(tb_items, max_size=4).map(_lines),
    tb_items.map(lambda item: json.dumps(item).encode()),
    st.binary(max_size=100),
)


@FUZZ
@given(tools=st.lists(st.builds(lambda name, desc, params: (name, desc, params), st.text(max_size=6),
                                st.none() | st.text(max_size=20), schemas), max_size=3))
def test_agent_prompts_never_crash(tools):
    """Tool schemas come from user files: every shape renders into the role prompts."""
    from tuneforge.agent.roles import ROLES, system_prompt
    from tuneforge.agent.trajectory import ToolSpec

    specs = [ToolSpec(name=n, description=d, parameters=p) for n, d, p in tools]
    for role in ROLES:
        assert isinstance(system_prompt(role, specs), str)


@FUZZ
@given(body=tb_files, policy=st.sampled_from(["keep", "skip", "reject"]))
def test_toolbench_reader_never_crashes(body, policy):
    from tuneforge.agent.roles import build_role_examples
    from tuneforge.agent.toolbench import read_toolbench, summary

    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), ".json", body)
        try:
            trajectories, report = read_toolbench(path, policy)
        except UserError as e:
            _one_line(e)
            return
    assert report.kept == len(trajectories)
    assert isinstance(summary(report), str)
    for role in ("backbone", "planner", "caller", "summarizer"):
        examples, _ = build_role_examples(trajectories, role)
        for ex in examples:
            assert all(isinstance(s.text, str) for s in ex.segments), ex.where


# ---- the server's request parsing ------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_server(tiny_llama, tmp_path_factory):
    pytest.importorskip("uvicorn")
    from tuneforge.serve.app import create_app
    from tuneforge.serve.models import ServedModels

    models = ServedModels(str(tiny_llama), {}, device="cpu")
    serve_dir = tmp_path_factory.mktemp("fuzz-serve")
    app = create_app(models, serve_dir, max_tokens_limit=4, max_prompt_tokens=64, max_batch=4, batch_wait_ms=1)
    with running_server(app) as url:
        yield SimpleNamespace(url=url, base_name=tiny_llama.name)


def post(url: str, body: bytes) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


REQUEST_KEYS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
                "stop", "seed", "stream", "stream_options", "include_usage", "presence_penalty",
                "frequency_penalty", "logit_bias", "user", "tuneforge", "confidence", "logprobs", "top_logprobs",
                "tools", "functions", "echo", "suffix", "best_of", "role", "content", "type", "text", "name"]
numbers = (st.integers(-2, 6) | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, 2, 0.5, 1e300, 2**64, 2**64 - 1, -2**63, -2**63 - 1]))
texts = st.text(max_size=12) | st.sampled_from(["\ud800", "a\udfffb", "\x00", "</s>", "<|im_end|>", "\n", " "])
req_scalars = st.none() | st.booleans() | numbers | texts | st.sampled_from(["base", "user", "text"])
req_values = st.recursive(req_scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(REQUEST_KEYS), inner, max_size=4), max_leaves=12)


content = mostly(texts, st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | req_scalars,
                                                        "text": req_scalars}), max_size=2) | req_scalars)
messages = st.lists(st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["system", "developer", "user", "assistant"]), req_scalars | st.just("tool")),
     "content": content}, optional={"name": req_scalars}), max_size=3)
valid_sampling = st.fixed_dictionaries({}, optional={
    "max_tokens": st.integers(1, 4), "max_completion_tokens": st.integers(1, 4),
    "temperature": st.sampled_from([0, 0.7, 1, 2]) | st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "n": st.just(1), "stop": st.lists(texts, max_size=4) | texts, "seed": st.integers(-2**63, 2**64 - 1),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "presence_penalty": st.just(0), "logit_bias": st.just({}), "user": texts,
    "tuneforge": st.just({"confidence": False}), "echo": st.just(False), "best_of": st.just(1),
    "tools": st.just([])})
SAMPLING_KEYS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed", "stream",
                 "stream_options", "presence_penalty", "frequency_penalty", "logit_bias", "user", "tuneforge",
                 "logprobs", "top_logprobs", "echo", "suffix", "best_of", "tools", "functions"]
wild_sampling = st.dictionaries(st.sampled_from(SAMPLING_KEYS), numbers | req_values, max_size=2)
# A valid sampling dict, with up to two wild fields one time in three.
sampling = st.builds(lambda valid, wild, use_wild: {**valid, **wild} if use_wild else valid,
                     valid_sampling, wild_sampling, st.sampled_from([False, False, True]))
messages = mostly(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                  "content": st.text(max_size=30)}), min_size=1, max_size=3),
                  messages)
models_ = mostly(st.just("base"), st.sampled_from(["nope", "../../etc/passwd", "", "BASE"]) | req_scalars)
chat_bodies = st.builds(lambda m, msgs, s: {"model": m, "messages": msgs, **s}, models_, messages, sampling)
completion_bodies = st.builds(lambda m, p, s: {"model": m, "prompt": p, **s}, models_,
                              mostly(texts, st.lists(req_scalars, max_size=2) | req_scalars), sampling)
random_bodies = st.dictionaries(st.sampled_from(REQUEST_KEYS), req_values, max_size=6)


def _encode_body(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()  # ASCII: lone surrogates travel as \uXXXX escapes


well_formed = chat_bodies.map(_encode_body) | completion_bodies.map(_encode_body)
request_bodies = mostly(well_formed, st.one_of(
    random_bodies.map(_encode_body), req_values.map(_encode_body), st.binary(max_size=60),
    st.builds(lambda b, cut: b[:cut], chat_bodies.map(_encode_body), st.integers(0, 80))))


def _check_response(status: int, ctype: str, raw: bytes, endpoint: str) -> None:
    assert status < 500, f"{endpoint}: {status} {raw[:300]!r}"
    if status >= 400:
        assert "json" in ctype, (status, ctype, raw[:200])
        body = json.loads(raw)
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error", body
        return
    assert 200 <= status < 300
    if "json" in ctype:
        body = json.loads(raw)
        assert body["object"] in ("chat.completion", "text_completion"), body
        assert body["choices"] and body["usage"]["completion_tokens"] <= 4
    else:
        assert "text/event-stream" in ctype and raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]


@FUZZ_SERVER
@given(body=request_bodies, endpoint=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_server_request_parsing(fuzz_server, body, endpoint):
    status, ctype, raw = post(fuzz_server.url + endpoint, body)
    hypothesis.event(f"HTTP {status}")  # --hypothesis-show-statistics: how many got through to the model
    _check_response(status, ctype, raw, endpoint)


@FUZZ_SERVER
@given(body=st.fixed_dictionaries({}, optional={"completion_id": req_values, "rating": numbers,
                                                "preferred": req_scalars, "rejected": req_scalars,
                                                "comment": req_scalars}).map(_encode_body) | st.binary(max_size=40))
def test_server_feedback_parsing(fuzz_server, body):
    status, ctype, raw = post(fuzz_server.url + "/v1/feedback", body)
    assert status in (400, 404, 413), (status, raw[:200])
    _check_response(status, ctype, raw, "/v1/feedback")


def test_server_still_alive_after_fuzzing(fuzz_server):
    with urllib.request.urlopen(fuzz_server.url + "/health", timeout=60) as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    status, ctype, raw = post(fuzz_server.url + "/v1/chat/completions",
                              _encode_body({"model": "base", "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 2, "temperature": 0}))
    assert status == 200 and json.loads(raw)["choices"]
