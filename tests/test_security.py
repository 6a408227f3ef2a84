"""Security properties: what tuneforge writes and loads, and what its server accepts and logs.

- Weights tuneforge writes (artifacts, checkpoints, merged models) are safetensors; the only pickle
  files are a checkpoint's optimizer / scheduler / RNG state, and every torch.load is weights_only.
- Pickle weights (a model or adapter folder with only .bin/.pt files) load only with --allow-pickle,
  and even then torch's weights-only unpickler refuses anything but tensors.
- trust_remote_code is off unless --trust-remote-code is given.
- The server compares the API key in constant time, accepts only the model names it loaded (no paths),
  limits body size (also for chunked uploads) and tokens, and never writes the API key to its logs.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import run_cli, write_config, write_jsonl

SRC = Path(__file__).resolve().parents[1] / "src" / "tuneforge"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CHECKPOINT_STATE = {"optimizer.pt", "scheduler.pt", "rng.pt"}  # torch.save'd state, loaded weights_only
ALPACA = [{"instruction": f"Say {w}", "input": "", "output": w} for w in ("yes", "no", "maybe", "true")]
SECRET = "sk-tuneforge-SECRET-4f9a1c"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _no_global_flags(monkeypatch):
    """The CLI reads these variables as defaults of --allow-pickle / --trust-remote-code: start each test clean."""
    from tuneforge.models.policy import ALLOW_PICKLE_ENV, TRUST_REMOTE_CODE_ENV

    for name in (ALLOW_PICKLE_ENV, TRUST_REMOTE_CODE_ENV):
        monkeypatch.delenv(name, raising=False)


def _source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _calls(path: Path, attr: str):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            yield node


# ---- what tuneforge writes -------------------------------------------------------------------

def _pickles(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_run_artifacts_and_checkpoints_are_safetensors(method, tiny_llama, tmp_path, capsys):
    import torch

    data = write_jsonl(tmp_path / "train.jsonl", ALPACA)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_llama, data, tmp_path / "run", method=method,
                       train={"max_steps": 2, "batch_tokens": 256, "precision": "fp32", "save_every": 1,
                              "keep_last": 2}, eval={"before_after": False})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    artifact = run / ("adapter" if method == "lora" else "model")
    assert list(artifact.glob("*.safetensors")), sorted(p.name for p in artifact.iterdir())
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints, "save_every: 1 wrote no checkpoint"
    for ckpt in checkpoints:
        assert (ckpt / "trainable.safetensors").is_file()
    for p in _pickles(run):
        assert p.parent.parent == run / "checkpoints" and p.name in CHECKPOINT_STATE, \
            f"{p.relative_to(run)} is a pickle file outside a checkpoint's optimizer/scheduler/rng state"
        torch.load(p, weights_only=True)  # plain state: loads without unpickling code

    if method == "lora":  # merging writes a safetensors model too
        code, out, err = run_cli(["merge", run, tmp_path / "merged"], capsys)
        assert code == 0, err
        assert list((tmp_path / "merged").glob("*.safetensors")) and not _pickles(tmp_path / "merged")


def test_every_torch_load_is_weights_only():
    """train/checkpoint.py included: a checkpoint's optimizer.pt must never unpickle code on --resume."""
    offenders = []
    for path in _source_files():
        for call in _calls(path, "load"):
            if not (isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            flag = kw.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                offenders.append(f"{path.relative_to(SRC)}:{call.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_weights_are_saved_as_safetensors_only():
    """Every save_pretrained of a model says safe_serialization=True or relies on the safetensors default;
    no torch.save of model weights (torch.save only in train/checkpoint.py, for optimizer/scheduler/rng)."""
    for path in _source_files():
        for call in _calls(path, "save"):
            if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch":
                assert path.relative_to(SRC).as_posix() == "train/checkpoint.py", f"{path}:{call.lineno}"
        for call in _calls(path, "save_pretrained"):
            kw = {k.arg: k.value for k in call.keywords}
            flag = kw.get("safe_serialization")
            assert flag is None or (isinstance(flag, ast.Constant) and flag.value is True), f"{path}:{call.lineno}"


# ---- what tuneforge loads: pickle ------------------------------------------------------------

def _pickle_only(src: Path, dst: Path, names: tuple[str, str] = ("model.safetensors", "pytorch_model.bin"),
                 payload=None) -> Path:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(str(f))
        f.unlink()
        torch.save(tensors if payload is None else payload, dst / names[1])
    return dst


class _Evil:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_model_needs_allow_pickle(tiny_llama, tmp_path, capsys):
    folder = _pickle_only(tiny_llama, tmp_path / "pickled")
    code, out, err = run_cli(["generate", folder, "hi", "--max-new-tokens", "2"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert str(folder) in err and "pytorch_model.bin" in err and "--allow-pickle" in err

    code, out, err = run_cli(["--allow-pickle", "generate", folder, "hi", "--max-new-tokens", "2"], capsys)
    assert code == 0, err
    # The switch travels as an argument: nothing is left behind in the process environment.
    assert "TUNEFORGE_ALLOW_PICKLE" not in os.environ


def test_allow_pickle_from_the_environment_at_the_cli_edge(tiny_llama, tmp_path, capsys, monkeypatch):
    folder = _pickle_only(tiny_llama, tmp_path / "pickled")
    monkeypatch.setenv("TUNEFORGE_ALLOW_PICKLE", "1")
    code, out, err = run_cli(["generate", folder, "hi", "--max-new-tokens", "2"], capsys)
    assert code == 0, err


def test_malicious_pickle_never_runs(tiny_llama, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    folder = _pickle_only(tiny_llama, tmp_path / "evil", payload={"model.embed_tokens.weight": _Evil(marker)})
    for argv in (["generate", folder, "hi"], ["--allow-pickle", "generate", folder, "hi"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert not marker.exists(), f"unpickling ran code with {argv}"
    assert "weights-only" in err


def test_pickle_adapter_needs_allow_pickle(tiny_llama, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from tuneforge.models.load import load_model, load_tokenizer

    lora = tmp_path / "lora"
    get_peft_model(load_model(str(tiny_llama)), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(lora)
    load_tokenizer(str(tiny_llama)).save_pretrained(lora)  # as a tuneforge run's adapter/ has
    pickled = _pickle_only(lora, tmp_path / "pickled_adapter", ("adapter_model.safetensors", "adapter_model.bin"))
    for argv in (["generate", pickled, "hi", "--max-new-tokens", "2"],
                 ["generate", tiny_llama, "hi", "--adapter", f"a={pickled}", "--max-new-tokens", "2"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and "adapter_model.bin" in err and "--allow-pickle" in err, err
        code, out, err = run_cli(["--allow-pickle", *argv], capsys)
        assert code == 0, err


# ---- what tuneforge loads: remote code -------------------------------------------------------

def test_every_from_pretrained_decides_on_remote_code():
    """Every Auto*.from_pretrained passes trust_remote_code (the one generic call in models/load.py sets it
    from --trust-remote-code); nothing hard-codes trust_remote_code=True."""
    offenders = []
    for path in _source_files():
        rel = path.relative_to(SRC).as_posix()
        for call in _calls(path, "from_pretrained"):
            owner = call.func.value
            if isinstance(owner, ast.Name) and owner.id == "PeftModel":
                continue  # PEFT adapters carry no code; their base goes through models/load.py
            kw = {k.arg: k.value for k in call.keywords}
            flag = kw.get("trust_remote_code")
            if rel == "models/load.py" and isinstance(owner, ast.Name) and owner.id == "cls":
                continue  # _from_pretrained: kwargs.setdefault("trust_remote_code", policy.trust_remote_code)
            if flag is None or (isinstance(flag, ast.Constant) and flag.value is not False):
                offenders.append(f"{rel}:{call.lineno}")
    assert not offenders, f"from_pretrained without trust_remote_code=False: {offenders}"
    load_src = (SRC / "models" / "load.py").read_text()
    assert 'kwargs.setdefault("trust_remote_code", policy.trust_remote_code)' in load_src


def _record_from_pretrained(monkeypatch) -> list[tuple[str, dict]]:
    import transformers

    calls: list[tuple[str, dict]] = []
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained

        def wrapper(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, dict(kwargs)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", staticmethod(wrapper))
    return calls


def test_remote_code_off_and_safetensors_only_by_default(tiny_llama, monkeypatch):
    from tuneforge.models.load import load_model_and_tokenizer

    calls = _record_from_pretrained(monkeypatch)
    load_model_and_tokenizer(str(tiny_llama))
    assert {n for n, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    for name, kwargs in calls:
        assert kwargs.get("trust_remote_code") is False, (name, kwargs)
    assert all(kw.get("use_safetensors") is True for n, kw in calls if n == "AutoModelForCausalLM")


def test_trust_remote_code_flag(tiny_llama, monkeypatch, capsys):
    calls = _record_from_pretrained(monkeypatch)
    code, out, err = run_cli(["--trust-remote-code", "generate", tiny_llama, "hi", "--max-new-tokens", "2"], capsys)
    assert code == 0, err
    assert calls and all(kw.get("trust_remote_code") is True for _, kw in calls), calls


# ---- the server ------------------------------------------------------------------------------

@contextlib.contextmanager
def _server(app, log_level: str = "debug"):
    """Like conftest.running_server, with uvicorn's debug and access logs on, so the tests can grep them for
    secrets. log_config=None: uvicorn's records go to the root logger (pytest's caplog), through no handler
    bound to this test's captured stderr; the levels are put back afterwards."""
    from tuneforge.serve.background import serve_in_thread

    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    levels = [lg.level for lg in loggers]
    try:
        with serve_in_thread(app, log_level=log_level) as url:
            yield url
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@pytest.fixture(scope="module")
def lora_adapter(tiny_llama, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from tuneforge.models.load import load_model

    out = tmp_path_factory.mktemp("sec-lora") / "adapter"
    get_peft_model(load_model(str(tiny_llama)), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tiny_llama, lora_adapter):
    from tuneforge.serve.models import ServedModels

    return ServedModels(str(tiny_llama), {"lora": lora_adapter}, device="cpu")


@pytest.fixture
def server(served, tmp_path):
    pytest.importorskip("uvicorn")
    from tuneforge.serve.app import create_app

    serve_dir = tmp_path / "serve"
    app = create_app(served, serve_dir, api_key=SECRET, max_tokens_limit=4, max_prompt_tokens=64, max_batch=2)
    with _server(app) as url:
        yield SimpleNamespace(url=url, serve_dir=serve_dir, app=app)


def call(server, method: str, path: str, body=None, key: str | None = SECRET, headers: dict | None = None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(server.url + path, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_key_is_compared_in_constant_time():
    import inspect

    from tuneforge.serve.app import _Observe

    src = inspect.getsource(_Observe._authorized)
    assert "hmac.compare_digest" in src
    assert "== self.api_key" not in src and "self.api_key ==" not in src


@pytest.mark.parametrize("key, status", [
    (SECRET, 200), ("wrong", 401), (SECRET[:-1], 401), (SECRET + "x", 401), ("", 401), (None, 401),
    (SECRET.upper(), 401), (" " + SECRET + " ", 200),
])
def test_api_key_required(server, key, status):
    code, body = call(server, "GET", "/v1/models", key=key)
    assert code == status, body
    if status == 401:
        assert body["error"]["code"] == "invalid_api_key"


def test_other_auth_schemes_are_refused(server):
    code, _ = call(server, "GET", "/v1/models", key=None, headers={"Authorization": f"Basic {SECRET}"})
    assert code == 401
    code, _ = call(server, "GET", "/v1/models", key=None, headers={"X-Api-Key": SECRET})
    assert code == 401


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "base/../lora", "lora/../../x", "LORA", "Base",
                                  "lora\x00", "..", ".", "~", "adapter"])
def test_model_names_are_only_the_loaded_ones(server, lora_adapter, name):
    code, body = call(server, "POST", "/v1/chat/completions", {"model": name, "messages": CHAT, "max_tokens": 1})
    assert code == 404 and body["error"]["code"] == "model_not_found", body
    # The adapter's folder on disk is not a model name either.
    code, body = call(server, "POST", "/v1/chat/completions",
                      {"model": str(lora_adapter), "messages": CHAT, "max_tokens": 1})
    assert code == 404, body


@pytest.mark.parametrize("path", ["/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/models/../../etc/passwd",
                                  "/v1/models/%2Fetc%2Fpasswd", "/v1/models/lora%2F..%2F..%2Fx"])
def test_model_lookup_is_no_path(server, path):
    code, body = call(server, "GET", path)
    assert code == 404 and set(body) == {"error"}, body


def test_body_and_token_limits(server, monkeypatch):
    import http.client
    from urllib.parse import urlparse

    import tuneforge.serve.body as body_module

    code, body = call(server, "POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "max_tokens": 5})
    assert code == 400 and body["error"]["param"] == "max_tokens"
    code, body = call(server, "POST", "/v1/completions", {"model": "base", "prompt": "word " * 200})
    assert code == 400 and body["error"]["code"] == "context_length_exceeded"

    # A chunked upload has no content-length: the server stops reading at the limit and answers 413
    # at once, without waiting for (or buffering) the rest of the body.
    monkeypatch.setattr(body_module, "MAX_BODY_BYTES", 1000)
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Authorization", f"Bearer {SECRET}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * 1500
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")  # ... and never the final 0-length chunk
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"]["message"].startswith("request body larger")
    finally:
        conn.close()
    # With a content-length over the limit, no body is read at all.
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Authorization", f"Bearer {SECRET}")
        conn.putheader("Content-Length", "5000")
        conn.endheaders()
        r = conn.getresponse()
        assert r.status == 413
    finally:
        conn.close()


def test_api_key_never_logged(server, served, capfd, caplog, monkeypatch):
    """Neither the server's key nor a wrong one a client sends shows up in log output, requests.jsonl or
    the feedback database, on success, refusal or an internal error."""
    caplog.set_level(logging.DEBUG)
    other_secret = "sk-someone-elses-key-77"
    status, body = call(server, "POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "max_tokens": 2})
    assert status == 200
    assert call(server, "POST", "/v1/feedback", {"completion_id": body["id"], "rating": 1})[0] == 200
    assert call(server, "POST", "/v1/completions", {"model": "lora", "prompt": "hi", "max_tokens": 2})[0] == 200
    assert call(server, "GET", "/v1/models", key=other_secret)[0] == 401
    assert call(server, "POST", "/v1/feedback", {"completion_id": "x", "rating": 1})[0] == 404

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(served, "generate_detailed", broken)
    assert call(server, "POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "max_tokens": 2})[0] == 500
    monkeypatch.undo()

    deadline = time.monotonic() + 10  # a request's log line is written just after its response
    while (server.serve_dir / "requests.jsonl").read_text().count("\n") < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    out, err = capfd.readouterr()
    logs = caplog.text + out + err
    assert "boom" in logs and "/v1/models" in logs and "401" in logs, \
        "the access and error logs were not captured: the check below would be empty"
    files = [f for f in server.serve_dir.rglob("*") if f.is_file()]
    assert {"requests.jsonl", "feedback.sqlite"} <= {f.name for f in files}
    for secret in (SECRET, other_secret):
        assert secret not in logs, "an API key appears in the server's log output"
        for f in files:
            assert secret.encode() not in f.read_bytes(), f"an API key is written to {f}"
    request_log = (server.serve_dir / "requests.jsonl").read_text()
    assert request_log.count("\n") >= 6 and "Bearer" not in request_log and "authorization" not in request_log.lower()


def test_serve_banner_does_not_print_the_key(tiny_llama, tmp_path, capsys, monkeypatch):
    import uvicorn

    from tuneforge.serve.app import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    serve(str(tiny_llama), {}, None, host="127.0.0.1", port=0, serve_dir=tmp_path / "serve", api_key=SECRET)
    out, err = capsys.readouterr()
    assert "API key required" in out and SECRET not in out + err
