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


def should_compile(setting: str, device, n_params: int) -> bool:
    if setting != "auto":
        return setting == "true"
    # Compiling costs ~20-30 s here and pays from a few dozen steps on for real models; tiny
    # models gain nothing. On CPU, inductor needs a C++ compiler.
    has_compiler = device.type == "cuda" or any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    return n_params >= 50_000_000 and has_compiler


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
