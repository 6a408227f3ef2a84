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


# Examples are bin-packed in windows of this many (after the seeded shuffle): large enough that
# first-fit-decreasing fills rows almost completely, small enough that a window is still a random
# sample of the data and batches stay mixed across the epoch.
PACK_WINDOW = 512


def is_online(train) -> bool:
    """A batch source read while training instead of a list planned up front (data.stream.TokenStream, the
    RL rollouts of train.rollouts): `next_micro_batch()` gives (rows of example indices, the examples they
    index), `state()` / `restore()` its position for checkpoints, `epoch` and `row_length` its progress and
    longest row. It may also report per-step metrics with `step_metrics(step_seconds)`."""
    return hasattr(train, "next_micro_batch")


def lengths_of(encoded) -> list[int]:
    """Token counts of encoded examples: the stored array of a memory-mapped store, else each one's ids."""
    stored = getattr(encoded, "lengths", None)
    return stored.tolist() if stored is not None else [len(e.ids) for e in encoded]


def right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of shape [n, longest]: one sequence per row, padded on the right."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids, mask


def _first_fit_decreasing(indices: list[int], lengths: list[int], row_length: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([])
            room.append(row_length)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= lengths[i]
    return rows


def _group(rows: list[list[int]], width_of, batch_tokens: int) -> list[list[list[int]]]:
    """Consecutive rows into micro-batches whose padded size (rows x widest row) is nearest the budget."""
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    widest = 0
    for row in rows:
        grown = (len(current) + 1) * max(widest, width_of(row))
        if current and grown - batch_tokens >= batch_tokens - len(current) * widest:
            batches.append(current)
            current, widest = [], 0
        current.append(row)
        widest = max(widest, width_of(row))
    if current:
        batches.append(current)
    return batches


def plan_micro_batches(lengths: list[int], batch_tokens: int, row_length: int, packing: bool,
                       seed: int) -> list[list[list[int]]]:
    """Micro-batches as lists of rows, each row a list of example indices; seeded.

    Packed: windows of the shuffled data are bin-packed first-fit-decreasing into rows of
    `row_length`, so rows come out full and rows of similar width share a micro-batch (little
    padding); the micro-batches are then shuffled so long and short ones interleave.
    Unpacked: one example per row, similar lengths grouped the same way.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows: list[list[int]] = []
    for start in range(0, len(order), PACK_WINDOW):
        window = order[start:start + PACK_WINDOW]
        rows += _first_fit_decreasing(window, lengths, row_length) if packing \
            else [[i] for i in sorted(window, key=lambda i: -lengths[i])]
    batches = _group(rows, lambda row: sum(lengths[i] for i in row), batch_tokens)
    rng.shuffle(batches)
    return batches


def positions(n: int, restarts: list[int] | None = None) -> torch.Tensor:
    """0..n-1, restarting at 0 at each offset in `restarts` (several sequences in one Encoded)."""
    pos = torch.arange(n)
    for at in sorted(restarts or ()):
        if 0 < at < n:
            pos[at:] -= pos[at].clone()
    return pos


def collate(rows: list[list[int]], encoded: list[Encoded], pad_id: int,
            extra_fields: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """input_ids / position_ids / target_mask tensors of shape [rows, longest row].

    `extra_fields` asks for what a non-default loss needs: "target_weight" (each token carries its
    example's weight), a per-token float an example holds in `token_values` (RL: the advantage and the
    sampling-time log-probability of each token; 0 where an example lacks it) and any named position
    mask: "aux_mask" or a key of `Encoded.masks` (False where an example lacks it). Position ids restart
    at every example and at its `restarts`.
    """
    width = max(sum(len(encoded[i].ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    weight = torch.zeros((len(rows), width)) if "target_weight" in extra_fields else None
    valued = {name for name in extra_fields for row in rows for i in row
              if name in (getattr(encoded[i], "token_values", None) or {})}
    named = {name: torch.zeros((len(rows), width), dtype=torch.float32 if name in valued else torch.bool)
             for name in extra_fields if name != "target_weight"}
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = encoded[i]
            n = len(e.ids)
            ids[r, at:at + n] = torch.tensor(e.ids)
            pos[r, at:at + n] = positions(n, e.restarts)
            mask[r, at:at + n] = torch.tensor(e.mask)
            if weight is not None:
                weight[r, at:at + n] = e.weight
            for name, tensor in named.items():
                values = (getattr(e, "token_values", None) or {}).get(name) if name in valued else e.named_mask(name)
                if values is not None:
                    tensor[r, at:at + n] = torch.tensor(values)
            at += n
        pos[r, at:] = torch.arange(width - at)  # the pad tail is its own sequence: nothing attends to it
    batch = {"input_ids": ids, "position_ids": pos, "target_mask": mask}
    if weight is not None:
        batch["target_weight"] = weight
    return batch | named
