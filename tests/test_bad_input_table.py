"""Every user-causable failure tuneforge knows, as one table.

Each row is (id, setup, args, expected substrings[, status]):

- CLI rows run `tuneforge ARGS` in-process. The command must exit 2 with exactly one stderr line that
  starts with "error: " and names the file / line / key / flag involved, and must leave the working
  folder exactly as the setup left it: no run directory, no half-written artifact, no temp files.
- HTTP rows send (METHOD, path, body) to a real `tuneforge serve` app (tiny model, API key): the
  answer is the expected 4xx in OpenAI's error shape, the server stays up and writes no temp files.

`setup(t, fx)` writes what the row needs under the test's folder `t` (fx gives the shared tiny models
and adapters) and returns the names used in the row's args and expectations ({cfg}, {data}, ...).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import yaml

from conftest import run_cli, running_server, write_config, write_jsonl

ALPACA = [{"instruction": f"Say {w}", "input": "", "output": w} for w in
          ("yes", "no", "maybe", "true", "false", "answer")]
TINY_RUN = {"train": {"max_steps": 1, "batch_tokens": 256, "precision": "fp32"}, "eval": {"before_after": False}}
QUESTIONS = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]
PAIRS = [{"prompt": f"Say {w}", "chosen": w, "rejected": "no idea"} for w in ("yes", "maybe", "true", "ok")]
API_KEY = "table-test-key"
CHAT = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, SimpleNamespace], dict] | None
    args: tuple
    expect: tuple[str, ...]
    status: int = 2  # CLI exit code, or the HTTP status

    @property
    def http(self) -> bool:
        return self.args[0] in ("GET", "POST")


# ---- setup helpers: each returns a setup function --------------------------------------------

def _write_data(t: Path, file: str, rows, text) -> Path:
    path = t / file
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    else:
        write_jsonl(path, rows)
    return path


def _sections(**sections) -> dict:
    merged = {k: dict(v) for k, v in TINY_RUN.items()}
    for k, v in sections.items():
        if isinstance(v, dict) and k in merged:
            merged[k].update(v)
        else:
            merged[k] = v
    return merged


def train(rows=ALPACA, file="train.jsonl", text=None, model=None, **sections):
    """A data file (rows as JSONL, or raw text) and a config training on it: {cfg}, {data}, {run}."""
    def setup(t, fx):
        data = _write_data(t, file, rows, text)
        m = model(t, fx) if callable(model) else (model or fx.llama)
        cfg = write_config(t / "cfg.yaml", m, data, t / "run", **_sections(**sections))
        return {"cfg": cfg, "data": data, "run": t / "run", "model": m}
    return setup


def raw_config(text: str):
    def setup(t, fx):
        (t / "cfg.yaml").write_text(text.format(model=fx.llama, t=t))
        return {"cfg": t / "cfg.yaml"}
    return setup


def eval_config(**extra):
    def setup(t, fx):
        data = write_jsonl(t / "suite.jsonl", ALPACA)
        cfg = {"output_dir": str(t / "run"), "suites": [{"name": "say", "data": str(data),
                                                         "template": "{instruction}", "max_examples": 2}], **extra}
        (t / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        return {"cfg": t / "cfg.yaml", "model": fx.llama}
    return setup


def calibration_run(correct: bool):
    """A calibration run directory after the grade stage whose graded train answers are all one class."""
    def setup(t, fx):
        names = train(QUESTIONS, recipe="calibration", calibration={"test_ratio": 0.25})(t, fx)
        run = names["run"]
        run.mkdir()
        rows = [{"question": q["question"], "target": q["answer"], "targets": [q["answer"]], "answer": q["answer"],
                 "correct": correct, "grader": "exact", "split": "train" if i < 6 else "test"}
                for i, q in enumerate(QUESTIONS)]
        write_jsonl(run / "graded.jsonl", rows)
        return names
    return setup


def with_files(**files):
    """Files or folders under t: a str value is a file's text, None a folder; {name} is its path."""
    def setup(t, fx):
        out = {"model": fx.llama}
        for name, text in files.items():
            path = t / name
            if text is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            out[name] = path
        return out
    return setup


def models(t, fx):
    return {"model": fx.llama, "lora": fx.llama_lora, "qwen_lora": fx.qwen2_lora}


def no_template_model(t, fx) -> Path:
    dst = shutil.copytree(fx.llama, t / "model_no_template")
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((dst / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(tc))
    return dst


def pickle_only_model(t, fx) -> Path:
    """The tiny model re-saved as pytorch_model.bin only: loading it means unpickling."""
    import torch
    from safetensors.torch import load_file

    dst = t / "pickled_model"
    shutil.copytree(fx.llama, dst)
    for f in dst.glob("*.safetensors"):
        torch.save(load_file(str(f)), dst / "pytorch_model.bin")
        f.unlink()
    return dst


def bad_jsonl(t, fx):
    return train(text=json.dumps(ALPACA[0]) + "\n" + '{"instruction": "x", "output": \n' + json.dumps(ALPACA[1]))(t, fx)


# ---- the table -------------------------------------------------------------------------------

ROWS = [
    # config
    Case("config_unknown_key_suggests", train(train={"max_step": 3}), ("train", "{cfg}"),
         ("{cfg}", "train.max_step", "unknown key", "did you mean 'max_steps'")),
    Case("config_unknown_key_lists_known", train(data={"zzz": 1}), ("train", "{cfg}"),
         ("data.zzz", "unknown key", "known keys:", "max_length")),
    Case("config_unknown_top_key", train(modle="x"), ("train", "{cfg}"), ("modle", "did you mean 'model'")),
    Case("config_wrong_type", train(train={"lr": "abc"}), ("train", "{cfg}"), ("train.lr", "abc")),
    Case("config_wrong_type_override", train(), ("train", "{cfg}", "train.lr=abc"), ("train.lr", "abc")),
    Case("config_override_bad_yaml", train(), ("train", "{cfg}", "train.lr='"), ("train.lr='", "not valid YAML")),
    Case("config_override_syntax", train(), ("train", "{cfg}", "train.lr"), ("train.lr", "key.path=value")),
    Case("config_override_into_scalar", train(), ("train", "{cfg}", "train.lr.x=1"),
         ("train.lr.x=1", "'lr' is not a section")),
    Case("config_unknown_method", train(method="loha"), ("train", "{cfg}"), ("method", "loha", "full, freeze, lora")),
    Case("config_unknown_method_section", train(method={"name": "adalora", "r": 4}), ("train", "{cfg}"),
         ("method", "adalora", "full, freeze, lora, dora")),
    Case("config_option_of_other_method", train(method={"name": "full", "r": 4}), ("train", "{cfg}"),
         ("method.r", "unknown key for method 'full'")),
    Case("config_bad_method_option", train(method={"name": "lora", "r": 0}), ("train", "{cfg}"),
         ("method.r", "greater than or equal to 1")),
    Case("config_bad_yaml_names_line", raw_config("model: x\ndata:\n  train: a.jsonl\n  format: [alpaca\ntrain:\n"
                                                  "  lr: 1\n"), ("train", "{cfg}"), ("{cfg}:5", "not valid YAML")),
    Case("config_not_a_mapping", raw_config("- just\n- a list\n"), ("train", "{cfg}"), ("{cfg}", "mapping")),
    Case("config_missing_file", None, ("train", "{t}/missing.yaml"), ("{t}/missing.yaml", "does not exist")),
    Case("config_no_data_for_train", raw_config("model: {model}\noutput_dir: {t}/run\n"), ("train", "{cfg}"),
         ("{cfg}", "data", "required", "data.train")),
    Case("config_early_stopping_without_eval_every", train(train={"early_stopping_patience": 2}), ("train", "{cfg}"),
         ("train.early_stopping_patience", "train.eval_every")),
    Case("calibration_refuses_prefix", train(QUESTIONS, recipe="calibration", method="prefix"), ("train", "{cfg}"),
         ("method: prefix", "recipe: calibration")),
    Case("calibration_regularizer_needs_adapter",
         train(QUESTIONS, recipe="calibration", method="full", calibration={"regularizer": "kl"}),
         ("train", "{cfg}"), ("calibration.regularizer", "adapter method", "full")),
    Case("calibration_options_must_differ", train(QUESTIONS, recipe="calibration",
                                                  calibration={"options": ["yes", "yes"]}),
         ("train", "{cfg}"), ("calibration.options", "two different")),
    Case("calibration_train_resume", train(QUESTIONS, recipe="calibration"), ("train", "{cfg}", "--resume"),
         ("--resume", "recipe: calibration", "--stage tune")),
    Case("agent_refuses_prefix", train(recipe="agent", method="prefix"), ("train", "{cfg}"),
         ("method: prefix", "recipe: agent")),
    Case("agent_resume", train(recipe="agent"), ("train", "{cfg}", "--resume"), ("--resume", "recipe: agent")),
    Case("preference_refuses_prompt_tuning", train(PAIRS, recipe="preference", method="prompt"), ("train", "{cfg}"),
         ("method: prompt", "recipe: preference")),
    Case("preference_adapter_disabled_needs_adapter",
         train(PAIRS, recipe="preference", method="full", preference={"reference": "adapter_disabled"}),
         ("train", "{cfg}"), ("preference.reference", "adapter_disabled", "full")),

    # data
    Case("data_missing_file", lambda t, fx: {"cfg": write_config(t / "cfg.yaml", fx.llama, t / "nope.jsonl",
                                                                  t / "run", **TINY_RUN)},
         ("train", "{cfg}"), ("{t}/nope.jsonl", "does not exist")),
    Case("data_bad_jsonl_line", bad_jsonl, ("train", "{cfg}"), ("{data}:2", "not valid JSON")),
    Case("data_bad_json_names_line", train(file="train.json", text="[\n" + json.dumps(ALPACA[0]) + ",\n{oops}\n]"),
         ("train", "{cfg}"), ("{data}:3", "not valid JSON")),
    Case("data_line_not_object", train(text="[1, 2]\n"), ("train", "{cfg}"), ("{data}:1", "JSON object", "list")),
    Case("data_not_utf8", train(text=json.dumps(ALPACA[0]).encode() + b"\n\xff\xfe\n"), ("train", "{cfg}"),
         ("{data}:2", "not UTF-8")),
    Case("data_too_deeply_nested", train(text="[" * 100_000 + "\n"), ("train", "{cfg}"),
         ("{data}:1", "nested too deeply")),
    Case("data_empty_file", train(text="\n"), ("train", "{cfg}"), ("{data}", "no records")),
    Case("data_unsupported_extension", train(file="train.txt", text="hello\n"), ("train", "{cfg}"),
         ("{data}", "unsupported file type '.txt'")),
    Case("data_json_not_a_list", train(file="train.json", text=json.dumps({"rows": []})), ("train", "{cfg}"),
         ("{data}", "JSON list")),
    Case("data_unknown_format", train(data={"format": "chatml"}), ("train", "{cfg}"),
         ("data.format", "chatml", "alpaca")),
    Case("data_undetectable_format", train([{"question": "q", "answer": "a"}]), ("train", "{cfg}"),
         ("{data}:1", "data.format")),
    Case("data_record_without_answer", train([ALPACA[0], {"instruction": "no output here"}]), ("train", "{cfg}"),
         ("{data}:2", "missing field 'output'")),
    Case("data_empty_answer", train([{"instruction": "x", "output": "  "}]), ("train", "{cfg}"),
         ("{data}:1", "field 'output' is empty")),
    Case("data_missing_field_forced_format", train([ALPACA[0], {"instruction": "x"}], data={"format": "alpaca"}),
         ("train", "{cfg}"), ("{data}:2", "missing field 'output'")),
    Case("data_messages_forced_on_alpaca", train(data={"format": "messages"}), ("train", "{cfg}"),
         ("{data}:1", "missing field 'messages'")),
    Case("data_wrong_field_type", train([ALPACA[0], {"instruction": "Add 2 and 3", "output": 5}]), ("train", "{cfg}"),
         ("{data}:2", "'output'", "must be a string", "int")),
    Case("data_system_not_text", train([{"instruction": "x", "output": "y", "system": 5}]), ("train", "{cfg}"),
         ("{data}:1", "'system'", "must be a string")),
    Case("data_unknown_role", train([{"messages": [{"role": "user", "content": "hi"},
                                                   {"role": "wizard", "content": "abracadabra"}]}]),
         ("train", "{cfg}"), ("{data}:1", "messages[1]", "unknown role 'wizard'")),
    Case("data_no_assistant_turn", train([{"messages": [{"role": "user", "content": "hi"}]}]), ("train", "{cfg}"),
         ("{data}:1", "no assistant")),
    Case("data_message_not_object", train([{"messages": ["hi", "hello"]}]), ("train", "{cfg}"),
         ("{data}:1", "messages[0]")),
    Case("data_content_is_list", train([{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                                      {"role": "assistant", "content": "hello"}]}]),
         ("train", "{cfg}"), ("{data}:1", "messages[0]", "must be a string", "list")),
    Case("data_bad_validation_file",
         lambda t, fx: train(data={"validation": str(_write_data(t, "val.jsonl", None, json.dumps(ALPACA[0]) + "\n"
                                                                 + json.dumps({"instruction": "x", "output": ["a"]})
                                                                 + "\n"))})(t, fx) | {"val": t / "val.jsonl"},
         ("train", "{cfg}"), ("{val}:2", "'output'")),
    Case("data_all_dropped_by_max_length", train([{"instruction": "word " * 40, "output": "yes"}] * 3,
                                                 data={"max_length": 8, "truncation": "drop", "val_ratio": 0}),
         ("train", "{cfg}"), ("data.train", "3 too long", "data.max_length")),
    Case("data_garbage_parquet", train(file="train.parquet", text="this is not parquet"), ("train", "{cfg}"),
         ("{data}", "could not load")),
    Case("data_csv_missing_column", train(file="train.csv", text="instruction,answer\nSay yes,yes\n"),
         ("train", "{cfg}"), ("{data}:2", "missing field 'output'")),
    Case("preference_missing_field", train([PAIRS[0], {"prompt": "p", "chosen": "c"}], recipe="preference"),
         ("train", "{cfg}"), ("{data}:2", "missing field 'rejected'")),
    Case("preference_only_identical_pairs", train([{"prompt": "p", "chosen": "same", "rejected": "same"}] * 3,
                                                  recipe="preference"),
         ("train", "{cfg}"), ("data.train", "no usable preference pairs", "identical")),
    Case("calibration_question_without_question", train([QUESTIONS[0], {"answer": "4"}], recipe="calibration"),
         ("train", "{cfg}"), ("{data}:2", "no 'question' field")),
    Case("calibration_questions_without_answers", train([{"question": "Why?"}, {"question": "How?"}],
                                                        recipe="calibration"),
         ("train", "{cfg}"), ("{data}", "none of the 2 records has a reference answer")),
    Case("calibration_graded_one_class", calibration_run(correct=True), ("calibrate", "{cfg}", "--stage", "tune"),
         ("{run}/graded.jsonl", "all 6 training answers are correct")),

    # models, tokenizers, templates
    Case("model_missing_folder", train(model=lambda t, fx: t / "no_such_model"), ("train", "{cfg}"),
         ("{t}/no_such_model", "does not exist")),
    Case("model_folder_without_config", train(model=lambda t, fx: with_files(**{"emptymodel/README": "x"})(t, fx)
                                              ["emptymodel/README"].parent),
         ("train", "{cfg}"), ("{t}/emptymodel", "has no config.json")),
    Case("model_hub_id_offline", train(model="nobody-here/no-such-model"), ("train", "{cfg}"),
         ("nobody-here/no-such-model", "HF_HUB_OFFLINE")),
    Case("model_pickle_only_needs_allow_pickle", train(model=pickle_only_model), ("train", "{cfg}"),
         ("{t}/pickled_model", "pytorch_model.bin", "--allow-pickle")),
    Case("tokenizer_without_chat_template", train(model=no_template_model), ("train", "{cfg}"),
         ("chat template", "data.chat_template")),
    Case("template_syntax_error", train(data={"chat_template": "{% for m in messages %}{{ m.content }"}),
         ("train", "{cfg}"), ("data.chat_template", "not a valid Jinja template")),
    Case("template_raises", train(data={"chat_template": "{{ raise_exception('system messages are not supported') }}"}),
         ("train", "{cfg}"), ("{data}:1", "system messages are not supported")),

    # adapters and bases
    Case("adapter_for_other_architecture", models, ("generate", "{model}", "hi", "--adapter", "q={qwen_lora}"),
         ("{qwen_lora}", "qwen2", "{model}", "llama")),
    Case("adapter_pickle_only", lambda t, fx: {"model": fx.llama, "pickled": _pickled_adapter(t, fx)},
         ("generate", "{model}", "hi", "--adapter", "a={pickled}"), ("{pickled}", "adapter_model.bin", "--allow-pickle")),
    Case("adapter_not_an_adapter", with_files(**{"notadapter/notes.txt": "x"}),
         ("generate", "{model}", "hi", "--adapter", "a={t}/notadapter"), ("{t}/notadapter", "not a tuneforge run")),
    Case("merge_not_a_run", with_files(**{"not_a_run/notes.txt": "x"}), ("merge", "{t}/not_a_run", "{t}/merged"),
         ("{t}/not_a_run", "not a tuneforge run")),
    Case("merge_full_model", models, ("merge", "{model}", "{t}/merged"), ("{model}", "no adapter")),
    Case("merge_into_non_empty_folder", lambda t, fx: models(t, fx) | with_files(**{"merged/keep.txt": "x"})(t, fx),
         ("merge", "{lora}", "{t}/merged"), ("{t}/merged", "not empty")),
    Case("generate_missing_run", None, ("generate", "{t}/nowhere", "hello"), ("{t}/nowhere", "does not exist")),

    # CLI misuse
    Case("cli_overwrite_with_resume", train(), ("train", "{cfg}", "--overwrite", "--resume"),
         ("--overwrite", "--resume")),
    Case("cli_resume_without_checkpoint", train(), ("train", "{cfg}", "--resume"),
         ("--resume", "no checkpoint", "{run}")),
    Case("cli_run_dir_exists", lambda t, fx: train()(t, fx) | with_files(**{"run/precious.txt": "keep"})(t, fx),
         ("train", "{cfg}"), ("{run}", "already exists", "--overwrite", "--resume")),
    Case("cli_output_dir_under_a_file",
         lambda t, fx: {**with_files(afile="x")(t, fx),
                        "cfg": write_config(t / "cfg.yaml", fx.llama, write_jsonl(t / "train.jsonl", ALPACA),
                                            t / "afile" / "run", **TINY_RUN)},
         ("train", "{cfg}"), ("output_dir", "{t}/afile/run", "not a directory")),
    Case("cli_use_without_adapter", models, ("generate", "{model}", "hi", "--use", "x"), ("--use", "--adapter")),
    Case("cli_bad_adapter_flag", models, ("generate", "{model}", "hi", "--adapter", "justapath"),
         ("--adapter 'justapath'", "NAME=PATH")),
    Case("cli_adapter_named_base", models, ("generate", "{model}", "hi", "--adapter", "base={lora}"),
         ("--adapter name 'base'", "reserved")),
    Case("cli_use_unknown_adapter", models, ("generate", "{model}", "hi", "--adapter", "a={lora}", "--use", "b"),
         ("--use b", "no such adapter", "a")),
    Case("cli_bad_stage", train(QUESTIONS, recipe="calibration"), ("calibrate", "{cfg}", "--stage", "polish"),
         ("--stage polish", "answer, grade, tune, evaluate")),
    Case("cli_calibrate_needs_calibration_recipe", train(), ("calibrate", "{cfg}"),
         ("{cfg}", "recipe is 'sft'", "recipe: calibration")),
    Case("cli_calibrate_resume_needs_tune_stage", train(QUESTIONS, recipe="calibration"),
         ("calibrate", "{cfg}", "--resume"), ("--resume", "--stage tune")),
    Case("cli_eval_fail_if_worse_without_baseline", eval_config(),
         ("eval", "{cfg}", "--model", "{model}", "--fail-if-worse", "say/exact_match"), ("--fail-if-worse", "--baseline")),
    Case("cli_eval_unknown_suite", eval_config(), ("eval", "{cfg}", "--model", "{model}", "--suite", "nope"),
         ("--suite nope", "no such suite", "say")),
    Case("cli_eval_without_suites", raw_config("output_dir: {t}/run\n"), ("eval", "{cfg}", "--model", "x"),
         ("no suites",)),
    Case("cli_compare_unknown_method", train(), ("compare-methods", "{cfg}", "--methods", "lora,qlora",
                                                 "--out", "{t}/cmp"), ("--methods", "qlora")),
    Case("cli_tiny_unknown_arch", None, ("models", "tiny", "{t}/tinyout", "--arch", "mamba"), ("--arch", "mamba", "llama")),
    Case("cli_serve_public_without_key", models, ("serve", "--base", "{model}", "--host", "0.0.0.0",
                                                  "--serve-dir", "{t}/serve"), ("0.0.0.0", "--api-key")),
    Case("cli_serve_adapter_named_base", models, ("serve", "--base", "{model}", "--adapter", "base={lora}",
                                                  "--serve-dir", "{t}/serve"), ("--adapter name 'base'",)),
    Case("cli_feedback_export_without_store", None, ("feedback", "export", "{t}/pairs.jsonl", "--serve-dir",
                                                     "{t}/noserve"), ("{t}/noserve", "does not exist")),
    Case("cli_agent_inspect_missing", None, ("agent", "inspect", "{t}/none.json"), ("{t}/none.json", "does not exist")),

    # server requests: (METHOD, path, body); expect substrings of error.message, then "param=..." / "code=..."
    Case("http_unknown_model", None, ("POST", "/v1/chat/completions", {"model": "nope", "messages": CHAT}),
         ("'nope' does not exist", "param=model", "code=model_not_found"), 404),
    Case("http_model_path_traversal", None, ("POST", "/v1/chat/completions",
                                             {"model": "../../etc/passwd", "messages": CHAT}),
         ("does not exist", "param=model"), 404),
    Case("http_retrieve_model_path_traversal", None, ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", None),
         ("does not exist",), 404),
    Case("http_bad_temperature", None, ("POST", "/v1/chat/completions",
                                        {"model": "base", "messages": CHAT, "temperature": 3}),
         ("temperature", "param=temperature"), 400),
    Case("http_too_many_tokens", None, ("POST", "/v1/chat/completions",
                                        {"model": "base", "messages": CHAT, "max_tokens": 100000}),
         ("more than this server allows", "param=max_tokens"), 400),
    Case("http_prompt_too_long", None, ("POST", "/v1/completions", {"model": "base", "prompt": "word " * 600}),
         ("at most", "code=context_length_exceeded"), 400),
    Case("http_malformed_json", None, ("POST", "/v1/chat/completions", b'{"model": "base", "messages": ['),
         ("could not parse the JSON", "code=invalid_json"), 400),
    Case("http_body_not_object", None, ("POST", "/v1/chat/completions", b"[1, 2]"), ("JSON object",), 400),
    Case("http_empty_body", None, ("POST", "/v1/completions", b""), ("empty",), 400),
    Case("http_lone_surrogate", None, ("POST", "/v1/chat/completions",
                                       b'{"model": "base", "messages": [{"role": "user", "content": "\\ud800"}]}'),
         ("surrogate", "code=invalid_json"), 400),
    Case("http_oversized_body", None, ("POST", "/v1/chat/completions", 4 * 1024 * 1024 + 10),  # int: only a header
         ("larger than",), 413),
    Case("http_unsupported_feature", None, ("POST", "/v1/chat/completions",
                                            {"model": "base", "messages": CHAT, "logprobs": True}),
         ("logprobs", "param=logprobs"), 400),
    Case("http_missing_messages", None, ("POST", "/v1/chat/completions", {"model": "base"}),
         ("Missing required parameter", "param=messages"), 400),
    Case("http_empty_completion_prompt", None, ("POST", "/v1/completions", {"model": "base", "prompt": ""}),
         ("empty", "param=prompt"), 400),
    Case("http_feedback_unknown_id", None, ("POST", "/v1/feedback", {"completion_id": "chatcmpl-nope", "rating": 1}),
         ("chatcmpl-nope", "param=completion_id", "code=completion_not_found"), 404),
    Case("http_feedback_without_content", None, ("POST", "/v1/feedback", {"completion_id": "chatcmpl-nope"}),
         ("at least one of",), 400),
    Case("http_unknown_route", None, ("GET", "/v1/nothing-here", None), ("no route",), 404),
    Case("http_wrong_method", None, ("GET", "/v1/chat/completions", None), ("code=method_not_allowed",), 405),
    Case("http_missing_api_key", None, ("POST", "/v1/chat/completions", {"model": "base", "messages": CHAT}, None),
         ("API key", "code=invalid_api_key"), 401),
    Case("http_wrong_api_key", None, ("POST", "/v1/chat/completions", {"model": "base", "messages": CHAT}, "nope"),
         ("API key", "code=invalid_api_key"), 401),
]

TABLE = {c.id: c for c in ROWS}
assert len(TABLE) == len(ROWS), "case ids must be unique"


def _pickled_adapter(t: Path, fx) -> Path:
    """The LoRA adapter with its weights as adapter_model.bin (pickle) only."""
    import torch
    from safetensors.torch import load_file

    dst = shutil.copytree(fx.llama_lora, t / "pickled_adapter")
    weights = dst / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), dst / "adapter_model.bin")
    weights.unlink()
    return dst


# ---- shared models ---------------------------------------------------------------------------

def _lora(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.models.load import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(base)), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fx(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("table-adapters")
    cache: dict = {}

    def lazy(name, make):
        if name not in cache:
            cache[name] = make()
        return cache[name]

    class Fixtures:
        llama = tiny_models["llama"]

        @property
        def llama_lora(self):
            return lazy("llama_lora", lambda: _lora(tiny_models["llama"], root / "llama_lora"))

        @property
        def qwen2_lora(self):
            return lazy("qwen2_lora", lambda: _lora(tiny_models["qwen2"], root / "qwen2_lora"))

    return Fixtures()


@pytest.fixture(scope="module")
def table_server(tiny_llama, tmp_path_factory):
    pytest.importorskip("uvicorn")
    from tuneforge.serve.app import create_app
    from tuneforge.serve.models import ServedModels

    served = ServedModels(str(tiny_llama), {}, device="cpu")
    serve_dir = tmp_path_factory.mktemp("table-serve")
    app = create_app(served, serve_dir, api_key=API_KEY, max_tokens_limit=8, max_prompt_tokens=256, max_batch=4)
    with running_server(app) as url:
        yield SimpleNamespace(url=url, serve_dir=serve_dir)


@pytest.fixture(autouse=True)
def _no_global_flags(monkeypatch):
    """The CLI reads these variables as defaults of its switches; each case starts without them."""
    from tuneforge.models.policy import ALLOW_PICKLE_ENV, TRUST_REMOTE_CODE_ENV
    from tuneforge.serve.app import API_KEY_ENV

    for name in (ALLOW_PICKLE_ENV, TRUST_REMOTE_CODE_ENV, API_KEY_ENV):
        monkeypatch.delenv(name, raising=False)


# ---- checks ----------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*")}


def _temp_leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.startswith(".tmp-") or
            (p.name.startswith(".") and (p.name.endswith(".tmp") or p.is_dir()))]


def _fmt(text: str, names: dict) -> str:
    return text.format(**{k: str(v) for k, v in names.items()})


def _run_cli_case(case: Case, t: Path, fx, capsys) -> None:
    names = {"t": t}
    if case.setup is not None:
        names.update(case.setup(t, fx))
    capsys.readouterr()
    before = _tree(t)
    code, out, err = run_cli([_fmt(str(a), names) for a in case.args], capsys)
    assert code == case.status, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err, line
    for part in case.expect:
        part = _fmt(part, names)
        assert part in line, f"{part!r} not in {line!r}"
    after = _tree(t)
    assert after == before, (f"the failed command changed the folder: new {sorted(set(after) - set(before))}, "
                             f"changed {sorted(k for k in before if k in after and after[k] != before[k])}, "
                             f"removed {sorted(set(before) - set(after))}")
    assert not _temp_leftovers(t)


def _completions(serve_dir: Path) -> int:
    with sqlite3.connect(serve_dir / "feedback.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0] + \
            conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def _announce_body(url: str, method: str, path: str, length: int, key: str | None) -> tuple[int, bytes, str]:
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest(method, path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        if key:
            conn.putheader("Authorization", f"Bearer {key}")
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("content-type", "")
    finally:
        conn.close()


def _run_http_case(case: Case, server) -> None:
    method, path, body, *key = case.args
    key = key[0] if key else API_KEY
    data = json.dumps(body).encode() if isinstance(body, dict) else None if isinstance(body, int) else body
    req = urllib.request.Request(server.url + path, data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    stored = _completions(server.serve_dir)
    if isinstance(body, int):  # announce a body of that many bytes, send none: the header alone must refuse it
        status, raw, ctype = _announce_body(server.url, method, path, body, key)
    else:
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("content-type", "")
    assert status == case.status, (status, raw[:300])
    assert "application/json" in ctype
    body = json.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and "\n" not in error["message"], error
    for part in case.expect:
        field, sep, value = part.partition("=")
        if sep and field in ("param", "code"):
            assert error[field] == value, (field, error)
        else:
            assert part in error["message"], (part, error["message"])
    # Nothing stored for a refused request, no temp files, and the server still answers.
    assert _completions(server.serve_dir) == stored
    assert not _temp_leftovers(server.serve_dir)
    with urllib.request.urlopen(server.url + "/health", timeout=60) as r:
        assert r.status == 200


@pytest.mark.parametrize("case_id", list(TABLE))
def test_user_mistake(case_id, request, tmp_path, capsys):
    case = TABLE[case_id]
    if case.http:
        _run_http_case(case, request.getfixturevalue("table_server"))
    else:
        _run_cli_case(case, tmp_path, request.getfixturevalue("fx"), capsys)


def test_table_covers_every_area():
    prefixes = {c.id.split("_")[0] for c in ROWS}
    assert {"config", "data", "model", "adapter", "cli", "http", "calibration", "agent", "preference",
            "template", "tokenizer"} <= prefixes
    assert len(ROWS) >= 30
