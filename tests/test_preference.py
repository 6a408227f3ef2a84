"""Preference tuning (DPO): pair data, the packed DPO loss against full forwards, the recipe end to end."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, write_config, write_jsonl
from tuneforge.config import LoraMethod, TrainConfig
from tuneforge.data.pack import collate
from tuneforge.data.preference import encode_pair, load_pair_splits, to_pair, to_pairs
from tuneforge.data.sources import Record
from tuneforge.errors import UserError
from tuneforge.models.load import load_model, load_tokenizer
from tuneforge.models.methods import apply_method
from tuneforge.train.losses.dpo import DPOLoss, dpo_losses, evaluate_pairs

RECORDS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "I think it is Lyon, maybe."},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
     "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "five"}]},
    {"chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}],
     "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "No."}]},
]
BETA = 0.5


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return load_tokenizer(str(tiny_llama))


def _encoded(tok, max_length=256, max_prompt_length=128):
    return [encode_pair(to_pair(Record(r, f"r{i}")), tok, max_length, max_prompt_length)
            for i, r in enumerate(RECORDS)]


def _lora(tiny_llama, perturb: bool):
    torch.manual_seed(0)
    model = apply_method(load_model(str(tiny_llama)), LoraMethod(r=4)).eval()
    if perturb:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.add_(torch.randn_like(p) * 0.3)
    return model


def _sequence_logp(model, ids, response):
    """Summed log p of the response tokens of one unpadded sequence, from the full model forward."""
    logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if response[t])


def _manual_logps(model, e):
    cut = e.restarts[0]
    chosen = _sequence_logp(model, e.ids[:cut], e.masks["chosen_mask"][:cut])
    rejected = _sequence_logp(model, e.ids[cut:], e.masks["rejected_mask"][cut:])
    return chosen, rejected


# ---------------------------------------------------------------- data


def test_pair_encoding_layout_and_positions(tok):
    enc = _encoded(tok)
    for e, r in zip(enc, RECORDS):
        cut = e.restarts[0]
        chosen, rejected = e.masks["chosen_mask"], e.masks["rejected_mask"]
        assert sum(e.mask) == 1 and chosen[e.mask.index(True)]  # one target per pair, its first chosen token
        assert not any(chosen[cut:]) and not any(rejected[:cut])
        prompt_len = chosen.index(True)
        assert e.ids[:prompt_len] == e.ids[cut:cut + prompt_len]  # the same prompt in both sequences
        assert rejected.index(True) == cut + prompt_len
        want = r["chosen"] if isinstance(r["chosen"], str) else r["chosen"][-1]["content"]
        assert tok.decode([i for i, m in zip(e.ids, chosen) if m]).startswith(want)
    batch = collate([[0, 1]], enc, tok.pad_token_id, DPOLoss.extra_fields)
    pos = batch["position_ids"][0].tolist()
    cut0, n0 = enc[0].restarts[0], len(enc[0].ids)
    assert pos[:n0] == list(range(cut0)) + list(range(n0 - cut0))
    assert pos[n0:n0 + enc[1].restarts[0]] == list(range(enc[1].restarts[0]))
    assert batch["chosen_mask"].sum() == sum(sum(e.masks["chosen_mask"]) for e in enc[:2])


def test_truncation_keeps_prompt_end_and_fits_each_sequence(tok):
    long = {"prompt": "word " * 200 + "QUESTION?", "chosen": "yes " * 100, "rejected": "no"}
    e = encode_pair(to_pair(Record(long, "x")), tok, max_length=64, max_prompt_length=16)
    cut = e.restarts[0]
    assert e.truncated and cut <= 64 and len(e.ids) - cut <= 64
    prompt_len = e.masks["chosen_mask"].index(True)
    assert prompt_len == 16 and sum(e.masks["rejected_mask"]) >= 1
    assert "assistant" in tok.decode(e.ids[:prompt_len])  # the end of the prompt (the assistant header) is kept


def test_identical_pairs_are_skipped_and_reported(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
    rows[1]["rejected"] = rows[1]["chosen"]
    rows[3]["rejected"] = rows[3]["chosen"] + " "
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    from tuneforge.config import DataConfig

    splits = load_pair_splits(DataConfig(train=str(path), val_ratio=0), seed=0)
    assert len(splits.train) == 2 and splits.identical == 2
    assert splits.identical_where == [f"{path}:2", f"{path}:4"]


def test_missing_fields_and_bad_messages_name_the_record(tmp_path):
    with pytest.raises(UserError, match=r"data.jsonl:3: missing field 'rejected'.*prompt.*chosen.*rejected"):
        to_pairs([Record({"prompt": "q", "chosen": "a"}, "data.jsonl:3")])
    with pytest.raises(UserError, match=r"f:1: missing fields 'prompt', 'chosen', 'rejected'"):
        to_pair(Record({"question": "q"}, "f:1"))
    with pytest.raises(UserError, match="f:2: the last message of 'chosen' must be the assistant"):
        to_pair(Record({"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "f:2"))
    with pytest.raises(UserError, match="f:4: 'chosen' and 'rejected' differ before"):
        to_pair(Record({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
                        "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}, "f:4"))


def test_message_formats_and_system_prompt():
    pairs, _ = to_pairs([Record(r, f"r{i}") for i, r in enumerate(RECORDS)], system_prompt="Sys.")
    assert [s.role for s in pairs[0].prompt] == ["system", "user"] and pairs[0].prompt[0].text == "Sys."
    assert [(s.role, s.text) for s in pairs[1].prompt] == [("system", "Be brief."), ("user", "2 + 2?")]
    assert (pairs[1].chosen, pairs[1].rejected) == ("4", "five")
    assert [(s.role, s.text) for s in pairs[2].prompt][1:] == [("user", "Say hi")]
    assert (pairs[2].chosen, pairs[2].rejected) == ("Hi there!", "No.")
    own = to_pair(Record({"prompt": "q", "chosen": "a", "rejected": "b", "system": "Own."}, "x"), "Sys.")
    assert own.prompt[0].text == "Own."


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("rows", [[[0, 1, 2]], [[0], [1], [2]], [[2, 0], [1]]])
def test_dpo_loss_matches_full_forwards_packed_and_unpacked(tiny_llama, tok, rows):
    model = _lora(tiny_llama, perturb=True)
    enc = _encoded(tok)
    expected = 0.0
    with torch.no_grad():
        for e in enc:
            pc, pr = _manual_logps(model, e)
            with model.disable_adapter():
                rc, rr = _manual_logps(model, e)
            assert abs(float(pc - rc)) > 1e-3  # the adapter does change the model
            expected += -F.logsigmoid(BETA * ((pc - rc) - (pr - rr)))
        loss = DPOLoss(model, beta=BETA)
        assert loss.reference == "adapter_disabled"
        got = loss(**collate(rows, enc, tok.pad_token_id, DPOLoss.extra_fields))
    assert got.item() == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_fresh_lora_loss_is_log2_per_pair_and_rewards_zero(tiny_llama, tok):
    model = _lora(tiny_llama, perturb=False)  # LoRA B = 0: the policy is the reference
    enc = _encoded(tok)
    loss = DPOLoss(model, beta=BETA, label_smoothing=0.2)
    batch = collate([[0, 1, 2]], enc, tok.pad_token_id, DPOLoss.extra_fields)
    assert int(batch["target_mask"].sum()) == 3  # the loop's divisor is the number of pairs
    with torch.no_grad():
        assert loss(**batch).item() / 3 == pytest.approx(math.log(2), abs=1e-6)
    stats = evaluate_pairs(model, enc, TrainConfig(batch_tokens=512), tok.pad_token_id, torch.device("cpu"),
                           None, dpo=loss)
    assert stats["reward_margin"] == 0 and stats["chosen_reward"] == 0 and stats["reward_accuracy"] == 0
    assert stats["loss"] == pytest.approx(math.log(2), abs=1e-4) and stats["pairs"] == 3


def test_label_smoothing_is_conservative_dpo():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-3.0, -1.0], [-2.0, -4.0], [-2.5, -1.5], [-2.5, -3.0]))
    z = 0.3 * ((pc - rc) - (pr - rr))
    for eps in (0.0, 0.1, 0.3):
        want = (1 - eps) * F.softplus(-z) + eps * F.softplus(z)
        torch.testing.assert_close(dpo_losses(pc, pr, rc, rr, 0.3, eps), want)
    # pair 0 prefers the rejected response more than the reference does, pair 1 the chosen one
    assert dpo_losses(pc, pr, rc, rr, 0.3)[1] < math.log(2) < dpo_losses(pc, pr, rc, rr, 0.3)[0]


def test_copy_reference_is_the_starting_weights(tiny_llama, tok):
    torch.manual_seed(0)
    model = load_model(str(tiny_llama)).eval()
    enc = _encoded(tok)
    start = [_manual_logps(model, e) for e in enc]
    loss = DPOLoss(model, beta=BETA)
    assert loss.reference == "copy" and not any(p.requires_grad for p in loss.frozen_reference.parameters())
    assert not any(n.startswith("frozen") for n, _ in loss.named_parameters())  # not trained, not saved
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        expected = 0.0
        for e, (rc, rr) in zip(enc, start):
            pc, pr = _manual_logps(model, e)
            expected += -F.logsigmoid(BETA * ((pc - rc) - (pr - rr)))
        got = loss(**collate([[0, 1, 2]], enc, tok.pad_token_id, DPOLoss.extra_fields))
    assert got.item() == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    with pytest.raises(UserError, match="adapter_disabled needs an adapter method"):
        DPOLoss(model, reference="adapter_disabled")


# ---------------------------------------------------------------- recipe


def _pairs(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        # Responses of the same shape, so the random model has no length preference to start with.
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": f"It is {a + b}.", "rejected": f"It is {a + b + 3}."})
    return rows


@pytest.mark.parametrize("method", ["lora", "full"])
def test_preference_recipe_end_to_end(tiny_llama, tmp_path, capsys, method):
    rows = _pairs(12) + [{"prompt": "same", "chosen": "x", "rejected": "x"}]
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", recipe="preference",
                       method=method, train={"max_steps": 3, "lr": 1e-2, "eval_every": 3, "warmup_ratio": 0},
                       data={"val_ratio": 0.25}, preference={"beta": 0.5}, eval={"max_examples": 50})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["train_pairs"] == 9 and report["val_pairs"] == 3 and report["skipped_identical"] == 1
    assert report["reference"] == ("adapter_disabled" if method == "lora" else "copy")
    assert "identical" in out and f"{train}:13" in out
    ev = report["preference_eval"]["train"]
    assert ev["before"]["reward_accuracy"] == 0 and ev["before"]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert ev["after"]["reward_accuracy"] >= ev["before"]["reward_accuracy"]
    assert ev["after"]["reward_margin"] > 0 and ev["after"]["loss"] < math.log(2)  # it learned the preference
    assert ev["after"]["logp_margin"] > ev["before"]["logp_margin"]
    assert "val" in report["preference_eval"] and report["best_val_loss"] is not None
    md = (run / "report.md").read_text()
    assert "reward accuracy" in md and "### train (9 pairs)" in md
    assert (run / "plots" / "loss.png").exists()
    artifact = run / ("adapter" if method == "lora" else "model")
    assert (artifact / ("adapter_config.json" if method == "lora" else "config.json")).exists()
    code, _, err = run_cli(["generate", run, "What is 2 + 3?", "--max-new-tokens", "3"], capsys)
    assert code == 0, err


def test_preference_recipe_refuses_virtual_token_methods(tiny_llama, tmp_path, capsys):
    train = write_jsonl(tmp_path / "pairs.jsonl", _pairs(4))
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", recipe="preference", method="prefix")
    code, _, err = run_cli(["train", cfg], capsys)
    assert code != 0 and "not supported by recipe: preference" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- IPO, SimPO, ORPO


def test_ipo_simpo_orpo_match_the_papers_formulas():
    from tuneforge.train.losses.dpo import ipo_losses, orpo_losses, simpo_losses

    torch.manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(5) * 20 for _ in range(4))
    nc, nr = torch.tensor([3.0, 5, 7, 2, 9]), torch.tensor([4.0, 4, 6, 8, 1])
    beta, gamma = 0.3, 0.7
    for i in range(5):
        # IPO (Azar et al. 2023, eq. 17): (log-ratio difference - 1/(2 tau))^2 with sequence log-probs
        h = math.log(math.exp(pc[i]) * math.exp(rr[i]) / (math.exp(pr[i]) * math.exp(rc[i])))
        assert ipo_losses(pc, pr, rc, rr, beta)[i].item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-5)
        # SimPO (Meng et al. 2024, eq. 6): length-normalised rewards with a target margin gamma
        margin = beta / nc[i] * pc[i] - beta / nr[i] * pr[i] - gamma
        want = -math.log(1 / (1 + math.exp(-float(margin))))
        assert simpo_losses(pc / nc, pr / nr, beta, gamma)[i].item() == pytest.approx(want, rel=1e-5)
        # ORPO (Hong et al. 2024, eqs. 4-7): NLL of the chosen plus lambda * -log sigmoid(log odds ratio),
        # odds(y) = P / (1 - P) with P the per-token geometric mean probability
        p_c, p_r = math.exp(pc[i] / nc[i]), math.exp(pr[i] / nr[i])
        ratio = math.log((p_c / (1 - p_c)) / (p_r / (1 - p_r)))
        want = -math.log(p_c) + beta * -math.log(1 / (1 + math.exp(-ratio)))
        assert orpo_losses(pc / nc, pr / nr, beta)[i].item() == pytest.approx(want, rel=1e-4)


def test_reference_free_losses_match_full_forwards_and_need_no_reference(tiny_llama, tok):
    from tuneforge.train.losses.dpo import orpo_losses, simpo_losses

    model = _lora(tiny_llama, perturb=True)
    enc = _encoded(tok)
    batch = collate([[0, 1, 2]], enc, tok.pad_token_id, DPOLoss.extra_fields)
    means = []
    for e in enc:  # per-token mean log p of each response, from plain full forwards
        cut = e.restarts[0]
        with torch.no_grad():
            chosen, rejected = _manual_logps(model, e)
        means.append((chosen / sum(e.masks["chosen_mask"][:cut][1:]), rejected / sum(e.masks["rejected_mask"][cut:][1:])))
    mc, mr = (torch.tensor([float(m[k]) for m in means]) for k in (0, 1))
    for kind, want in (("simpo", simpo_losses(mc, mr, 2.0, 0.5)), ("orpo", orpo_losses(mc, mr, 2.0))):
        loss = DPOLoss(model, beta=2.0, kind=kind, gamma=0.5)
        assert loss.reference == "none" and loss.frozen_reference is None
        with torch.no_grad():
            assert loss(**batch).item() == pytest.approx(float(want.sum()), rel=1e-4)


@pytest.mark.parametrize("kind", ["ipo", "simpo", "orpo"])
def test_each_preference_loss_trains_end_to_end(tiny_llama, tmp_path, capsys, kind):
    train = write_jsonl(tmp_path / "pairs.jsonl", _pairs(12))
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", recipe="preference",
                       train={"max_steps": 4, "lr": 1e-2, "eval_every": 4, "warmup_ratio": 0},
                       data={"val_ratio": 0.25}, preference={"loss": kind}, eval={"max_examples": 50})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["preference_loss"] == kind and report["beta"] == (2.0 if kind == "simpo" else 0.1)
    ev = report["preference_eval"]["train"]
    assert ev["after"]["loss"] < ev["before"]["loss"]  # it learned the preference
    assert ev["after"]["logp_margin"] > ev["before"]["logp_margin"]
    assert report["reference"] == ("none" if kind in ("simpo", "orpo") else "adapter_disabled")


# ---------------------------------------------------------------- KTO


def test_kto_loss_matches_the_papers_formula():
    from tuneforge.train.losses.kto import kto_losses

    torch.manual_seed(1)
    pc, pk, rc, rk = (-torch.rand(6) * 10 for _ in range(4))
    d = torch.tensor([True, False, True, True, False, False])
    beta, wd, wu = 0.2, 1.5, 0.7
    z0 = max(0.0, float(sum(pk[i] - rk[i] for i in range(6)) / 6))  # KL estimate from mismatched completions
    got = kto_losses(pc, pk, rc, rk, d, beta, wd, wu)
    for i in range(6):
        r = float(pc[i] - rc[i])
        v = wd / (1 + math.exp(-beta * (r - z0))) if d[i] else wu / (1 + math.exp(-beta * (z0 - r)))
        assert got[i].item() == pytest.approx((wd if d[i] else wu) - v, rel=1e-5)  # lambda_y - v(x, y)


def _rated_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        good = i % 2 == 0
        rows.append({"prompt": f"What is {a} + {b}?", "completion": f"It is {a + b if good else a + b + 3}.",
                     "label": good})
    return rows


def test_kto_recipe_end_to_end(tiny_llama, tmp_path, capsys):
    train = write_jsonl(tmp_path / "rated.jsonl", _rated_rows(16))
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", recipe="preference",
                       train={"max_steps": 4, "lr": 1e-2, "eval_every": 4, "warmup_ratio": 0},
                       data={"val_ratio": 0.25}, preference={"loss": "kto"}, eval={"max_examples": 50})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["train_completions"] == 12 and report["desirable"] + report["undesirable"] == 12
    ev = report["preference_eval"]["train"]
    assert ev["before"]["loss"] == pytest.approx(0.5, abs=1e-3) and ev["before"]["reward_margin"] == 0
    assert ev["after"]["reward_margin"] > 0 and ev["after"]["loss"] < 0.5  # good completions gained on bad ones
    assert "KTO" in (tmp_path / "run" / "report.md").read_text()


def test_kto_refuses_a_file_with_one_label(tiny_llama, tmp_path, capsys):
    rows = [r | {"label": True} for r in _rated_rows(6)]
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, write_jsonl(tmp_path / "r.jsonl", rows), tmp_path / "run",
                       recipe="preference", preference={"loss": "kto"})
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2 and "every record of" in err and "labelled True" in err and "needs both" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
