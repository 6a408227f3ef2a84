"""The agent runtime, the step-wise evaluation and the agent recipe end to end on a tiny model."""

import json

import pytest
import torch

from conftest import report_into_doc, run_cli, write_config
from tuneforge.run_dir import RunDir
from tuneforge.agent.env import generate_tasks, world_registry
from tuneforge.agent.evaluate import static_predictions
from tuneforge.agent.models import RoleModels, systems
from tuneforge.agent.roles import TaskHeader, render_call, render_plan, render_step, target
from tuneforge.agent.runtime import AgentRuntime
from tuneforge.agent.trajectory import Call
from tuneforge.eval.agent_metrics import step_metrics


def _task(tools=("add", "multiply")):
    registry = world_registry()
    return TaskHeader("What is (2 + 3) times 4?", registry.specs(list(tools)))


class Scripted:
    """A fake model: per role, a queue of replies (the runtime batches, so replies are popped in order)."""

    def __init__(self, **replies):
        self.replies = {role: list(r) for role, r in replies.items()}
        self.prompts = []

    def __call__(self, role, prompts):
        self.prompts.append((role, prompts))
        return [self.replies[role].pop(0) for _ in prompts]


def test_runtime_runs_planner_caller_summarizer_with_real_tools():
    fake = Scripted(planner=["Add first.\nNext: caller", "Now multiply.\nNext: caller", "Done.\nNext: conclusion"],
                    caller=['Action: add\nAction Input: {"a": 2, "b": 3}',
                            'Action: multiply\nAction Input: {"a": 5, "b": 4}'],
                    summarizer=["The answer is 20."])
    ep = AgentRuntime(fake, world_registry()).run([_task()])[0]
    assert ep.final_answer == "The answer is 20." and not ep.gave_up and ep.steps == 3
    assert [s.observation for s in ep.history[:2]] == ["5", "20"]
    assert ep.hallucinated_calls == ep.parse_failures == 0
    # the caller saw the planner's thought of its own step
    caller_prompt = fake.prompts[1][1][0]
    assert caller_prompt[-1].text == render_plan("Add first.", "call")


def test_the_summarizer_answers_every_concluded_episode_in_one_call_after_all_have_ended():
    fake = Scripted(planner=["All known.\nNext: conclusion", "Add first.\nNext: caller",
                             "Now known.\nNext: conclusion"],
                    caller=['Action: add\nAction Input: {"a": 2, "b": 3}'],
                    summarizer=["Answer one.", "Answer two."])
    first, second = AgentRuntime(fake, world_registry()).run([_task(), _task()])
    assert [role for role, _ in fake.prompts] == ["planner", "caller", "planner", "summarizer"]
    asked = fake.prompts[-1][1]
    assert [p[-1].text for p in asked] == [render_plan("All known.", "finish"), render_plan("Now known.", "finish")]
    assert (first.final_answer, first.steps) == ("Answer one.", 1)
    assert (second.final_answer, second.steps) == ("Answer two.", 2)
    assert second.history[0].observation == "5" and not first.cut_off and not second.cut_off
    assert [t["role"] for t in second.trace] == ["planner", "caller", "planner", "summarizer"]


def test_hallucinated_tool_and_malformed_json_become_observations_not_crashes():
    fake = Scripted(planner=["Go.\nNext: caller", "Again.\nNext: caller", "Once more.\nNext: caller",
                             "Stop.\nNext: give up"],
                    caller=['Action: divide\nAction Input: {"a": 1, "b": 2}',  # exists in the world, not in the task
                            "Action: add\nAction Input: {a: 2,}",
                            "I would like to add numbers"])
    ep = AgentRuntime(fake, world_registry()).run([_task()])[0]
    assert ep.gave_up and ep.final_answer is None
    assert ep.hallucinated_calls == 1 and ep.parse_failures == 2
    assert "error" in ep.history[0].observation and "error" in ep.history[1].observation


def test_step_limit_cuts_an_episode_and_single_model_mode_parses_backbone_replies():
    loop = Scripted(planner=["Think.\nNext: caller"] * 3, caller=['Action: add\nAction Input: {"a": 1, "b": 1}'] * 3)
    ep = AgentRuntime(loop, world_registry(), max_steps=3).run([_task()])[0]
    assert ep.cut_off and ep.steps == 3
    single = Scripted(backbone=['Add.\nNext: caller\nAction: add\nAction Input: {"a": 2, "b": 3}',
                                "Have it.\nNext: conclusion\nIt is 5."])
    ep = AgentRuntime(single, world_registry(), single_model=True).run([_task()])[0]
    assert ep.final_answer == "It is 5." and ep.history[0].observation == "5"


def test_lenient_runtime_reads_replies_as_the_reference_pipeline_does():
    """Strict: a planner reply without "Next:" is a parse failure; lenient: it goes to the caller."""
    replies = dict(planner=["Add two and three", "Done.\nNext: conclusion"],
                   caller=['Action: add\nAction Input: {"a": 2, "b": 3}'], summarizer=["It is 5."])
    strict = AgentRuntime(Scripted(**{k: list(v) for k, v in replies.items()}), world_registry(),
                          max_steps=2).run([_task()])[0]
    assert strict.parse_failures == 1 and strict.history[0].decision is None
    lenient = AgentRuntime(Scripted(**{k: list(v) for k, v in replies.items()}), world_registry(),
                           parsing="lenient").run([_task()])[0]
    assert lenient.parse_failures == 0 and lenient.history[0].observation == "5"
    assert lenient.final_answer == "It is 5."
    single = Scripted(backbone=['I will add.\nAction: add\nAction Input: {"a": 2, "b": 3}',
                                "Have it.\nNext: conclusion\nIt is 5."])
    ep = AgentRuntime(single, world_registry(), single_model=True, parsing="lenient").run([_task()])[0]
    assert ep.history[0].observation == "5" and ep.final_answer == "It is 5."


def test_runtime_batches_episodes_by_role():
    fake = Scripted(planner=["Stop.\nNext: give up"] * 3)
    eps = AgentRuntime(fake, world_registry()).run([_task(), _task(), _task()])
    assert all(e.gave_up for e in eps) and len(fake.prompts) == 1 and len(fake.prompts[0][1]) == 3


def test_static_evaluation_of_a_perfect_agent_scores_perfectly():
    tasks = [t for t in generate_tasks(6, seed=1, split="train") if t.meta["gold_answer"] is not None][:4]
    steps = [(t, i) for t in tasks for i, s in enumerate(t.steps)]

    class Oracle:
        def __call__(self, role, prompts):
            out = []
            for segs in prompts:
                # find the gold step whose context this is: match on instruction and history length
                t, i = next((t, i) for t, i in steps if segs[1].text == t.instruction
                            and sum(1 for s in segs if s.role == "assistant") - (role in ("caller", "summarizer")) == i)
                out.append(target(role, t.steps[i]))
            return out

    for single in (False, True):
        m = step_metrics(static_predictions(Oracle(), tasks, single))
        assert m["plan_accuracy"] == 1.0 and m["action_em"] == 1.0 and m["argument_f1"] == 1.0
        assert m["hallucination_rate"] == 0.0 and m["rouge_l"] == 1.0


def test_backbone_history_rendering_is_what_the_backbone_writes():
    t = generate_tasks(3, seed=0, split="train")[0]
    step = t.steps[0]
    assert render_step(step).endswith(render_call(step.call))
    assert target("backbone", step) == render_step(step)
    assert target("caller", step) == render_call(Call(step.call.name, step.call.arguments))


# ---------------------------------------------------------------- recipe, end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    from tuneforge.agent.env import write_world

    return write_world(root, n_train=24, n_test=4, seed=0)


def test_agent_recipe_trains_backbone_roles_and_baseline_then_evaluates(tmp_path, tiny_llama, world, capsys):
    cfg = write_config(tmp_path / "agent.yaml", tiny_llama, world["train"], tmp_path / "run", recipe="agent",
                       data={"max_length": 2048}, train={"max_steps": 2, "batch_tokens": 4096},
                       agent={"global_stage": {"max_steps": 2}, "local_stage": {"max_steps": 1},
                              "test": [str(world["test_id"]), str(world["test_ood"])], "eval_max_tasks": 2,
                              "episode_max_steps": 2, "max_new_tokens": 8})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    layout = json.loads((run / "agent.json").read_text())
    assert layout["steps"]["global"] == 2 and layout["steps"]["local"] == 3
    # Two baselines: the backbone itself, and the backbone trained on for stage 2's tokens.
    assert set(layout["baselines"]) == {"backbone", "backbone trained on"}
    assert layout["baselines"]["backbone"] == "global/adapter"
    per_step = layout["tokens"]["global"] / layout["steps"]["global"]
    assert layout["steps"]["trained on"] == max(1, round(layout["tokens"]["local"] / per_step))
    trained_on = json.loads((run / layout["baselines"]["backbone trained on"] / "adapter_config.json").read_text())
    assert trained_on["base_model_name_or_path"].endswith("global/merged")  # it starts from the backbone
    assert set(layout["roles"]) == {"planner", "caller", "summarizer"}
    assert (run / "global" / "merged" / "config.json").is_file()
    for role in layout["roles"].values():
        cfg_json = json.loads((run / role / "adapter_config.json").read_text())
        assert cfg_json["base_model_name_or_path"].endswith("global/merged")
    results = json.loads((run / "agent_results.json").read_text())
    held = systems(layout)
    assert len(held) >= 2 and held[0] == "three roles"
    for res in results.values():
        assert list(res["systems"]) == held
        for metrics in res["systems"].values():
            assert {"plan_accuracy", "action_em", "hallucination_rate", "argument_f1", "success_rate"} <= set(metrics)
        for parsing in ("strict", "lenient"):
            report = res["step_wise"][parsing]
            assert set(report["metrics"]) == set(held) and set(report["paired"]) == set(held[1:])
            ci = report["metrics"]["three roles"]["plan_accuracy"]
            assert ci["tasks"] == 2 and (ci["point"] is None or ci["lo"] <= ci["point"] <= ci["hi"])
            assert set(report["mcnemar"][held[1]]) == {"plan_accuracy", "action_em"}
            assert set(report["errors"]["three roles"]["by_role"]) == {"planner", "caller", "summarizer"}
        assert {"success_rate"} <= set(res["end_to_end"]["metrics"]["three roles"])
    md = (run / "agent.md").read_text()
    assert "three roles" in md and "Strict vs lenient parsing" in md and "is **no difference**" in md
    assert RunDir(run).status() == "finished" and layout["test"]  # the one status rule, on a real agent run
    # Generation precision: bf16 weights where asked (auto picks it on AMX / CUDA), fp32 otherwise.
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        models = RoleModels(run, "backbone", precision=precision)
        assert next(models._models["backbone"][0].parameters()).dtype == dtype
    roles = RoleModels(run, precision="bf16")  # each role its own model, its adapter folded in
    assert all(next(m.parameters()).dtype == torch.bfloat16 for m, _ in roles._models.values())
    assert next(RoleModels(run, precision="bf16", fold_adapters=False)._set.model.parameters()).dtype == torch.bfloat16
    # Folded adapters, the prefix cache and the reply memory change no reply (fp32): the same as one
    # base with the adapters switched and every prompt generated from scratch.
    from tuneforge.agent.evaluate import static_replies
    from tuneforge.agent.env import read_tasks

    tasks = read_tasks(world["test_id"])[:2]
    fast = RoleModels(run, precision="fp32")
    plain = RoleModels(run, precision="fp32", fold_adapters=False, prefix_cache_gb=0)
    first = static_replies(fast, tasks, False, fast.tokenizer)
    assert first == static_replies(plain, tasks, False, plain.tokenizer)
    assert fast._caches["planner"].reused_tokens > 0
    assert static_replies(fast, tasks, False, fast.tokenizer) == first  # asked again: answered from memory
    traces = list((run / "traces").glob("*.jsonl"))
    assert len(traces) == 2 * len(held)  # one per test file and system
    first = json.loads(traces[0].read_text().splitlines()[0])
    assert first["trace"] and {"role", "reply"} <= set(first["trace"][0])

    code, out, err = run_cli(["agent", "run", run, "What is 2 plus 2?", "--max-steps", "1"], capsys)
    assert code == 0, err
    assert "trace:" in out

    text = report_into_doc(run, "agent", tmp_path, capsys, "make agent-demo")
    assert "three roles" in text
    assert (tmp_path / "img" / "run-agent-test_id.png").is_file() and "(img/run-agent-test_id.png)" in text

    # A rerun with the same weights and settings reuses every finished system; new settings do not.
    from tuneforge.agent.evaluate import evaluate_run

    settings = dict(max_tasks=1, max_steps=1, max_new_tokens=8)
    tests = [str(world["test_id"])]
    said: list[str] = []
    first = evaluate_run(run, tests, **settings, log=said.append)
    assert not any("reused" in line for line in said)
    said.clear()
    assert evaluate_run(run, tests, **settings, log=said.append) == first
    assert sum("reused" in line for line in said) == len(held)
    said.clear()
    evaluate_run(run, tests, **(settings | {"max_steps": 2}), log=said.append)
    assert not any("reused" in line for line in said)
    # What bench/agent_swap_role.py reads to skip re-evaluating the three roles: the saved outputs under
    # the settings they were made with, and nothing under others.
    from tuneforge.agent.evaluate import evaluation_key, saved_outputs
    from tuneforge.agent.models import THREE_ROLES, read_agent_layout

    fixed = dict(max_new_tokens=8, max_length=2048, max_observation_chars=1500)
    key = evaluation_key(run, read_agent_layout(run), tests, max_tasks=1, max_steps=2, **fixed)
    saved = saved_outputs(run, THREE_ROLES, key)
    assert saved is not None and set(saved) == set(tests)
    assert saved_outputs(run, THREE_ROLES, key | {"max_steps": 1}) is None


def test_agent_inspect_reports_the_toolbench_counts(capsys):
    from conftest import shared_toolbench

    if shared_toolbench() is None:
        pytest.skip("the shared ToolBench data is not here (set TUNEFORGE_SHARED_TOOLBENCH)")
    path = shared_toolbench() / "out_of_domain.json"
    code, out, err = run_cli(["agent", "inspect", path], capsys)
    assert code == 0, err
    assert "400 tasks" in out and "1,658 planner steps" in out and "111 no decision" in out


def test_agent_recipe_refuses_unmergeable_adapters(tmp_path, tiny_llama, world, capsys):
    cfg = write_config(tmp_path / "agent.yaml", tiny_llama, world["train"], tmp_path / "run", recipe="agent",
                       method="bottleneck")
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2 and "cannot be merged" in err and not (tmp_path / "run").exists()


def test_agent_world_command_writes_splits_and_toolbench_exports(tmp_path, capsys):
    from tuneforge.agent.toolbench import read_toolbench

    code, out, err = run_cli(["agent", "world", tmp_path / "w", "--n-train", "10", "--n-test", "3"], capsys)
    assert code == 0, err
    for split in ("train", "test_id", "test_ood"):
        trajectories, report = read_toolbench(tmp_path / "w" / f"{split}.toolbench.json")
        assert report.problems == [] and len(trajectories) == (10 if split == "train" else 3)


def test_bad_training_trajectories_are_reported_and_skipped(tmp_path, tiny_llama, capsys):
    import shutil

    from conftest import shared_toolbench

    if shared_toolbench() is None:
        pytest.skip("the shared ToolBench data is not here (set TUNEFORGE_SHARED_TOOLBENCH)")
    src = shared_toolbench() / "raw_data_stage_1.json"
    train = shutil.copy(src, tmp_path / "raw.json")
    cfg = write_config(tmp_path / "agent.yaml", tiny_llama, train, tmp_path / "run", recipe="agent",
                       data={"max_length": 4096, "val_ratio": 0.0}, train={"max_steps": 1},
                       agent={"roles": ["planner"], "baseline": False, "global_stage": {"max_steps": 1},
                              "local_stage": {"max_steps": 1}})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert len(report["problems"]) == 9 and all({"where", "turn", "reason"} <= set(p) for p in report["problems"])
    assert "skipped" in report["summary"]
    code, out, err = run_cli(["train", cfg, "agent.bad_steps=reject", "--overwrite"], capsys)
    assert code == 2 and "raw.json: task" in err


def test_full_fine_tuning_gives_one_model_folder_per_role(tmp_path, tiny_llama, world, capsys):
    cfg = write_config(tmp_path / "agent.yaml", tiny_llama, world["train"], tmp_path / "run", recipe="agent",
                       method="full", data={"max_length": 2048}, train={"max_steps": 1},
                       agent={"roles": ["planner", "caller"], "baseline": False,
                              "global_stage": {"max_steps": 1}, "local_stage": {"max_steps": 1}})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    layout = json.loads((tmp_path / "run" / "agent.json").read_text())
    assert not layout["adapters"] and layout["base"] == "global/model"
    for path in layout["roles"].values():
        assert (tmp_path / "run" / path / "config.json").is_file()


def test_episodes_in_chunks_end_as_in_one_lockstep():
    class ByPrompt:
        """Replies that depend on the prompt only (how many steps it holds), so any batching gives the same."""

        def __init__(self):
            self.batches = []

        def __call__(self, role, prompts):
            self.batches.append((role, len(prompts)))
            out = []
            for p in prompts:
                done = sum(s.role == "assistant" for s in p) // 2
                if role == "planner":
                    out.append("Add.\nNext: caller" if done < 2 else "Done.\nNext: conclusion")
                elif role == "caller":
                    out.append('Action: add\nAction Input: {"a": 1, "b": 1}')
                else:
                    out.append(f"It is {len(p)}.")
            return out

    tasks = [_task() for _ in range(5)]
    whole, chunked = ByPrompt(), ByPrompt()
    a = AgentRuntime(whole, world_registry()).run(tasks, chunk=5)
    b = AgentRuntime(chunked, world_registry()).run(tasks, chunk=2)
    assert [(e.final_answer, e.steps) for e in a] == [(e.final_answer, e.steps) for e in b]
    # a chunk's planner and caller are asked together; the summarizer once, for every episode
    assert max(n for r, n in whole.batches if r != "summarizer") == 5
    assert max(n for r, n in chunked.batches if r != "summarizer") == 2
    assert [b for b in chunked.batches if b[0] == "summarizer"] == [("summarizer", 5)]
