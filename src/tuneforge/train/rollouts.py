"""Rollouts for recipe rl: an online batch source of THE loop (data.pack.is_online), like a token stream.

At the first micro-batch of each optimizer step the source takes the next `prompts_per_step` prompts,
samples G completions of each with the current policy (the `sample` callable the recipe passes in: the
batched generator with its KV cache, seeded by the sampling round, so a resumed run draws the same
samples), scores them (`score`: the reward functions) and gives each completion its advantage within
its prompt's group (`group_advantages`). The step's completions are then served as `micro_batches`
packed micro-batches whose examples carry, per completion token, the advantage and the sampling-time
log-probability (`Rollout.token_values`, collated by data.pack.collate for train/losses/grpo.py).

A reward that fails (raises, gives no finite number) is reported and handled by `on_reward_error`: the
completion or its whole group is left out and counted; a group needs 2 scored completions. A round
with too few usable completions is followed by another (counted); several in a row stop the run with
the reward's error. The position (epoch, prompts taken, rounds sampled) is what a checkpoint stores.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable

from tuneforge.data.pack import plan_micro_batches
from tuneforge.data.render import Encoded
from tuneforge.errors import UserError

ADVANTAGE_EPS = 1e-4  # GRPO's (r - mean) / (std + eps), TRL's value
MAX_EMPTY_ROUNDS = 3  # sampling rounds in a row with nothing usable before the run stops


@dataclass
class Rollout(Encoded):
    # Per-token floats a loss asks for by name (data.pack.collate): "advantage" and "old_logp".
    token_values: dict[str, list[float]] | None = None


@dataclass
class Prompt:
    ids: list[int]  # rendered with the chat template, ready for the reply
    text: str | list  # the prompt as the data gave it (what reward functions see)
    record: dict  # the whole record: the reference answer fields rewards read
    where: str


@dataclass
class Completion:
    ids: list[int]  # the sampled tokens, up to and including the end-of-sequence token
    logps: list[float]  # log p of each when sampled, under softmax(logits / temperature)
    text: str
    truncated: bool  # max_new_tokens reached without an end-of-sequence token


@dataclass
class Scored:
    reward: float | None  # None: a reward failed, `error` says which and why
    parts: dict[str, float]  # each reward's own value
    error: str | None = None


Sampler = Callable[[object, list[list[int]], int], list[Completion]]  # (model, prompt ids, seed)
Scorer = Callable[[list[Prompt], list[str]], list[Scored]]


def group_advantages(rewards: list[float], algorithm: str) -> list[float]:
    """The advantages of one prompt's scored completions (at least 2).

    grpo: (r - mean) / (std + 1e-4), std with Bessel's correction (as TRL); rloo: r - the mean of the
    other completions (the leave-one-out baseline, unbiased)."""
    n = len(rewards)
    total = sum(rewards)
    if algorithm == "rloo":
        return [r - (total - r) / (n - 1) for r in rewards]
    mean = total / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
    return [(r - mean) / (std + ADVANTAGE_EPS) for r in rewards]


def as_rollout(prompt: Prompt, completion: Completion, advantage: float) -> Rollout:
    n_prompt, n = len(prompt.ids), len(completion.ids)
    return Rollout(ids=prompt.ids + completion.ids, mask=[False] * n_prompt + [True] * n,
                   truncated=completion.truncated,
                   token_values={"advantage": [0.0] * n_prompt + [advantage] * n,
                                 "old_logp": [0.0] * n_prompt + list(completion.logps)})


class RolloutSource:
    """One optimizer step's completions at a time, served as `micro_batches` packed micro-batches."""

    def __init__(self, prompts: list[Prompt], *, policy: Callable[[], object], sample: Sampler, score: Scorer,
                 algorithm: str, num_generations: int, prompts_per_step: int, micro_batches: int,
                 max_new_tokens: int, packing: bool, seed: int, on_reward_error: str = "skip_group", log=print):
        self.prompts, self.policy, self.sample, self.score, self.log = prompts, policy, sample, score, log
        self.algorithm, self.group, self.per_step = algorithm, num_generations, prompts_per_step
        self.micro_batches, self.packing, self.seed = micro_batches, packing, seed
        self.skip_group = on_reward_error == "skip_group"
        self.row_length = max(len(p.ids) for p in prompts) + max_new_tokens
        self.epoch = self.position = self.rounds = 0
        self.totals = {"reward_errors": 0, "skipped_completions": 0}
        self._queue: list[tuple[list[list[int]], list[Rollout]]] = []
        self._report: dict = {}
        self._errors_said: set[str] = set()

    # ------------------------------------------------------------------ position

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "rounds": self.rounds, "totals": dict(self.totals)}

    def restore(self, state: dict) -> None:
        """Continue after the step `state` was taken at (a checkpoint is taken between steps)."""
        self.epoch, self.position, self.rounds = state["epoch"], state["position"], state["rounds"]
        self.totals = dict(state["totals"])
        self._queue = []

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed + epoch).shuffle(order)
        return order

    def _take(self, n: int) -> list[Prompt]:
        """The next n prompts of the epoch's shuffled order, going on into the next epoch at its end."""
        taken = []
        while len(taken) < n:
            order = self._order(self.epoch)
            take = order[self.position:self.position + n - len(taken)]
            taken += [self.prompts[i] for i in take]
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return taken

    # ------------------------------------------------------------------ sampling

    def _round(self, stats: dict) -> list[Rollout]:
        """Sample, score and give advantages to one batch of prompts; the usable completions."""
        prompts = self._take(self.per_step)
        seed = self.seed * 1_000_003 + self.rounds  # the round, not the step: a resumed run draws the same
        self.rounds += 1
        repeated = [p for p in prompts for _ in range(self.group)]
        start = time.perf_counter()
        completions = self.sample(self.policy(), [p.ids for p in repeated], seed)
        stats["generate_s"] += time.perf_counter() - start
        scored = self.score(repeated, [c.text for c in completions])
        stats["lengths"] += [len(c.ids) for c in completions]
        stats["truncated"] += sum(c.truncated for c in completions)
        rollouts = []
        for g, prompt in enumerate(prompts):
            members = range(g * self.group, (g + 1) * self.group)
            rollouts += self._group_rollouts(prompt, [completions[i] for i in members],
                                             [scored[i] for i in members], stats)
        return rollouts

    def _group_rollouts(self, prompt: Prompt, completions: list[Completion], scored: list[Scored],
                        stats: dict) -> list[Rollout]:
        for s in scored:
            if s.reward is None:
                stats["reward_errors"] += 1
                self._say_error(f"{prompt.where}: {s.error}")
            else:
                stats["rewards"].append(s.reward)
                for name, value in s.parts.items():
                    stats["parts"].setdefault(name, []).append(value)
        usable = [i for i, s in enumerate(scored) if s.reward is not None]
        if len(usable) < 2 or (self.skip_group and len(usable) < len(scored)):
            usable = []
        stats["skipped"] += len(scored) - len(usable)
        rewards = [scored[i].reward for i in usable]
        if rewards and max(rewards) == min(rewards):
            stats["zero_std_groups"] += 1  # advantages 0: only the KL term learns from this group
        return [as_rollout(prompt, completions[i], a)
                for i, a in zip(usable, group_advantages(rewards, self.algorithm) if rewards else [])]

    def _say_error(self, message: str) -> None:
        key = message.split(": ", 1)[-1]  # the same failure on another prompt is not news
        if key not in self._errors_said and len(self._errors_said) < 5:
            self._errors_said.add(key)
            policy = "skip_group" if self.skip_group else "skip_completion"
            self.log(f"reward failed (rl.on_reward_error: {policy}; counted in metrics.jsonl): {message}")

    def _next_step(self) -> None:
        stats = {"generate_s": 0.0, "lengths": [], "truncated": 0, "rewards": [], "parts": {}, "reward_errors": 0,
                 "skipped": 0, "zero_std_groups": 0, "rounds": 0}
        rollouts: list[Rollout] = []
        while len(rollouts) < self.micro_batches:
            if stats["rounds"] == MAX_EMPTY_ROUNDS:
                raise UserError(f"rl: {MAX_EMPTY_ROUNDS} sampling rounds in a row left fewer usable completions "
                                f"than the {self.micro_batches} micro-batches of a step ({stats['reward_errors']} "
                                f"rewards failed; first: {next(iter(self._errors_said), 'none')}); fix the reward "
                                "function, then --resume continues from the last checkpoint")
            stats["rounds"] += 1
            stats["skipped"] += len(rollouts)  # a previous round too short to fill the step: not trained
            rollouts = self._round(stats)
        self.totals["reward_errors"] += stats["reward_errors"]
        self.totals["skipped_completions"] += stats["skipped"]
        self._queue = self._micro_batches(rollouts)
        self._report = stats

    def _micro_batches(self, rollouts: list[Rollout]) -> list[tuple[list[list[int]], list[Rollout]]]:
        """The step's completions dealt longest first over the micro-batches (even token counts), each
        packed into rows."""
        by_length = sorted(range(len(rollouts)), key=lambda i: -len(rollouts[i].ids))
        out = []
        for k in range(self.micro_batches):
            members = by_length[k::self.micro_batches]
            lengths = [len(rollouts[i].ids) for i in members]
            # one micro-batch whatever its size: the step's split is fixed, its memory set by grad_accum
            (rows,) = plan_micro_batches(lengths, 1 << 60, self.row_length, self.packing, seed=self.rounds)
            out.append(([[members[j] for j in row] for row in rows], rollouts))
        return out

    def next_micro_batch(self) -> tuple[list[list[int]], list[Rollout]]:
        if not self._queue:
            self._next_step()
        return self._queue.pop(0)

    # ------------------------------------------------------------------ reporting

    def step_metrics(self, step_seconds: float) -> dict:
        """The step's rewards, completion lengths and time spent sampling (the loop asks once a step)."""
        stats, self._report = self._report, {}
        if not stats:
            return {}
        rewards = stats["rewards"]
        mean = sum(rewards) / len(rewards) if rewards else float("nan")
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) if rewards else float("nan")
        out = {"reward_mean": round(mean, 6), "reward_std": round(std, 6),
               **{f"reward/{name}": round(sum(v) / len(v), 6) for name, v in stats["parts"].items()},
               "completion_length": round(sum(stats["lengths"]) / len(stats["lengths"]), 2),
               "truncated_share": round(stats["truncated"] / len(stats["lengths"]), 4),
               "zero_std_groups": stats["zero_std_groups"], "reward_errors": stats["reward_errors"],
               "skipped_completions": stats["skipped"], "generate_s": round(stats["generate_s"], 3),
               "generate_share": round(stats["generate_s"] / max(step_seconds, 1e-9), 4)}
        if stats["rounds"] > 1:
            out["sampling_rounds"] = stats["rounds"]
        return out
