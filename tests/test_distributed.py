"""Two processes on CPU (torchrun, gloo): DDP and FSDP train exactly what one process trains with the
same global batch, each example once, checkpoints written once by rank 0 as whole tensors, and a run
saved under N processes resumes under M.

Tolerances (CPU, fp32, tiny llama + LoRA, 12 steps): per-step losses agree to a relative 1e-6 and the
final adapter weights to an absolute 1e-6 (weights ~0.1). Measured: losses within 1.2e-7 relative, weights
within 6e-8, for DDP and FSDP; the difference comes from the reference running in this process with
another thread count (two subprocess runs of 4 steps agree bitwise for DDP, to 1.5e-8 for FSDP).
Each torchrun launch costs ~15 s here (two interpreters on two cores).
"""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import NoCapture, run_cli, write_config
from tuneforge.config import TrainConfig
from tuneforge.errors import UserError

TRAIN = {"epochs": 1, "max_steps": None, "batch_tokens": 256, "lr": 1e-3, "schedule": "constant", "warmup_ratio": 0, "save_every": 1,
         "keep_last": 50}
LOSS_RTOL, WEIGHT_ATOL = 1e-6, 1e-6


def _config(path: Path, model, data, out: Path, **train) -> Path:
    return write_config(path, model, data, out, method={"name": "lora", "r": 4},
                        train={**TRAIN, **train}, eval={"before_after": False})


# What each rank trained on and saved: the loop reports it to an `observe` callback, which this script
# hands to every loop the CLI starts (by wrapping the name the Session calls), one file per rank.
TRACED_MAIN = """
import json, os
from pathlib import Path
import tuneforge.train.session as session
from tuneforge.cli import main

TRACE = {trace!r}
if TRACE:
    path = Path(TRACE) / f"rank{{os.environ.get('RANK', '0')}}.jsonl"

    def observe(event):
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\\n")

    loop = session.train_loop
    session.train_loop = lambda *a, **k: loop(*a, **{{**k, "observe": observe}})
main()
"""


@contextlib.contextmanager
def traced(trace: Path):
    """The same observation in this process: every loop started inside writes trace/rank0.jsonl."""
    import tuneforge.train.session as session

    def observe(event):
        with open(trace / "rank0.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")

    loop = session.train_loop
    session.train_loop = lambda *a, **k: loop(*a, **{**k, "observe": observe})
    try:
        yield
    finally:
        session.train_loop = loop


def launch(n: int, cfg: Path, *args, trace: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node n` on `tuneforge train CFG` (gloo on CPU), or one plain process."""
    script = cfg.parent / "tuneforge_main.py"  # tuneforge.cli has no __main__ block; torchrun needs a script
    if trace:
        trace.mkdir(parents=True, exist_ok=True)
    script.write_text(TRACED_MAIN.format(trace=str(trace) if trace else None))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)] \
        if n > 1 else [sys.executable]
    done = subprocess.run([*runner, str(script), "train", str(cfg), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def read_trace(trace: Path) -> dict[int, list[dict]]:
    return {int(p.stem[4:]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(trace.glob("rank*.jsonl"))}


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in m}


def assert_same_training(run: Path, ref: Path) -> None:
    got, want = losses(run), losses(ref)
    assert got.keys() == want.keys()
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=LOSS_RTOL), step
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=WEIGHT_ATOL, msg=k)


@pytest.fixture(scope="module")
def reference(tiny_llama, dates_data, tmp_path_factory):
    """One process, grad_accum 2: the global batch the 2-process runs (grad_accum 1) must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    trace = tmp / "trace"
    trace.mkdir()
    cfg = _config(tmp / "c.yaml", tiny_llama, dates_data[0], tmp / "run", grad_accum=2)
    with traced(trace):
        code, _, err = run_cli(["train", cfg], NoCapture())
    assert code == 0, err
    return tmp / "run", read_trace(trace)[0]


def _steps(events: list[dict]) -> dict[int, list[int]]:
    return {e["step"]: e["examples"] for e in events if "step" in e}


def test_ddp_matches_one_process_and_shards_data_exactly(reference, tiny_llama, dates_data, tmp_path):
    ref_run, ref_trace = reference
    cfg = _config(tmp_path / "c.yaml", tiny_llama, dates_data[0], tmp_path / "run", distributed="ddp")
    launch(2, cfg, trace=tmp_path / "trace")
    assert_same_training(tmp_path / "run", ref_run)

    ranks = read_trace(tmp_path / "trace")
    assert [ranks[r][0]["strategy"] for r in (0, 1)] == ["ddp", "ddp"]
    mine = {r: _steps(ranks[r]) for r in (0, 1)}
    for step, examples in _steps(ref_trace).items():  # each step: the same examples, split, none twice
        assert not set(mine[0][step]) & set(mine[1][step]), step
        assert sorted(mine[0][step] + mine[1][step]) == sorted(examples), step
    # Over the epoch: every example exactly once, except the short remainder dropped like drop_last.
    seen = [i for r in (0, 1) for examples in mine[r].values() for i in examples]
    dropped = ranks[0][0]["dropped"]
    assert len(seen) == len(set(seen)) and sorted(seen + dropped) == list(range(len(seen) + len(dropped)))
    # Checkpoints: written by rank 0 only, once per step, whole.
    saves = {r: [e["saved"] for e in ranks[r] if "saved" in e] for r in (0, 1)}
    assert saves[1] == [] and saves[0] == sorted(set(saves[0])) == list(mine[0])


def test_fsdp_matches_one_process_and_its_checkpoint_resumes_with_one(reference, tiny_llama, dates_data, tmp_path,
                                                                      capsys):
    """FSDP (sharded parameters, gradients, optimizer state) for 3 steps, then one process finishes the run."""
    ref_run, ref_trace = reference
    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, dates_data[0], run, distributed="fsdp")
    launch(2, cfg, "train.max_steps=3", trace=tmp_path / "trace")
    ranks = read_trace(tmp_path / "trace")
    assert [ranks[r][0]["strategy"] for r in (0, 1)] == ["fsdp", "fsdp"]
    whole = ref_trace[0]["numel"]  # parameter elements one process holds
    assert all(ranks[r][0]["numel"] < 0.6 * whole for r in (0, 1)), "parameters were not sharded"
    # The checkpoint holds whole tensors, shaped like a one-process checkpoint's.
    ckpt = load_file(str(run / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    ref_ckpt = load_file(str(ref_run / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    assert {k: v.shape for k, v in ckpt.items()} == {k: v.shape for k, v in ref_ckpt.items()}
    for k in ref_ckpt:
        torch.testing.assert_close(ckpt[k], ref_ckpt[k], rtol=0, atol=WEIGHT_ATOL, msg=k)
    # The artifact after FSDP is a normal PEFT folder.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run / "adapter")

    # One process picks it up (grad_accum 1 -> 2 keeps the global batch) and ends where the reference ended.
    code, out, err = run_cli(["train", cfg, "--resume"], capsys)
    assert code == 0, err
    assert "grad_accum 2 keeps the run's 2 micro-batches per step" in out
    assert_same_training(run, ref_run)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_under_two_and_two_under_two(reference, tiny_llama, dates_data, tmp_path,
                                                                    capsys):
    ref_run, _ = reference
    # 1 -> 2 (DDP): one process saves step 2, two processes finish.
    cfg = _config(tmp_path / "a.yaml", tiny_llama, dates_data[0], tmp_path / "a", grad_accum=2, distributed="ddp")
    code, _, err = run_cli(["train", cfg, "train.max_steps=2"], capsys)
    assert code == 0, err
    launch(2, cfg, "--resume")
    assert_same_training(tmp_path / "a", ref_run)
    # 2 -> 2 (FSDP): stopped after step 2, resumed under the same two processes.
    cfg = _config(tmp_path / "b.yaml", tiny_llama, dates_data[0], tmp_path / "b", distributed="fsdp")
    launch(2, cfg, "train.max_steps=2")
    launch(2, cfg, "--resume")
    assert_same_training(tmp_path / "b", ref_run)


def test_strategy_choice_and_odd_resume(monkeypatch):
    from accelerate.utils import DistributedType

    from tuneforge.train.distributed import parallel_strategy

    class Acc:
        distributed_type, num_processes = DistributedType.MULTI_CPU, 2

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert parallel_strategy(TrainConfig(), Acc()) == "ddp"
    assert parallel_strategy(TrainConfig(distributed="fsdp"), Acc()) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # `accelerate launch` with an FSDP config
    assert parallel_strategy(TrainConfig(), Acc()) == "fsdp"
    assert parallel_strategy(TrainConfig(distributed="ddp"), Acc()) == "ddp"
    Acc.num_processes = 1
    assert parallel_strategy(TrainConfig(distributed="fsdp"), Acc()) == "single"

    class DeepSpeed:
        distributed_type, num_processes = DistributedType.DEEPSPEED, 2

        class state:
            class deepspeed_plugin:
                zero_stage = 3

    with pytest.raises(UserError, match="ZeRO-3"):
        parallel_strategy(TrainConfig(), DeepSpeed())
    DeepSpeed.state.deepspeed_plugin.zero_stage = 2
    assert parallel_strategy(TrainConfig(), DeepSpeed()) == "deepspeed"
    with pytest.raises(UserError, match="grad_accum"):
        parallel_strategy(TrainConfig(grad_accum=2), DeepSpeed())


RANK0_LATE = """
import os, time
from pathlib import Path
if os.environ.get("RANK") == "0":  # rank 0 starts only once rank 1 has reached its run-folder step
    deadline = time.time() + 300
    while not Path({run!r}).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
from tuneforge.cli import main
main()
"""


def test_a_slow_rank_zero_still_finds_the_run_folder_its_own(tiny_llama, dates_data, tmp_path):
    # Seen on a loaded machine: rank 1 loaded faster, wrote into the new folder, and rank 0's check
    # then refused it as "already exists".
    run = tmp_path / "run"
    cfg = _config(tmp_path / "c.yaml", tiny_llama, dates_data[0], run, distributed="ddp")
    script = tmp_path / "late.py"
    script.write_text(RANK0_LATE.format(run=str(run)))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), "train", str(cfg), "train.max_steps=1"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "config.yaml").is_file() and (run / "adapter").is_dir()
