"""Padding-free packing: several examples per row, position ids restarting at each example.

transformers derives a block-causal mask from restarting position ids when no attention mask
and no cache are passed, so packed examples never attend to each other. Rows are grouped into
micro-batches by a token budget; the short tail of a row is filled with a dummy "sequence" of
pad tokens that carries no loss.
"""

from __future__ import annotations

import random

import torch

from tuneforge.data.render import Encoded


def plan_micro_batches(lengths: list[int], batch_tokens: int, row_length: int, packing: bool,
                       seed: int) -> list[list[list[int]]]:
    """Micro-batches as lists of rows, each row a list of example indices, in a seeded shuffle."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    # Nearest whole number of rows: with a long outlier example, flooring could halve the batch.
    rows_per_batch = max(1, round(batch_tokens / row_length))
    batches: list[list[list[int]]] = []
    if packing:
        rows: list[list[int]] = []
        room: list[int] = []
        for i in order:
            n = lengths[i]
            slot = next((r for r, free in enumerate(room) if free >= n), None)
            if slot is None:
                if len(rows) == rows_per_batch:
                    batches.append(rows)
                    rows, room = [], []
                rows.append([])
                room.append(row_length)
                slot = len(rows) - 1
            rows[slot].append(i)
            room[slot] -= n
        if rows:
            batches.append(rows)
        return batches
    # Unpacked: one example per row; as many rows as fit in the budget once padded to the longest.
    current: list[list[int]] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append([i])
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def collate(rows: list[list[int]], encoded: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / position_ids / target_mask tensors of shape [rows, longest row]."""
    width = max(sum(len(encoded[i].ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = encoded[i]
            n = len(e.ids)
            ids[r, at:at + n] = torch.tensor(e.ids)
            pos[r, at:at + n] = torch.arange(n)
            mask[r, at:at + n] = torch.tensor(e.mask)
            at += n
        pos[r, at:] = torch.arange(width - at)  # the pad tail is its own sequence: nothing attends to it
    return {"input_ids": ids, "position_ids": pos, "target_mask": mask}


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["target_mask"].sum())
