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
