"""Preference losses (DPO and its kin) as a loss model for the shared training loop.

A batch holds encoded preference pairs (data.preference): each pair is two sequences,
[prompt + chosen][prompt + rejected], packed like any example. One forward of the decoder body
gives every sequence; the lm_head runs only where a response token is predicted, and each
sequence's log-probability is the sum over its response tokens. With the same sums from the
reference model (the adapter switched off, or a frozen copy of the starting weights):

    loss = -log sigmoid(beta * ((pc - rc) - (pr - rr)))        p: policy, r: reference, c/r: chosen/rejected

with label smoothing eps (conservative DPO): (1 - eps) * that + eps * the same with the sign flipped.
The other losses (`preference.loss`), with a = mean log-probability per response token:

    ipo    (Azar et al. 2023)  (h - 1 / (2 beta))^2, h = (pc - rc) - (pr - rr)   (sums, as in the paper;
                                TRL averages per token instead)
    simpo  (Meng et al. 2024)  -log sigmoid(beta * (a_c - a_r) - gamma)           no reference model
    orpo   (Hong et al. 2024)  -a_c + beta * -log sigmoid(log odds(a_c) - log odds(a_r)),
                                log odds(a) = a - log(1 - exp(a))                 no reference model

Reference-free losses run one model and no reference pass.
The loss is returned as a SUM over the batch's pairs; each pair has exactly one target token, so the
loop's division by target tokens makes the optimised and logged loss the mean over pairs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.models.adapters import adapter_disabled, has_adapter
from tuneforge.data.pack import collate, plan_micro_batches
from tuneforge.data.render import Encoded
from tuneforge.errors import UserError
from tuneforge.models.anatomy import decoder_and_head
from tuneforge.train.losses.target import uses_virtual_tokens
from tuneforge.train.precision import autocast


def _token_logps(h, weight, bias, labels):
    logits = (h @ weight.to(h.dtype).t()).float()
    if bias is not None:
        logits = logits + bias.float()
    return logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def response_logps(hidden, head, input_ids, select, chunk_size: int = 1024) -> torch.Tensor:
    """log p of each token marked in `select`, predicted from the position before it.

    Chunks of positions go through the head under activation checkpointing, so backward recomputes a
    chunk's [tokens x vocab] logits instead of keeping all of them alive.
    """
    h = hidden[:, :-1][select[:, 1:]]
    labels = input_ids[:, 1:][select[:, 1:]]
    out = []
    for start in range(0, h.shape[0], chunk_size):
        args = (h[start:start + chunk_size], head.weight, head.bias, labels[start:start + chunk_size])
        out.append(checkpoint(_token_logps, *args, use_reentrant=False) if torch.is_grad_enabled()
                   else _token_logps(*args))
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)


def pair_logps(model, input_ids, position_ids, target_mask, chosen_mask, rejected_mask, counts: bool = False):
    """Summed response log-probabilities (chosen, rejected), one entry per pair in the batch; with
    `counts`, also the number of response tokens of each (chosen, rejected)."""
    body, head = decoder_and_head(model)
    hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    response = chosen_mask | rejected_mask
    logps = response_logps(hidden, head, input_ids, response)
    # Sequence index of every token over the whole batch: a new sequence starts at each position 0.
    seq = (position_ids == 0).flatten().cumsum(0).view_as(position_ids) - 1
    sums = logps.new_zeros(seq.numel()).index_add(0, seq[:, 1:][response[:, 1:]], logps)
    # A pair's one target token is its first chosen token: it names the chosen sequence, and the
    # rejected sequence is the next one (data.preference.encode_pair).
    chosen_seq = seq[target_mask]
    if not counts:
        return sums[chosen_seq], sums[chosen_seq + 1]
    n = logps.new_zeros(seq.numel()).index_add(0, seq[:, 1:][response[:, 1:]], torch.ones_like(logps))
    return sums[chosen_seq], sums[chosen_seq + 1], n[chosen_seq], n[chosen_seq + 1]


def dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair sigmoid DPO loss; label smoothing is conservative DPO (cDPO)."""
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


REFERENCE_FREE = ("simpo", "orpo")


def ipo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return (h - 1 / (2 * beta)) ** 2


def simpo_losses(mean_chosen, mean_rejected, beta: float, gamma: float) -> torch.Tensor:
    return -F.logsigmoid(beta * (mean_chosen - mean_rejected) - gamma)


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) for p = exp(mean_logp) < 1, computed stably."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp.clamp(max=-1e-6)))


def orpo_losses(mean_chosen, mean_rejected, beta: float) -> torch.Tensor:
    """The chosen response's NLL (per token) plus beta times the odds-ratio term."""
    return -mean_chosen - beta * F.logsigmoid(log_odds(mean_chosen) - log_odds(mean_rejected))


def resolve_reference(model, reference: str) -> str:
    if reference == "auto":
        return "adapter_disabled" if has_adapter(model) else "copy"
    if reference == "adapter_disabled" and not has_adapter(model):
        raise UserError("preference.reference: adapter_disabled needs an adapter method (lora, dora, ia3, "
                        "bottleneck); with full or freeze use reference: copy (or auto)")
    return reference


class DPOLoss(nn.Module):
    """`kind`: sigmoid (DPO), ipo, simpo or orpo (see the module docstring)."""
    extra_fields = ("chosen_mask", "rejected_mask")

    def __init__(self, model: nn.Module, beta: float = 0.1, label_smoothing: float = 0.0, reference: str = "auto",
                 kind: str = "sigmoid", gamma: float = 0.5):
        super().__init__()
        if uses_virtual_tokens(model):
            raise UserError("DPO does not support prefix/prompt tuning (their virtual tokens break packed pairs)")
        self.model = model
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.kind, self.gamma = kind, gamma
        self.reference = "none" if kind in REFERENCE_FREE else resolve_reference(model, reference)
        frozen = None
        if self.reference == "copy":
            # The starting weights, frozen. Kept out of the module tree on purpose: no optimizer state,
            # no train() switching it back on, no DDP sync, not in checkpoints.
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
        object.__setattr__(self, "frozen_reference", frozen)

    @torch.no_grad()
    def reference_logps(self, **batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen_reference is not None:
            return pair_logps(self.frozen_reference, **batch)
        was_training = self.model.training
        self.model.eval()  # the reference is deterministic: no dropout
        try:
            with adapter_disabled(self.model):
                return pair_logps(self.model, **batch)
        finally:
            self.model.train(was_training)

    def logps(self, **batch) -> tuple[torch.Tensor, ...]:
        """(policy chosen, policy rejected, reference chosen, reference rejected), per pair."""
        ref = self.reference_logps(**batch)  # first: its activations are gone before the policy's are kept
        return (*pair_logps(self.model, **batch), *ref)

    def forward(self, input_ids, position_ids, target_mask, chosen_mask, rejected_mask):
        batch = dict(input_ids=input_ids, position_ids=position_ids, target_mask=target_mask,
                     chosen_mask=chosen_mask, rejected_mask=rejected_mask)
        return self.pair_losses(**batch).sum()

    def pair_losses(self, **batch) -> torch.Tensor:
        """The loss of each pair in the batch."""
        if self.kind in REFERENCE_FREE:
            pc, pr, nc, nr = pair_logps(self.model, **batch, counts=True)
            mc, mr = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
            return simpo_losses(mc, mr, self.beta, self.gamma) if self.kind == "simpo" else orpo_losses(mc, mr, self.beta)
        logps = self.logps(**batch)
        if self.kind == "ipo":
            return ipo_losses(*logps, self.beta)
        return dpo_losses(*logps, self.beta, self.label_smoothing)


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # blocks compiled for training would recompile here
def evaluate_pairs(model, encoded: list[Encoded], train_cfg, pad_id: int, device, amp_dtype, *,
                   dpo: DPOLoss | None = None, beta: float = 0.1, kind: str = "sigmoid", gamma: float = 0.5) -> dict:
    """How `model` ranks the pairs: likelihood accuracy / margin, the loss, and the rewards. For DPO and
    IPO with `dpo`, the implicit rewards beta * (log p_policy - log p_reference); without `dpo` the model
    is its own reference (the state before training): rewards 0, DPO loss log 2. For the reference-free
    losses (simpo, orpo) the reward is beta * the mean log-probability per response token."""
    if not encoded:
        return {}
    if dpo is not None:
        model, beta, kind, gamma = dpo.model, dpo.beta, dpo.kind, dpo.gamma
    free = kind in REFERENCE_FREE
    was_training = model.training
    model.eval()
    stats = {k: [] for k in ("pc", "pr", "nc", "nr", "rc", "rr")}
    lengths = [len(e.ids) for e in encoded]
    try:
        for rows in plan_micro_batches(lengths, train_cfg.batch_tokens, max(lengths), train_cfg.packing, seed=0):
            batch = {k: v.to(device) for k, v in collate(rows, encoded, pad_id, DPOLoss.extra_fields).items()}
            with autocast(device, amp_dtype):
                pc, pr, nc, nr = pair_logps(model, **batch, counts=True)
                rc, rr = dpo.reference_logps(**batch) if dpo is not None and not free else (pc, pr)
            for key, value in zip(stats, (pc, pr, nc, nr, rc, rr)):
                stats[key].append(value.float().cpu())
    finally:
        model.train(was_training)
    pc, pr, nc, nr, rc, rr = (torch.cat(stats[k]) for k in stats)
    if free:
        mc, mr = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
        chosen_reward, rejected_reward = beta * mc, beta * mr
        loss = simpo_losses(mc, mr, beta, gamma) if kind == "simpo" else orpo_losses(mc, mr, beta)
    else:
        chosen_reward, rejected_reward = beta * (pc - rc), beta * (pr - rr)
        loss = ipo_losses(pc, pr, rc, rr, beta) if kind == "ipo" else \
            dpo_losses(pc, pr, rc, rr, beta, dpo.label_smoothing if dpo is not None else 0.0)

    def mean(t) -> float:
        return round(float(t.float().mean()), 4)

    return {"pairs": len(encoded), "loss": mean(loss),
            "reward_accuracy": mean(chosen_reward > rejected_reward),
            "reward_margin": mean(chosen_reward - rejected_reward),
            "chosen_reward": mean(chosen_reward), "rejected_reward": mean(rejected_reward),
            "logp_accuracy": mean(pc > pr), "logp_margin": mean(pc - pr)}
