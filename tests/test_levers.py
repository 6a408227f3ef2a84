"""The run says what it found and why it chose what it did: compile only where it pays back."""

from __future__ import annotations

import torch

from tuneforge.config import TrainConfig
from tuneforge.data.render import Encoded
from tuneforge.train.levers import MIN_COMPILE_STEPS, compile_choice
from tuneforge.train.loop import planned_steps
from tuneforge.train.precision import machine_line

CPU = torch.device("cpu")


def test_compile_auto_weighs_the_steps_the_run_will_take(monkeypatch):
    monkeypatch.setattr("tuneforge.train.levers.has_compiler", lambda device: True)
    big = 135_000_000
    on, why = compile_choice("auto", CPU, big, MIN_COMPILE_STEPS)
    assert on and f"{MIN_COMPILE_STEPS} steps planned" in why
    off, why = compile_choice("auto", CPU, big, MIN_COMPILE_STEPS - 1)
    assert not off and "too few" in why
    assert not compile_choice("auto", CPU, 1_000_000, 1000)[0]  # tiny models gain nothing
    assert compile_choice("true", CPU, 1_000_000, 1)[0]  # asked for: done, whatever the cost
    monkeypatch.setattr("tuneforge.train.levers.has_compiler", lambda device: False)
    off, why = compile_choice("auto", CPU, big, 1000)
    assert not off and "no C++ compiler" in why


def test_planned_steps_counts_what_the_loop_will_run():
    train = [Encoded(list(range(100)), [True] * 100) for _ in range(40)]  # 4,000 tokens: 10 micro-batches of 400
    cfg = TrainConfig(batch_tokens=400, epochs=2, pack_length=100)
    assert planned_steps(train, cfg) == 20
    assert planned_steps(train, cfg, world=2) == 10
    assert planned_steps(train, TrainConfig(batch_tokens=400, max_steps=7)) == 7


def test_machine_line_names_the_cpu_and_bf16():
    line = machine_line(CPU)
    assert line.startswith("machine: ") and "cores" in line and "bf16" in line


def test_steps_within_a_budget():
    from tuneforge.train.loop import steps_within

    assert steps_within(100, 10, [5, 5], done=3, total=50) == 3 + 18  # 90 s left at 5 s a step
    assert steps_within(100, 10, [1, 1], done=3, total=50) == 50  # fits: the plan stands
    assert steps_within(10, 30, [5, 5], done=3, total=50) == 3  # over already: stop where it is


def test_a_time_budget_shortens_the_schedule_to_fit(tmp_path, tiny_llama, dates_data, capsys):
    import json
    import time

    import tuneforge.train.session as session
    from conftest import run_cli, write_config

    loop = session.train_loop

    def slowed(*a, **k):  # every step takes 0.3 s longer: 40 steps cannot fit in 4 s
        return loop(*a, **{**k, "observe": lambda e: time.sleep(0.3) if "step" in e else None})

    session.train_loop = slowed
    try:
        cfg = write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run", eval={"before_after": False},
                           train={"max_steps": 40, "batch_tokens": 256, "schedule": "cosine", "time_budget_s": 4})
        code, out, err = run_cli(["train", cfg], capsys)
    finally:
        session.train_loop = loop
    assert code == 0, err
    assert "time budget 4 s: 40 steps at" in out + err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert 3 <= len(steps) < 40
    assert steps[-1]["lr"] == 0.0  # the cosine schedule ends at the shortened last step
