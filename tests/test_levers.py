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


def test_compile_auto_weighs_the_device_and_the_time_budget(monkeypatch):
    from tuneforge.train.levers import COMPILE_COST, MIN_COMPILE_STEPS_FP32, budget_pays_for_compile

    monkeypatch.setattr("tuneforge.train.levers.has_compiler", lambda device: True)
    big = 135_000_000
    # fp32 on an AVX2-only CPU: ~110 s once for steps 1.10x faster, so it needs a long run
    off, why = compile_choice("auto", CPU, big, MIN_COMPILE_STEPS_FP32 - 1, fast_bf16=False)
    assert not off and "in fp32" in why
    assert compile_choice("auto", CPU, big, MIN_COMPILE_STEPS_FP32, fast_bf16=False)[0]
    # the demo's 6-minute budget: it pays with native bf16 (saves (360-30)*(1-1/1.69) = 135 s > 30 s),
    # not in fp32 (saves (360-110)*(1-1/1.1) = 23 s < 110 s)
    assert compile_choice("auto", CPU, big, 100, fast_bf16=True, budget_s=360)[0]
    off, why = compile_choice("auto", CPU, big, 100, fast_bf16=False, budget_s=360)
    assert not off and "time_budget_s 360" in why
    cost, speedup = COMPILE_COST["fp32"]
    assert not budget_pays_for_compile(1200, cost, speedup)  # (1200-110)*0.0909 = 99 s < 110 s
    assert budget_pays_for_compile(1400, cost, speedup)  # (1400-110)*0.0909 = 117 s > 110 s


def test_the_final_validation_is_kept_inside_the_budget():
    from tuneforge.train.loop import VALIDATION_TOKEN_SHARE, final_validation_seconds, steps_within

    # steps of 4,000 tokens in 40 s: 0.01 s a token; 10,000 validation tokens at half that: 50 s
    reserve = final_validation_seconds([6_000, 4_000], [40.0, 40.0], [4_000, 4_000])
    assert reserve == 10_000 * 0.01 * VALIDATION_TOKEN_SHARE == 50.0
    assert steps_within(360 - reserve, 150, [40.0, 40.0], done=3, total=39) == 3 + 4  # 160 s left: 4 steps
