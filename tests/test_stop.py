"""A clean stop: the first SIGINT/SIGTERM ends the step in flight with a checkpoint of it, one line
saying how to continue and exit status 128 + signal; --resume then ends exactly where an
uninterrupted run ends; a second signal stops at once with the previous checkpoint intact; under
torchrun a signal that reaches one rank stops every rank after the same step.

The signal is sent by the process to itself from the loop's `observe` hook at a chosen step, so the
tests are deterministic whatever the machine's speed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_config
from tuneforge.cli import resume_command
from tuneforge.train.checkpoint import latest_checkpoint, list_checkpoints, read_progress

# Sends `signum` to this process `times` times when step `at` starts (on rank `rank` only), then runs the CLI.
SIGNALLING_MAIN = """
import os, signal
import tuneforge.train.session as session
from tuneforge.cli import main

def observe(event):
    if event.get("step") == {at} and os.environ.get("RANK", "0") == "{rank}":
        for _ in range({times}):
            os.kill(os.getpid(), {signum})

loop = session.train_loop
session.train_loop = lambda *a, **k: loop(*a, **{{**k, "observe": observe}})
main()
"""

TRAIN = {"max_steps": 8, "batch_tokens": 256, "lr": 1e-3, "precision": "fp32"}


def _config(tmp_path: Path, name: str, model, data, **train) -> Path:
    return write_config(tmp_path / f"{name}.yaml", model, data, tmp_path / name,
                        method={"name": "lora", "r": 4, "dropout": 0.1},  # dropout: RNG state must carry over
                        train={**TRAIN, **train}, eval={"before_after": False})


def _signalled(cfg: Path, signum: int, at: int, times: int = 1, nproc: int = 1, rank: int = 0,
               extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`tuneforge train CFG` in a fresh process (one thread, as every run of a comparison must be for
    bitwise equality) that signals itself at step `at` (never, for at=0)."""
    script = cfg.parent / f"signalling_{cfg.stem}.py"
    script.write_text(SIGNALLING_MAIN.format(at=at, times=times, signum=int(signum), rank=rank))
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([*runner, str(script), "train", str(cfg), *extra], env=env, capture_output=True, text=True,
                          timeout=300)


def _weights(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_checkpoints_the_step_and_resume_matches_an_uninterrupted_run(
        signum, tiny_llama, dates_data, tmp_path):
    train = dates_data[0]
    done = _signalled(_config(tmp_path, "ref", tiny_llama, train), signum, at=0)
    assert done.returncode == 0, done.stderr[-2000:]

    cfg = _config(tmp_path, "run", tiny_llama, train)
    done = _signalled(cfg, signum, at=3)
    assert done.returncode == 128 + signum, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"stopped at step 3 of 8; continue with: tuneforge train {cfg} --resume"
    run = tmp_path / "run"
    assert not (run / "adapter").exists()
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and read_progress(ckpt)["step"] == 3  # the step in flight was finished and saved
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1] == {"step": 3, "stopped_by": signal.Signals(signum).name}

    done = _signalled(cfg, signum, at=0, extra=("--resume",))
    assert done.returncode == 0, done.stderr[-2000:]
    want, got = _weights(tmp_path / "ref"), _weights(run)
    assert want.keys() == got.keys() and want
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_second_signal_stops_at_once_and_leaves_the_last_checkpoint(tiny_llama, dates_data, tmp_path):
    cfg = _config(tmp_path, "run", tiny_llama, dates_data[0], save_every=1)
    done = _signalled(cfg, signal.SIGTERM, at=3, times=2)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "stopped at step" not in done.stderr  # not the clean stop: the step in flight was abandoned
    ckpts = tmp_path / "run" / "checkpoints"
    assert [read_progress(c)["step"] for c in list_checkpoints(ckpts)][-1] == 2
    assert load_file(str(latest_checkpoint(ckpts) / "trainable.safetensors"))
    assert not list(ckpts.glob(".tmp-*"))


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tiny_llama, dates_data, tmp_path):
    cfg = _config(tmp_path, "run", tiny_llama, dates_data[0], distributed="ddp", max_steps=6)
    done = _signalled(cfg, signal.SIGTERM, at=2, nproc=2, rank=1)
    assert done.returncode != 0
    assert "stopped at step 2 of 6" in done.stderr, done.stderr[-3000:]
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert read_progress(ckpt)["step"] == 2


def test_resume_command_replaces_overwrite_with_resume():
    assert resume_command(["train", "my config.yaml", "--overwrite"]) == "tuneforge train 'my config.yaml' --resume"
    assert resume_command(["train", "c.yaml", "--resume"]) == "tuneforge train c.yaml --resume"


# Serves with every generation taking 3 s longer, so a request is surely in flight when the signal comes.
SLOW_SERVE_MAIN = """
import time
import tuneforge.serve.models as models
from tuneforge.cli import main

generate = models.ServedModels.generate_detailed
def slow(self, *a, **k):
    time.sleep(3)
    return generate(self, *a, **k)
models.ServedModels.generate_detailed = slow
main()
"""


def test_the_server_finishes_requests_in_flight_on_sigterm(tiny_llama, tmp_path):
    import socket
    import threading
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "slow_serve.py"
    script.write_text(SLOW_SERVE_MAIN)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, str(script), "serve", "--base", str(tiny_llama), "--port", str(port),
                             "--serve-dir", str(tmp_path / "serve")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(0.2)
        done = {}

        def ask():
            body = json.dumps({"model": "base", "prompt": "Hello", "max_tokens": 4}).encode()
            req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                done["status"], done["body"], done["at"] = r.status, json.loads(r.read()), time.time()

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(1.0)  # the request is in its 3-second generation
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        asking.join(60)
        assert done.get("status") == 200 and done["at"] > signalled, done
        assert done["body"]["choices"][0]["text"] is not None
        # then it exits: uvicorn re-raises the signal it caught once drained, so the status says SIGTERM
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
