"""Config loading: overrides, method shorthand, per-method options, path resolution, dump round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config import (Config, FreezeMethod, FullMethod, LoraMethod, apply_overrides, config_from_dict,
                              dump_config, load_config, parse_override)
from tuneforge.errors import UserError


def _write(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


BASE = {"data": {"train": "train.jsonl"}}


@pytest.mark.parametrize("text, key, value", [
    ("train.lr=0.0001", ["train", "lr"], 1e-4),
    ("train.lr=1e-4", ["train", "lr"], "1e-4"),  # YAML 1.1: a string; validation makes it a float
    ("train.max_steps=10", ["train", "max_steps"], 10),
    ("train.packing=false", ["train", "packing"], False),
    ("data.system_prompt=Be brief, please", ["data", "system_prompt"], "Be brief, please"),
    ("method.target_modules=[q_proj, v_proj]", ["method", "target_modules"], ["q_proj", "v_proj"]),
    ("train.threads=null", ["train", "threads"], None),
    ("model=", ["model"], None),
    ("data.system_prompt=a=b", ["data", "system_prompt"], "a=b"),
])
def test_parse_override_types_values_as_yaml(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("bad", ["train.lr", "train..lr=1", ".lr=1", "=3"])
def test_bad_override_is_a_user_error(bad):
    with pytest.raises(UserError, match="override"):
        parse_override(bad)


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = _write(tmp_path / "c.yaml", {**BASE, "train": {"lr": 1e-3, "epochs": 2}})
    cfg = load_config(path, ["train.lr=5e-5", "train.max_steps=7", "eval.metric=token_f1", "seed=3"])
    assert cfg.train.lr == 5e-5 and cfg.train.epochs == 2 and cfg.train.max_steps == 7
    assert cfg.eval.metric == "token_f1" and cfg.seed == 3
    assert isinstance(cfg.train.max_steps, int)
    assert isinstance(load_config(path, ["train.lr=1e-4"]).train.lr, float)


def test_method_shorthand_then_option_override(tmp_path):
    path = _write(tmp_path / "c.yaml", {**BASE, "method": "lora"})
    assert load_config(path).method == LoraMethod()
    cfg = load_config(path, ["method=freeze", "method.trainable_layers=1"])
    assert isinstance(cfg.method, FreezeMethod) and cfg.method.trainable_layers == 1
    cfg = load_config(path, ["method=full"])
    assert isinstance(cfg.method, FullMethod)
    cfg = load_config(path, ["method.r=4"])  # the shorthand in the file expands to a section
    assert isinstance(cfg.method, LoraMethod) and cfg.method.r == 4
    with pytest.raises(UserError, match=r"method\.trainable_layers: unknown key for method 'full'"):
        load_config(path, ["method=full", "method.trainable_layers=1"])


def test_method_defaults_to_lora_and_accepts_sections():
    assert isinstance(config_from_dict(dict(BASE)).method, LoraMethod)
    cfg = config_from_dict({**BASE, "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj"]}})
    assert cfg.method.r == 8 and cfg.method.alpha == 16 and cfg.method.target_modules == ["q_proj"]
    assert isinstance(config_from_dict({**BASE, "method": "full"}).method, FullMethod)


@pytest.mark.parametrize("method, key", [("full", "r"), ("freeze", "alpha"), ("lora", "trainable_layers")])
def test_options_of_another_method_are_rejected_by_name(method, key):
    with pytest.raises(UserError) as e:
        config_from_dict({**BASE, "method": {"name": method, key: 1}})
    msg = str(e.value)
    assert f"method.{key}: unknown key for method '{method}'" in msg and "\n" not in msg


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(UserError, match="unknown method 'loha'; available: full, freeze, lora"):
        config_from_dict({**BASE, "method": "loha"})


def test_several_errors_in_one_line():
    with pytest.raises(UserError) as e:
        config_from_dict({**BASE, "train": {"lr": -1, "epochs": "x"}, "sed": 1}, "c.yaml")
    msg = str(e.value)
    assert msg.startswith("c.yaml: ") and "\n" not in msg
    assert "train.lr" in msg and "train.epochs" in msg and "did you mean 'seed'" in msg


def test_cross_field_check_names_both_keys():
    with pytest.raises(UserError) as e:
        config_from_dict({**BASE, "train": {"early_stopping_patience": 2}})
    assert str(e.value) == "config: train.early_stopping_patience needs train.eval_every"


def test_relative_data_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text("{}\n")
    (folder / "data" / "val.jsonl").write_text("{}\n")
    path = _write(folder / "c.yaml", {"data": {"train": "data/train.jsonl", "validation": "./data/val.jsonl"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.data.train == str((folder / "data" / "train.jsonl").resolve())
    assert cfg.data.validation == str((folder / "data" / "val.jsonl").resolve())
    # Loading it relative to cwd works the same.
    monkeypatch.chdir(tmp_path / "project")
    assert load_config("configs/c.yaml").data.train == str((folder / "data" / "train.jsonl").resolve())
    # Absolute paths and hub ids are left alone.
    hub = load_config(_write(folder / "h.yaml", {"data": {"train": "org/dataset", "validation": str(tmp_path)}}))
    assert hub.data.train == "org/dataset" and hub.data.validation == str(tmp_path)


def test_dump_config_round_trip(tmp_path):
    raw = {"model": "some/model", "output_dir": "runs/x", "seed": 7,
           "method": {"name": "freeze", "trainable_layers": 1, "trainable_modules": ["norm"]},
           "data": {"train": "/abs/train.jsonl", "format": "messages", "system_prompt": "Be brief.",
                    "max_length": 256, "truncation": "drop"},
           "train": {"lr": 3e-4, "betas": [0.8, 0.95], "max_steps": 5, "schedule": "linear", "max_grad_norm": None},
           "eval": {"metric": "rouge_l", "before_after": False}}
    cfg = config_from_dict(raw)
    text = dump_config(cfg)
    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg
    assert dump_config(again) == text
    assert again.train.betas == (0.8, 0.95) and again.train.max_grad_norm is None
    # And through a file, with no path rewriting for an absolute train path.
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    assert load_config(path) == cfg
    for cls in (FullMethod(), LoraMethod(r=4)):
        c = Config(data={"train": "x"}, method=cls)
        assert config_from_dict(yaml.safe_load(dump_config(c))) == c


def test_apply_overrides_creates_missing_sections():
    raw = apply_overrides({"data": {"train": "x"}}, ["eval.max_examples=3", "train.betas=[0.9, 0.99]"])
    cfg = config_from_dict(raw)
    assert cfg.eval.max_examples == 3 and cfg.train.betas == (0.9, 0.99)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    from tuneforge.config import load_config

    assert load_config(path, []).output_dir
