"""data.streaming: a JSONL file read a window at a time yields every kept example once per epoch, with
the same account as reading it whole; a restored position continues exactly; a run killed with -9 and
resumed ends bitwise equal to an uninterrupted one; what streaming cannot do is refused in one line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli, write_config, write_jsonl
from safetensors.torch import load_file

from tuneforge.config import DataConfig
from tuneforge.data.dataset import account_for, encode_split, load_splits
from tuneforge.data.stream import TokenStream
from tuneforge.models.load import load_tokenizer

LONG = " ".join(f"word{i}" for i in range(120))


def rows(n: int) -> list[dict]:
    out = [{"instruction": f"Repeat {i}." + (f" {LONG}" if i % 7 == 0 else ""), "output": f"{i} {i}"}
           for i in range(n)]
    out[5] = {"instruction": "no output here"}  # malformed: counted as bad (on_bad_record: skip)
    return out


@pytest.fixture()
def tok(tiny_llama):
    return load_tokenizer(tiny_llama)


def stream_of(path, tok, window=16, **kw) -> TokenStream:
    cfg = DataConfig(train=str(path), max_length=64, on_bad_record="skip", val_ratio=0, **({"max_lost": 0.5} | kw))
    return TokenStream(cfg, tok, seed=3, batch_tokens=256, pack_length=None, packing=True, window=window)


def by_epoch(stream: TokenStream, epochs: int) -> list[list[tuple]]:
    """The examples (as token ids) of each of the first `epochs` passes, in the order trained."""
    passes = [[] for _ in range(epochs)]
    while True:
        rows_, window = stream.next_micro_batch()
        if stream.epoch >= epochs:
            return passes
        passes[stream.epoch] += [tuple(window[i].ids) for row in rows_ for i in row]


def test_a_pass_yields_every_kept_example_once_with_the_whole_file_account(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", rows(70))
    stream = stream_of(data, tok)
    seen, second = by_epoch(stream, 2)
    cfg = stream.cfg
    splits = load_splits(cfg, 0)
    whole = encode_split(splits.train, tok, cfg)
    assert sorted(seen) == sorted(tuple(e.ids) for e in whole.encoded)
    account = account_for(splits, whole, encode_split([], tok, cfg))
    assert stream.account.read == account.read == 70 and stream.account.balanced()
    for key in ("train", "truncated", "bad", "too_long", "cut_before_answer", "no_answer"):
        assert getattr(stream.account, key) == getattr(account, key), key
    assert stream.account.bad == 1 and stream.account.truncated > 0
    # the next pass: the same examples, planned with another seed, not counted again
    assert sorted(second) == sorted(seen) and second != seen and stream.account.read == 70


def test_a_restored_position_continues_exactly(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", rows(70))
    a = stream_of(data, tok)
    for _ in range(7):
        a.next_micro_batch()
    state = json.loads(json.dumps(a.state()))  # as a checkpoint stores it
    b = stream_of(data, tok)
    b.restore(state)
    for _ in range(30):  # across windows and into the next epoch
        (ra, wa), (rb, wb) = a.next_micro_batch(), b.next_micro_batch()
        assert [[wa[i].ids for i in r] for r in ra] == [[wb[i].ids for i in r] for r in rb]
    assert a.state() == b.state()


def test_too_much_lost_stops_mid_stream_with_the_counts(tmp_path, tok):
    bad = [{"instruction": "x"}] * 10 + [{"instruction": "ok", "output": "y"}] * 30
    data = write_jsonl(tmp_path / "d.jsonl", bad)
    stream = stream_of(data, tok, max_lost=0.1)
    from tuneforge.errors import UserError

    with pytest.raises(UserError, match=r"streamed, 16 records read so far.*malformed"):
        stream.next_micro_batch()


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _cmd(cfg, *extra) -> list[str]:
    # windows of 8 records, so a run of 10 steps crosses several windows and an epoch
    code = "import tuneforge.data.stream as s\ns.STREAM_WINDOW = 8\nfrom tuneforge.cli import main; main()"
    return [sys.executable, "-c", code, "train", str(cfg), *extra]


def _config(tmp_path, tiny_llama, data, name):
    return write_config(tmp_path / f"{name}.yaml", tiny_llama, data, tmp_path / name,
                        data={"streaming": True, "max_length": 64, "on_bad_record": "skip", "max_lost": 0.5},
                        method={"name": "lora", "r": 4, "dropout": 0.1},
                        train={"max_steps": 10, "batch_tokens": 128, "save_every": 1}, eval={"before_after": False})


def test_kill9_mid_stream_then_resume_matches_uninterrupted(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "d.jsonl", rows(30))
    ref = _config(tmp_path, tiny_llama, data, "ref")
    done = subprocess.run(_cmd(ref), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = _config(tmp_path, tiny_llama, data, "run")
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(cfg), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "step-0000005" / "progress.json").is_file():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(max((run / "checkpoints").glob("step-*/progress.json")).read_text())
    assert saved["stream"]["offset"] > 0 or saved["stream"]["epoch"] > 0  # it was mid-file, not at its start
    done = subprocess.run(_cmd(cfg, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    ref_report = json.loads((tmp_path / "ref" / "report.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert report["data"] == ref_report["data"] and report["data"]["read"] == 30
    assert report["data"]["bad"] == 1


@pytest.mark.parametrize("change, message", [
    ({"train": {"max_steps": None, "epochs": 1}}, "set train.max_steps"),
    ({"data": {"drop_duplicates": True}}, "data.drop_duplicates needs the whole file"),
    ({"data": {"train": "PARQUET"}}, "data.streaming reads one JSONL file"),
    ({"recipe": "preference"}, "data.streaming is for recipe sft"),
])
def test_what_streaming_cannot_do_is_refused_in_one_line(tmp_path, tiny_llama, capsys, change, message):
    data = write_jsonl(tmp_path / "d.jsonl", rows(20))
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, data, tmp_path / "run", data={"streaming": True},
                       eval={"before_after": False})
    import yaml

    loaded = yaml.safe_load(cfg.read_text())
    for section, values in change.items():
        if not isinstance(values, dict):
            loaded[section] = values
            continue
        for k, v in values.items():
            loaded[section][k] = str(tmp_path / "d.parquet") if v == "PARQUET" else v
    cfg.write_text(yaml.safe_dump(loaded))
    code, out, err = run_cli(["train", cfg], capsys)
    assert code != 0 and message in err and "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1
