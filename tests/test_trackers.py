"""Experiment trackers (train.report_to): a tiny run logs its config, every metrics.jsonl entry, its report
and plots to TensorBoard, to a real MLflow server on loopback and to W&B offline, and each is read back
with the tracker's own reader; --resume continues the same tracker runs; a missing package is refused
before anything is written; a tracker that fails mid-run is dropped with one warning and the run finishes."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import NoCapture, run_cli, write_config
from tuneforge.train import trackers
from tuneforge.train.trackers import TRACKERS_JSON, flat_params, numeric_fields

SERVER_START_S = 600  # mlflow server imports a lot; a loaded 2-core machine has taken minutes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def wait_until_up(self) -> str:
        deadline = time.monotonic() + SERVER_START_S
        while not _answers(self.url):
            assert self.process.poll() is None, f"mlflow server exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "mlflow server did not answer in time"
            time.sleep(0.5)
        return self.url


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port with its own store, once for the module. Started
    with the module's first test (autouse) so that it boots while the tests that need no server run."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    with (root / "server.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own group: its workers stop with it
    try:
        yield Server(f"http://127.0.0.1:{port}", process, root / "server.log")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # still waiting on idle client connections: a test server may just go
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _train(cfg: Path, *extra) -> None:
    code, _, err = run_cli(["train", cfg, *extra], NoCapture())
    assert code == 0, err


@pytest.fixture(scope="module")
def tracked(tiny_llama, dates_data, mlflow_server, tmp_path_factory):
    """One tiny run logging to all three trackers: TensorBoard, the MLflow server, W&B offline."""
    tmp = tmp_path_factory.mktemp("tracked")
    url = mlflow_server.wait_until_up()
    cfg = write_config(tmp / "c.yaml", tiny_llama, dates_data[0], tmp / "run", val=dates_data[1],
                       eval={"before_after": False},
                       train={"max_steps": 2, "batch_tokens": 256, "eval_every": 2, "report_to":
                              ["tensorboard", "mlflow", "wandb"], "mlflow_tracking_uri": url,
                              "mlflow_experiment": "tests"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))  # wandb-core's own debug log, kept out of the home folder
        _train(cfg)
    return tmp / "run", cfg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _series(run: Path, key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in _metrics(run) if key in e]


def test_params_and_metrics_are_flattened_for_trackers():
    assert flat_params({"train": {"lr": 0.001, "betas": [0.9, 0.99], "dropout": None}, "model": "m"}) == {
        "train.lr": "0.001", "train.betas": "[0.9, 0.99]", "train.dropout": "null", "model": "m"}
    assert numeric_fields({"step": 3, "loss": 1.5, "grad_norm": None, "skipped": "loss nan", "ok": True,
                           "tokens": 7}) == {"loss": 1.5, "tokens": 7.0}


def test_missing_tracker_package_is_one_line_before_anything_is_written(tiny_llama, dates_data, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run",
                       train={"report_to": ["tensorboard", "wandb"]})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "train.report_to" in err and "pip install wandb" in err
    assert not (tmp_path / "run").exists()


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(tiny_llama, dates_data, tmp_path, capsys,
                                                                monkeypatch):
    from mlflow import MlflowClient

    def broken(self, metrics, step):
        raise RuntimeError("disk full\nsecond line")

    monkeypatch.setattr(trackers.TensorBoardTracker, "log_metrics", broken)
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run", eval={"before_after": False},
                       train={"max_steps": 3, "batch_tokens": 256, "report_to": ["tensorboard", "mlflow"]})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if "tracker tensorboard failed" in line]
    assert len(warnings) == 1 and "RuntimeError: disk full" in warnings[0]
    run = tmp_path / "run"
    assert (run / "report.json").is_file()
    # The other tracker went on: MLflow's default store, SQLite inside the run folder, has every step.
    saved = json.loads((run / TRACKERS_JSON).read_text())["mlflow"]
    assert saved["tracking_uri"] == f"sqlite:///{(run / 'mlruns' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert [(m.step, m.value) for m in client.get_metric_history(saved["run_id"], "loss")] == _series(run, "loss")
    assert "report.json" in {a.path for a in client.list_artifacts(saved["run_id"])}


def test_a_run_stopped_by_sigterm_is_killed_in_mlflow_and_a_failed_one_failed(tiny_llama, dates_data, tmp_path):
    from mlflow import MlflowClient

    cfg = write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run", eval={"before_after": False},
                       train={"max_steps": 500, "batch_tokens": 256, "save_every": 1000, "report_to": ["mlflow"],
                              "compile": "false"})
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(600) == 143
    saved = json.loads((tmp_path / "run" / TRACKERS_JSON).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert client.get_run(saved["run_id"]).info.status == "KILLED"
    assert client.get_metric_history(saved["run_id"], "loss")  # what it logged before the stop is kept

    class Recorder:
        name, state, closed = "recorder", None, None

        def close(self, status):
            self.closed = status

    for error, status in ((RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "killed")):
        t = Recorder()
        trackers.Trackers([t], print).abort(error)
        assert t.closed == status


def test_tensorboard_holds_the_metrics_config_report_and_plot(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tracked
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    for key in ("loss", "lr", "val_loss"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(step, pytest.approx(value, rel=1e-6)) for step, value in _series(run, key)]
    assert "plots/loss.png" in events.Tags()["images"]
    assert {"config/text_summary", "report.md/text_summary"} <= set(events.Tags()["tensors"])


def test_mlflow_server_holds_params_metric_history_and_artifacts(tracked, mlflow_server):
    from mlflow import MlflowClient

    run, _ = tracked
    run_id = json.loads((run / TRACKERS_JSON).read_text())["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=mlflow_server.url)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params["train.max_steps"] == "2" and logged.data.params["method.name"] == "lora"
    for key in ("loss", "grad_norm", "val_loss"):
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, key)] == _series(run, key)
    assert {a.path for a in client.list_artifacts(run_id)} >= {"report.json", "report.md", "plots"}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss.png"]


def _wandb_records(path: Path):
    """The records of a W&B transaction log (.wandb): a LevelDB-style log of 32 KiB blocks whose records
    (4-byte CRC, 2-byte length, 1-byte type: full, first, middle, last) carry protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _wandb_history(path: Path) -> tuple[list[dict], dict, set[str]]:
    rows, config, files = [], {}, set()
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind == "config":
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "files":
            files |= {f.path for f in record.files.files}
    return rows, config, files


def test_wandb_offline_run_holds_history_config_and_report(tracked):
    run, _ = tracked
    run_id = json.loads((run / TRACKERS_JSON).read_text())["wandb"]["id"]
    [folder] = (run / "wandb").glob(f"offline-run-*-{run_id}")
    rows, config, files = _wandb_history(folder / f"run-{run_id}.wandb")
    by_step = {row["_step"]: row for row in rows}
    for key in ("loss", "lr", "val_loss"):
        assert [(step, by_step[step][key]) for step, _ in _series(run, key)] == _series(run, key)
    assert config["train.max_steps"] == "2" and config["method.name"] == "lora"
    assert {"report.json", "report.md", "plots/loss.png"} <= files
    assert (folder / "files" / "report.json").is_file()


def test_resume_continues_the_same_tracker_runs(tracked, mlflow_server):
    """Last in the module: it extends the shared run by one step."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, cfg = tracked
    before = json.loads((run / TRACKERS_JSON).read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(run.parent / "cache"))
        _train(cfg, "train.max_steps=3", "--resume")
    assert json.loads((run / TRACKERS_JSON).read_text()) == before
    run_id = before["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=mlflow_server.url)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == _series(run, "loss")
    assert [step for step, _ in _series(run, "loss")] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert len(list((run / "wandb").glob(f"offline-run-*-{before['wandb']['id']}"))) == 2  # W&B: one folder a part
