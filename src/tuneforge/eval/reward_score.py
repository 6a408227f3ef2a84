"""Score a file's rows with a saved reward model (`tuneforge score`).

Each row is either a response (`prompt` + `response` or `completion`) or a preference pair (`prompt`,
`chosen`, `rejected`, in any form recipe preference reads). A row is tokenized exactly as the reward
recipe trained on it (the prompt under the chat template, then the response with its end-of-turn,
data.preference.encode_pair) and scored by the `*ForSequenceClassification` model at its last
non-pad token, batched with right padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.data.pack import right_padded
from tuneforge.data.preference import encode_pair, to_pair
from tuneforge.data.sources import Record, read_records
from tuneforge.errors import UserError
from tuneforge.models.reward_head import load_reward_model


@dataclass
class Scored:
    where: str
    reward: float | None = None  # a response row
    chosen: float | None = None  # a pair row
    rejected: float | None = None


def _sequences(rec: Record, tokenizer, max_length: int, max_prompt_length: int) -> list[list[int]]:
    data = rec.data
    if "chosen" in data or "rejected" in data:
        enc = encode_pair(to_pair(rec), tokenizer, max_length, max_prompt_length)
        return [enc.ids[:enc.restarts[0]], enc.ids[enc.restarts[0]:]]
    key = "response" if "response" in data else "completion" if "completion" in data else None
    if key is None or "prompt" not in data:
        raise UserError(f"{rec.where}: a row to score needs 'prompt' and 'response' (or 'completion'), or a "
                        "preference pair ('prompt', 'chosen', 'rejected')")
    as_pair = Record({**data, "chosen": data[key], "rejected": data[key]}, rec.where)
    enc = encode_pair(to_pair(as_pair), tokenizer, max_length, max_prompt_length)
    return [enc.ids[:enc.restarts[0]]]


@torch.inference_mode()
def _rewards(model, sequences: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths share a batch
    scores = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = right_padded([sequences[i] for i in idx], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
        for r, i in enumerate(idx):
            scores[i] = float(logits[r])
    return scores


def score_file(model_dir: Path, file: str, batch_size: int = 16, max_length: int = 1024,
               max_prompt_length: int = 512, policy=None) -> list[Scored]:
    folder = model_dir / "reward_model" if (model_dir / "reward_model").is_dir() else model_dir
    model, tokenizer = load_reward_model(folder, policy)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    records = read_records(file)
    per_row = [_sequences(rec, tokenizer, max_length, max_prompt_length) for rec in records]
    flat = [seq for seqs in per_row for seq in seqs]
    rewards = iter(_rewards(model, flat, pad_id, batch_size))
    out = []
    for rec, seqs in zip(records, per_row):
        if len(seqs) == 2:
            out.append(Scored(rec.where, chosen=next(rewards), rejected=next(rewards)))
        else:
            out.append(Scored(rec.where, reward=next(rewards)))
    return out
