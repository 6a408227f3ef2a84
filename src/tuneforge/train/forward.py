"""The model as the loop sees it: token batch in, summed target cross-entropy out.

Wrapping body + fused loss in one nn.Module keeps DDP/FSDP hooks intact (the wrapper is what
accelerate prepares) while the lm_head still runs only at target positions.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.models.load import decoder_and_head
from tuneforge.train.losses import linear_cross_entropy_sum


class TargetLoss(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, target_mask):
        body, head = decoder_and_head(self.model)
        hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        # Position t predicts token t+1; target_mask marks the predicted tokens.
        select = target_mask[:, 1:]
        h = hidden[:, :-1][select]
        labels = input_ids[:, 1:][select]
        if head.bias is not None:  # rare: fall back to a plain (still target-only) head
            logits = head(h).float()
            return nn.functional.cross_entropy(logits, labels, reduction="sum")
        return linear_cross_entropy_sum(h, head.weight, labels)
