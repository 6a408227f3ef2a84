"""A quantized frozen base for the adapter methods (QLoRA): the backend that runs it on this device,
the load arguments that quantize the base, and the dequantized base `tuneforge merge` folds into.

The backend is bitsandbytes. Its 4-bit NormalFloat (nf4) and 8-bit (LLM.int8) Linear layers run
forward and backward on CPU (its CPU backend) and CUDA; transformers quantizes a model into them
while loading (BitsAndBytesConfig); PEFT wraps them with LoRA, DoRA and IA3 layers; and transformers
turns them back into plain Linear layers (`model.dequantize()`), which merging needs. torchao 0.18
was checked too (2026-12-02, torch 2.13 CPU): its int8 weight-only path trains under PEFT, but its
NF4 tensor has no PEFT layer, so it would be a second code path for half of the feature.

The frozen base is quantized; the adapter's own weights stay in full precision and train in the
compute dtype (fp32, or bf16 under autocast), as in the QLoRA paper.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir

KINDS = ("nf4", "int8")
BACKEND = "bitsandbytes"
INSTALL = "pip install bitsandbytes==0.50.2"
# What each kind stores, for the run log and the docs.
KIND_TEXT = {
    "nf4": "4-bit NormalFloat, blocks of 64, double-quantized scales, as in QLoRA",
    "int8": "8-bit LLM.int8 (outlier features kept in 16-bit)",
}
_probed: dict[tuple[str, str], str | None] = {}  # (kind, device) -> None when it runs, else why not


def training_device() -> torch.device:
    """The device a single-process run trains on (the accelerator picks the same one)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _quantized_linear(kind: str):
    import bitsandbytes as bnb

    if kind == "nf4":
        return bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    return bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)


def _why_it_cannot_run(kind: str, device: torch.device) -> str | None:
    """Quantize a small Linear and run it forward and backward on `device`: a backend can import fine
    and still lack kernels for this device, which would otherwise surface mid-run as a stack trace."""
    key = (kind, str(device))
    if key not in _probed:
        try:
            layer = _quantized_linear(kind).to(device)  # moving it to the device is what quantizes it
            x = torch.randn(2, 64, device=device, requires_grad=True)
            layer(x).sum().backward()
            _probed[key] = None if x.grad is not None and torch.isfinite(x.grad).all() else "non-finite gradients"
        except Exception as e:  # noqa: BLE001 - any failure means: not on this device
            _probed[key] = f"{type(e).__name__}: {(str(e).splitlines() or ['?'])[0][:160]}"
    return _probed[key]


def check_backend(kind: str, device: torch.device | None = None) -> str:
    """Why bitsandbytes quantizes the base here (one line for the run log); one clear UserError naming
    method.quantize when it cannot: not installed, or no kernels for this device."""
    device = device or training_device()
    try:
        import bitsandbytes
    except ImportError:
        raise UserError(f"method.quantize: {kind} needs {BACKEND}, which is not installed; {INSTALL} "
                        "(or set method.quantize: none to train over the full-precision base)") from None
    why_not = _why_it_cannot_run(kind, device)
    if why_not:
        raise UserError(f"method.quantize: {kind}: {BACKEND} {bitsandbytes.__version__} cannot run {kind} layers on "
                        f"{device} ({why_not}); {INSTALL} (its CPU backend needs >= 0.48), or set "
                        "method.quantize: none")
    return (f"base quantized to {kind} ({KIND_TEXT[kind]}) by {BACKEND} {bitsandbytes.__version__}: its {kind} layers "
            f"run forward and backward on {device.type} here, transformers loads into them and PEFT wraps them")


def quantized_load_args(kind: str, device: torch.device | None = None) -> dict:
    """from_pretrained arguments that quantize the base while it loads (never a full-precision copy in
    memory first), straight onto the device it will train on."""
    from transformers import BitsAndBytesConfig

    if kind == "nf4":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.float32)
    elif kind == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        raise UserError(f"method.quantize: unknown '{kind}'; choose one of {', '.join(KINDS)} or none")
    return {"quantization_config": config, "device_map": {"": str(device or training_device())}}


def is_quantized(model) -> bool:
    """True for a model loaded with a quantization config (PEFT wrappers pass the attribute through)."""
    return bool(getattr(model, "is_quantized", False))


def keep_weights_unpacked(model) -> None:
    """Stop bitsandbytes from repacking nf4 weights for its bf16 inference kernel on CPUs with
    AVX512-BF16 (AMX machines). bitsandbytes 0.50.2 repacks a layer the first time it runs without
    gradients (validation, generation) and keeps it packed; from then on (measured 2026-12-03 on an
    AMX Xeon) no gradient flows back through that layer to its input, so adapters below it stop
    learning after the first validation pass; `dequantize()` reads the packed weights as garbage
    (logits off by ~0.8), which breaks merge and DoRA's weight norm; and inference runs in bf16,
    so generate/eval no longer compute what training computed. The unpacked fp32 path is exact."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def set_compute_dtype(model, dtype: torch.dtype) -> None:
    """Dequantize nf4 weights straight to `dtype` each forward. A quantized model refuses `.to(dtype)`
    (its packed weights would be cast as numbers); its unquantized parts (embeddings, norms, the head)
    stay fp32 and autocast casts them per op."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype = dtype


def dequantize_base(model):
    """The quantized base turned back into plain fp32 Linear layers holding the dequantized weights:
    the weights the adapter was trained against, so base + folded adapter computes what the run trained."""
    return model.dequantize(dtype=torch.float32)


def run_quantize(artifact: Path) -> str | None:
    """method.quantize of the run an artifact folder (adapter/) belongs to, from its config.yaml; None
    when the run trained over a full-precision base or the folder is not in a run."""
    path = RunDir(Path(artifact).parent).config
    if not path.is_file():
        return None
    method = (yaml.safe_load(path.read_text()) or {}).get("method")
    kind = method.get("quantize") if isinstance(method, dict) else None
    return kind if kind in KINDS else None
