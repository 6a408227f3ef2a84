"""Bradley-Terry reward modelling as a loss model for the shared training loop.

A batch holds preference pairs encoded as for DPO (data.preference): [prompt + chosen][prompt +
rejected] in one example, position ids restarting at the second sequence. One forward of the decoder
body gives every token's hidden state; a linear score head (hidden -> 1, `models/reward_head.py`)
reads each sequence at its last token that is not padding, the same position transformers'
`*ForSequenceClassification` reads, so the saved reward model scores exactly what training scored.

    loss = -log sigmoid(r_chosen - r_rejected)          (Bradley-Terry; Ouyang et al. 2022)

with an optional `center` term, center * (r_chosen + r_rejected)^2, that keeps rewards near zero
(Eisenstein et al. 2023; TRL's center_rewards_coefficient). Summed over the batch's pairs: each pair
has exactly one target token, so the loop's division by target tokens makes it the mean per pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.pack import collate, lengths_of, plan_micro_batches
from tuneforge.data.render import Encoded
from tuneforge.models.anatomy import decoder_and_head
from tuneforge.models.reward_head import score_head
from tuneforge.train.precision import autocast


def last_positions(input_ids: torch.Tensor, position_ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat index of each sequence's last non-pad token, the sequence index of every token). A sequence
    starts at each position id 0; a sequence of padding only (a row's tail) gets index -1."""
    seq = (position_ids == 0).flatten().cumsum(0) - 1
    flat = torch.arange(seq.numel(), device=seq.device)
    real = input_ids.flatten() != pad_id
    last = torch.full((int(seq.max()) + 1,), -1, dtype=torch.long, device=seq.device)
    last = last.scatter_reduce(0, seq[real], flat[real], reduce="amax")
    return last, seq.view_as(position_ids)


def pair_rewards(model, input_ids, position_ids, target_mask, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen reward, rejected reward), one entry per pair in the batch."""
    body, _ = decoder_and_head(model)
    hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    last, seq = last_positions(input_ids, position_ids, pad_id)
    head = score_head(model)
    chosen = seq[target_mask]  # a pair's one target token is in its chosen sequence; rejected is the next
    at = hidden.reshape(-1, hidden.shape[-1])
    r_chosen = head(at[last[chosen]].to(head.weight.dtype)).squeeze(-1).float()
    r_rejected = head(at[last[chosen + 1]].to(head.weight.dtype)).squeeze(-1).float()
    return r_chosen, r_rejected


def bradley_terry_losses(r_chosen: torch.Tensor, r_rejected: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    loss = -F.logsigmoid(r_chosen - r_rejected)
    return loss + center * (r_chosen + r_rejected) ** 2 if center else loss


class RewardLoss(nn.Module):
    extra_fields = ()

    def __init__(self, model: nn.Module, pad_id: int, center: float = 0.0):
        super().__init__()
        self.model, self.pad_id, self.center = model, pad_id, center
        # The head always trains, whatever the method freezes, in fp32 even where the frozen base was
        # stored in the compute dtype (train.frozen_base_dtype): it gets optimizer updates.
        score_head(model).float().requires_grad_(True)

    def forward(self, input_ids, position_ids, target_mask):
        rc, rr = pair_rewards(self.model, input_ids, position_ids, target_mask, self.pad_id)
        return bradley_terry_losses(rc, rr, self.center).sum()


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # blocks compiled for training would recompile here
def evaluate_reward_pairs(model, encoded: list[Encoded], train_cfg, pad_id: int, device, amp_dtype) -> dict:
    """Pairwise accuracy (chosen scored above rejected), mean margin, mean rewards and the loss."""
    if not encoded:
        return {}
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    lengths = lengths_of(encoded)
    try:
        for rows in plan_micro_batches(lengths, train_cfg.batch_tokens, max(lengths), train_cfg.packing, seed=0):
            batch = {k: v.to(device) for k, v in collate(rows, encoded, pad_id).items()}
            with autocast(device, amp_dtype):
                rc, rr = pair_rewards(model, **batch, pad_id=pad_id)
            chosen.append(rc.float().cpu())
            rejected.append(rr.float().cpu())
    finally:
        model.train(was_training)
    rc, rr = torch.cat(chosen), torch.cat(rejected)
    return {"pairs": len(rc), "accuracy": round(float((rc > rr).float().mean()), 4),
            "margin": round(float((rc - rr).mean()), 4), "chosen_reward": round(float(rc.mean()), 4),
            "rejected_reward": round(float(rr.mean()), 4),
            "loss": round(float(bradley_terry_losses(rc, rr).mean()), 4)}
