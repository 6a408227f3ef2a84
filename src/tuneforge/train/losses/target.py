"""The default loss: token batch in, summed target cross-entropy out (SFT, and every recipe that predicts text).

Wrapping body + fused loss in one nn.Module keeps DDP/FSDP hooks intact (the wrapper is what
accelerate prepares) while the lm_head still runs only at target positions.
"""

from __future__ import annotations

from torch import nn

from tuneforge.models.anatomy import decoder_and_head
from tuneforge.train.losses.fused_ce import linear_cross_entropy_sum


def uses_virtual_tokens(model: nn.Module) -> bool:
    """Prefix / prompt tuning: PEFT's own forward must run to insert the virtual tokens."""
    cfg = getattr(model, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


class TargetLoss(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.virtual_tokens = uses_virtual_tokens(model)

    def forward(self, input_ids, position_ids, target_mask):
        if self.virtual_tokens:
            return self._peft_forward_loss(input_ids, position_ids, target_mask)
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

    def _peft_forward_loss(self, input_ids, position_ids, target_mask):
        # Rows hold one example each (packing is off for these methods) followed by a pad tail whose
        # positions restart at 0: the example is everything before the second position-0.
        attention_mask = ((position_ids == 0).cumsum(dim=1) == 1).long()
        labels = input_ids.masked_fill(~target_mask, -100)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
        # transformers returns the mean over target tokens; the loop needs the sum.
        return out.loss.float() * target_mask[:, 1:].sum()
