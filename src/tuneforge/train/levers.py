"""Speed levers chosen per run: the attention kernel, compiling the decoder blocks, and the peak-memory
reading every report shows. Each choice is measured (bench/bench_levers.py, docs/performance.md)."""

from __future__ import annotations

import resource
import shutil

import torch
from torch import nn

from tuneforge.models.anatomy import find_blocks


def choose_attention(setting: str, device, row_length: int) -> str:
    if setting != "auto":
        return setting
    # Measured on a 2-core AMX CPU with SmolLM2-135M (bench/bench_levers.py and docs/performance.md):
    # rows of ~80 tokens train 2x faster with eager attention (the CPU SDPA backward with a packed
    # mask is slow), rows of ~640 tokens 1.35x faster with SDPA. 256 is the cut between the two
    # measurements. GPUs use SDPA.
    return "eager" if device.type == "cpu" and row_length <= 256 else "sdpa"


# What compiling the decoder blocks costs once and saves per step, measured on SmolLM2-135M LoRA
# (docs/performance.md) on 2-core CPUs. With native bf16 (AMX): ~30 s, steps 1.69x faster, so it pays
# back after ~15 steps. An AVX2-only CPU in fp32 (AMD EPYC, 2026-12-02): ~110 s (first step 154 s against
# ~45 s), steps only 1.10x faster (43.8 s against 48.3 s), so it pays back after ~25 steps, about 20 min
# of training. GPU numbers are not measured here; they are taken as the native-bf16 CPU's.
COMPILE_COST = {"native": (30.0, 1.69), "fp32": (110.0, 1.10)}  # seconds once, step speed-up
MIN_COMPILE_STEPS = 20  # planned steps below which a run does not risk it (native bf16)
MIN_COMPILE_STEPS_FP32 = 40


def has_compiler(device) -> bool:
    """Inductor on CPU needs a C++ compiler."""
    return device.type == "cuda" or any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def budget_pays_for_compile(budget_s: float, cost_s: float, speedup: float) -> bool:
    """Within a time budget, compiling pays when the step time it saves over the rest of the budget
    exceeds what it costs."""
    saved = (budget_s - cost_s) * (1 - 1 / speedup)
    return saved > cost_s


def compile_choice(setting: str, device, n_params: int, steps: int, *, fast_bf16: bool = True,
                   budget_s: float | None = None) -> tuple[bool, str]:
    """Whether to compile the decoder blocks, and why (for the run's log). `fast_bf16`: the run computes
    in bf16 on hardware that runs it natively; `budget_s`: train.time_budget_s, which caps the steps."""
    if setting != "auto":
        return setting == "true", f"train.compile: {setting}"
    if n_params < 50_000_000:
        return False, f"off: {n_params / 1e6:.1f}M parameters, too small to gain"
    if not has_compiler(device):
        return False, "off: no C++ compiler (g++, clang++) for inductor on CPU"
    kind = "native" if fast_bf16 or device.type == "cuda" else "fp32"
    cost, speedup = COMPILE_COST[kind]
    least = MIN_COMPILE_STEPS if kind == "native" else MIN_COMPILE_STEPS_FP32
    how = "with native bf16" if kind == "native" else "in fp32"
    measured = f"~{cost:.0f} s once, steps {speedup:.2f}x faster {how}"
    if steps < least:
        return False, f"off: {steps} steps planned, too few to pay back the compile ({measured}; from {least})"
    if budget_s is not None and not budget_pays_for_compile(budget_s, cost, speedup):
        return False, f"off: within train.time_budget_s {budget_s:.0f} s the compile would not pay back ({measured})"
    return True, f"on: {steps} steps planned pay back the one-time compile ({measured})"


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each decoder block: the blocks share one compiled graph, so compiling costs about
    one block's worth of time instead of the whole body's (measured: bench/bench_levers.py)."""
    for block in find_blocks(model):
        block.compile(dynamic=True)


def peak_memory_gb(device) -> float:
    """Peak resident memory of this process (CPU), or peak allocated GPU memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
