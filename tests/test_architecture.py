"""The recipe protocol and the Session, held by tests: the worked example of docs/architecture.md runs
as written, every config recipe is registered, the method registry decides what each recipe accepts,
and the Session never changes the caller's config."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from conftest import write_config
from tuneforge.config import Config, load_config
from tuneforge.errors import UserError
from tuneforge.models.methods import METHODS, check_serves
from tuneforge.models.policy import LoadPolicy
from tuneforge.recipes import RECIPES
from tuneforge.recipes.base import check_recipe
from tuneforge.run_dir import RunDir
from tuneforge.train.session import Session

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _doc_recipe():
    """The first Python block of docs/architecture.md's "Adding a recipe", executed as it is written."""
    section = DOC.read_text().split("## Adding a recipe", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["Perplexity"]


def test_the_documented_recipe_runs_as_written(tmp_path, tiny_llama, dates_data):
    recipe = _doc_recipe()()
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run",
                                   data={"val_ratio": 0.1}, method={"name": "lora", "r": 4},
                                   train={"max_steps": 3, "lr": 1e-2}), [])
    check_recipe(recipe, cfg, resume=False)
    run = recipe.run(recipe.session(cfg, overwrite=False, resume=False, policy=LoadPolicy()))
    report = RunDir(run).report()
    assert report["steps"] == 3 and report["before"]["perplexity"] > report["after"]["perplexity"] > 1
    assert RunDir(run).eval_before.is_file() and (run / "adapter" / "adapter_config.json").is_file()
    assert RunDir(run).status() == "finished"


def test_every_config_recipe_is_registered():
    names = set(typing.get_args(Config.model_fields["recipe"].annotation))
    assert names == set(RECIPES)
    assert all(RECIPES[n].name == n for n in RECIPES)


@pytest.mark.parametrize("recipe", ["preference", "calibration", "agent"])
def test_the_method_registry_decides_what_a_recipe_accepts(recipe):
    for name, method in METHODS.items():
        if recipe in method.refuses:
            with pytest.raises(UserError, match=f"method: {name} is not supported by recipe: {recipe}") as e:
                check_serves(name, recipe)
            usable = [m for m, spec in METHODS.items() if recipe not in spec.refuses]
            assert all(m in str(e.value) for m in usable)
        else:
            check_serves(name, recipe)
    assert not any("sft" in m.refuses for m in METHODS.values())


def test_session_resolves_a_copy_and_records_what_runs(tmp_path, tiny_llama, dates_data):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run",
                                   method={"name": "prompt", "num_virtual_tokens": 4}), [])
    assert cfg.train.packing
    said = []
    session = Session(cfg, log=said.append)
    assert cfg.train.packing, "the caller's config is never changed"
    assert not session.cfg.train.packing and any("packing off" in s for s in said)
    session.start()
    assert "packing: false" in RunDir(tmp_path / "run").config.read_text()


def test_a_refused_resume_names_what_to_do(tmp_path, tiny_llama, dates_data):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run"), [])
    with pytest.raises(UserError, match="--resume is not supported with recipe: agent; rerun with --overwrite"):
        check_recipe(RECIPES["agent"], cfg, resume=True)
    with pytest.raises(UserError, match="--stage tune --resume"):
        check_recipe(RECIPES["calibration"], cfg, resume=True)


def test_sft_and_preference_runs_are_finished_by_the_one_status_rule(tmp_path, tiny_llama, dates_data, capsys):
    from conftest import run_cli, write_jsonl

    cfg = write_config(tmp_path / "sft.yaml", tiny_llama, dates_data[0], tmp_path / "sft",
                       train={"max_steps": 2}, eval={"before_after": False})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    assert RunDir(tmp_path / "sft").status() == "finished" and "artifact:" in out
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}", "chosen": f"{i}", "rejected": "no"}
                                                   for i in range(8)])
    cfg = write_config(tmp_path / "pref.yaml", tiny_llama, pairs, tmp_path / "pref", recipe="preference",
                       train={"max_steps": 2}, eval={"before_after": False})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    assert RunDir(tmp_path / "pref").status() == "finished"
    assert json.loads(RunDir(tmp_path / "pref").report_json.read_text())["reference"] == "adapter_disabled"
