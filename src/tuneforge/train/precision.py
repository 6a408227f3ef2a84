"""Pick the compute dtype: bf16 autocast where the hardware runs it fast, fp32 otherwise."""

from __future__ import annotations

import contextlib

import torch


def cpu_has_fast_bf16() -> bool:
    # AMX (Sapphire Rapids+) or AVX512-BF16 run bf16 matmuls natively; elsewhere bf16 on CPU is
    # emulated and slower than fp32, so it must not be the default there.
    try:
        if torch.cpu._is_amx_tile_supported():
            return True
    except AttributeError:
        pass
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    """What this run found: the device, its cores or name, and whether it runs bf16 natively."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        native = torch.cuda.is_bf16_supported()
        return f"machine: {name}, bf16 {'native' if native else 'not native'}"
    import os

    native = cpu_has_fast_bf16()
    return (f"machine: {cpu_name()}, {os.cpu_count()} cores ({torch.get_num_threads()} threads), bf16 "
            + ("native (AMX or AVX512-BF16)" if native else "not native (no AMX or AVX512-BF16): training runs in fp32"))


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if setting == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_fast_bf16()
    else:
        supported = False
    if setting == "bf16":
        return torch.bfloat16  # asked for explicitly: honour it even if emulated
    return torch.bfloat16 if supported else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
