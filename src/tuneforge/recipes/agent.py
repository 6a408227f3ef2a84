"""Multi-LLM agent, global-to-local progressive fine-tuning.

Stage 1 (global): the base learns whole trajectories as one backbone (thought, decision, action or
answer at every step; one sequence per trajectory, as the α-UMi reference trains it). Stage 2
(local): the backbone is copied into a planner, a caller and a summarizer, each trained on its own
tokens only. With an adapter method the stage-1 adapter is merged into a base folder and each role
is one adapter on that shared base; with full fine-tuning each role is a model folder. Baselines:
the backbone itself (the paper's comparison), and the backbone trained on whole trajectories for as
many tokens as the roles saw in stage 2 ("more training" without the decomposition).

    run/
      global/      stage 1 (adapter/ or model/) and merged/ (the shared base of the roles)
      roles/NAME/  stage 2, one per role
      single/      the "backbone trained on" baseline
      agent.json   where each piece is (read by `tuneforge agent run|eval`)
      agent.md, agent_results.json, plots/agent-*.png, traces/*.jsonl
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.agent.evaluate import evaluate_run, load_trajectories
from tuneforge.agent.roles import backbone_examples, build_role_examples, fit_to_length
from tuneforge.agent.trajectory import Trajectory
from tuneforge.atomic import write_json
from tuneforge.config import Config, StageTrain
from tuneforge.data.dataset import encode_split, hold_out
from tuneforge.data.formats import Example
from tuneforge.errors import UserError
from tuneforge.models.load import resolve_model_path
from tuneforge.models.merge import merge_run
from tuneforge.models.methods import METHODS
from tuneforge.run_dir import GLOBAL, ROLES, SINGLE, RunDir
from tuneforge.recipes.base import RecipeBase
from tuneforge.train.loop import LoopResult
from tuneforge.train.session import Session


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


def _train_stage(run: Session, name: str, model_path: str, role: str, train_t, val_t, stage: StageTrain
                 ) -> tuple[Path, LoopResult]:
    """Fine-tune model_path on one role's examples; returns the artifact folder and what the loop did."""
    cfg = run.cfg
    s = run.stage(stage_config(cfg, stage), name)
    s.load_model(model_path)
    split = 0
    if role == "backbone":  # whole trajectories, as the reference trains its backbone
        train_ex, skipped, split = backbone_examples(train_t, s.tokenizer, cfg.data.max_length)
        val_ex, _, _ = backbone_examples(val_t, s.tokenizer, cfg.data.max_length)
    else:
        train_ex, skipped = build_role_examples(train_t, role)
        val_ex, _ = build_role_examples(val_t, role)
        train_ex, val_ex = (_fitted(e, s.tokenizer, cfg.data.max_length) for e in (train_ex, val_ex))
    train = encode_split(train_ex, s.tokenizer, cfg.data)
    val = encode_split(val_ex, s.tokenizer, cfg.data)
    if not train.encoded:
        raise UserError(f"agent stage {name}: no usable {role} examples in {cfg.data.train}: {len(train_ex)} built "
                        f"(skipped steps: {dict(skipped) or 'none'}), {train.dropped} dropped and "
                        f"{train.no_target} cut before their target by data.max_length {cfg.data.max_length}; "
                        "raise data.max_length or check the trajectories")
    s.log(f"stage {name}: {len(train.encoded)} {role} examples ({len(val.encoded)} validation), "
          f"{train.truncated} truncated" + (f", skipped steps: {dict(skipped)}" if skipped else "")
          + (f"; {split} trajectories longer than data.max_length {cfg.data.max_length} trained as their "
             "separate steps" if split else ""))
    s.start(record_config=False)
    s.prepare(train.encoded)
    result = s.fit(train.encoded, val.encoded)
    artifact = s.save_artifact()
    s.release()
    return artifact, result


class Agent(RecipeBase):
    name = "agent"
    resumable = False
    resume_hint = "rerun with --overwrite"

    def outputs(self, run: Path) -> dict[str, Path]:
        out = {"layout": RunDir(run).agent_json}
        if RunDir(run).agent_md.is_file():
            out["results"] = RunDir(run).agent_md
        return out

    def run(self, session: Session) -> Path:
        return run_agent(session)


def run_agent(session: Session) -> Path:
    cfg, run, say = session.cfg, session.run, session.log
    method = METHODS[cfg.method.name]
    policy = "skip" if cfg.agent.bad_steps == "skip" else "reject"
    problems: list[dict] = []
    trajectories, summary = load_trajectories(cfg.data.train, policy, problems)
    say(summary)
    if cfg.data.max_examples:
        trajectories = trajectories[: cfg.data.max_examples]
    train_t, val_t = _split(trajectories, cfg)
    base = resolve_model_path(cfg.model)
    session.start()
    write_json(RunDir(run).data_report, {"summary": summary, "policy": policy, "problems": problems})
    if problems:
        say(f"{len(problems)} problems in the training trajectories (their tasks are skipped); "
            f"each with file, task and reason in {run / 'data_report.json'}")
    adapters = method.adapter

    # Stage 1: global fine-tuning of the backbone on whole trajectories.
    g_artifact, g = _train_stage(session, GLOBAL, base, "backbone", train_t, val_t, cfg.agent.global_stage)
    shared = merge_run(g_artifact, RunDir(run).merged, policy=session.policy) if adapters else g_artifact
    say(f"stage 1 done: {g.steps} steps, {g.tokens:,} tokens; the roles start from {shared}")

    # Stage 2: local fine-tuning, one role at a time, each from the stage-1 model.
    roles, local_steps, local_tokens, best_steps = {}, 0, 0, {"global": g.best_step}
    for role in cfg.agent.roles:
        stage = cfg.agent.role_stage.get(role) or cfg.agent.local_stage
        artifact, r = _train_stage(session, f"{ROLES}/{role}", str(shared), role, train_t, val_t, stage)
        roles[role] = str(artifact.relative_to(run))
        local_steps, local_tokens = local_steps + r.steps, local_tokens + r.tokens
        best_steps[role] = r.best_step

    # The paper compares with the backbone itself; "trained on" also gets stage 2's token budget, on
    # whole trajectories, so that "more training" and "decomposition" can be told apart.
    layout = {"method": cfg.method.name, "adapters": adapters, "base": str(Path(shared).relative_to(run)),
              "roles": roles, "baselines": {"backbone": str(g_artifact.relative_to(run))},
              "steps": {"global": g.steps, "local": local_steps},
              "tokens": {"global": g.tokens, "local": local_tokens},
              "best_step": best_steps,
              "test": list(cfg.agent.test or [])}  # RunDir.status: a run with tests is done once evaluated
    if cfg.agent.baseline:
        # Stage 1's batches (same data, same batch size), so its tokens per step carry over.
        steps = max(1, round(local_tokens / max(g.tokens / max(g.steps, 1), 1)))
        more = (cfg.agent.local_stage or StageTrain()).model_copy(update={
            "max_steps": steps, "epochs": None, "batch_tokens": cfg.agent.global_stage.batch_tokens})
        artifact, b = _train_stage(session, SINGLE, str(shared), "backbone", train_t, val_t, more)
        layout["baselines"]["backbone trained on"] = str(artifact.relative_to(run))
        layout["steps"]["trained on"], layout["tokens"]["trained on"] = b.steps, b.tokens
        layout["best_step"]["trained on"] = b.best_step
        if b.stopped_early:  # offered stage 2's tokens; its validation loss said the rest could not help
            layout["offered_steps"] = {"trained on": steps}
    write_json(RunDir(run).agent_json, layout)
    say(f"trained in {time.time() - session.started:.0f} s")

    if cfg.agent.test:
        evaluate_run(run, cfg.agent.test, max_tasks=cfg.agent.eval_max_tasks, max_steps=cfg.agent.episode_max_steps,
                     max_new_tokens=cfg.agent.max_new_tokens, max_length=cfg.data.max_length,
                     max_observation_chars=cfg.agent.max_observation_chars, log=say, policy=session.policy)
    return run
