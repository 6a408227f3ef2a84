"""recipe: rl (GRPO / RLOO). The loss is the formula written out here by hand; group advantages are the
two definitions; the log-probabilities recorded when sampling are those the training forward computes
on the packed completions; the rollout source continues exactly from a restored position and handles
failing rewards by policy; a run killed with -9 and resumed ends bitwise equal to an uninterrupted one;
bad input is refused in one line naming the key, file or line."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli, write_config, write_jsonl
from safetensors.torch import load_file

from tuneforge.config import RLConfig, RewardConfig
from tuneforge.data.pack import collate
from tuneforge.data.sources import Record
from tuneforge.errors import UserError
from tuneforge.models.load import load_model, load_tokenizer
from tuneforge.recipes.rl import encode_prompts, sample_completions
from tuneforge.recipes.rl_rewards import Rewards, build_rewards, is_tool_call
from tuneforge.train.losses.grpo import GRPOLoss, clipped_policy_loss, completion_logps, k3_kl
from tuneforge.train.rollouts import Completion, Prompt, RolloutSource, Scored, as_rollout, group_advantages

# ---------------------------------------------------------------- the loss, by hand


def test_clipped_objective_and_k3_match_a_hand_computation():
    logp = torch.tensor([-1.0, -0.5, -2.0])
    old = torch.tensor([-1.5, -0.5, -1.0])
    adv = torch.tensor([1.0, -2.0, -1.0])
    loss, clipped = clipped_policy_loss(logp, old, adv, epsilon=0.2)
    # ratio e^0.5 = 1.65 with A > 0: capped at 1.2 -> -1.2; ratio 1: -(1 * -2) = 2;
    # ratio e^-1 = 0.37 with A < 0: min(-0.37, 0.8 * -1) = -0.8 -> 0.8
    torch.testing.assert_close(loss, torch.tensor([-1.2, 2.0, 0.8]))
    assert clipped.tolist() == [True, False, True]
    ref = torch.tensor([-1.0, -1.5, -1.0])  # ref - logp = 0, -1, 1
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([0.0, math.exp(-1), math.e - 2]))


def test_group_advantages_grpo_and_rloo():
    std = math.sqrt(4 * 0.25 / 3)  # Bessel-corrected std of [1, 0, 0, 1]
    a = 0.5 / (std + 1e-4)
    assert group_advantages([1.0, 0.0, 0.0, 1.0], "grpo") == pytest.approx([a, -a, -a, a])
    assert group_advantages([1.0, 2.0, 3.0], "rloo") == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5])
    assert group_advantages([2.0, 2.0], "grpo") == [0.0, 0.0]


@pytest.fixture(scope="module")
def lora_policy(tiny_llama):
    """The tiny model under LoRA with B made non-zero, so the policy differs from its reference."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(tiny_llama), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                              lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.5
    return model.eval(), load_tokenizer(tiny_llama)


def _prompts(tok, n: int) -> list[Prompt]:
    records = [Record({"prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}, f"p.jsonl:{i + 1}")
               for i in range(n)]
    return encode_prompts(records, tok, None, 256)[0]


def _sampled_batch(model, tok, temperature: float, seed: int = 5):
    prompts = _prompts(tok, 3)
    repeated = [p for p in prompts for _ in range(2)]
    completions = sample_completions(model, tok, [p.ids for p in repeated], seed, max_new_tokens=6,
                                     temperature=temperature, batch_size=4)
    rollouts = [as_rollout(p, c, a) for p, c, a in zip(repeated, completions, [0.7, -0.7, 1.1, -1.1, 0.3, -0.3])]
    return collate([[0, 1], [2, 3], [4], [5]], rollouts, tok.pad_token_id, GRPOLoss.extra_fields), completions


def test_sampling_time_logps_are_the_training_forwards(lora_policy):
    model, tok = lora_policy
    batch, completions = _sampled_batch(model, tok, temperature=0.7)
    select = batch["target_mask"][:, 1:]
    with torch.no_grad():
        now = completion_logps(model, batch["input_ids"], batch["position_ids"], batch["target_mask"], 0.7)
    torch.testing.assert_close(now, batch["old_logp"][:, 1:][select], atol=1e-4, rtol=0)
    assert int(select.sum()) == sum(len(c.ids) for c in completions)
    again = sample_completions(model, tok, [[1, 2, 3]] * 3, 11, max_new_tokens=6, batch_size=2)
    assert again == sample_completions(model, tok, [[1, 2, 3]] * 3, 11, max_new_tokens=6, batch_size=2)


def _logps_per_sequence(model, ids: list[int], n_completion: int, temperature: float) -> torch.Tensor:
    """log p of the last n tokens of one sequence, from the model's own full forward (not the loss's path)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float() / temperature
    logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return logps[-n_completion:]


def test_grpo_loss_is_the_formula_over_completion_tokens(lora_policy):
    model, tok = lora_policy
    batch, completions = _sampled_batch(model, tok, temperature=0.8)
    gen = torch.Generator().manual_seed(1)
    batch["old_logp"] = batch["old_logp"] + 0.3 * torch.randn(batch["old_logp"].shape, generator=gen)  # ratios != 1
    beta, eps, temperature = 0.1, 0.2, 0.8
    loss_model = GRPOLoss(model, beta=beta, epsilon=eps, temperature=temperature)
    with torch.no_grad():
        got = loss_model(**batch)
        metrics = loss_model.step_metrics(1.0)
    expected, kl_sum, clipped, tokens = 0.0, 0.0, 0, 0
    prompts = [p for p in _prompts(tok, 3) for _ in range(2)]
    rows = [[0, 1], [2, 3], [4], [5]]
    advantages = [0.7, -0.7, 1.1, -1.1, 0.3, -0.3]
    with torch.no_grad():
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                ids = prompts[i].ids + completions[i].ids
                n = len(completions[i].ids)
                lp = _logps_per_sequence(model, ids, n, temperature).tolist()
                with model.disable_adapter():
                    ref = _logps_per_sequence(model, ids, n, temperature).tolist()
                old = batch["old_logp"][r, at + len(ids) - n:at + len(ids)].tolist()
                for t in range(n):
                    ratio, a = math.exp(lp[t] - old[t]), advantages[i]
                    expected += -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
                    kl = math.exp(ref[t] - lp[t]) - (ref[t] - lp[t]) - 1
                    expected += beta * kl
                    kl_sum += kl
                    clipped += (ratio < 1 - eps and a < 0) or (ratio > 1 + eps and a > 0)
                    tokens += 1
                at += len(ids)
    assert float(got) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert metrics["kl"] == pytest.approx(kl_sum / tokens, rel=1e-3) and metrics["kl"] > 0
    assert metrics["clip_fraction"] == pytest.approx(clipped / tokens, abs=1e-6)


# ---------------------------------------------------------------- the rollout source, without a model


def _fake_sample(model, prompts: list[list[int]], seed: int) -> list[Completion]:
    rng = random.Random(seed)
    out = []
    for _ in prompts:
        n = rng.randint(1, 4)
        out.append(Completion([rng.randint(3, 50) for _ in range(n)], [-rng.random() for _ in range(n)],
                              str(rng.randint(0, 3)), n == 4))
    return out


def _score_digits(fail_on: str | None = None):
    def score(prompts, texts):
        return [Scored(None, {}, "reward digit raised ValueError: no") if t == fail_on
                else Scored(float(t), {"digit": float(t)}) for t in texts]
    return score


def _source(score, **kw) -> RolloutSource:
    prompts = [Prompt([1, 2, 3 + i], f"q{i}", {"answer": i}, f"p.jsonl:{i + 1}") for i in range(5)]
    args = dict(policy=lambda: None, sample=_fake_sample, score=score, algorithm="grpo", num_generations=4,
                prompts_per_step=2, micro_batches=2, max_new_tokens=4, packing=True, seed=7, log=lambda *_: None)
    return RolloutSource(prompts, **(args | kw))


def _steps(source: RolloutSource, n: int) -> list:
    out = []
    for _ in range(n):
        for _ in range(source.micro_batches):
            rows, rollouts = source.next_micro_batch()
            out.append([(rollouts[i].ids, rollouts[i].token_values) for row in rows for i in row])
        timings = ("generate_s", "generate_share")  # wall-clock, the only thing allowed to differ
        out.append({k: v for k, v in source.step_metrics(1.0).items() if k not in timings})
    return out


def test_a_restored_source_continues_exactly():
    a = _source(_score_digits())
    _steps(a, 2)
    state = json.loads(json.dumps(a.state()))  # what a checkpoint stores
    later = _steps(a, 3)
    b = _source(_score_digits())
    b.restore(state)
    assert _steps(b, 3) == later
    assert state["epoch"] == 0 and b.epoch == 2  # 5 prompts at 2 a step: epochs wrap mid-step


def test_failing_rewards_skip_the_group_or_the_completion_and_are_counted():
    for policy in ("skip_group", "skip_completion"):
        source = _source(_score_digits(fail_on="3"), on_reward_error=policy)
        served, steps = 0, []
        for _ in range(4):
            rows = [source.next_micro_batch()[0] for _ in range(source.micro_batches)]
            steps.append(sum(len(row) for r in rows for row in r))
            metrics = source.step_metrics(1.0)
            assert metrics["reward_errors"] >= 0 and math.isfinite(metrics["reward_mean"])
        served = sum(steps)
        assert source.totals["reward_errors"] > 0
        # every completion sampled was trained or counted as skipped
        assert 2 * 4 * source.rounds == served + source.totals["skipped_completions"]
        whole_groups = all(n % 4 == 0 for n in steps)
        assert whole_groups == (policy == "skip_group"), (policy, steps)


def test_a_reward_that_always_fails_stops_after_a_few_rounds_with_its_error():
    failed = Scored(None, {}, "reward mine returned nan, not a finite number")
    source = _source(lambda prompts, texts: [failed] * len(texts))
    with pytest.raises(UserError, match="3 sampling rounds in a row.*returned nan"):
        source.next_micro_batch()


# ---------------------------------------------------------------- rewards


def _score(rewards: Rewards, completion: str, record: dict) -> Scored:
    return rewards([Prompt([1], "q", record, "p.jsonl:1")], [completion])[0]


def test_held_out_comparison_pairs_prompts_and_groups_by_level():
    from tuneforge.recipes.rl import compare_held_out

    before = {"per_prompt": [0.0, 1.0, 0.0, None, 0.0], "group": ["a", "a", "b", "b", "b"]}
    after = {"per_prompt": [1.0, 1.0, 1.0, 1.0, 0.0], "group": ["a", "a", "b", "b", "b"]}
    out = compare_held_out(before, after)
    c = out["comparison"]
    assert c["n"] == 4 and (c["before"], c["after"]) == (0.25, 0.75)  # the failed reward's prompt is left out
    assert c["mcnemar"]["b10"] == 2 and c["mcnemar"]["b01"] == 0  # 0/1 rewards: McNemar on the changed prompts
    assert out["by_group"] == {"a": {"n": 2, "before": 0.5, "after": 1.0}, "b": {"n": 2, "before": 0.0, "after": 0.5}}


def test_built_in_rewards():
    rl = RLConfig(rewards=[RewardConfig(name="numeric"), RewardConfig(name="exact_match", weight=2.0),
                           RewardConfig(name="regex", pattern=r"\d+", fullmatch=True)])
    rewards = build_rewards(rl)
    assert _score(rewards, "13", {"answer": "13"}).reward == 1 + 2 + 1
    assert _score(rewards, "4 + 9 = 13.", {"answer": 13}).parts == {"numeric": 1.0, "exact_match": 0.0, "regex": 0.0}
    assert _score(rewards, "I don't know", {"answer": "13"}).reward == 0.0
    assert is_tool_call('{"name": "weather", "arguments": {"city": "Oslo"}}')
    assert is_tool_call('```json\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n```')
    assert not is_tool_call('{"name": "f"}') and not is_tool_call("call f(1)")


def test_a_failing_user_reward_is_reported_not_fatal(tmp_path):
    module = tmp_path / "my_rewards.py"
    module.write_text("def boom(prompt, completion, record):\n    raise ValueError('bad day')\n"
                      "def nan(prompt, completion, record):\n    return float('nan')\n"
                      "def text(prompt, completion, record):\n    return 'high'\n")
    for fn, says in (("boom", "raised ValueError: bad day"), ("nan", "returned nan"), ("text", "returned 'high'")):
        rewards = build_rewards(RLConfig(rewards=[RewardConfig(function=f"{module}:{fn}")]))
        scored = _score(rewards, "x", {})
        assert scored.reward is None and says in scored.error


def test_a_reward_model_folder_scores_prompt_and_completion(tmp_path, tiny_llama):
    from tuneforge.models.reward_head import attach_score_head, save_reward_model

    model, tok = load_model(tiny_llama), load_tokenizer(tiny_llama)
    attach_score_head(model)
    folder = save_reward_model(model, tok, tmp_path / "reward_model")
    rewards = build_rewards(RLConfig(rewards=[RewardConfig(name="numeric")], reward_model=str(tmp_path),
                                     reward_model_weight=0.5))
    prompts = [Prompt([1], f"What is {i} + 1?", {"answer": str(i + 1)}, f"p.jsonl:{i}") for i in range(3)]
    texts = ["1", "the answer is 2", "four"]
    scored = rewards(prompts, texts)
    one_by_one = [rewards.model([p], [t])[0] for p, t in zip(prompts, texts)]
    assert [x.parts["reward_model"] for x in scored] == pytest.approx(one_by_one, abs=1e-5)
    model_part = [x.parts["reward_model"] for x in scored]
    assert [x.reward for x in scored] == pytest.approx([1 + 0.5 * model_part[0], 1 + 0.5 * model_part[1],
                                                        0.5 * model_part[2]])
    assert folder.is_dir() and len(set(one_by_one)) == 3


# ---------------------------------------------------------------- through the CLI

REWARD_MODULE = ("def length(prompt, completion, record):\n"
                 "    return float(len(completion) % 5)\n")


def _data(tmp_path, n: int = 6):
    rows = [{"prompt": f"What is {i} + {i % 3}?", "answer": str(i + i % 3)} for i in range(n)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def _rl_config(tmp_path, tiny_llama, name: str, train: dict | None = None, **rl):
    (tmp_path / "rewards_mod.py").write_text(REWARD_MODULE)
    rl = {"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 6, "beta": 0.04,
          "rewards": [{"function": f"{tmp_path / 'rewards_mod.py'}:length"}, {"name": "numeric"}]} | rl
    return write_config(tmp_path / f"{name}.yaml", tiny_llama, _data(tmp_path), tmp_path / name, recipe="rl",
                        data={"validation": str(_data(tmp_path / "val", 3))},
                        method={"name": "lora", "r": 4, "dropout": 0.1},  # dropout: the RNG must carry over too
                        train={"max_steps": 6, "grad_accum": 2, "save_every": 1, "compile": "false"} | (train or {}),
                        eval={"max_examples": 3, "batch_size": 8}, rl=rl)


def test_a_run_logs_rewards_and_reports_before_and_after(tmp_path, tiny_llama, capsys):
    cfg = _rl_config(tmp_path, tiny_llama, "run", algorithm="rloo")
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("reward_mean", "reward_std", "kl", "clip_fraction", "completion_length", "generate_share",
                "reward/numeric", "reward_errors"):
        assert all(key in r for r in rows), key
    assert 0 < rows[-1]["generate_share"] < 1
    report = json.loads((run / "report.json").read_text())
    assert report["rl_eval"]["before"]["prompts"] == 3 and "numeric" in report["rl_eval"]["after"]["parts"]
    ev = report["rl_eval"]
    c = ev["comparison"]  # paired on the same prompts: mean, intervals, difference
    assert c["n"] == 3 and c["before"] == pytest.approx(sum(ev["before"]["per_prompt"]) / 3)
    assert c["difference"][0] == pytest.approx(c["after"] - c["before"])
    assert "95% interval" in (run / "report.md").read_text()
    assert report["algorithm"] == "rloo" and report["reference"] == "adapter_disabled"
    doc = tmp_path / "rl.md"
    doc.write_text("# RL\n\n<!-- rl results: begin (written by tuneforge; edits between the markers are replaced) -->\n"
                   "<!-- rl results: end -->\n")
    code, _, err = run_cli(["runs", "report", run, "--into", doc, "--images", tmp_path / "img", "--command", "x"],
                           capsys)
    assert code == 0, err
    block = doc.read_text()
    assert "Held-out prompts (3, greedy)" in block and "![reward](img/run-reward.png)" in block
    assert "![loss]" not in block and (tmp_path / "img" / "run-reward.png").is_file()
    assert (run / "plots" / "reward.png").is_file() and "![reward]" in (run / "report.md").read_text()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _train(cfg, *extra) -> list[str]:
    return [sys.executable, "-m", "tuneforge", "train", str(cfg), *extra]


def test_kill9_mid_run_then_resume_matches_uninterrupted(tmp_path, tiny_llama):
    ref = _rl_config(tmp_path, tiny_llama, "ref")
    done = subprocess.run(_train(ref), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = _rl_config(tmp_path, tiny_llama, "cut")
    run = tmp_path / "cut"
    proc = subprocess.Popen(_train(cfg), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "step-0000003" / "progress.json").is_file():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(max((run / "checkpoints").glob("step-*/progress.json")).read_text())
    assert saved["stream"]["rounds"] >= 3 and saved["step"] < 6
    done = subprocess.run(_train(cfg, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k)  # it did learn something
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    drop = ("tokens_per_s", "generate_s", "generate_share")  # timings differ, nothing else may

    def same(line):
        return {k: v for k, v in json.loads(line).items() if k not in drop}
    assert [same(r) for r in rows] == [same(r) for r in ref_rows]


def _one_error_line(err: str, *parts: str) -> None:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("change, parts", [
    ({"num_generations": 1}, ["rl.num_generations", "at least 2"]),
    ({"rewards": [{"function": "no_such_module_here:score"}]}, ["rl.rewards.0.function", "cannot import",
                                                                 "no_such_module_here"]),
    ({"rewards": [{"function": "json:no_such_function"}]}, ["rl.rewards.0.function", "no function"]),
    ({"max_prompt_length": 8}, ["rl.max_prompt_length", "prompts are longer than 8 tokens", "prompts.jsonl:1"]),
    ({"rewards": [{"name": "exact_match", "field": "solution"}]}, ["prompts.jsonl:1", "no 'solution' field"]),
    ({"prompts_per_step": 1, "num_generations": 2, "train": {"grad_accum": 4}},
     ["train.grad_accum", "lower grad_accum"]),
])
def test_bad_input_is_refused_in_one_line(tmp_path, tiny_llama, capsys, change, parts):
    cfg = _rl_config(tmp_path, tiny_llama, "bad", **change)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2
    _one_error_line(err, *parts)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_data_arithmetic_writes_disjoint_prompt_sets_and_refuses_unknown_levels(tmp_path, capsys):
    code, out, err = run_cli(["data", "arithmetic", tmp_path / "ar", "--levels", "2d+2d,1dx2d", "--n-train", "30",
                              "--n-val", "10"], capsys)
    assert code == 0, err
    train = [json.loads(line) for line in (tmp_path / "ar" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (tmp_path / "ar" / "val.jsonl").read_text().splitlines()]
    assert (len(train), len(val)) == (30, 10) and not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    assert {r["level"] for r in train + val} == {"arithmetic 2d+2d", "arithmetic 1dx2d"}
    for r in train + val:  # the answer is the arithmetic's result
        a, op, b = r["prompt"].removeprefix("What is ").split("?")[0].split()
        assert int(r["answer"]) == (int(a) + int(b) if op == "+" else int(a) * int(b))
    code, _, err = run_cli(["data", "arithmetic", tmp_path / "bad", "--levels", "3d+3d"], capsys)
    assert code == 2
    _one_error_line(err, "--levels", "3d+3d", "2d+2d")
