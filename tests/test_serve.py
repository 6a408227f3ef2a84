"""`tuneforge serve`: a real uvicorn server on a free port, called with the official openai client."""

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from conftest import running_server

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

API_KEY = "test-key"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def lora_adapter(tiny_llama, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.models.load import load_model

    torch.manual_seed(0)
    # Random (not zero) B matrices so the adapter actually changes the model.
    model = get_peft_model(load_model(str(tiny_llama)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(tiny_llama, lora_adapter, tmp_path_factory):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.models import ServedModels

    models = ServedModels(str(tiny_llama), {"lora": lora_adapter}, device="cpu")
    serve_dir = tmp_path_factory.mktemp("serve")
    app = create_app(models, serve_dir, api_key=API_KEY, max_tokens_limit=16, max_prompt_tokens=256, max_batch=8)
    with running_server(app) as url:
        yield SimpleNamespace(app=app, url=url, serve_dir=serve_dir, models=models, base_name=tiny_llama.name)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def http(server, method: str, path: str, body: bytes | dict | None = None, key: str | None = API_KEY,
         content_type: str | None = "application/json"):
    """(status, parsed JSON or text) with plain urllib, for what the openai client will not send."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(server.url + path, data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None and content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in ctype else raw.decode())


def assert_openai_error(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ---- the OpenAI API --------------------------------------------------------------------------

def test_chat_completion(client):
    resp = client.chat.completions.create(model="base", messages=CHAT, max_tokens=8, temperature=0)
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion" and resp.model == "base"
    assert resp.created > 0
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = resp.usage
    assert u.prompt_tokens > 0 and 0 <= u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if choice.finish_reason == "length":
        assert u.completion_tokens > 0
    # Without max_tokens: up to the rest of the context, within the server's limit (16 here).
    default = client.chat.completions.create(model="base", messages=CHAT, temperature=0)
    assert 0 <= default.usage.completion_tokens <= 16


def test_completion_and_stop(client, server):
    resp = client.completions.create(model=server.base_name, prompt="The capital of France is", max_tokens=6,
                                     temperature=0)
    assert resp.id.startswith("cmpl-") and resp.object == "text_completion" and resp.model == server.base_name
    assert isinstance(resp.choices[0].text, str) and resp.choices[0].finish_reason in ("stop", "length")
    assert 0 <= resp.usage.completion_tokens <= 6
    # A stop sequence ends the reply and is not part of it.
    stopped = client.completions.create(model="base", prompt="The capital of France is", max_tokens=8,
                                        temperature=0, stop=["e", "a"])
    assert "e" not in stopped.choices[0].text and "a" not in stopped.choices[0].text


def test_streaming_matches_non_streaming(client):
    plain = client.chat.completions.create(model="base", messages=CHAT, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model="base", messages=CHAT, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    plain_c = client.completions.create(model="base", prompt="Monday Tuesday", max_tokens=8, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="base", prompt="Monday Tuesday", max_tokens=8, temperature=0, stream=True))
    assert streamed == plain_c.choices[0].text


def test_models_and_adapter(client, server):
    ids = [m.id for m in client.models.list()]
    assert ids == ["base", server.base_name, "lora"]
    assert client.models.retrieve("lora").id == "lora"
    resp = client.chat.completions.create(model="lora", messages=CHAT, max_tokens=8, temperature=0)
    assert resp.model == "lora" and isinstance(resp.choices[0].message.content, str)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=CHAT, max_tokens=4)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 1000}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, "messages"),
])
def test_bad_requests_are_400(client, kwargs, param):
    args = {"model": "base", "messages": CHAT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.param == param, e.value.message
    assert e.value.type == "invalid_request_error"


def test_api_key(server, client):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="base", messages=CHAT, max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    status, body = http(server, "GET", "/v1/models", key=None)
    assert status == 401 and assert_openai_error(body)["code"] == "invalid_api_key"
    # Monitoring stays open.
    assert http(server, "GET", "/health", key=None)[0] == 200
    assert http(server, "GET", "/metrics", key=None)[0] == 200


def test_malformed_requests_keep_the_server_alive(server, client):
    status, body = http(server, "POST", "/v1/chat/completions", b'{"model": "base", "messages": [')
    assert status == 400 and assert_openai_error(body)["code"] == "invalid_json"
    status, body = http(server, "POST", "/v1/chat/completions", b"[1, 2]")
    assert status == 400 and assert_openai_error(body)
    status, body = http(server, "POST", "/v1/chat/completions", {"messages": CHAT})
    assert status == 400 and assert_openai_error(body)["param"] == "model"
    status, body = http(server, "GET", "/v1/nothing-here")
    assert status == 404 and assert_openai_error(body)
    status, body = http(server, "GET", "/v1/chat/completions")
    assert status == 405 and assert_openai_error(body)
    # JSON is read whatever the content type says (curl -d sends form encoding).
    status, body = http(server, "POST", "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2},
                        content_type="application/x-www-form-urlencoded")
    assert status == 200 and body["object"] == "text_completion"
    # Still serving.
    assert client.chat.completions.create(model="base", messages=CHAT, max_tokens=2).choices


def test_generation_failure_is_500_in_openai_shape(server, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.models, "generate_detailed", broken)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="base", messages=CHAT, max_tokens=2)
    assert e.value.type == "server_error"
    monkeypatch.undo()
    assert client.chat.completions.create(model="base", messages=CHAT, max_tokens=2).choices


def test_confidence_extension(server, client, monkeypatch):
    with pytest.raises(openai.BadRequestError):  # no calibration run loaded
        client.chat.completions.create(model="base", messages=CHAT, max_tokens=2,
                                       extra_body={"tuneforge": {"confidence": True}})

    class FakeConfidence:
        def confidence(self, questions, answers):
            assert [q.question for q in questions] == [CHAT[-1]["content"]]
            return [0.25 for _ in answers]

    monkeypatch.setattr(server.models, "_confidence", FakeConfidence())
    resp = client.chat.completions.create(model="base", messages=CHAT, max_tokens=2,
                                          extra_body={"tuneforge": {"confidence": True}})
    assert resp.choices[0].to_dict()["confidence"] == 0.25
    plain = client.chat.completions.create(model="base", messages=CHAT, max_tokens=2)
    assert "confidence" not in plain.choices[0].to_dict()


def test_concurrent_requests_share_batches(server, client):
    batcher = server.app.state.batcher
    n = 4
    before = (batcher.batches, batcher.requests)
    _, text = http(server, "GET", "/metrics")
    metric_batches = metric(text, "tuneforge_batches_total")
    saved = batcher.max_wait
    batcher.max_wait = 0.5  # an idle server waits this long for company; plenty for 4 threads
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        return client.chat.completions.create(model="base", messages=[{"role": "user", "content": f"hi {i}"}],
                                              max_tokens=4, temperature=0)

    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(n)))
    finally:
        batcher.max_wait = saved
    assert len({r.id for r in results}) == n
    batches, requests = batcher.batches - before[0], batcher.requests - before[1]
    assert requests == n
    assert batches < requests
    _, text = http(server, "GET", "/metrics")
    assert metric(text, "tuneforge_batches_total") - metric_batches == batches
    assert metric(text, "tuneforge_batch_size_bucket", le="1.0") < metric(text, "tuneforge_batch_size_count")


def test_metrics_and_request_log(server, client):
    marker = "zebra-marker-7"
    resp = client.chat.completions.create(model="base", messages=[{"role": "user", "content": marker}], max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT, max_tokens=2)
    status, text = http(server, "GET", "/metrics")
    assert status == 200
    assert metric(text, "tuneforge_requests_total", endpoint="/v1/chat/completions", model="base", status="200") >= 1
    assert metric(text, "tuneforge_requests_total", endpoint="/v1/chat/completions", model="unknown",
                  status="404") >= 1
    assert metric(text, "tuneforge_errors_total", endpoint="/v1/chat/completions", status="404") >= 1
    assert metric(text, "tuneforge_prompt_tokens_total", model="base") >= resp.usage.prompt_tokens
    assert metric(text, "tuneforge_completion_tokens_total", model="base") >= resp.usage.completion_tokens
    assert metric(text, "tuneforge_request_latency_seconds_count", endpoint="/v1/chat/completions") >= 2
    assert "tuneforge_batch_size_bucket" in text

    log_text = (server.serve_dir / "requests.jsonl").read_text()
    assert marker not in log_text  # prompts never go to the request log
    records = [json.loads(line) for line in log_text.splitlines()]
    assert all(set(r) == {"time", "id", "endpoint", "model", "status", "latency_ms", "prompt_tokens",
                          "completion_tokens"} for r in records)
    mine = [r for r in records if r["id"] == resp.id]
    assert len(mine) == 1 and mine[0]["status"] == 200 and mine[0]["model"] == "base"
    assert mine[0]["prompt_tokens"] == resp.usage.prompt_tokens and mine[0]["latency_ms"] > 0
    assert any(r["status"] == 404 and r["model"] == "nope" for r in records)
    assert not any(r["endpoint"] in ("/health", "/metrics") for r in records)


def test_feedback_and_export(server, client, tmp_path):
    from tuneforge.serve.store import export_preferences

    a = client.chat.completions.create(model="base", messages=CHAT, max_tokens=4, temperature=0)
    b = client.chat.completions.create(model="lora", messages=CHAT, max_tokens=4, temperature=0)
    status, body = http(server, "POST", "/v1/feedback", {"completion_id": a.id, "rating": 1, "comment": "ok"})
    assert status == 200 and body["completion_id"] == a.id
    assert http(server, "POST", "/v1/feedback", {"completion_id": b.id, "rating": -1})[0] == 200
    assert http(server, "POST", "/v1/feedback", {"completion_id": a.id, "preferred": "Paris."})[0] == 200

    status, body = http(server, "POST", "/v1/feedback", {"completion_id": "chatcmpl-unknown", "rating": 1})
    assert status == 404 and assert_openai_error(body)["param"] == "completion_id"
    status, body = http(server, "POST", "/v1/feedback", {"completion_id": a.id, "rating": 5})
    assert status == 400 and assert_openai_error(body)["param"] == "rating"
    status, body = http(server, "POST", "/v1/feedback", {"completion_id": a.id})
    assert status == 400 and assert_openai_error(body)
    status, _ = http(server, "POST", "/v1/feedback", {"completion_id": a.id, "rating": 1}, key="wrong")
    assert status == 401

    out = tmp_path / "prefs.jsonl"
    n, skipped = export_preferences(server.serve_dir, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == n and all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    a_text, b_text = a.choices[0].message.content, b.choices[0].message.content
    assert all(r["chosen"].strip() and r["rejected"].strip() for r in rows)  # empty answers teach nothing
    if a_text.strip():  # a random tiny model may answer with whitespace only
        assert {"prompt": CHAT, "chosen": "Paris.", "rejected": a_text} in rows
    if a_text.strip() and b_text.strip() and a_text.strip() != b_text.strip():
        assert {"prompt": CHAT, "chosen": a_text, "rejected": b_text} in rows


# ---- pieces on their own ---------------------------------------------------------------------

def test_export_preferences_pairs_and_skips(tmp_path):
    from tuneforge.serve.store import FeedbackStore, UnknownCompletion, export_preferences

    store = FeedbackStore(tmp_path)
    q = [{"role": "user", "content": "2+2?"}]
    store.record_completion("chatcmpl-1", "base", q, "4")
    store.record_completion("chatcmpl-2", "lora", q, "5")
    store.record_completion("chatcmpl-3", "base", q, "4")  # same text as 1
    store.record_completion("cmpl-4", "base", "Once upon", " a time")
    store.record_feedback("chatcmpl-1", rating=1)
    store.record_feedback("chatcmpl-2", rating=1)
    store.record_feedback("chatcmpl-2", rating=-1)  # the latest rating counts
    store.record_feedback("chatcmpl-3", rating=-1)  # rated below 1 but the same text: skipped
    store.record_feedback("cmpl-4", preferred=" a time there was")
    store.record_feedback("cmpl-4", preferred=" a time there was")  # a repeat: skipped
    store.record_feedback("cmpl-4", rejected=" a time")  # same as the stored response: skipped
    store.record_feedback("chatcmpl-2", preferred="four", rejected="five")
    with pytest.raises(UnknownCompletion):
        store.record_feedback("chatcmpl-404", rating=1)
    with pytest.raises(ValueError):
        store.record_feedback("chatcmpl-1", rating=3)
    with pytest.raises(ValueError):
        store.record_feedback("chatcmpl-1")
    store.close()

    out = tmp_path / "out" / "prefs.jsonl"
    n, skipped = export_preferences(tmp_path, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (n, skipped) == (3, 3)
    assert rows == [
        {"prompt": "Once upon", "chosen": " a time there was", "rejected": " a time"},
        {"prompt": q, "chosen": "four", "rejected": "five"},
        {"prompt": q, "chosen": "4", "rejected": "5"},  # 1 (rated 1) over 2 (latest rating -1)
    ]
    assert [p for p in out.parent.iterdir()] == [out]  # no temporary file left behind


def test_export_without_store_is_a_user_error(tmp_path):
    from tuneforge.errors import UserError
    from tuneforge.serve.store import export_preferences

    with pytest.raises(UserError, match="feedback.sqlite"):
        export_preferences(tmp_path, tmp_path / "x.jsonl")


class _FakeModels:
    def __init__(self, fail_on: str | None = None):
        self.calls = []
        self.fail_on = fail_on

    def generate_detailed(self, name, prompts, **kw):
        from tuneforge.serve.models import Generation

        self.calls.append((name, len(prompts)))
        if name == self.fail_on:
            raise RuntimeError("broken model")
        time.sleep(0.02)
        return [Generation(f"{name}:{p}", 1, 1, "stop") for p in prompts]

    def confidence_many(self, questions, answers):
        return [0.5] * len(answers)


def test_micro_batcher_groups_by_sampling_settings():
    from tuneforge.serve.batching import MicroBatcher, SamplingKey

    models = _FakeModels(fail_on="bad")
    batcher = MicroBatcher(models, max_batch=8, max_wait_ms=300)
    batcher.start()
    try:
        a, b = SamplingKey("m", 4), SamplingKey("m", 4, temperature=0.7)
        futures = [batcher.submit(a, "x"), batcher.submit(b, "y"), batcher.submit(a, "z", question="x?"),
                   batcher.submit(SamplingKey("bad", 4), "w")]
        results = [f.exception(10) or f.result() for f in futures]
        assert [r.text for r in results[:3]] == ["m:x", "m:y", "m:z"]
        assert results[0].batch_size == 2 and results[1].batch_size == 1
        assert results[2].confidence == 0.5 and results[0].confidence is None
        assert isinstance(results[3], RuntimeError)
        assert sorted(models.calls) == [("bad", 1), ("m", 1), ("m", 2)]
        assert (batcher.batches, batcher.requests) == (2, 3)  # the failed batch is not counted
        # The worker survives a failed batch.
        assert batcher.submit(a, "again").result(10).text == "m:again"
    finally:
        batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(a, "late")


def test_serve_refuses_public_host_without_key(tiny_llama, tmp_path, monkeypatch):
    from tuneforge.errors import UserError
    from tuneforge.serve.app import API_KEY_ENV, is_loopback, resolve_api_key, serve

    with pytest.raises(UserError, match="API key"):
        serve(str(tiny_llama), {}, None, host="0.0.0.0", port=0, serve_dir=tmp_path, api_key=None)
    assert resolve_api_key(None, "127.0.0.1") is None
    assert resolve_api_key("k", "0.0.0.0") == "k"
    # The key is an argument: reading $TUNEFORGE_API_KEY is the CLI's job (typer's envvar), not the package's.
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    with pytest.raises(UserError, match=API_KEY_ENV):
        resolve_api_key(None, "0.0.0.0")
    with pytest.raises(UserError, match="API key"):
        resolve_api_key("", "0.0.0.0")
    assert resolve_api_key(None, "localhost") is None
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_export_skips_pairs_with_an_empty_response(tmp_path):
    from tuneforge.serve.store import FeedbackStore, export_preferences

    store = FeedbackStore(tmp_path)
    store.record_completion("chatcmpl-1", "base", [{"role": "user", "content": "2+2?"}], "  \n")
    store.record_feedback("chatcmpl-1", preferred="4")
    n, skipped = export_preferences(tmp_path, tmp_path / "pairs.jsonl")
    assert (n, skipped) == (0, 1)


def test_client_disconnect_mid_stream_keeps_the_server_serving(server, client):
    from http.client import HTTPConnection  # not `import http.client`: that would shadow the http() helper
    from urllib.parse import urlparse

    u = urlparse(server.url)
    for _ in range(3):  # hang up right after the headers, several times
        conn = HTTPConnection(u.hostname, u.port, timeout=60)
        body = json.dumps({"model": "base", "messages": CHAT, "max_tokens": 8, "stream": True})
        conn.request("POST", "/v1/chat/completions", body=body,
                      headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
        response = conn.getresponse()
        assert response.status == 200
        response.fp.read(1)
        conn.sock.close()  # the client goes away mid-stream
        conn.close()
    assert http(server, "GET", "/health")[0] == 200
    reply = client.chat.completions.create(model="base", messages=CHAT, max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")


# ---- one route alone: handlers read request.app.state, so fakes on a bare state are enough ---------

class FakeModels:
    names = ["base", "tuned"]
    context_length = 32
    has_confidence = False

    def target(self, name: str):
        return {"base": None, "tuned": "tuned"}[name]  # KeyError: not served

    def count_tokens(self, prompt, raw: bool = False) -> int:
        return 5


class FakeBatcher:
    def __init__(self):
        self.keys = []

    def submit(self, key, prompt, question=None) -> Future:
        from tuneforge.serve.batching import BatchResult

        self.keys.append(key)
        future = Future()
        future.set_result(BatchResult(text="Paris is", prompt_tokens=5, completion_tokens=2, finish_reason="stop",
                                      confidence=None, batch_size=1))
        return future


class FakeStore:
    def __init__(self):
        self.completions = []

    def record_completion(self, cid, model, prompt, text, **details):
        self.completions.append((cid, model, text))


def fake_state() -> SimpleNamespace:
    from tuneforge.serve.completions import CompletionLimits
    from tuneforge.serve.monitoring import Metrics

    return SimpleNamespace(models=FakeModels(), model_names=list(FakeModels.names), started=123,
                           limits=CompletionLimits(max_tokens=8, max_prompt_tokens=16), batcher=FakeBatcher(),
                           store=FakeStore(), metrics=Metrics())


def route_request(state, method: str, path: str, body: dict | None = None):
    """A Starlette request as the router would hand it over, on an app that is only `state`."""
    from starlette.requests import Request

    raw = json.dumps(body).encode() if body is not None else b""

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "app": SimpleNamespace(state=state), "method": method, "path": path,
             "headers": [(b"content-type", b"application/json")], "query_string": b""}
    return Request(scope, receive)


def test_the_route_map():
    from tuneforge.serve.routes import router

    assert {(m, r.path) for r in router.routes for m in r.methods} == {
        ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
        ("GET", "/v1/models/{model:path}"), ("POST", "/v1/feedback"), ("GET", "/health"), ("GET", "/metrics")}

def test_model_route_alone():
    from tuneforge.serve import routes
    from tuneforge.serve.errors import APIError

    state = fake_state()
    request = route_request(state, "GET", "/v1/models/tuned")
    card = asyncio.run(routes.get_model("tuned", request))
    assert card == {"id": "tuned", "object": "model", "created": 123, "owned_by": "tuneforge"}
    assert request.scope["tuneforge"]["model"] == "tuned"  # the request log's record, made without the middleware
    with pytest.raises(APIError) as e:
        asyncio.run(routes.get_model("nope", route_request(state, "GET", "/v1/models/nope")))
    assert (e.value.status, e.value.code, e.value.param) == (404, "model_not_found", "model")
    assert "base, tuned" in e.value.message


def test_chat_route_alone_plans_the_batch():
    from tuneforge.serve import routes
    from tuneforge.serve.errors import APIError

    state = fake_state()
    request = route_request(state, "POST", "/v1/chat/completions",
                            {"model": "tuned", "messages": CHAT, "temperature": 0})
    body = json.loads(asyncio.run(routes.chat_completions(request)).body)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "Paris is"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    (key,) = state.batcher.keys
    # No max_tokens: the rest of the context (32 - 5) within the server's limit (8). Temperature 0: greedy.
    assert (key.model, key.max_tokens, key.temperature, key.top_p, key.seed, key.raw) == \
        ("tuned", 8, 0.0, 1.0, None, False)
    assert state.store.completions == [(body["id"], "tuned", "Paris is")]
    assert request.scope["tuneforge"]["completion_tokens"] == 2

    over = route_request(state, "POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "max_tokens": 9})
    with pytest.raises(APIError) as e:
        asyncio.run(routes.chat_completions(over))
    assert (e.value.status, e.value.param) == (400, "max_tokens") and len(state.batcher.keys) == 1


def test_export_kto_labels_thumbs_and_texts(tmp_path, capsys):
    from conftest import run_cli
    from tuneforge.serve.store import FeedbackStore

    store = FeedbackStore(tmp_path)
    q = [{"role": "user", "content": "2+2?"}]
    store.record_completion("chatcmpl-1", "base", q, "4")
    store.record_completion("chatcmpl-2", "base", q, "5")
    store.record_completion("chatcmpl-3", "base", q, "22")
    store.record_feedback("chatcmpl-1", rating=1)
    store.record_feedback("chatcmpl-2", rating=1)
    store.record_feedback("chatcmpl-2", rating=-1)  # changed mind: the latest label counts
    store.record_feedback("chatcmpl-3", rating=0)  # neutral: skipped
    store.record_feedback("chatcmpl-3", preferred="four")
    store.close()
    out = tmp_path / "kto.jsonl"
    code, stdout, err = run_cli(["feedback", "export", out, "--serve-dir", tmp_path, "--format", "kto"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"prompt": q, "completion": "4", "label": True}, {"prompt": q, "completion": "5", "label": False},
                    {"prompt": q, "completion": "four", "label": True}]
    assert "wrote 3 labelled completions" in stdout and "2 skipped" in stdout
