"""The reward model's score head and its saved form.

Training keeps the causal LM as loaded (so every method, checkpoint and resume works unchanged) and
adds `score`, a linear map from the last hidden state to one number, on the transformers model
itself: transformers' `*ForSequenceClassification` classes name their head `score` too, so the
saved folder is built by handing these weights (adapter merged, output embedding dropped) to that
class and saving it: `AutoModelForSequenceClassification.from_pretrained(folder)` loads it as it is.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import UserError
from tuneforge.models.anatomy import unwrap

HEAD = "score"


def attach_score_head(model: nn.Module) -> nn.Module:
    """A new score head (hidden -> 1, no bias), initialised as transformers initialises one."""
    inner = unwrap(model)
    hidden = inner.config.hidden_size
    head = nn.Linear(hidden, 1, bias=False)
    nn.init.normal_(head.weight, std=getattr(inner.config, "initializer_range", 0.02))
    setattr(inner, HEAD, head)
    return head


def score_head(model: nn.Module) -> nn.Module:
    head = getattr(unwrap(model), HEAD, None)
    if head is None:
        raise UserError("this model has no reward score head (recipe: reward adds one)")
    return head


def sequence_classification_class(config):
    """transformers' sequence-classification class for this architecture, or a clear refusal."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        raise UserError(f"recipe: reward saves a transformers sequence-classification model, and "
                        f"{type(config).__name__} has none; use a Llama, Qwen2, Mistral or similar base") from None


def save_reward_model(model: nn.Module, tokenizer, folder: Path) -> Path:
    """The trained reward model as a `*ForSequenceClassification` folder (adapter merged), with its tokenizer."""
    from tuneforge.atomic import atomic_dir

    trained = copy.deepcopy(model)
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    inner = unwrap(trained)
    config = copy.deepcopy(inner.config)
    cls = sequence_classification_class(config)
    config.num_labels = 1
    config.architectures = [cls.__name__]
    config.pad_token_id = tokenizer.pad_token_id
    state = {k: v for k, v in inner.state_dict().items() if not k.startswith("lm_head.")}
    with torch.device("meta"):
        target = cls(config)
    target.load_state_dict(state, strict=True, assign=True)
    target = target.to(torch.float32)
    with atomic_dir(folder) as tmp:
        target.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def load_reward_model(folder: Path, policy=None):
    """(model, tokenizer) of a saved reward model folder, ready to score, under the loading-safety
    policy (no remote code, safetensors only, unless the CLI's switches say otherwise)."""
    from transformers import AutoModelForSequenceClassification

    from tuneforge.models.load import SAFE, _from_pretrained, load_tokenizer

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a reward model folder (no config.json); give RUN/reward_model or a "
                        "sequence-classification model folder")
    policy = policy or SAFE
    model = _from_pretrained(AutoModelForSequenceClassification, str(folder), policy, weights=True,
                             dtype=torch.float32)
    if model.config.num_labels != 1:
        raise UserError(f"{folder}: a reward model has one output; this one has {model.config.num_labels} labels")
    return model.eval(), load_tokenizer(str(folder), policy)
