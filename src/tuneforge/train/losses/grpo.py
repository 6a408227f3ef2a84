"""The clipped policy-gradient loss of GRPO (and RLOO advantages) as a loss model for the shared loop.

A batch holds sampled completions after their prompts (train/rollouts.py), packed like any example;
`target_mask` marks the completion tokens, and every one of them carries its completion's advantage A
and its log-probability when it was sampled, old. With logp the policy's log-probability now and ref the
reference's (the adapter switched off, or a frozen copy of the starting weights for full / freeze):

    ratio = exp(logp - old)
    token loss = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon) * A)
                 + beta * (exp(ref - logp) - (ref - logp) - 1)          k3, an unbiased KL estimate >= 0

Log-probabilities are those of the sampling distribution, softmax(logits / temperature), as TRL does.
The loss is returned SUMMED over the batch's completion tokens; the loop divides by the completion
tokens of the whole optimizer step, so the objective is the token-level mean over the step (TRL's
loss_type "dapo", from DAPO): every token weighs the same, so long completions are not down-weighted
as in the GRPO paper's per-sequence mean.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.errors import UserError
from tuneforge.models.adapters import adapter_disabled, has_adapter
from tuneforge.models.anatomy import decoder_and_head
from tuneforge.train.losses.target import uses_virtual_tokens


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor,
                        epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token -min(ratio * A, clip(ratio) * A), and where the clipped side decides (its gradient is 0)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantage
    was_clipped = ((ratio < 1 - epsilon) & (advantage < 0)) | ((ratio > 1 + epsilon) & (advantage > 0))
    return -torch.min(unclipped, clipped), was_clipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate exp(ref - logp) - (ref - logp) - 1 (Schulman's k3)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def _chunk_logps(h, weight, bias, labels, temperature: float):
    logits = (h @ weight.to(h.dtype).t()).float()
    if bias is not None:
        logits = logits + bias.float()
    logits = logits / temperature
    return logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def completion_logps(model, input_ids, position_ids, target_mask, temperature: float = 1.0,
                     chunk_size: int = 1024) -> torch.Tensor:
    """log p of every target token under softmax(logits / temperature), in the order of `target_mask`.

    The head runs only at the positions that predict a target, in chunks under activation checkpointing
    (backward recomputes a chunk's [tokens x vocab] logits instead of keeping them all)."""
    body, head = decoder_and_head(model)
    hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    select = target_mask[:, 1:]  # position t predicts token t + 1
    h = hidden[:, :-1][select]
    labels = input_ids[:, 1:][select]
    out = []
    for start in range(0, h.shape[0], chunk_size):
        args = (h[start:start + chunk_size], head.weight, head.bias, labels[start:start + chunk_size], temperature)
        out.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if torch.is_grad_enabled()
                   else _chunk_logps(*args))
    return torch.cat(out)


class GRPOLoss(nn.Module):
    """Summed clipped policy-gradient loss (+ beta * KL to the reference) over a batch's completion tokens.
    `step_metrics` reports the KL and the share of clipped tokens since it was last asked (the loop asks
    once per step)."""

    extra_fields = ("advantage", "old_logp")

    def __init__(self, model: nn.Module, beta: float = 0.0, epsilon: float = 0.2, temperature: float = 1.0):
        super().__init__()
        if uses_virtual_tokens(model):
            raise UserError("recipe rl does not support prefix/prompt tuning (their virtual tokens break packed "
                            "completions); use lora, dora, ia3, bottleneck, freeze or full")
        self.model, self.beta, self.epsilon, self.temperature = model, beta, epsilon, temperature
        self.reference = "none" if beta == 0 else "adapter_disabled" if has_adapter(model) else "copy"
        # The starting weights, frozen, only for full / freeze with a KL term; kept out of the module tree
        # (no optimizer state, no checkpoint, no train() switching dropout back on).
        frozen = copy.deepcopy(model).eval().requires_grad_(False) if self.reference == "copy" else None
        object.__setattr__(self, "frozen_reference", frozen)
        self._sums = {"tokens": 0, "clipped": 0.0, "kl": 0.0}

    @torch.no_grad()
    def reference_logps(self, input_ids, position_ids, target_mask) -> torch.Tensor:
        if self.frozen_reference is not None:
            return completion_logps(self.frozen_reference, input_ids, position_ids, target_mask, self.temperature)
        was_training = self.model.training
        self.model.eval()  # the reference is deterministic: no dropout
        try:
            with adapter_disabled(self.model):
                return completion_logps(self.model, input_ids, position_ids, target_mask, self.temperature)
        finally:
            self.model.train(was_training)

    def forward(self, input_ids, position_ids, target_mask, advantage, old_logp):
        # The reference first: its activations are gone before the policy's are kept for backward.
        ref = self.reference_logps(input_ids, position_ids, target_mask) if self.beta else None
        logp = completion_logps(self.model, input_ids, position_ids, target_mask, self.temperature)
        select = target_mask[:, 1:]
        per_token, was_clipped = clipped_policy_loss(logp, old_logp[:, 1:][select].float(),
                                                     advantage[:, 1:][select].float(), self.epsilon)
        self._sums["tokens"] += int(logp.numel())
        self._sums["clipped"] += float(was_clipped.sum())
        if ref is not None:
            kl = k3_kl(logp, ref)
            per_token = per_token + self.beta * kl
            self._sums["kl"] += float(kl.detach().sum())
        return per_token.sum()

    def step_metrics(self, step_seconds: float) -> dict:
        sums, self._sums = self._sums, {"tokens": 0, "clipped": 0.0, "kl": 0.0}
        n = max(sums["tokens"], 1)
        out = {"clip_fraction": round(sums["clipped"] / n, 6)}
        if self.beta:
            out["kl"] = round(sums["kl"] / n, 6)
        return out
