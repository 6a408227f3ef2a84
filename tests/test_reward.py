"""recipe: reward. The Bradley-Terry loss against its formula written here; the score read at each
sequence's last non-pad token; the saved folder, loaded by AutoModelForSequenceClassification, scores
exactly what training scored; a toy preference that a model can learn is learned; `tuneforge score`
prints per row and per pair; a killed run resumes to the same reward model."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli, write_config, write_jsonl
from safetensors.torch import load_file

from tuneforge.train.losses.reward import bradley_terry_losses, last_positions


def test_bradley_terry_matches_its_formula():
    rc, rr = torch.tensor([1.0, -0.5, 3.0]), torch.tensor([0.0, 0.5, -2.0])
    for center in (0.0, 0.01):
        want = [-math.log(1 / (1 + math.exp(-(c - r)))) + center * (c + r) ** 2 for c, r in zip(rc.tolist(), rr.tolist())]
        torch.testing.assert_close(bradley_terry_losses(rc, rr, center), torch.tensor(want))


def test_the_score_is_read_at_each_sequences_last_non_pad_token():
    pad = 0
    # row 0: [5 6 7][8 9 pad] then a pad tail; row 1: [4 3 2 1][1][pad pad pad]
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0], [4, 3, 2, 1, 1, 0, 0, 0]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 2, 3, 0, 0, 1, 2]])
    last, seq = last_positions(ids, pos, pad)
    # sequences: row0 [0..2], [3..5] (last real at 4), tail [6..7] (all pad); row1 [8..11], [12], [13..15]
    assert last.tolist() == [2, 4, -1, 11, 12, -1]
    assert seq[1, 0].item() == 3


def pairs(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"Say something about {i}.", "chosen": f"{i} is a fine number, thank you.",
             "rejected": f"no. {i} bad bad."} for i in range(start, start + n)]


def _config(tmp_path, model, data, name="run", method=None, **train):
    return write_config(tmp_path / f"{name}.yaml", model, data, tmp_path / name, recipe="reward",
                        data={"max_length": 64}, method=method or {"name": "lora", "r": 8},
                        train={"max_steps": 20, "batch_tokens": 512, "lr": 3e-3, **train}, eval={"max_examples": 40})


@pytest.mark.parametrize("method", [{"name": "lora", "r": 8}, {"name": "full"}])
def test_a_reward_model_learns_a_toy_preference_and_saves_what_it_scored(tmp_path, tiny_llama, capsys, method):
    from transformers import AutoModelForSequenceClassification

    from tuneforge.data.preference import encode_pair, to_pair
    from tuneforge.data.sources import Record
    from tuneforge.models.load import load_tokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(80))
    code, out, err = run_cli(["train", _config(tmp_path, tiny_llama, data, method=method), "--overwrite"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    val = report["reward_eval"]["val"]
    assert val["before"]["pairs"] == val["after"]["pairs"] == 8
    assert val["after"]["accuracy"] == 1.0 and val["after"]["margin"] > val["before"]["margin"] + 1
    folder = tmp_path / "run" / "reward_model"
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()  # loads as it is
    assert model.config.num_labels == 1
    # the saved model's score of a pair's sequences equals the reward the report's evaluation computed
    tok = load_tokenizer(folder)
    scored = []
    for row in pairs(8, start=200):
        enc = encode_pair(to_pair(Record(row, "x")), tok, 64, 512)
        with torch.no_grad():
            first = model(input_ids=torch.tensor([enc.ids[:enc.restarts[0]]])).logits[0, 0]
            second = model(input_ids=torch.tensor([enc.ids[enc.restarts[0]:]])).logits[0, 0]
        scored.append((float(first), float(second)))
    file = write_jsonl(tmp_path / "score.jsonl", pairs(8, start=200) + [{"prompt": "Say something about 3.",
                                                                         "response": "3 is a fine number, thank you."}])
    code, out, err = run_cli(["score", tmp_path / "run", file], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    for (c, r), line in zip(scored, lines):
        where, cs, rs, winner = line.split("\t")
        assert abs(float(cs) - c) < 1e-3 and abs(float(rs) - r) < 1e-3 and winner == "chosen"
    assert len(lines[8].split("\t")) == 2 and lines[-1] == "pairwise accuracy: 8/8 = 1.000"


def test_the_reward_score_in_training_equals_the_saved_models(tmp_path, tiny_llama):
    """pair_rewards on a packed batch (two pairs in a row, a pad tail) against the saved
    *ForSequenceClassification folder scoring each sequence alone."""
    from transformers import AutoModelForSequenceClassification

    from tuneforge.data.pack import collate
    from tuneforge.data.preference import encode_pair, to_pair
    from tuneforge.data.sources import Record
    from tuneforge.models.load import load_model_and_tokenizer
    from tuneforge.models.reward_head import attach_score_head, save_reward_model
    from tuneforge.train.losses.reward import pair_rewards

    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(str(tiny_llama))
    head = attach_score_head(model)
    torch.nn.init.normal_(head.weight, std=1.0)
    encoded = [encode_pair(to_pair(Record(row, "x")), tok, 64, 512) for row in pairs(2)]
    batch = collate([[0, 1]], encoded, tok.pad_token_id)
    batch["input_ids"] = torch.cat([batch["input_ids"], torch.full((1, 5), tok.pad_token_id)], 1)
    batch["position_ids"] = torch.cat([batch["position_ids"], torch.arange(5)[None]], 1)
    batch["target_mask"] = torch.cat([batch["target_mask"], torch.zeros(1, 5, dtype=torch.bool)], 1)
    with torch.no_grad():
        rc, rr = pair_rewards(model.eval(), **batch, pad_id=tok.pad_token_id)
    save_reward_model(model, tok, tmp_path / "rm")
    saved = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    for k, enc in enumerate(encoded):
        with torch.no_grad():
            c = saved(input_ids=torch.tensor([enc.ids[:enc.restarts[0]]])).logits[0, 0]
            r = saved(input_ids=torch.tensor([enc.ids[enc.restarts[0]:]])).logits[0, 0]
        torch.testing.assert_close(rc[k], c, atol=1e-4, rtol=0)
        torch.testing.assert_close(rr[k], r, atol=1e-4, rtol=0)


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _cmd(cfg, *extra) -> list[str]:
    return [sys.executable, "-c", "from tuneforge.cli import main; main()", "train", str(cfg), *extra]


def test_kill9_then_resume_gives_the_same_reward_model(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(40))
    ref = _config(tmp_path, tiny_llama, data, "ref", max_steps=8, save_every=1)
    done = subprocess.run(_cmd(ref), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = _config(tmp_path, tiny_llama, data, "run", max_steps=8, save_every=1)
    proc = subprocess.Popen(_cmd(cfg), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mark = tmp_path / "run" / "checkpoints" / "step-0000003" / "progress.json"
    deadline = time.monotonic() + 120
    while not mark.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_cmd(cfg, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(str(tmp_path / "ref" / "reward_model" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "reward_model" / "model.safetensors"))
    assert "score.weight" in a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_a_method_that_cannot_be_merged_is_refused(tmp_path, tiny_llama, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(10))
    code, out, err = run_cli(["train", _config(tmp_path, tiny_llama, data, method={"name": "prefix"})], capsys)
    assert code != 0 and "not supported by recipe: reward" in err and "Traceback" not in err
