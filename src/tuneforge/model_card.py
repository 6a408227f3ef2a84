"""The model card: README.md in a run's artifact folder, in the Hugging Face model-card format.

Written when a run finishes (the results are known then), from its config and report: base model,
method, data sources with the account of every record, hyper-parameters, before/after results, and
what the model is and is not for. `tuneforge merge` carries it into the merged folder, saying so.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tuneforge.atomic import atomic_write_text
from tuneforge.config import Config
from tuneforge.data.account import DataAccount
from tuneforge.report import before_after_table

CARD = "README.md"


def _sources(cfg: Config) -> list[str]:
    if cfg.data is None:
        return []
    train = cfg.data.train
    paths = [train] if isinstance(train, str) else [s.path for s in train]
    return paths + ([cfg.data.validation] if cfg.data.validation else [])


def _hyperparameters(cfg: Config, summary: dict) -> list[tuple[str, object]]:
    method = cfg.method.model_dump()
    rows = [("recipe", cfg.recipe), *[(f"method.{k}", v) for k, v in method.items() if v is not None]]
    t = cfg.train
    rows += [("steps", summary.get("steps")), ("epochs", t.epochs if not t.max_steps else None),
             ("lr", t.lr), ("schedule", t.schedule), ("warmup_ratio", t.warmup_ratio),
             ("batch_tokens", t.batch_tokens), ("grad_accum", t.grad_accum), ("precision", t.precision),
             ("max_length", cfg.data.max_length if cfg.data else None), ("seed", cfg.seed)]
    return [(k, v) for k, v in rows if v is not None]


def card_text(cfg: Config, summary: dict, run: Path, adapter: bool) -> str:
    base = cfg.model or "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default's hub id
    meta = {"base_model": base, "library_name": "peft" if adapter else "transformers",
            "pipeline_tag": "text-generation", "tags": ["tuneforge", cfg.recipe, cfg.method.name]}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {run.name}", "",
             f"Fine-tuned from `{base}` with tuneforge (recipe `{cfg.recipe}`, method "
             f"`{cfg.method.name}`{', an adapter to load on that base' if adapter else ', full weights'}).", "",
             "## Training data", ""]
    lines += [f"- `{p}`" for p in _sources(cfg)] or ["- (none recorded)"]
    if summary.get("data"):
        lines += ["", f"Every record read: {DataAccount.from_dict(summary['data']).line()}."]
    lines += ["", "## Training procedure", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _hyperparameters(cfg, summary)]
    facts = [(k, summary[k]) for k in ("final_train_loss", "best_val_loss", "train_tokens_per_s", "wall_time_s",
                                       "peak_memory_gb") if summary.get(k) is not None]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += ["", "## Results", ""]
    ev = summary.get("evaluation")
    if ev:
        lines += [f"On {ev['examples']} held-out examples ({ev['metric']}):", ""] + before_after_table(ev)
    elif summary.get("preference_eval"):
        for name, res in summary["preference_eval"].items():
            after = res["after"]
            lines.append(f"- {name}: reward accuracy {after.get('reward_accuracy')}, "
                         f"reward margin {after.get('reward_margin')} (after training)")
    else:
        lines.append("No held-out evaluation was run; see the run's report.md.")
    if summary.get("bias"):
        lines += ["", "## Bias probes", "", str(summary["bias"])]
    lines += ["", "## Intended use and limits", "",
              "Research and experimentation on the task of its training data. It inherits the base model's "
              "limitations and biases, and was evaluated only as shown above: check it on your own data "
              "before relying on it (`tuneforge eval`, and `--suite bias` for the bias probes).", "",
              "## How to use", "", "```python"]
    if adapter:
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
                  'tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
                  'tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")']
    lines += ["```", "", f"or `tuneforge generate {run} \"...\"`.", ""]
    return "\n".join(lines)


def write_card(folder: Path, cfg: Config, summary: dict, run: Path, adapter: bool) -> Path:
    return atomic_write_text(folder / CARD, card_text(cfg, summary, run, adapter))


def carry_card(source: Path, out: Path, note: str, merged: bool = False) -> None:
    """Copy a card into another folder (merge, export), with a line saying what was done to the weights;
    `merged`: the folder is a whole model now, loaded with transformers alone."""
    card = source / CARD
    if card.is_file():
        text = card.read_text()
        if merged:
            text = text.replace("library_name: peft", "library_name: transformers").replace(
                "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer",
                "from transformers import AutoModelForCausalLM, AutoTokenizer").replace(
                "AutoPeftModelForCausalLM.from_pretrained", "AutoModelForCausalLM.from_pretrained")
        head, sep, body = text.partition("\n---\n")  # after the YAML front matter
        atomic_write_text(out / CARD, head + sep + f"\n> {note}\n" + body if sep else f"> {note}\n\n" + text)
