"""User mistakes through the CLI: each fails with exit code 2 and one clear `error:` line that names
the file, line, key or flag involved, and leaves no half-written run directory behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, write_config, write_jsonl

ALPACA = [{"instruction": f"Say {w}", "input": "", "output": w} for w in
          ("yes", "no", "maybe", "true", "false", "answer")]
TINY_RUN = {"train": {"max_steps": 1, "batch_tokens": 256, "precision": "fp32"},
            "eval": {"before_after": False}}


def _no_chat_template_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    tc_path = dst / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc.pop("chat_template", None)
    tc_path.write_text(json.dumps(tc))
    return dst


def _cfg(t: Path, model: Path, data_file: Path, **sections) -> Path:
    merged = {k: dict(v) for k, v in TINY_RUN.items()}
    for k, v in sections.items():
        if isinstance(v, dict) and k in merged:
            merged[k].update(v)
        else:
            merged[k] = v
    return write_config(t / "cfg.yaml", model, data_file, t / "run", **merged)


# Each case: (t, tiny_llama) -> (argv, expected substrings in the error line, path that must not exist after).
def case_malformed_jsonl(t, m):
    data = t / "train.jsonl"
    data.write_text(json.dumps(ALPACA[0]) + "\n" + '{"instruction": "x", "output": \n' + json.dumps(ALPACA[1]) + "\n")
    return ["train", _cfg(t, m, data)], [f"{data}:2", "not valid JSON"]


def case_missing_fields(t, m):
    data = write_jsonl(t / "train.jsonl", [ALPACA[0], {"instruction": "no output here"}])
    return ["train", _cfg(t, m, data)], [f"{data}:2", "missing field 'output'"]


def case_missing_field_forced_format(t, m):
    data = write_jsonl(t / "train.jsonl", [ALPACA[0], {"instruction": "no output here"}])
    return ["train", _cfg(t, m, data, data={"format": "alpaca"})], [f"{data}:2", "missing field 'output'"]


def case_wrong_field_type(t, m):
    data = write_jsonl(t / "train.jsonl", [ALPACA[0], {"instruction": "Add 2 and 3", "output": 5}])
    return ["train", _cfg(t, m, data)], [f"{data}:2", "'output'", "must be a string", "int"]


def case_empty_dataset(t, m):
    data = t / "train.jsonl"
    data.write_text("\n")
    return ["train", _cfg(t, m, data)], [str(data), "no records"]


def case_missing_data_file(t, m):
    data = t / "nope.jsonl"
    return ["train", _cfg(t, m, data)], [str(data), "does not exist"]


def case_missing_model(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, t / "no_such_model", data)], [str(t / "no_such_model"), "does not exist"]


def case_no_chat_template(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    model = _no_chat_template_model(m, t / "model_no_template")
    return ["train", _cfg(t, model, data)], ["chat template", "data.chat_template"]


def case_output_under_file(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    (t / "afile").write_text("x")
    cfg = write_config(t / "cfg.yaml", m, data, t / "afile" / "run", **TINY_RUN)
    return ["train", cfg], ["output_dir", str(t / "afile" / "run"), "not a directory"]


def case_resume_without_checkpoint(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data), "--resume"], ["--resume", "no checkpoint", str(t / "run")]


def case_overwrite_and_resume(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data), "--overwrite", "--resume"], ["--overwrite", "--resume"]


def case_unknown_key(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, train={"max_step": 3})], ["train.max_step", "unknown key", "did you mean 'max_steps'"]


def case_unknown_key_no_close_match(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, data={"zzz": 1})], ["data.zzz", "unknown key", "known keys:", "max_length"]


def case_unknown_top_key(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, modle="x")], ["modle", "did you mean 'model'"]


def case_wrong_type_key(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, train={"lr": "abc"})], ["train.lr", "abc"]


def case_wrong_type_override(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data), "train.lr=abc"], ["train.lr", "abc"]


def case_unknown_method(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, method="qlora")], ["method", "qlora", "full", "freeze", "lora"]


def case_unknown_method_section(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, method={"name": "adalora", "r": 4})], ["method", "adalora", "full, freeze, lora, dora"]


def case_option_of_other_method(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, method={"name": "full", "r": 4})], ["method.r", "unknown key for method 'full'"]


def case_invalid_yaml(t, m):
    cfg = t / "cfg.yaml"
    cfg.write_text("model: x\ndata:\n  train: a.jsonl\n  format: [alpaca\ntrain:\n  lr: 1\n")
    return ["train", cfg], [str(cfg), "not valid YAML"]


def case_config_not_mapping(t, m):
    cfg = t / "cfg.yaml"
    cfg.write_text("- just\n- a list\n")
    return ["train", cfg], [str(cfg), "mapping"]


def case_config_missing(t, m):
    return ["train", t / "missing.yaml"], [str(t / "missing.yaml"), "does not exist"]


def case_bad_override_syntax(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data), "train.lr"], ["train.lr", "key.path=value"]


def case_override_into_scalar(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data), "train.lr.x=1"], ["train.lr.x=1", "'lr' is not a section"]


def case_missing_data_section(t, m):
    cfg = t / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(m), "output_dir": str(t / "run")}))
    return ["train", cfg], ["data", "required"]


def case_unknown_format(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, data={"format": "chatml"})], ["data.format", "chatml", "alpaca"]


def case_undetectable_format(t, m):
    data = write_jsonl(t / "train.jsonl", [{"question": "q", "answer": "a"}])
    return ["train", _cfg(t, m, data)], [f"{data}:1", "data.format"]


def case_unknown_role(t, m):
    data = write_jsonl(t / "train.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "abracadabra"}]},
    ])
    return ["train", _cfg(t, m, data)], [f"{data}:2", "messages[1]", "unknown role 'wizard'"]


def case_no_assistant_turn(t, m):
    data = write_jsonl(t / "train.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    ])
    return ["train", _cfg(t, m, data)], [f"{data}:1", "no assistant"]


def case_message_not_object(t, m):
    data = write_jsonl(t / "train.jsonl", [{"messages": ["hi", "hello"]}])
    return ["train", _cfg(t, m, data)], [f"{data}:1", "messages[0]"]


def case_unsupported_file_type(t, m):
    data = t / "train.txt"
    data.write_text("hello\n")
    return ["train", _cfg(t, m, data)], [str(data), "unsupported file type"]


def case_json_not_list(t, m):
    data = t / "train.json"
    data.write_text(json.dumps({"rows": []}))
    return ["train", _cfg(t, m, data)], [str(data), "JSON list"]


def case_all_dropped(t, m):
    data = write_jsonl(t / "train.jsonl", [{"instruction": "word " * 40, "output": "yes"}] * 3)
    return ["train", _cfg(t, m, data, data={"max_length": 8, "truncation": "drop", "val_ratio": 0})], \
        ["data.train", "dropped", "data.max_length"]


def case_merge_not_a_run(t, m):
    folder = t / "not_a_run"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    return ["merge", folder, t / "merged"], [str(folder), "not a tuneforge run"]


def case_merge_full_model(t, m):
    return ["merge", m, t / "merged"], [str(m), "no adapter"]


def case_generate_missing(t, m):
    return ["generate", t / "nowhere", "hello"], [str(t / "nowhere"), "does not exist"]


def case_tiny_unknown_arch(t, m):
    return ["models", "tiny", t / "tinyout", "--arch", "mamba"], ["--arch", "mamba", "llama"]


def case_hub_model_offline(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, "nobody-here/no-such-model", data)], ["nobody-here/no-such-model"]


def case_early_stopping_needs_eval_every(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, train={"early_stopping_patience": 2})], \
        ["train.early_stopping_patience", "train.eval_every"]


def case_broken_jinja_template(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    return ["train", _cfg(t, m, data, data={"chat_template": "{% for m in messages %}{{ m.content }"})], \
        ["data.chat_template"]


def case_template_raises(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    tpl = "{{ raise_exception('system messages are not supported') }}"
    return ["train", _cfg(t, m, data, data={"chat_template": tpl})], ["system messages are not supported"]


def case_content_is_list(t, m):
    data = write_jsonl(t / "train.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                      {"role": "assistant", "content": "hello"}]}])
    return ["train", _cfg(t, m, data)], [f"{data}:1", "messages[0]", "must be a string", "list"]


def case_bad_validation_file(t, m):
    data = write_jsonl(t / "train.jsonl", ALPACA)
    val = t / "val.jsonl"
    val.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps({"instruction": "x", "output": ["a"]}) + "\n")
    return ["train", _cfg(t, m, data, data={"validation": str(val)})], [f"{val}:2", "'output'"]


def case_garbage_parquet(t, m):
    data = t / "train.parquet"
    data.write_text("this is not parquet")
    return ["train", _cfg(t, m, data)], [str(data), "could not load"]


def case_csv_missing_column(t, m):
    data = t / "train.csv"
    data.write_text("instruction,answer\nSay yes,yes\n")
    return ["train", _cfg(t, m, data)], [f"{data}:2", "missing field 'output'"]


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


def _assert_one_error_line(err: str, expected: list[str]) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in err
    for part in expected:
        assert part in line, f"{part!r} not in {line!r}"
    return line


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_mistake_is_one_clear_line(case, tiny_llama, tmp_path, capsys):
    argv, expected = CASES[case](tmp_path, tiny_llama)
    code, out, err = run_cli(argv, capsys)
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    _assert_one_error_line(err, expected)
    assert not (tmp_path / "run").exists(), "a failed start left a run directory behind"
    assert not (tmp_path / "merged").exists()
    assert not (tmp_path / "tinyout").exists()


def test_existing_run_dir_is_refused_untouched_then_overwritten(tiny_llama, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", ALPACA)
    cfg = _cfg(tmp_path, tiny_llama, data)
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")

    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2, err
    _assert_one_error_line(err, [str(run), "already exists", "--overwrite", "--resume"])
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"]
    assert (run / "precious.txt").read_text() == "keep me"

    # A bad config with --overwrite must not wipe the existing directory either.
    data_bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": 5}])
    bad_cfg = write_config(tmp_path / "bad.yaml", tiny_llama, data_bad, run, **TINY_RUN)
    code, out, err = run_cli(["train", bad_cfg, "--overwrite"], capsys)
    assert code == 2
    _assert_one_error_line(err, [f"{data_bad}:1"])
    assert (run / "precious.txt").read_text() == "keep me"

    code, out, err = run_cli(["train", cfg, "--overwrite"], capsys)
    assert code == 0, err
    assert not (run / "precious.txt").exists()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "config.yaml").is_file()

    # And the finished run can now be resumed-refused cleanly only if it has no checkpoint;
    # overwrite+resume stays an error that touches nothing.
    code, out, err = run_cli(["train", cfg, "--overwrite", "--resume"], capsys)
    assert code == 2
    _assert_one_error_line(err, ["--overwrite", "--resume"])
    assert (run / "adapter" / "adapter_config.json").is_file()
