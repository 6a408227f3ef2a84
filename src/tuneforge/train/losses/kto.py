"""Kahneman-Tversky Optimization (KTO; Ethayarajh et al. 2024) on unpaired, labelled completions.

Each batch entry (data/kto.py) holds a completion y for prompt x and a mismatched completion y' for
the same prompt. With r = log pi(y|x) - log pi_ref(y|x) and the reference point
z0 = max(0, mean over the batch of log pi(y'|x) - log pi_ref(y'|x)) (a KL estimate; no gradient):

    desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
    undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))

z0 is estimated per micro-batch (TRL gathers it over the processes' batches): larger micro-batches
give a steadier estimate. Summed over the batch; one target token per entry makes the loop's mean
the mean over completions.
"""

from __future__ import annotations

import torch

from tuneforge.data.pack import collate, plan_micro_batches
from tuneforge.data.render import Encoded
from tuneforge.train.losses.dpo import DPOLoss, pair_logps
from tuneforge.train.precision import autocast


def kto_losses(policy, policy_kl, ref, ref_kl, desirable, beta: float, desirable_weight: float = 1.0,
               undesirable_weight: float = 1.0) -> torch.Tensor:
    z0 = (policy_kl - ref_kl).mean().clamp(min=0).detach()
    r = policy - ref
    return torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))


class KTOLoss(DPOLoss):
    extra_fields = ("chosen_mask", "rejected_mask", "desirable_mask")

    def __init__(self, model, beta: float = 0.1, reference: str = "auto", desirable_weight: float = 1.0,
                 undesirable_weight: float = 1.0):
        super().__init__(model, beta, 0.0, reference)
        self.kind = "kto"
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight

    def forward(self, input_ids, position_ids, target_mask, chosen_mask, rejected_mask, desirable_mask):
        batch = dict(input_ids=input_ids, position_ids=position_ids, target_mask=target_mask,
                     chosen_mask=chosen_mask, rejected_mask=rejected_mask)
        return kto_losses(*self.logps(**batch), desirable_mask[target_mask], self.beta, self.desirable_weight,
                          self.undesirable_weight).sum()


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # blocks compiled for training would recompile here
def evaluate_rated(model, encoded: list[Encoded], train_cfg, pad_id: int, device, amp_dtype, *,
                   kto: KTOLoss | None = None, beta: float = 0.1) -> dict:
    """Implicit rewards beta * r of desirable and undesirable completions, the KL estimate, the KTO
    loss, and how often the reward's side of z0 matches the label. Without `kto` the model is its own
    reference (before training): rewards and KL 0, loss 0.5 per completion."""
    if not encoded:
        return {}
    if kto is not None:
        model, beta = kto.model, kto.beta
    was_training = model.training
    model.eval()
    parts = {k: [] for k in ("pc", "pk", "rc", "rk", "d")}
    lengths = [len(e.ids) for e in encoded]
    try:
        for rows in plan_micro_batches(lengths, train_cfg.batch_tokens, max(lengths), train_cfg.packing, seed=0):
            batch = {k: v.to(device) for k, v in collate(rows, encoded, pad_id, KTOLoss.extra_fields).items()}
            desirable = batch.pop("desirable_mask")[batch["target_mask"]]
            with autocast(device, amp_dtype):
                pc, pk = pair_logps(model, **batch)
                rc, rk = kto.reference_logps(**batch) if kto is not None else (pc, pk)
            for key, value in zip(parts, (pc, pk, rc, rk, desirable)):
                parts[key].append(value.float().cpu() if key != "d" else value.cpu())
    finally:
        model.train(was_training)
    pc, pk, rc, rk, d = (torch.cat(parts[k]) for k in parts)
    reward = beta * (pc - rc)
    z0 = float((pk - rk).mean().clamp(min=0))
    loss = kto_losses(pc, pk, rc, rk, d, beta, *((kto.desirable_weight, kto.undesirable_weight) if kto else (1, 1)))

    def mean(t) -> float:
        return round(float(t.float().mean()), 4) if t.numel() else float("nan")

    right = torch.where(d, reward > beta * z0, reward < beta * z0)
    return {"completions": len(encoded), "desirable": int(d.sum()), "loss": mean(loss),
            "reward_accuracy": mean(right), "desirable_reward": mean(reward[d]),
            "undesirable_reward": mean(reward[~d]), "reward_margin": round(mean(reward[d]) - mean(reward[~d]), 4),
            "kl": round(z0, 4)}
