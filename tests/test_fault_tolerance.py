"""Crashes, NaNs and full disks: kill -9 anywhere and resume to the same weights; no checkpoint on disk is
ever half-written; a non-finite loss is skipped or stops the run, never saved; a failed write names the
path and the reason and leaves the previous checkpoint intact.

Tolerance: a run killed and resumed in subprocesses ends bitwise equal to an uninterrupted subprocess run
(atol 0; same thread count, RNG restored); against an in-process run (another thread count) 1e-6.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, write_config
from tuneforge.errors import UserError
from tuneforge.train import checkpoint as ckpt_module
from tuneforge.train.checkpoint import PREFIX, save_checkpoint


def _config(path: Path, model, data, out: Path, **train) -> Path:
    return write_config(path, model, data, out, method={"name": "lora", "r": 4, "dropout": 0.1},
                        train={"max_steps": 8, "batch_tokens": 256, "save_every": 1, "keep_last": 2, **train},
                        eval={"before_after": False})


def _cmd(cfg: Path, *extra, slow_save: float = 0.0) -> list[str]:
    """`tuneforge train` in a child process. With `slow_save`, the child first wraps the checkpoint's file
    writer to sleep after each file, widening the window a kill can land in (the production code has no
    test hook for it)."""
    slow = ("import time\nimport tuneforge.train.checkpoint as ckpt\nwrite = ckpt._write\n"
            f"ckpt._write = lambda path, w: (write(path, w), time.sleep({slow_save}))[0]\n") if slow_save else ""
    return [sys.executable, "-c", slow + "from tuneforge.cli import main; main()", "train", str(cfg), *extra]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_every_checkpoint_loads(ckpts: Path) -> list[int]:
    """Every step-* folder is complete: all files present and readable. Temp folders are not checkpoints."""
    steps = []
    for d in sorted(ckpts.glob(f"{PREFIX}*")) if ckpts.is_dir() else []:
        weights = load_file(str(d / "trainable.safetensors"))
        assert weights and all(torch.isfinite(v).all() for v in weights.values()), d
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            torch.load(d / name, weights_only=True)
        progress = json.loads((d / "progress.json").read_text())
        assert progress["step"] == int(d.name[len(PREFIX):])
        steps.append(progress["step"])
    return steps


def _wait(predicate, proc, timeout=120.0) -> bool:
    """Poll until predicate() or the process exits; True when the predicate fired."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("timed out")


def _last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_matches_uninterrupted(tiny_llama, dates_data, tmp_path):
    """Kill -9 five times (mid-step and mid-checkpoint-write, seeded delays), resume each time."""
    train, _ = dates_data
    ref_cfg = _config(tmp_path / "ref.yaml", tiny_llama, train, tmp_path / "ref", max_steps=12)
    subprocess.run(_cmd(ref_cfg), check=True, env=_env(), capture_output=True)

    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, train, run, max_steps=12)
    ckpts = run / "checkpoints"
    rng = random.Random(1234)
    kills = mid_save = 0
    slow = 0.1  # each checkpoint write takes >= 5 x 0.1 s: wide enough to land in
    while kills < 5:
        saved = assert_every_checkpoint_loads(ckpts)
        base = saved[-1] if saved else 0
        proc = subprocess.Popen(_cmd(cfg, "--resume" if saved else "--overwrite", slow_save=slow), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Each round kills only after one more checkpoint is complete, so the run always gets further.
        if kills % 2 == 0:  # during a checkpoint write: wait for its temp folder, then a random moment of it
            fired = _wait(lambda: any(ckpts.glob(f".tmp-{PREFIX}{base + 2:07d}.*")), proc)
            time.sleep(rng.uniform(0, 4 * slow))
        else:  # during the steps: once a later step is logged, a random moment later
            fired = _wait(lambda: _last_step(run) >= base + 2, proc)
            time.sleep(rng.uniform(0, 0.5))
        if not fired or proc.poll() is not None:
            break  # it finished first
        mid_save += any(ckpts.glob(f".tmp-{PREFIX}*"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        assert_every_checkpoint_loads(ckpts)  # whatever was mid-write, nothing half-written counts
    assert kills >= 3 and mid_save >= 1, f"{kills} kills, {mid_save} mid-save: the run ended too soon"
    done = subprocess.run(_cmd(cfg, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ref, got = _adapter(tmp_path / "ref"), _adapter(run)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)
    steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(1, 13)), "metrics.jsonl has gaps or duplicates after the resumes"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000011", "step-0000012"]


def test_kill_during_checkpoint_write_keeps_the_previous_one(tiny_llama, dates_data, tmp_path, capsys):
    train, _ = dates_data
    ref_cfg = _config(tmp_path / "ref.yaml", tiny_llama, train, tmp_path / "ref", max_steps=3)
    code, _, err = run_cli(["train", ref_cfg], capsys)
    assert code == 0, err

    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, train, run, max_steps=3)
    proc = subprocess.Popen(_cmd(cfg, slow_save=1.0), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run / "checkpoints"
    # Checkpoint 2 half-written: its weights are in the temp folder, progress.json is not.
    fired = _wait(lambda: ckpts.is_dir() and any((p / "trainable.safetensors").exists()
                                                 for p in ckpts.glob(".tmp-step-0000002.*")), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert fired
    assert assert_every_checkpoint_loads(ckpts) == [1]
    code, out, err = run_cli(["train", cfg, "--resume"], capsys)
    assert code == 0, err
    assert "resumed from step-0000001" in out
    assert not list(ckpts.glob(".tmp-*")), "the half-written folder was not cleaned up"
    ref, got = _adapter(tmp_path / "ref"), _adapter(run)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=k)


# ---------------------------------------------------------------- non-finite losses


@pytest.fixture
def nan_at(monkeypatch):
    """Make the loss NaN at the given forward calls (1-based; one micro-batch per step, no validation)."""
    from tuneforge.train.losses.target import TargetLoss

    calls = {"n": 0, "at": set()}
    original = TargetLoss.forward

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] in calls["at"] else loss

    monkeypatch.setattr(TargetLoss, "forward", forward)
    return calls["at"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_nan_loss_is_skipped_counted_and_logged(tiny_llama, dates_data, tmp_path, capsys, nan_at):
    nan_at.add(2)
    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, dates_data[0], run, max_steps=4, max_nonfinite_skips=1)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    assert "step 2: non-finite loss nan; batch skipped (1 of at most 1)" in out + err
    metrics = _metrics(run)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]  # the skipped batch is not a step
    assert [m for m in metrics if "skipped" in m] == [{"step": 2, "skipped": "loss nan", "nonfinite_skips": 1}]
    assert all(torch.isfinite(v).all() for v in _adapter(run).values())
    assert json.loads((run / "checkpoints" / "step-0000004" / "progress.json").read_text())["nonfinite_skips"] == 1


@pytest.mark.parametrize("policy", [{"nonfinite": "stop"}, {"max_nonfinite_skips": 1}])
def test_nan_loss_beyond_the_policy_stops_with_a_clear_error(tiny_llama, dates_data, tmp_path, capsys, nan_at,
                                                               policy):
    nan_at.update({2, 3})  # stop: at the first; skip with max 1: at the second
    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, dates_data[0], run, max_steps=4, **policy)
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: non-finite loss nan at step 2") and "step-0000001 is intact" in line, line
    assert assert_every_checkpoint_loads(run / "checkpoints") == [1]  # finite, and nothing after the NaN
    assert not (run / "adapter").exists()


def test_a_non_finite_weight_is_never_saved(tmp_path):
    with pytest.raises(UserError, match="non-finite values in w"):
        save_checkpoint(tmp_path / "ckpts", 1, {"w": torch.tensor([1.0, float("inf")])}, {}, {}, [{}], {}, 2)
    assert not (tmp_path / "ckpts").exists() or not list((tmp_path / "ckpts").iterdir())


# ---------------------------------------------------------------- full or unwritable disk


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES])
def test_failed_checkpoint_write_names_path_and_reason_and_keeps_previous(tiny_llama, dates_data, tmp_path, capsys,
                                                                         monkeypatch, error):
    """The second checkpoint's optimizer file fails as a full (or read-only) disk would fail it."""
    real_write = ckpt_module._write
    writes = {"n": 0}

    def failing_write(path, write):
        writes["n"] += 1
        if writes["n"] == 7:  # checkpoint 1 is files 1-5; file 7 is checkpoint 2's optimizer.pt
            raise OSError(error, os.strerror(error), str(path))
        real_write(path, write)

    monkeypatch.setattr(ckpt_module, "_write", failing_write)
    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, dates_data[0], run, max_steps=4)
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert f"cannot write checkpoint {run / 'checkpoints' / 'step-0000002'}" in line, line
    assert os.strerror(error) in line and "optimizer.pt" in line and "step-0000001 is intact" in line, line
    ckpts = run / "checkpoints"
    assert assert_every_checkpoint_loads(ckpts) == [1] and not list(ckpts.glob(".tmp-*"))

    monkeypatch.setattr(ckpt_module, "_write", real_write)  # space freed: --resume finishes the run
    code, _, err = run_cli(["train", cfg, "--resume"], capsys)
    assert code == 0, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; the monkeypatched test covers it")
def test_checkpoint_dir_made_read_only_mid_run(tiny_llama, dates_data, tmp_path, capsys, monkeypatch):
    real_save = ckpt_module.save_checkpoint
    import tuneforge.train.loop as loop

    def save_then_lock(root, step, *args):
        if step == 2:
            root.chmod(0o500)
        return real_save(root, step, *args)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_lock)
    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, dates_data[0], run, max_steps=3)
    try:
        code, _, err = run_cli(["train", cfg], capsys)
    finally:
        (run / "checkpoints").chmod(0o700)
    assert code == 2
    assert "Permission denied" in err and "step-0000001 is intact" in err, err
    assert assert_every_checkpoint_loads(run / "checkpoints") == [1]
