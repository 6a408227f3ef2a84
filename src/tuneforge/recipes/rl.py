"""Reinforcement learning with rewards (GRPO; RLOO advantages as an option): prompts -> completions
sampled by the policy while it trains (train/rollouts.py, an online source of the shared loop) ->
rewards (recipes/rl_rewards.py) -> the clipped policy-gradient loss (train/losses/grpo.py) -> the
held-out prompts answered greedily and scored with the same rewards, before and after.

Data: a JSONL (or any file recipe sft reads) of records with `prompt` (a string or a list of messages)
and the fields the rewards read (e.g. `answer`). Steps: train.max_steps, or by default enough for
train.epochs passes over the prompts at rl.prompts_per_step a step. Each step's
prompts_per_step x num_generations completions are split over train.grad_accum micro-batches.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tuneforge.config import Config
from tuneforge.data.dataset import hold_out
from tuneforge.data.sources import Record, read_records
from tuneforge.docs_block import copy_images, shift_headings, write_block
from tuneforge.errors import UserError
from tuneforge.eval.before_after import compare_scores
from tuneforge.eval.generate import generate, generation_autocast, generation_config, render_prompt, seeded
from tuneforge.models.methods import METHODS
from tuneforge.recipes.base import RecipeBase
from tuneforge.recipes.rl_rewards import Rewards, build_rewards, check_fields, reward_functions
from tuneforge.report import (REWARD_PLOT, before_after_table, insert_section, plot_reward, read_section,
                              write_report)
from tuneforge.run_dir import PLOTS, RunDir
from tuneforge.train.losses.grpo import GRPOLoss
from tuneforge.train.rollouts import Completion, Prompt, RolloutSource
from tuneforge.train.session import Session


class RL(RecipeBase):
    name = "rl"

    def check(self, cfg: Config) -> None:
        if METHODS[cfg.method.name].virtual_tokens:
            raise UserError(f"method: {cfg.method.name} is not supported by recipe: rl (its virtual tokens go in "
                            "front of each sequence, which breaks packed completions); use lora, dora, ia3, "
                            "bottleneck, freeze or full")
        reward_functions(cfg.rl)  # imports the user's functions: a bad one is refused before anything loads
        if cfg.rl.prompts_per_step * cfg.rl.num_generations < cfg.train.grad_accum:
            raise UserError(f"train.grad_accum: {cfg.train.grad_accum} micro-batches a step, but a step samples "
                            f"only {cfg.rl.prompts_per_step * cfg.rl.num_generations} completions "
                            "(rl.prompts_per_step x rl.num_generations); lower grad_accum")

    def run(self, s: Session) -> Path:
        cfg, rl = s.cfg, s.cfg.rl
        s.load_model()
        rewards = build_rewards(rl, s.policy, cfg.data.max_length)
        train, val, too_long = load_prompts(s)
        if cfg.train.max_steps is None:  # recorded in config.yaml, so --resume and a rerun plan the same
            cfg.train.max_steps = math.ceil(cfg.train.epochs * len(train) / rl.prompts_per_step)
            s.log(f"train.max_steps: {cfg.train.max_steps} ({cfg.train.epochs} x {len(train)} prompts at "
                  f"{rl.prompts_per_step} a step)")
        s.start()
        source = RolloutSource(
            train, policy=lambda: s.model, sample=sampler(s),
            score=rewards, algorithm=rl.algorithm, num_generations=rl.num_generations,
            prompts_per_step=rl.prompts_per_step, micro_batches=cfg.train.grad_accum,
            max_new_tokens=rl.max_new_tokens, packing=cfg.train.packing, seed=cfg.seed,
            on_reward_error=rl.on_reward_error, log=s.log)
        s.prepare(source)
        if s.accelerator.num_processes > 1:
            raise UserError("recipe rl runs in one process for now (every process would sample the same "
                            "completions); start it without torchrun / accelerate launch")
        held_out = val[:cfg.eval.max_examples]
        before = None
        if cfg.eval.before_after and cfg.eval.base and held_out:
            before = s.evaluate_once(lambda: score_held_out(s, held_out, rewards),
                                     f"answering {len(held_out)} held-out prompts with the starting model...")
        result = s.fit(source, [], loss=lambda m: GRPOLoss(m, rl.beta, rl.epsilon, rl.temperature))
        s.save_artifact()
        summary = s.summary(result) | {
            "train_prompts": len(train), "val_prompts": len(val), "prompts_too_long": too_long,
            "algorithm": rl.algorithm, "num_generations": rl.num_generations,
            "prompts_per_step": rl.prompts_per_step, "beta": rl.beta, "epsilon": rl.epsilon,
            "temperature": rl.temperature, "reference": s.loss.reference, **source.totals}
        if cfg.eval.before_after and held_out:
            s.log("answering the held-out prompts with the tuned model...")
            after = score_held_out(s, held_out, rewards)
            # a run resumed from one started before per-prompt scores were kept has only the means
            compared = compare_held_out(before, after) if before and "per_prompt" in before else {}
            summary["rl_eval"] = {"before": before, "after": after} | compared
        return s.finish(summary, write=_write_rl_report)

    def outputs(self, run: Path) -> dict[str, Path]:
        files = RunDir(run)
        return {"artifact": files.artifact(), "report": files.report_md, "reward plot": files.plots / REWARD_PLOT}


# ---------------------------------------------------------------- data

def _prompt_of(rec: Record):
    prompt = rec.data.get("prompt")
    messages = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
    if not (isinstance(prompt, str) and prompt.strip()) and not messages:
        raise UserError(f"{rec.where}: a prompt record needs 'prompt': a non-empty string or a list of messages "
                        "({role, content})")
    return prompt


def encode_prompts(records: list[Record], tokenizer, system: str | None, limit: int) -> tuple[list[Prompt], list]:
    """(the prompts within `limit` tokens, (where, tokens) of those longer): rendered and tokenized exactly
    as the generator does it, so training samples what evaluation and chat will see."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    kept, too_long = [], []
    for rec in records:
        prompt = _prompt_of(rec)
        ids = tokenizer(render_prompt(tokenizer, prompt, system), add_special_tokens=not has_template)["input_ids"]
        if len(ids) > limit:
            too_long.append((rec.where, len(ids)))
        else:
            kept.append(Prompt(ids, prompt, rec.data, rec.where))
    return kept, too_long


def load_prompts(s: Session) -> tuple[list[Prompt], list[Prompt], int]:
    """(train prompts, held-out prompts, how many were too long). Bad records, missing answer fields and
    too many long prompts are refused in one line naming the file and line."""
    data, rl = s.cfg.data, s.cfg.rl
    bad = [] if data.on_bad_record == "skip" else None
    records = read_records(data.train, data.split, bad)
    if data.validation:
        train_records, val_records = records, read_records(data.validation, data.split, bad)
    else:
        train_records, val_records = hold_out(records, data.val_ratio, s.cfg.seed)
    check_fields(rl, train_records + val_records)
    train, long_train = encode_prompts(train_records, s.tokenizer, data.system_prompt, rl.max_prompt_length)
    val, long_val = encode_prompts(val_records, s.tokenizer, data.system_prompt, rl.max_prompt_length)
    too_long = long_train + long_val
    read = len(train_records) + len(val_records) + len(bad or [])
    lost = len(too_long) + len(bad or [])
    if too_long and (lost / max(read, 1) > data.max_lost or not train):
        where, n = too_long[0]
        raise UserError(f"rl.max_prompt_length: {len(too_long)} of {read} prompts are longer than "
                        f"{rl.max_prompt_length} tokens (first: {where}, {n} tokens), more than data.max_lost "
                        f"{data.max_lost} allows; raise rl.max_prompt_length or shorten them")
    if not train:
        raise UserError(f"data.train: no usable prompts in {data.train} ({len(bad or [])} unreadable)")
    s.log(f"data: {len(train)} train / {len(val)} held-out prompts, {len(too_long)} left out as longer than "
          f"rl.max_prompt_length {rl.max_prompt_length}, {len(bad or [])} unreadable")
    return train, val, len(too_long)


# ---------------------------------------------------------------- sampling and evaluation

def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


def _sample_batch(model, tokenizer, prompts: list[list[int]], gen_config, temperature: float) -> list[Completion]:
    device = next(model.parameters()).device
    ids, mask = _left_padded(prompts, gen_config.pad_token_id)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config)
    new = out.sequences[:, ids.shape[1]:]
    # the raw logits of each step, as the loss will see them: softmax(logits / temperature)
    logps = torch.stack([torch.log_softmax(step.float() / temperature, dim=-1).gather(1, new[:, t:t + 1]).squeeze(1)
                         for t, step in enumerate(out.logits)], dim=1)
    eos = set(gen_config.eos_token_id)
    completions = []
    for row, tokens in enumerate(new.tolist()):
        end = next((k + 1 for k, t in enumerate(tokens) if t in eos), None)  # the end token is trained too
        n = end or len(tokens)
        completions.append(Completion(tokens[:n], logps[row, :n].tolist(),
                                      tokenizer.decode(tokens[:n], skip_special_tokens=True), end is None))
    return completions


@torch.compiler.set_stance("force_eager")  # blocks compiled for training would recompile for the KV cache
def sample_completions(model, tokenizer, prompts: list[list[int]], seed: int, *, max_new_tokens: int,
                       temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                       bf16: bool = False) -> list[Completion]:
    """One sampled completion per prompt (token ids, with their log-probabilities when sampled), in
    batches, with the generator's settings (eval.generate.generation_config) and KV cache; seeded."""
    gen_config = generation_config(model, tokenizer, max_new_tokens, temperature, top_p)
    gen_config.update(output_logits=True, return_dict_in_generate=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # sampling-time log-probabilities without dropout
    out: list[Completion] = []
    try:
        with torch.inference_mode(), generation_autocast(device, bf16), seeded(seed, device):
            for start in range(0, len(prompts), batch_size):
                out += _sample_batch(model, tokenizer, prompts[start:start + batch_size], gen_config, temperature)
    finally:
        model.train(was_training)
    return out


def sampler(s: Session):
    """The rollout source's `sample`, with the run's settings."""
    rl = s.cfg.rl

    def sample(model, prompts: list[list[int]], seed: int) -> list[Completion]:
        bf16 = s.amp is not None and s.device.type == "cuda"  # on CPU bf16 generation is slower (recipes/sft.py)
        return sample_completions(model, s.tokenizer, prompts, seed, max_new_tokens=rl.max_new_tokens,
                                  temperature=rl.temperature, top_p=rl.top_p, batch_size=s.cfg.eval.batch_size,
                                  bf16=bf16)
    return sample


def score_held_out(s: Session, prompts: list[Prompt], rewards: Rewards) -> dict:
    """Greedy answers to the held-out prompts, scored with the training rewards: the mean of their sum
    and of each (for a 0/1 reward such as numeric or exact_match, its accuracy)."""
    bf16 = s.amp is not None and s.device.type == "cuda"
    texts = generate(s.model, s.tokenizer, [p.text for p in prompts], max_new_tokens=s.cfg.rl.max_new_tokens,
                     batch_size=s.cfg.eval.batch_size, system=s.cfg.data.system_prompt, autocast_bf16=bf16)
    scored = rewards(prompts, texts)
    ok = [x for x in scored if x.reward is not None]
    parts = {name: round(sum(x.parts[name] for x in ok) / len(ok), 4) for name in (ok[0].parts if ok else {})}
    return {"prompts": len(prompts), "reward": round(sum(x.reward for x in ok) / len(ok), 4) if ok else None,
            "parts": parts, "reward_errors": len(scored) - len(ok),
            "per_prompt": [x.reward for x in scored],  # None where a reward failed: left out of comparisons
            "group": [p.record.get("level", p.record.get("source")) for p in prompts],
            "samples": [{"prompt": str(p.text), "completion": t} for p, t in list(zip(prompts, texts))[:5]]}


def compare_held_out(before: dict, after: dict) -> dict:
    """Before and after on the same held-out prompts (those every reward scored both times): intervals,
    the paired difference and, for a 0/1 reward, McNemar's test; and the mean reward per `level` (or
    `source`) field where the records have one."""
    both = [i for i, (b, a) in enumerate(zip(before["per_prompt"], after["per_prompt"]))
            if b is not None and a is not None]
    b = [before["per_prompt"][i] for i in both]
    a = [after["per_prompt"][i] for i in both]
    out = {"comparison": compare_scores(b, a) | {"before": sum(b) / len(b) if b else None,
                                                 "after": sum(a) / len(a) if a else None}}
    groups: dict = {}
    for i in both:
        groups.setdefault(after["group"][i], []).append(i)
    if len(groups) > 1 or None not in groups:
        def mean(scores, ix):
            return round(sum(scores["per_prompt"][i] for i in ix) / len(ix), 4)
        out["by_group"] = {str(g): {"n": len(ix), "before": mean(before, ix), "after": mean(after, ix)}
                           for g, ix in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    return out


def _write_rl_report(run: Path, summary: dict) -> None:
    path = write_report(run, summary)
    lines = ["## Reinforcement learning", "",
             f"- **algorithm**: {summary['algorithm']}, **num_generations**: {summary['num_generations']}, "
             f"**prompts_per_step**: {summary['prompts_per_step']}, **beta**: {summary['beta']} "
             f"(reference: {summary['reference']}), **epsilon**: {summary['epsilon']}, "
             f"**temperature**: {summary['temperature']}",
             f"- **train_prompts**: {summary['train_prompts']}, **val_prompts**: {summary['val_prompts']}, "
             f"**prompts_too_long**: {summary['prompts_too_long']}, **reward_errors**: {summary['reward_errors']}, "
             f"**skipped_completions**: {summary['skipped_completions']}", ""]
    ev = summary.get("rl_eval")
    if ev:
        b, a = ev["before"] or {}, ev["after"]
        lines += [f"### Held-out prompts ({a['prompts']}, greedy)", "", "| reward | before | after |", "|---|---|---|",
                  f"| sum (weighted) | {b.get('reward', '-')} | {a['reward']} |"]
        lines += [f"| {name} | {b.get('parts', {}).get(name, '-')} | {value} |" for name, value in a["parts"].items()]
        lines.append("")
        if ev.get("comparison"):
            c = ev["comparison"]
            lines += [f"The summed reward on the {c['n']} prompts scored both times, with 95% bootstrap intervals "
                      "over prompts:", ""]
            lines += before_after_table({"metric": "reward", "examples": c["n"], **c}) + [""]
        if ev.get("by_group"):
            lines += ["| level | prompts | before | after |", "|---|---:|---:|---:|"]
            lines += [f"| {g} | {v['n']} | {v['before']:.3f} | {v['after']:.3f} |" for g, v in ev["by_group"].items()]
            lines.append("")
    if plot_reward(run):
        lines += [f"![reward]({PLOTS}/{REWARD_PLOT})", ""]
    insert_section(path, lines)


def publish(run: Path, doc: Path, images: Path, command: str, wall_seconds: float | None = None) -> Path:
    """Put an rl run's results (its report.md section: held-out reward before and after with intervals,
    per level, the reward curve) into `doc` between its rl results markers (`make rl-demo`: docs/rl.md)."""
    files = RunDir(run)
    body = read_section(run, "## Reinforcement learning", "rl")
    summary = files.report() or {}
    steps = summary.get("steps") or summary.get("step")
    body = copy_images(body, [files.plots / REWARD_PLOT], run.name, images, doc)
    return write_block(doc, "rl", shift_headings(body, 1), command, wall_seconds,
                       f"{steps} optimizer steps." if steps else "")
