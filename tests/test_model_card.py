"""The model card: README.md in the artifact, in the Hugging Face format, carried along by merge."""

from __future__ import annotations

import yaml

from conftest import run_cli, write_config


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_a_run_writes_a_card_and_merge_carries_it(tiny_llama, dates_data, tmp_path, capsys):
    train, val = dates_data
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", val,
                       train={"max_steps": 2, "batch_tokens": 256}, method={"name": "lora", "r": 4})
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == str(tiny_llama) and meta["library_name"] == "peft"
    assert set(meta["tags"]) >= {"tuneforge", "sft", "lora"}
    for part in ("## Training data", f"`{train}`", "Every record read:", "## Training procedure",
                 "| lr | 0.001 |", "| method.r | 4 |", "## Results", "| tuned |", "## Intended use and limits",
                 "AutoPeftModelForCausalLM"):
        assert part in card, part

    code, _, err = run_cli(["merge", tmp_path / "run", tmp_path / "merged"], capsys)
    assert code == 0, err
    merged = (tmp_path / "merged" / "README.md").read_text()
    assert _front_matter(merged)["library_name"] == "transformers"
    assert "Merged by `tuneforge merge`" in merged and "AutoPeftModelForCausalLM" not in merged
    assert "| tuned |" in merged  # the results travel with the weights
