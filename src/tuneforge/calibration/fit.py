"""Small post-hoc fits on held-out scores: temperature scaling, Platt scaling and a linear probe.

Temperature scaling (Guo et al., 2017) divides the tuned model's logit margin by one scalar T fitted
on the validation split; it changes confidence, never the ranking (AUROC is unchanged). Platt
scaling (Platt, 1999) fits a scale and a bias, sigmoid(a * margin + b): the bias can also undo a
shift of the whole margin (a training prior that differs from the test base rate), which a
temperature cannot. The probe is
the lightweight alternative to tuning: cross-validated logistic regression on the frozen model's final hidden state
at the query position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


def fit_temperature(margins: torch.Tensor, correct: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of sigmoid(margin / T) on (margins, correct)."""
    # Scores come from inference mode; clones are ordinary tensors autograd may use.
    margins, y = margins.detach().clone().float(), correct.detach().clone().float()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(margins / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, 1e-2), 1e2)  # a degenerate split can drive T to 0 or infinity: keep it usable


def fit_platt(margins: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    """(a, b) minimising the NLL of sigmoid(a * margin + b) on (margins, correct); a is kept
    positive (a negative scale would reverse the ranking the model learned)."""
    margins, y = margins.detach().clone().float(), correct.detach().clone().float()
    log_a = torch.zeros((), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_a, b], lr=0.1, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(margins * log_a.exp() + b, y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a = min(max(float(log_a.detach().exp()), 1e-2), 1e2)
    return a, float(b.detach())


@dataclass
class Probe:
    weight: torch.Tensor  # [hidden]
    bias: torch.Tensor  # []
    mean: torch.Tensor  # feature standardisation, fitted on the training split
    std: torch.Tensor

    def margin(self, hidden: torch.Tensor) -> torch.Tensor:
        return ((hidden.float() - self.mean) / self.std) @ self.weight + self.bias

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        from tuneforge.atomic import atomic_write_bytes

        tensors = {"weight": self.weight, "bias": self.bias.reshape(1), "mean": self.mean, "std": self.std}
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))

    @classmethod
    def load(cls, path: Path) -> "Probe":
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["weight"], t["bias"].reshape(()), t["mean"], t["std"])


def fit_probe(hidden: torch.Tensor, correct: torch.Tensor, balanced: bool = True, seed: int = 0) -> Probe:
    """L2 logistic regression on standardised features, its strength chosen by 5-fold cross-validation.

    Hidden states have hundreds of dimensions and graded sets a few thousand rows at most, so an
    unregularised probe memorises the training split; scikit-learn's LogisticRegressionCV picks the
    regularisation that predicts held-out folds best (log loss).
    """
    from sklearn.linear_model import LogisticRegressionCV

    x = hidden.detach().float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    y = correct.detach().bool().numpy()
    folds = max(2, min(5, int(y.sum()), int((~y).sum())))
    clf = LogisticRegressionCV(Cs=10, cv=folds, scoring="neg_log_loss", max_iter=2000, random_state=seed,
                               class_weight="balanced" if balanced else None)
    clf.fit(((x - mean) / std).numpy(), y)
    weight = torch.tensor(clf.coef_[0], dtype=torch.float32)
    bias = torch.tensor(float(clf.intercept_[0]), dtype=torch.float32)
    return Probe(weight, bias, mean, std)
