"""The calibration-tuning loss: two-way cross-entropy on the option token, plus an optional regulariser.

Only the two option logits enter the cross-entropy, so the model learns P(right | query) without
being pushed to put mass on these tokens elsewhere. The regulariser (Jensen-Shannon or KL between
the base and the tuned next-token distributions on the proposed answer's tokens, by default under
the prompt that asked for the answer) keeps the model's answering behaviour where it was: the base
is the same weights with the adapter switched off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.models.adapters import adapter_disabled
from tuneforge.models.anatomy import decoder_and_head


def divergence(base_logp: torch.Tensor, tuned_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-position KL(base || tuned) or JS(base, tuned) from log-probabilities over the vocabulary."""
    if kind == "kl":
        return (base_logp.exp() * (base_logp - tuned_logp)).sum(-1)
    mid = torch.logaddexp(base_logp, tuned_logp) - torch.log(torch.tensor(2.0, device=base_logp.device))
    return 0.5 * ((base_logp.exp() * (base_logp - mid)).sum(-1) + (tuned_logp.exp() * (tuned_logp - mid)).sum(-1))


class CalibrationLoss(nn.Module):
    extra_fields = ("target_weight", "aux_mask")

    def __init__(self, model: nn.Module, option_ids: tuple[int, int], regularizer: str = "none",
                 regularizer_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.option_ids = list(option_ids)
        self.regularizer = regularizer
        self.regularizer_weight = regularizer_weight

    def forward(self, input_ids, position_ids, target_mask, target_weight, aux_mask):
        body, head = decoder_and_head(self.model)
        hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state[:, :-1]
        select = target_mask[:, 1:]  # position t predicts token t+1
        h = hidden[select]
        logits = (h @ head.weight[self.option_ids].to(h.dtype).t()).float()
        if head.bias is not None:
            logits = logits + head.bias[self.option_ids].float()
        labels = (input_ids[:, 1:][select] == self.option_ids[1]).long()
        loss = (F.cross_entropy(logits, labels, reduction="none") * target_weight[:, 1:][select]).sum()
        if self.regularizer == "none" or self.regularizer_weight == 0:
            return loss
        answer = aux_mask[:, 1:]
        n_answer = int(answer.sum())
        if n_answer == 0:
            return loss
        tuned = F.log_softmax(head(hidden[answer]).float(), dim=-1)
        with torch.no_grad(), adapter_disabled(self.model):
            base_hidden = body(input_ids=input_ids, position_ids=position_ids,
                               use_cache=False).last_hidden_state[:, :-1][answer]
            base = F.log_softmax(head(base_hidden).float(), dim=-1)
        # Summed over each example's answer tokens; the loop divides by the number of targets (one per
        # example), so the term is the mean over examples of the per-example sum, as in the reference.
        return loss + self.regularizer_weight * divergence(base, tuned, self.regularizer).sum()
