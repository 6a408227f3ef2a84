"""Who writes each role's reply: adapters on one shared base, per-role model folders, or one model.

A LoRA-style agent run keeps the stage-1 backbone merged into one base folder and one adapter per
role on it: three roles for the memory of one model plus three small adapters, switched per turn.
Full fine-tuning gives one model folder per role.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.data.formats import Segment
from tuneforge.errors import UserError
from tuneforge.eval.generate import generate
from tuneforge.eval.prefix_cache import PrefixCache
from tuneforge.models.adapters import AdapterSet
from tuneforge.models.load import SAFE, LoadPolicy
from tuneforge.models.merge import load_for_inference
from tuneforge.models.packed_linear import pack_linears
from tuneforge.train.precision import resolve_precision
from tuneforge.run_dir import RunDir



def read_agent_layout(run: Path) -> dict:
    path = RunDir(run).agent_json  # written by the recipe: where the backbone, roles and baselines live
    if not path.is_file():
        raise UserError(f"{path} is missing: {run} is not a finished agent run (train one with recipe: agent)")
    return json.loads(path.read_text())


THREE_ROLES = "three roles"


def systems(layout: dict) -> list[str]:
    """The systems an agent run holds: the three roles, then each single-model baseline by name
    (`backbone`: the stage-1 model; `backbone trained on`: it trained further on whole trajectories
    for the tokens the roles saw in stage 2). Runs from before baselines were named hold `single`."""
    return [THREE_ROLES, *_baselines(layout)]


def _baselines(layout: dict) -> dict[str, str]:
    baselines = dict(layout.get("baselines") or {})
    if not baselines and layout.get("single"):
        baselines["single model"] = layout["single"]
    return baselines


def baseline_path(layout: dict, name: str) -> str:
    baselines = _baselines(layout)
    if name not in baselines:
        raise UserError(f"this agent run has no baseline '{name}'; it has: {', '.join(baselines) or 'none'}")
    return baselines[name]


def _messages(segments: list[Segment]) -> list[dict]:
    return [{"role": s.role, "content": s.text} for s in segments]


class RoleModels:
    """generate(role, prompts) for the runtime and the static evaluation."""

    def __init__(self, run: Path, system: str = THREE_ROLES, max_new_tokens: int = 96, batch_size: int = 64,
                 policy: LoadPolicy = SAFE, precision: str = "auto", fold_adapters: bool = True,
                 prefix_cache_gb: float = 2.0, pack_weights: bool = True):
        """`system`: "three roles", or the name of a single-model baseline of the run (see `systems`).
        `precision`: "auto" generates with bf16 weights where the hardware runs bf16 natively (AMX,
        AVX512-BF16, CUDA; measured 2.5x faster than fp32 on agent prompts of ~800 tokens on a 2-core
        AMX CPU, docs/agent.md), fp32 elsewhere; "fp32" or "bf16" to choose.
        `fold_adapters`: give each role its own copy of the base with its adapter merged in (three
        models' memory; no adapter switching and no per-layer adapter work at every token) instead
        of one base with the adapters switched per turn.
        `batch_size`: prompts decoded together. Each decode step has a fixed cost besides reading the
        rows' keys and values, so larger batches pay: at 64, 32 tasks were evaluated in 207 s against
        253 s at 16 (2-core AMX CPU, three roles, step-wise and end to end).
        `prefix_cache_gb`: per role (2 GiB: at 4 the three roles' evaluation grew to 19 GB resident and
        was killed on a 24 GB machine), the keys and values of prompts already read are kept up to this
        size and reused by later prompts that share their start (eval/prefix_cache.py); 0 turns it off.
        `pack_weights`: bf16 linear weights packed once for oneDNN where the CPU runs bf16 natively
        (models/packed_linear.py: 4-25% less per decode step, same outputs); not for switched adapters."""
        layout = read_agent_layout(run)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.system = system
        self.single_model = system != THREE_ROLES
        self._set = None
        self._models: dict[str, tuple] = {}
        run = Path(run)
        if self.single_model:
            model, tok = load_for_inference(run / baseline_path(layout, system), policy=policy)
            if hasattr(model, "merge_and_unload"):  # one adapter, never switched: fold it in, generation is faster
                model = model.merge_and_unload()
            self._models["backbone"] = (model, tok)
        elif layout["adapters"] and fold_adapters:
            base = str(run / layout["base"])
            for role, path in layout["roles"].items():
                model, tok = load_for_inference(run / path, base=base, policy=policy)
                self._models[role] = (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model, tok)
        elif layout["adapters"]:
            self._set = AdapterSet(str(run / layout["base"]), {r: run / p for r, p in layout["roles"].items()},
                                   policy)
        else:
            for role, path in layout["roles"].items():
                self._models[role] = load_for_inference(run / path, policy=policy)
        self.roles = list(layout["roles"])
        self._replies: dict[tuple[str, bool, str], str] = {}
        self._caches = {name: PrefixCache(int(prefix_cache_gb * 2**30)) if prefix_cache_gb > 0 else None
                        for name in [*self.roles, "backbone"]}
        models = [*(m for m, _ in self._models.values()), *([self._set.model] if self._set else [])]
        dtype = resolve_precision(precision, next(models[0].parameters()).device)
        if dtype is not None:
            # Weights stored in bf16 (not autocast, which re-casts every weight at every decode step).
            for model in models:
                model.to(dtype)
        if pack_weights:
            for model, _ in self._models.values():  # inference only from here on; adapters already folded
                pack_linears(model)

    @property
    def tokenizer(self):
        return self._set.tokenizer if self._set else next(iter(self._models.values()))[1]

    def __call__(self, role: str, prompts: list[list[Segment]], continue_final: bool = False) -> list[str]:
        """Greedy replies. A prompt asked before (the first step of an episode is the first step-wise
        prompt of its task) is answered from memory, not generated again. `continue_final`: each
        prompt ends in an assistant turn left open, and the reply continues it."""
        name = "backbone" if self.single_model else role
        keys = [(name, continue_final, json.dumps(_messages(p))) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._replies))
        for key, reply in zip(todo, self._generate(role, [json.loads(m) for *_, m in todo], continue_final)):
            self._replies[key] = reply
        return [self._replies[k] for k in keys]

    def _generate(self, role: str, messages: list[list[dict]], continue_final: bool = False) -> list[str]:
        kwargs = dict(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                      prefix_cache=self._caches["backbone" if self.single_model else role],
                      continue_final=continue_final)
        if self.single_model:
            model, tok = self._models["backbone"]
            return generate(model, tok, messages, **kwargs)
        if self._set is not None:
            with self._set.use(role) as model:
                return generate(model, self._set.tokenizer, messages, **kwargs)
        model, tok = self._models[role]
        return generate(model, tok, messages, **kwargs)
