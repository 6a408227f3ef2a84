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


# Measured on SmolLM2-135M LoRA (docs/performance.md): compiling the blocks costs ~30 s on a 2-core
# AMX CPU and speeds a step up 1.69x; an AVX2-only CPU in fp32 took 127 s to compile with steps of
# 30-60 s. Either way it pays back after roughly 5-15 steps; below this many a run does not risk it.
MIN_COMPILE_STEPS = 20


def has_compiler(device) -> bool:
    """Inductor on CPU needs a C++ compiler."""
    return device.type == "cuda" or any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def compile_choice(setting: str, device, n_params: int, steps: int) -> tuple[bool, str]:
    """Whether to compile the decoder blocks, and why (for the run's log)."""
    if setting != "auto":
        return setting == "true", f"train.compile: {setting}"
    if n_params < 50_000_000:
        return False, f"off: {n_params / 1e6:.1f}M parameters, too small to gain"
    if not has_compiler(device):
        return False, "off: no C++ compiler (g++, clang++) for inductor on CPU"
    if steps < MIN_COMPILE_STEPS:
        return False, f"off: {steps} steps planned, too few to pay back the compile (from {MIN_COMPILE_STEPS})"
    return True, f"on: {steps} steps planned pay back the one-time compile (~30 s on CPU)"



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
