"""Experiment trackers (`train.report_to`): TensorBoard, MLflow and Weights & Biases behind one interface.

A tracker observes a run and never decides it. Each one gets the resolved config as flat dotted params
when it opens, every metrics.jsonl entry as the loop writes it (numeric fields, at the entry's step),
and at the end the report and plots as files. A tracker whose package is missing is refused when the
Session is set up, before anything loads or is written; one that fails while opening or logging is
warned about once and dropped, and training goes on.

Everything stays in the run folder unless the config points elsewhere:

    RUN/tensorboard/     TensorBoard event files
    RUN/mlruns/          MLflow's local store (mlflow.db, artifacts/) when no train.mlflow_tracking_uri
    RUN/wandb/           W&B's run folders (offline by default: `wandb sync` uploads them later)
    RUN/trackers.json    the MLflow run id and W&B run id, so --resume continues the same runs
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Callable, Protocol

from tuneforge.atomic import atomic_write_bytes, write_json
from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir
from tuneforge.train.checkpoint import latest_checkpoint, read_progress
from tuneforge.train.stop import StoppedBySignal

TRACKERS_JSON = "trackers.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # tracker -> module = pip package
MLFLOW_PARAM_BATCH = 100  # MLflow takes at most 100 params in one log_batch call
MLFLOW_PARAM_CHARS = 6000  # and at most this many characters in one value


class Tracker(Protocol):
    name: str
    state: dict | None  # what --resume needs to continue the same tracker run (kept in trackers.json)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_files(self, files: list[Path], run: Path) -> None: ...  # paths under `run`, kept relative to it

    def close(self, status: str) -> None: ...  # "finished", "failed" or "killed"


def check_installed(names: list[str]) -> None:
    """Refuse a tracker whose package is missing now, not after the run has trained for an hour."""
    for name in names:
        try:
            importlib.import_module(PACKAGES[name])
        except ImportError:
            raise UserError(f"train.report_to: {name} needs the '{PACKAGES[name]}' package: pip install "
                            f"{PACKAGES[name]} (or 'tuneforge[trackers]'), or remove {name} from train.report_to"
                            ) from None


def flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 0.001}} -> {"train.lr": "0.001"}: the form every tracker's params take."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flat_params(value, f"{name}.")
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def numeric_fields(entry: dict) -> dict[str, float]:
    """The metrics of one metrics.jsonl entry: its numbers, less the step they belong to."""
    return {key: float(value) for key, value in entry.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def one_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def report_files(run: Path) -> list[Path]:
    files = RunDir(run)
    return [p for p in (files.report_json, files.report_md) if p.is_file()] + sorted(files.plots.glob("*.png"))


class Trackers:
    """The open trackers of one run. A tracker that raises is warned about once and dropped: it is not
    closed either, since the failure may be a server that is gone, and closing would wait on it again."""

    def __init__(self, trackers: list[Tracker], warn: Callable[[str], None]):
        self.active, self.warn = list(trackers), warn

    def record(self, entry: dict) -> None:
        """The loop's on_record: one metrics.jsonl entry."""
        metrics = numeric_fields(entry)
        if metrics and "step" in entry:
            self._each("log metrics", lambda t: t.log_metrics(metrics, int(entry["step"])))

    def finish(self, run: Path) -> None:
        """The report and plots as files (when there are any), then close every tracker."""
        files = report_files(run)
        if files:
            self._each("log the report", lambda t: t.log_files(files, run))
        self.close("finished")

    def abort(self, error: BaseException) -> None:
        """Close after the loop stopped with `error`: killed by a signal or Ctrl-C, else failed."""
        self.close("killed" if isinstance(error, (StoppedBySignal, KeyboardInterrupt)) else "failed")

    def close(self, status: str) -> None:
        self._each("close", lambda t: t.close(status))
        self.active = []

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - whatever a tracker raises, the run goes on
                self.active.remove(tracker)
                self.warn(f"warning: tracker {tracker.name} failed to {what} ({one_line(e)}); the run goes on "
                          "without it")


def open_trackers(cfg: Config, run: Path, *, resume: bool, log: Callable[[str], None]) -> Trackers:
    """Open each tracker of train.report_to for `run`; on --resume continue the runs trackers.json names."""
    path = run / TRACKERS_JSON
    saved = json.loads(path.read_text()) if resume and path.is_file() else {}
    resume_step = _checkpoint_step(run) if resume else 0
    params = flat_params(cfg.model_dump(mode="json"))
    opened: list[Tracker] = []
    for name in cfg.train.report_to:
        try:
            opened.append(OPENERS[name](cfg, run, params, saved.get(name), resume_step, log))
        except Exception as e:  # noqa: BLE001 - a tracker that cannot start costs the run nothing
            log(f"warning: tracker {name} could not start ({one_line(e)}); training goes on without it")
    states = saved | {t.name: t.state for t in opened if t.state}
    if states:
        write_json(path, states)
    return Trackers(opened, log)


def _checkpoint_step(run: Path) -> int:
    last = latest_checkpoint(RunDir(run).checkpoints)
    return int(read_progress(last).get("step", 0)) if last else 0


# ---------------------------------------------------------------------------------------------- adapters


class TensorBoardTracker:
    name = "tensorboard"
    state = None  # the folder is the state: a resumed run appends to RUN/tensorboard

    def __init__(self, cfg: Config, run: Path, params: dict[str, str], saved: dict | None, resume_step: int, log):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides what the interrupted run logged after the checkpoint it resumes from,
        # as the loop drops those lines from metrics.jsonl.
        self.writer = SummaryWriter(str(run / TENSORBOARD_DIR), purge_step=resume_step + 1 if resume_step else None)
        rows = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{rows}", global_step=resume_step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_files(self, files: list[Path], run: Path) -> None:
        # TensorBoard keeps no files: plots go in as images, the report as text.
        from matplotlib.image import imread

        for path in files:
            tag = str(path.relative_to(run))
            if path.suffix == ".png":
                self.writer.add_image(tag, imread(path), dataformats="HWC")
            else:
                text = path.read_text()
                self.writer.add_text(tag, text if path.suffix == ".md" else "    " + text.replace("\n", "\n    "))

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowTracker:
    name = "mlflow"

    def __init__(self, cfg: Config, run: Path, params: dict[str, str], saved: dict | None, resume_step: int, log):
        from mlflow import MlflowClient

        uri = cfg.train.mlflow_tracking_uri or _local_mlflow_store(run)
        self.client = MlflowClient(tracking_uri=uri)
        if saved and saved.get("tracking_uri") == uri:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            # Params are logged once, when the MLflow run is made: MLflow refuses to change one, and a
            # resumed run may follow an edited config (its config.yaml says what ran).
            self.run_id = self.client.create_run(self._experiment(cfg, run, uri), run_name=run.name).info.run_id
            self._log_params(params)
        self.state = {"tracking_uri": uri, "run_id": self.run_id}
        log(f"mlflow: run {self.run_id} at {uri}")

    def _experiment(self, cfg: Config, run: Path, uri: str) -> str:
        found = self.client.get_experiment_by_name(cfg.train.mlflow_experiment)
        if found is not None:
            return found.experiment_id
        # The local store keeps its artifacts beside it; a server decides where its own go.
        local = None if cfg.train.mlflow_tracking_uri else (run / MLFLOW_DIR / "artifacts").resolve().as_uri()
        return self.client.create_experiment(cfg.train.mlflow_experiment, artifact_location=local)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value[:MLFLOW_PARAM_CHARS]) for key, value in params.items()]
        for start in range(0, len(items), MLFLOW_PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + MLFLOW_PARAM_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_files(self, files: list[Path], run: Path) -> None:
        for path in files:
            folder = path.relative_to(run).parent
            self.client.log_artifact(self.run_id, str(path), None if folder == Path() else str(folder))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status.upper())


def _local_mlflow_store(run: Path) -> str:
    # MLflow 3 refuses its old folder store (file:), so the local store is SQLite, inside the run folder.
    store = run / MLFLOW_DIR
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: Config, run: Path, params: dict[str, str], saved: dict | None, resume_step: int, log):
        import wandb

        run_id = saved.get("id") if saved else None
        # reinit create_new: this run does not replace (or finish) any other W&B run of the process; console
        # off: tuneforge prints its own log, and a wrapped stdout would interleave with the progress bar.
        self.run = wandb.init(project=cfg.train.wandb_project, name=run.name, dir=str(run), mode=cfg.train.wandb_mode,
                              id=run_id, resume="allow" if run_id else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        self.run.config.update(params, allow_val_change=True)  # a resumed run may follow an edited config
        self.state = {"id": self.run.id}
        self.folder, self.log = Path(self.run.dir).parent, log
        log(f"wandb: run {self.run.id} ({cfg.train.wandb_mode}) in {self.folder}")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_files(self, files: list[Path], run: Path) -> None:
        # Copied into the W&B run's files/ (uploaded with it: online now, offline by `wandb sync`), not
        # linked, as wandb.save would: a link breaks when the run folder moves before it is synced.
        files_dir = Path(self.run.dir)
        for path in files:
            copy = atomic_write_bytes(files_dir / path.relative_to(run), path.read_bytes())
            self.run.save(str(copy), base_path=str(files_dir), policy="now")

    def close(self, status: str) -> None:
        offline = self.run.settings.mode == "offline"
        self.run.finish(exit_code=0 if status == "finished" else 1)
        if offline:
            self.log(f"wandb: offline run in {self.folder}; upload it with `wandb sync {self.folder}`")


OPENERS: dict[str, Callable[..., Tracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker,
                                               "wandb": WandbTracker}
