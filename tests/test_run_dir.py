"""The run folder format (tuneforge.run_dir): the one metrics reader, the one status rule, and the UI and
`tuneforge runs list` agreeing on it. Every folder is laid out by hand, as each recipe leaves it."""

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tuneforge.errors import UserError
from tuneforge.run_dir import RUNNING_WINDOW_S, RunDir, read_jsonl

HOUR_AGO = time.time() - 3600


def _files(run: Path, files: dict) -> Path:
    """Write `files` (name -> JSON data, text, or None for a folder) under run."""
    for name, data in files.items():
        path = run / name
        if data is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return run


def _age(run: Path) -> Path:
    """Make every file an hour old, so nothing looks like it is being written."""
    for path in [run, *run.rglob("*")]:
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    return run


METRICS = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5, "val_loss": 1.7}\n'
ARTIFACT = {"adapter/adapter_config.json": {}}


def _config(recipe: str) -> dict:
    return {"config.yaml": yaml.safe_dump({"recipe": recipe, "method": {"name": "lora"}})}


def _training(prefix: str = "") -> dict:
    return {f"{prefix}metrics.jsonl": METRICS, f"{prefix}adapter/adapter_config.json": {}}


def _checkpoint(prefix: str = "") -> dict:
    return {f"{prefix}metrics.jsonl": METRICS, f"{prefix}checkpoints/step-0000002/progress.json": {"step": 2}}


_SFT_DONE = {**_config("sft"), "eval_before.json": {"score": 0.1}, **_training(), "plots/loss.png": "png",
             "report.json": {"steps": 2, "best_val_loss": 1.7}, "report.md": "# report"}
_CAL_STAGES = {**_config("calibration"), "answers.jsonl": '{"question": "q"}\n', "answering.json": {},
               "graded.jsonl": '{"question": "q", "correct": true}\n', "grading.json": {}}
_AGENT_TRAINED = {**_config("agent"), "data_report.json": {"problems": []}, **_training("global/"),
                  "global/merged/config.json": {}, **_training("roles/planner/"), **_training("roles/caller/"),
                  **_training("single/")}
_AGENT_LAYOUT = {"method": "lora", "adapters": True, "base": "global/merged", "roles": {"planner": "roles/planner/adapter"}}

# name -> (files, status)
LAYOUTS = {
    "sft-finished": (_SFT_DONE, "finished"),
    "sft-full-finished": ({**{k: v for k, v in _SFT_DONE.items() if not k.startswith("adapter")},
                           "model/config.json": {}}, "finished"),
    "sft-failed": ({**_config("sft"), "eval_before.json": {}, "metrics.jsonl": METRICS}, "failed"),
    "sft-failed-loading": (_config("sft"), "failed"),
    "sft-interrupted": ({**_config("sft"), **_checkpoint()}, "interrupted"),
    "sft-killed-before-report": ({**_config("sft"), **_training()}, "interrupted"),
    "preference-finished": ({**_config("preference"), **_training(), "report.json": {"steps": 2}}, "finished"),
    "preference-interrupted": ({**_config("preference"), **_checkpoint()}, "interrupted"),
    "calibration-finished": ({**_CAL_STAGES, "calibration.json": {"artifact": "adapter"}, **_training(),
                              "probe.safetensors": "x", "calibration_results.json": {"results": {}},
                              "calibration.md": "#"}, "finished"),
    "calibration-after-grade": (_CAL_STAGES, "interrupted"),
    "calibration-tune-interrupted": ({**_CAL_STAGES, **_checkpoint()}, "interrupted"),
    "calibration-failed": (_config("calibration"), "failed"),
    "agent-no-test-finished": ({**_AGENT_TRAINED, "agent.json": _AGENT_LAYOUT}, "finished"),
    "agent-test-finished": ({**_AGENT_TRAINED, "agent.json": _AGENT_LAYOUT | {"test": ["t.json"]},
                             "agent_results.json": {"t.json": {}}, "agent.md": "#", "traces/t-single.jsonl": ""},
                            "finished"),
    "agent-killed-in-evaluation": ({**_AGENT_TRAINED, "agent.json": _AGENT_LAYOUT | {"test": ["t.json"]}},
                                   "interrupted"),
    "agent-interrupted": ({**_config("agent"), "data_report.json": {}, **_training("global/"),
                           **_checkpoint("roles/planner/")}, "interrupted"),
    "agent-failed": ({**_config("agent"), "data_report.json": {}}, "failed"),
}


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for name, (files, _) in LAYOUTS.items():
        _age(_files(root / name, files))
    return root


# ---- metrics ---------------------------------------------------------------------------------

def test_metrics_skip_a_cut_last_line_and_garbage(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_file.write_text('{"step": 1, "loss": 2.0}\nnot json at all\n[1, 2]\n\n'
                                '{"step": 2, "loss": 1.5}\n{"step": 3, "lo', encoding="utf-8")
    assert run.metrics() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert RunDir(tmp_path / "nothing").metrics() == []


def test_metrics_tolerate_bytes_cut_inside_a_character(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_file.write_bytes('{"step": 1, "note": "é"}\n{"step": 2, "note": "'.encode() + "é".encode()[:1])
    assert run.metrics() == [{"step": 1, "note": "é"}]


def test_metrics_files_of_an_agent_run(tmp_path):
    run = RunDir(_files(tmp_path / "a", LAYOUTS["agent-test-finished"][0]))
    rel = [f.parent.relative_to(run.path).as_posix() for f in run.metrics_files()]
    assert rel == ["global", "roles/caller", "roles/planner", "single"]
    assert [p.path.name for p in run.parts()] == ["global", "caller", "planner", "single"]
    assert read_jsonl(run.role("planner").metrics_file)[-1]["val_loss"] == 1.7


# ---- artifact and report ---------------------------------------------------------------------

def test_artifact_and_report(tmp_path):
    run = RunDir(_files(tmp_path / "r", {**_config("sft"), "model/config.json": {}, "report.json": "{\"steps\": 3"}))
    assert run.artifact() == run.model
    assert run.report() is None  # half-written
    (run.path / "report.json").write_text('{"steps": 3}')
    assert run.report() == {"steps": 3}
    with pytest.raises(UserError, match=r"no adapter/ or model/ folder"):
        RunDir(tmp_path / "empty").artifact()


# ---- status ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYOUTS)
def test_status_of_each_recipe_layout(runs, name):
    assert RunDir(runs / name).status() == LAYOUTS[name][1]


def test_compare_methods_folder(tmp_path):
    out = tmp_path / "cmp"
    _age(_files(out / "lora", _SFT_DONE))
    _age(_files(out, {"lora.yaml": "", "full.yaml": "", "full/metrics.jsonl": METRICS}))
    assert RunDir(out).status() == "interrupted"  # one method trained, killed in the next
    _age(_files(out, {"methods.json": [], "methods.md": "", "methods.png": ""}))
    assert RunDir(out).status() == "finished"


def test_running_is_recent_writes_or_a_live_process(tmp_path):
    run = RunDir(_age(_files(tmp_path / "r", {**_config("sft"), "metrics.jsonl": METRICS})))
    assert run.status() == "failed"
    written = run.metrics_file.stat().st_mtime
    assert run.status(now=written + RUNNING_WINDOW_S / 2) == "running"
    assert run.status(now=written + RUNNING_WINDOW_S / 2, alive=False) == "failed"  # known dead
    assert run.status(alive=True) == "running"
    _files(run.path, {"report.json": {}})
    assert run.status(alive=True) == "finished"
    assert RunDir(tmp_path / "not-yet").status(alive=True) == "running"
    assert RunDir(tmp_path / "not-yet").status(alive=False) == "failed"


def test_agent_part_writing_counts_as_running(tmp_path):
    run = RunDir(_age(_files(tmp_path / "a", {**_config("agent"), **_training("global/")})))
    _files(run.path, {"roles/planner/metrics.jsonl": METRICS})
    assert run.status() == "running"


def test_a_checkpoint_still_being_written_is_not_one(tmp_path):
    run = RunDir(_age(_files(tmp_path / "r", {**_config("sft"), "checkpoints/.tmp-step-0000002.k3j/x": "",
                                              "checkpoints/step-0000004/trainable.safetensors": ""})))
    assert run.status() == "failed" and run.latest_checkpoint() is None  # neither has its progress.json yet
    _age(_files(run.path, {"checkpoints/step-0000004/progress.json": {}, "checkpoints/step-0000010/progress.json": {}}))
    assert run.status() == "interrupted" and run.latest_checkpoint().name == "step-0000010"
    assert [p.name for p in run.checkpoint_list()] == ["step-0000004", "step-0000010"]


# ---- one rule for the UI and `runs list` -----------------------------------------------------

def test_ui_and_runs_list_agree(runs):
    from tuneforge.runs_index import list_runs
    from tuneforge.serve.background import serve_in_thread
    from tuneforge.ui.app import create_ui_app
    from tuneforge.ui.runs import run_status

    listed = {r["name"]: r["status"] for r in list_runs(runs)}
    with serve_in_thread(create_ui_app(runs, serve_dir=runs.parent / "serve")) as url:
        with urllib.request.urlopen(url + "/api/runs", timeout=30) as r:
            shown = {row["name"]: row["status"] for row in json.load(r)}
        for name in LAYOUTS:
            with urllib.request.urlopen(f"{url}/api/runs/{name}", timeout=30) as r:
                assert json.load(r)["status"] == shown[name], name
    expected = {name: status for name, (_, status) in LAYOUTS.items()}
    assert listed == shown == expected
    assert {name: run_status(runs / name) for name in LAYOUTS} == expected
