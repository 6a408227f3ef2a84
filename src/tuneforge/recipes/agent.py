"""Multi-LLM agent, global-to-local progressive fine-tuning.

Stage 1 (global): the base learns whole trajectories as one backbone (thought, decision, action or
answer at every step). Stage 2 (local): the backbone is copied into a planner, a caller and a
summarizer, each trained on its own tokens only. With an adapter method the stage-1 adapter is
merged into a base folder and each role is one adapter on that shared base; with full
fine-tuning each role is a model folder. The single-model baseline trains the backbone on the
same data for as many steps as both stages together, so the comparison is fair.

    run/
      global/      stage 1 (adapter/ or model/) and merged/ (the shared base of the roles)
      roles/NAME/  stage 2, one per role
      single/      the baseline
      agent.json   where each piece is (read by `tuneforge agent run|eval`)
      agent.md, agent_results.json, plots/agent-*.png, traces/*.jsonl
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from tuneforge.agent.evaluate import load_trajectories
from tuneforge.agent.models import AGENT_FILE
from tuneforge.agent.roles import build_role_examples, fit_to_length
from tuneforge.agent.trajectory import Trajectory
from tuneforge.config import Config, StageTrain, dump_config
from tuneforge.data.dataset import encode_split, hold_out
from tuneforge.data.formats import Example
from tuneforge.errors import UserError
from tuneforge.models.methods import METHODS
from tuneforge.runs import check_run_dir, create_run_dir, write_json
from tuneforge.atomic import atomic_write_text


def say(msg: str) -> None:
    print(f"[tuneforge] {msg}", flush=True)


def stage_config(cfg: Config, stage: StageTrain) -> Config:
    """The run's config with one stage's training settings laid over the `train` section."""
    out = cfg.model_copy(deep=True)
    for key, value in stage.model_dump(exclude_none=True).items():
        setattr(out.train, key, value)
    if stage.max_steps is None and stage.epochs is not None:
        out.train.max_steps = None
    return out


def _fitted(examples: list[Example], tokenizer, max_length: int) -> list[Example]:
    # Long histories lose their oldest steps, never the instruction, the tools or the target.
    return [Example(fit_to_length(e.segments, tokenizer, max_length), e.where, e.meta) for e in examples]


def _split(trajectories: list[Trajectory], cfg: Config) -> tuple[list[Trajectory], list[Trajectory]]:
    if cfg.data.validation:
        val, _ = load_trajectories(cfg.data.validation, "skip" if cfg.agent.bad_steps == "skip" else "reject")
        return trajectories, val
    return hold_out(trajectories, cfg.data.val_ratio, cfg.seed)


def _train_stage(name: str, model_path: str, role: str, train_t, val_t, cfg: Config, stage: StageTrain,
                 run: Path) -> tuple[Path, int]:
    """Fine-tune model_path on one role's examples; returns the artifact folder and the steps taken."""
    from accelerate.utils import set_seed

    from tuneforge.data.render import setup_chat_template
    from tuneforge.models.load import load_model_and_tokenizer
    from tuneforge.recipes.sft import prepare_model, save_artifact, train_method

    scfg = stage_config(cfg, stage)
    set_seed(cfg.seed)
    model, tokenizer, _ = load_model_and_tokenizer(model_path, scfg.train.dropout)
    setup_chat_template(tokenizer, cfg.data.chat_template, model_path)
    train_ex, skipped = build_role_examples(train_t, role)
    val_ex, _ = build_role_examples(val_t, role)
    train = encode_split(_fitted(train_ex, tokenizer, cfg.data.max_length), tokenizer, cfg.data)
    val = encode_split(_fitted(val_ex, tokenizer, cfg.data.max_length), tokenizer, cfg.data)
    if not train.encoded:
        raise UserError(f"agent stage {name}: no usable {role} examples in {cfg.data.train}: {len(train_ex)} built "
                        f"(skipped steps: {dict(skipped) or 'none'}), {train.dropped} dropped and "
                        f"{train.no_target} cut before their target by data.max_length {cfg.data.max_length}; "
                        "raise data.max_length or check the trajectories")
    say(f"stage {name}: {len(train.encoded)} {role} examples ({len(val.encoded)} validation), "
        f"{train.truncated} truncated" + (f", skipped steps: {dict(skipped)}" if skipped else ""))
    out = run / name
    accelerator, _, amp = prepare_model(model, scfg, train.encoded)
    model, result, _, _ = train_method(model, tokenizer, train.encoded, val.encoded, scfg, out, accelerator, amp,
                                       log=say)
    artifact = save_artifact(model, tokenizer, out, cfg.method.name)
    # The accelerator holds the prepared model and optimizer: release them before the next stage
    # loads its own model, or five stages keep five models and their optimizer states alive.
    accelerator.free_memory()
    del model
    gc.collect()
    return artifact, result.steps


def run_agent(cfg: Config, *, overwrite: bool = False) -> Path:
    from tuneforge.models.load import resolve_model_path
    from tuneforge.models.merge import merge_run

    started = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = check_run_dir(cfg.output_dir, overwrite, False)
    method = METHODS[cfg.method.name]
    if method.adapter and not method.mergeable:
        raise UserError(f"method: {cfg.method.name} is not supported by recipe: agent (stage 1 is merged into "
                        "the base the roles share, and this adapter cannot be merged); use lora, dora, ia3, "
                        "freeze or full")
    policy = "skip" if cfg.agent.bad_steps == "skip" else "reject"
    problems: list[dict] = []
    trajectories, summary = load_trajectories(cfg.data.train, policy, problems)
    say(summary)
    if cfg.data.max_examples:
        trajectories = trajectories[: cfg.data.max_examples]
    train_t, val_t = _split(trajectories, cfg)
    base = resolve_model_path(cfg.model)
    create_run_dir(run, overwrite, False)
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    write_json(run / "data_report.json", {"summary": summary, "policy": policy, "problems": problems})
    if problems:
        say(f"{len(problems)} problems in the training trajectories (their tasks are skipped); "
            f"each with file, task and reason in {run / 'data_report.json'}")
    adapters = method.adapter

    # Stage 1: global fine-tuning of the backbone on whole trajectories.
    g_artifact, g_steps = _train_stage("global", base, "backbone", train_t, val_t, cfg, cfg.agent.global_stage, run)
    if adapters:
        shared = merge_run(g_artifact, run / "global" / "merged")
    else:
        shared = g_artifact
    say(f"stage 1 done: {g_steps} steps; the roles start from {shared}")

    # Stage 2: local fine-tuning, one role at a time, each from the stage-1 model.
    roles, local_steps = {}, 0
    for role in cfg.agent.roles:
        stage = cfg.agent.role_stage.get(role) or cfg.agent.local_stage
        artifact, steps = _train_stage(f"roles/{role}", str(shared), role, train_t, val_t, cfg, stage, run)
        roles[role] = str(artifact.relative_to(run))
        local_steps += steps

    layout = {"method": cfg.method.name, "adapters": adapters, "base": str(Path(shared).relative_to(run)),
              "roles": roles, "single": None, "steps": {"global": g_steps, "local": local_steps}}
    if cfg.agent.baseline:
        # Same data, same total optimizer steps as both stages together, from the same base.
        total = g_steps + local_steps
        single_stage = cfg.agent.global_stage.model_copy(update={"max_steps": total, "epochs": None})
        artifact, steps = _train_stage("single", base, "backbone", train_t, val_t, cfg, single_stage, run)
        layout["single"] = str(artifact.relative_to(run))
        layout["steps"]["single"] = steps
    write_json(run / AGENT_FILE, layout)
    say(f"trained in {time.time() - started:.0f} s")

    if cfg.agent.test:
        from tuneforge.agent.evaluate import evaluate_run

        evaluate_run(run, cfg.agent.test, max_tasks=cfg.agent.eval_max_tasks, max_steps=cfg.agent.episode_max_steps,
                     max_new_tokens=cfg.agent.max_new_tokens, max_length=cfg.data.max_length,
                     max_observation_chars=cfg.agent.max_observation_chars, log=say)
    return run
