"""The models a server answers with: one base loaded once, several adapters on it, each under a name.

Names: the base is served as ``base`` and under its folder name (for a hub id also the id itself);
each adapter under the NAME it was given. Generation is the batched, left-padded generation of
`tuneforge.eval.generate` (same prompt rendering, padding, EOS handling and seeding), but keeps the
token ids so the server can report exact token usage and whether a reply stopped by itself
("stop") or ran into max_tokens ("length").

Not thread-safe: torch forwards and the tokenizer are used from one thread (the micro-batcher's
worker). `count_tokens` uses its own tokenizer copy so a request handler may call it meanwhile.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.eval.generate import Prompt, generation_autocast, seeded, generation_config, render_prompt
from tuneforge.errors import UserError
from tuneforge.models.adapters import AdapterSet
from tuneforge.models.policy import SAFE, LoadPolicy


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, not counting the end-of-sequence token
    finish_reason: str  # "stop": the model ended (EOS) or a stop sequence matched; "length": max_tokens reached


class ServedModels:
    def __init__(self, base: str | None, adapters: dict[str, Path], calibration: Path | None = None,
                 device: str | None = None, bf16: bool | None = None, policy: LoadPolicy = SAFE):
        """Load `base` (None: the embedded default model) once with its adapters; `calibration` is an
        optional calibration run used for `confidence`. `device`: default cuda when available, else cpu;
        `bf16`: bf16 autocast for generation (default: on for cuda when supported, off on cpu)."""
        if "base" in adapters:
            raise UserError("adapter name 'base' is reserved for the model without adapters")
        self.adapter_set = AdapterSet(base, dict(adapters), policy)
        self.tokenizer = self.adapter_set.tokenizer
        self._count_tok = copy.deepcopy(self.tokenizer)  # see module docstring: no shared Rust borrow
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.adapter_set.model.to(self.device)
        self.bf16 = self.device.type == "cuda" if bf16 is None else bf16
        self.base_path = self.adapter_set.base_path

        # served name -> AdapterSet name (None = the base without adapters)
        adapter_names = [*self.adapter_set.names, *([self.adapter_set.bottleneck] if self.adapter_set.bottleneck else [])]
        self._targets: dict[str, str | None] = {"base": None}
        aliases = [Path(self.base_path).name]
        if not Path(self.base_path).is_dir():
            aliases.insert(0, str(self.base_path))  # a hub id: serve it under the id itself too
        for alias in aliases:
            # An adapter that happens to share the folder's name keeps its name.
            if alias and alias not in adapter_names:
                self._targets[alias] = None
        for name in adapter_names:
            self._targets[name] = name

        self.calibration = Path(calibration) if calibration else None
        self._confidence = None
        if self.calibration is not None:
            from tuneforge.calibration.confidence import ConfidenceModel

            cm = ConfidenceModel(self.calibration, policy)
            cm.models.tuned.to(self.device)
            if cm.models._base is not None:
                cm.models._base.to(self.device)
            self._confidence = cm

    # ---- names -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every model name a request may use: base, its aliases, then the adapters."""
        return list(self._targets)

    def target(self, name: str) -> str | None:
        """The adapter behind a served name (None: the base). KeyError for an unknown name."""
        if name not in self._targets:
            raise KeyError(f"unknown model '{name}'; served: {', '.join(self._targets)}")
        return self._targets[name]

    @property
    def context_length(self) -> int | None:
        cfg = self.adapter_set._base_model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # ---- tokens ------------------------------------------------------------------------------

    def _encode(self, tok, prompt: Prompt, raw: bool) -> list[int]:
        has_template = bool(getattr(tok, "chat_template", None))
        if raw:
            if not isinstance(prompt, str):
                raise TypeError("a raw prompt must be a string")
            return tok(prompt, add_special_tokens=True)["input_ids"]
        # Rendered templates already contain their special tokens (as in eval.generate).
        return tok(render_prompt(tok, prompt), add_special_tokens=not has_template)["input_ids"]

    def count_tokens(self, prompt: Prompt, raw: bool = False) -> int:
        """Prompt length in tokens, as generation will see it (raw: the text as is, no chat template)."""
        return len(self._encode(self._count_tok, prompt, raw))

    # ---- generation --------------------------------------------------------------------------

    def generate_detailed(self, name: str, prompts: list[Prompt], max_tokens: int = 64, temperature: float = 0.0,
                          top_p: float = 1.0, stop: tuple[str, ...] | list[str] | None = None,
                          seed: int | None = None, raw: bool = False) -> list[Generation]:
        """One batched generation with the named model. A string prompt is one user message rendered
        with the chat template; with raw=True it is continued as plain text (legacy completions).
        `stop` sequences end a reply early and are not part of the returned text."""
        target = self.target(name)
        if not prompts:
            return []
        stop = [s for s in (stop or []) if s]
        tok = self.tokenizer
        encoded = [self._encode(tok, p, raw) for p in prompts]
        aset = self.adapter_set
        with aset.use(target) as model:
            gen_config = generation_config(model, tok, max_tokens, temperature, top_p, stop)
            eos_ids, pad_id = list(gen_config.eos_token_id), gen_config.pad_token_id
            extra = {"tokenizer": tok} if stop else {}
            saved_side = tok.padding_side
            try:
                tok.padding_side = "left"
                batch = tok.pad({"input_ids": encoded}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                with torch.inference_mode(), generation_autocast(self.device, self.bf16), seeded(seed, self.device), \
                        torch.compiler.set_stance("force_eager"):
                    out = model.generate(**batch, generation_config=gen_config, **extra)
            finally:
                tok.padding_side = saved_side
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        eos = set(eos_ids)
        results = []
        for ids, prompt_ids in zip(new, encoded):
            cut = next((i for i, t in enumerate(ids) if t in eos), None)
            if cut is not None:
                kept, finish = ids[:cut], "stop"
            else:
                kept, finish = ids, "length"
                while kept and kept[-1] == pad_id:  # a row ended by a stop sequence is padded after it
                    kept = kept[:-1]
            text = tok.decode(kept, skip_special_tokens=True)
            hits = [text.find(s) for s in stop if s in text]
            if hits:
                text, finish = text[:min(hits)], "stop"
            results.append(Generation(text, len(prompt_ids), len(kept), finish))
        return results

    def generate(self, name: str, prompts: list[Prompt], **sampling) -> list[str]:
        """Texts only; `sampling` as in generate_detailed. KeyError for an unknown model name."""
        return [g.text for g in self.generate_detailed(name, prompts, **sampling)]

    # ---- calibrated confidence ---------------------------------------------------------------

    @property
    def has_confidence(self) -> bool:
        return self._confidence is not None

    def confidence_many(self, questions: list[str], answers: list[str]) -> list[float]:
        """Calibrated P(correct) for each (question, answer), from the calibration run.

        The number is what the calibration run measured for *its own* model's answers (its untuned
        base answering, its tuned query judging). For answers written by another served model it is
        that judge's estimate, not a calibrated probability for that model."""
        if self._confidence is None:
            raise RuntimeError("no calibration run was given: start the server with a calibration run")
        from tuneforge.calibration.questions import Question

        qs = [Question(question=q, targets=[]) for q in questions]
        return [float(p) for p in self._confidence.confidence(qs, list(answers))]

    def confidence(self, name: str, prompt_text: str, answer: str) -> float:
        """Calibrated P(`answer` to `prompt_text` is correct); see confidence_many for what it means
        when `name` is not the calibration run's own model. KeyError for an unknown name."""
        self.target(name)
        return self.confidence_many([prompt_text], [answer])[0]
