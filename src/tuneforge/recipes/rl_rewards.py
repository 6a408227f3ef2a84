"""The rewards of recipe rl: built-in checks, the user's own functions, a reward model; summed with weights.

A reward function is called as f(prompt, completion, record) -> float: the prompt as the data gave it (a
string or a list of messages), the completion's text, and the whole prompt record (its reference
answer fields). One that raises or gives no finite number fails that completion only; the rollout
source reports it and applies rl.on_reward_error (train/rollouts.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import numbers
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tuneforge.calibration.grade import answer_number, first_number
from tuneforge.config import RewardConfig, RLConfig
from tuneforge.data.pack import right_padded
from tuneforge.data.preference import encode_pair, to_pair
from tuneforge.data.sources import Record
from tuneforge.errors import UserError
from tuneforge.eval.metrics import exact_match
from tuneforge.models.reward_head import load_reward_model
from tuneforge.train.rollouts import Prompt, Scored

RewardFn = Callable[[object, str, dict], float]


# ---------------------------------------------------------------- built-in rewards

def exact_match_reward(spec: RewardConfig) -> RewardFn:
    """1 when the completion equals the answer after SQuAD normalisation (case, punctuation, articles)."""
    return lambda prompt, completion, record: exact_match(completion, str(record[spec.field]))


def numeric_reward(spec: RewardConfig) -> RewardFn:
    """1 when the number the completion gives (the first after its last "=", "is" or "equals", else its
    first: calibration's grader, which measured the base model's arithmetic) is the answer."""
    def reward(prompt, completion: str, record: dict) -> float:
        want, got = first_number(str(record[spec.field])), answer_number(completion)
        if want is None or got is None:
            return 0.0
        return float(abs(got - want) <= spec.tolerance * max(1.0, abs(want)))
    return reward


def regex_reward(spec: RewardConfig) -> RewardFn:
    """1 when the completion contains the pattern (fullmatch: is it, stripped): a format check."""
    pattern = re.compile(spec.pattern, re.DOTALL)
    match = pattern.fullmatch if spec.fullmatch else pattern.search
    return lambda prompt, completion, record: float(match(completion.strip() if spec.fullmatch else completion)
                                                    is not None)


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$|^<tool_call>\s*(.*?)\s*</tool_call>$", re.DOTALL)


def is_tool_call(text: str) -> bool:
    """A JSON object with a string `name` and object `arguments` (or a JSON string of one), alone or in a
    ```json fence or <tool_call> tags."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1) if fenced.group(1) is not None else fenced.group(2)
    try:
        call = json.loads(text)
        args = call.get("arguments") if isinstance(call, dict) else None
        args = json.loads(args) if isinstance(args, str) else args
    except (ValueError, RecursionError):
        return False
    return isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(args, dict)


def json_tool_call_reward(spec: RewardConfig) -> RewardFn:
    return lambda prompt, completion, record: float(is_tool_call(completion))


BUILT_IN = {"exact_match": exact_match_reward, "numeric": numeric_reward, "regex": regex_reward,
            "json_tool_call": json_tool_call_reward}
READS_FIELD = ("exact_match", "numeric")  # the rewards that need the record's answer field


# ---------------------------------------------------------------- the user's functions

def import_function(ref: str, key: str) -> RewardFn:
    """'package.module:function' (importable) or 'path/to/file.py:function'; a clear error naming `key`."""
    module_name, sep, name = ref.rpartition(":")
    if not sep or not module_name or not name:
        raise UserError(f"{key}: {ref!r} must look like 'module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UserError(f"{key}: no file {path} (from {ref!r})")
            spec = importlib.util.spec_from_file_location(f"tuneforge_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as e:  # an import runs the user's code: any error is theirs to see, in one line
        raise UserError(f"{key}: cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{key}: {module_name!r} has no function {name!r}")
    return fn


def reward_functions(rl: RLConfig) -> list[tuple[str, float, RewardFn]]:
    """(label, weight, function) of each configured reward; imports the user's, so a bad one is refused
    before anything loads."""
    out, labels = [], set()
    for i, spec in enumerate(rl.rewards):
        label = spec.function or spec.name
        label = label if label not in labels else f"{label}#{i}"
        labels.add(label)
        fn = import_function(spec.function, f"rl.rewards.{i}.function") if spec.function else BUILT_IN[spec.name](spec)
        out.append((label, spec.weight, fn))
    return out


def check_fields(rl: RLConfig, records: list[Record]) -> None:
    """Every record has the answer field the built-in rewards read: one line naming the first that lacks it."""
    for i, spec in enumerate(rl.rewards):
        if spec.name in READS_FIELD:
            for rec in records:
                if spec.field not in rec.data:
                    raise UserError(f"{rec.where}: no '{spec.field}' field, which rl.rewards.{i} ({spec.name}) "
                                    f"compares the completion with; add it or set rl.rewards.{i}.field")


# ---------------------------------------------------------------- a reward model

class RewardModel:
    """A sequence-classification reward model (recipe reward's RUN/reward_model): prompt + completion
    tokenized as it was trained (data.preference.encode_pair), scored at the last token."""

    def __init__(self, folder: str, policy=None, max_length: int = 1024, batch_size: int = 16):
        path = Path(folder)
        path = path / "reward_model" if (path / "reward_model").is_dir() else path
        if not path.is_dir():
            raise UserError(f"rl.reward_model: no folder {folder}; give recipe reward's RUN/reward_model")
        self.model, self.tokenizer = load_reward_model(path, policy)
        self.model.eval()
        self.max_length, self.batch_size = max_length, batch_size
        config_pad = self.model.config.pad_token_id
        self.pad_id = config_pad if config_pad is not None else self.tokenizer.pad_token_id

    def _ids(self, prompt: Prompt, completion: str) -> list[int]:
        rec = Record({"prompt": prompt.text, "chosen": completion, "rejected": completion}, prompt.where)
        enc = encode_pair(to_pair(rec), self.tokenizer, self.max_length, self.max_length // 2)
        return enc.ids[:enc.restarts[0]]

    @torch.inference_mode()
    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        sequences = [self._ids(p, c) for p, c in zip(prompts, completions)]
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            ids, mask = right_padded(sequences[start:start + self.batch_size], self.pad_id)
            scores += self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
        return scores


# ---------------------------------------------------------------- all of them

@dataclass
class Rewards:
    functions: list[tuple[str, float, RewardFn]]
    model: RewardModel | None = None
    model_weight: float = 1.0

    def _one(self, label: str, fn: RewardFn, prompt: Prompt, completion: str) -> tuple[float | None, str | None]:
        try:
            value = fn(prompt.text, completion, prompt.record)
        except Exception as e:  # the user's code: reported and handled by policy, the run goes on
            return None, f"reward {label} raised {type(e).__name__}: {e}"
        if not isinstance(value, numbers.Real) or not math.isfinite(value):  # bools and numpy floats count
            return None, f"reward {label} returned {value!r}, not a finite number"
        return float(value), None

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[Scored]:
        model_scores = self.model(prompts, completions) if self.model is not None else None
        out = []
        for k, (prompt, completion) in enumerate(zip(prompts, completions)):
            parts, total, error = {}, 0.0, None
            for label, weight, fn in self.functions:
                value, error = self._one(label, fn, prompt, completion)
                if error:
                    break
                parts[label], total = value, total + weight * value
            if model_scores is not None and not error:
                parts["reward_model"] = model_scores[k]
                total += self.model_weight * model_scores[k]
            out.append(Scored(None, parts, error) if error else Scored(total, parts))
        return out


def build_rewards(rl: RLConfig, policy=None, max_length: int = 1024) -> Rewards:
    model = RewardModel(rl.reward_model, policy, max_length) if rl.reward_model else None
    return Rewards(reward_functions(rl), model, rl.reward_model_weight)
