"""Cross-entropy on target positions only, with the output projection fused into the loss.

The lm_head runs only on the hidden states of positions that carry loss, chunk by chunk, and the
gradient of each chunk is computed right away, so the [tokens x vocab] logits tensor never exists
in full (it dominates memory for small models with large vocabularies, like SmolLM2's 49k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size):
        compute_dtype = hidden.dtype
        w = weight.to(compute_dtype)
        need_w_grad = weight.requires_grad
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            y = labels[start:start + chunk_size]
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            # d(sum CE)/d logits = softmax - onehot, computed in place to keep one chunk alive.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(y.shape[0], device=y.device), y] -= 1.0
            grad_logits = grad_logits.to(compute_dtype)
            grad_hidden[start:start + chunk_size] = grad_logits @ w
            if need_w_grad:
                grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.need_w_grad = need_w_grad
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.need_w_grad else None
        return grad_hidden * grad_out.to(grad_hidden.dtype), gw, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             chunk_size: int = 2048) -> torch.Tensor:
    """Sum of token cross-entropies of `hidden @ weight.T` against `labels` (fp32 result)."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, labels, chunk_size)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = (hidden[start:start + chunk_size] @ weight.to(hidden.dtype).t()).float()
        total += F.cross_entropy(logits, labels[start:start + chunk_size], reduction="sum")
    return total
