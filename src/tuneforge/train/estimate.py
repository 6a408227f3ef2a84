"""Will it fit? The memory a training run needs, worked out before any weight is loaded.

Everything here is arithmetic on the model's layout and what the method trains (models/estimate.py:
shapes read from a meta-device instance built from config.json, or from the loaded model at the start
of a run). Per process, the peak is the largest of the moments a run goes through:

  start of backward   weights + optimizer state + every saved activation + the loss's buffers
  end of backward     weights + optimizer state + gradients
  checkpoint save     weights + optimizer state + the checkpoint file built in memory
  FSDP hand-back      the whole model gathered on every rank next to its shards (after training)

The activation terms follow what autograd saves in a Llama-style block as tuneforge runs it (packed
rows, the target-only chunked loss of train/losses/fused_ce.py); tests/test_estimate.py checks them
against the bytes autograd actually saves on tiny models, and bench/bench_estimate.py against the
peak RSS of real runs (docs/training.md, "Will it fit?").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from tuneforge.config import Config, DataConfig
from tuneforge.data.pack import is_online
from tuneforge.models.estimate import Layout, Linear, Training, layout_of, skeleton_layout, training_of
from tuneforge.models.load import load_model_config, resolve_model_path
from tuneforge.models.methods import METHODS
from tuneforge.train.levers import choose_attention
from tuneforge.train.precision import cpu_has_fast_bf16

GB = 2**30
FP32, BF16 = 4, 2
ADAM_STATES = 2  # AdamW keeps exp_avg and exp_avg_sq, in the parameter's dtype (fp32 here)
CE_CHUNK = 2048  # rows of logits fused_ce.linear_cross_entropy_sum materialises at a time

# Measured on the 2-core AMD EPYC (AVX2) of 2026-12-02 (bench/bench_estimate.py): the resident memory
# of a training process before its model's tensors count: Python, torch, transformers, PEFT,
# accelerate, datasets, the tokenizer and the encoded data of a small run.
CPU_PROCESS_BASELINE = 0.60 * GB
# On CPU, glibc keeps much of what a step frees (its mmap threshold rises with the blocks freed, so
# activations come from a heap that fragments and is not given back): from the second step on, peak RSS
# holds about this many times the activations and gradients a step allocates. Fitted on
# bench/bench_estimate.py's runs (from 1.5 for full fine-tuning at 8k tokens to 2.2 for LoRA);
# with MALLOC_MMAP_THRESHOLD_=1048576 in the environment RSS is the live bytes (factor 1), ~25% slower.
CPU_ALLOCATOR_FACTOR = 1.9
# With activation checkpointing, backward recomputes every block, and glibc keeps about this share of
# each recomputation (fitted: SmolLM2 LoRA at 8,192 tokens, 30 blocks 9.9 GB RSS and 6 blocks 3.3 GB).
CPU_CHECKPOINT_KEPT = 0.6
GLIBC_SLACK = "allocator: freed memory glibc keeps"
HEAP_TERMS = ("activations", "backward workspace (top block)", "autocast bf16 weight copies", "gradients")
# A CUDA context (driver, kernels) takes memory that torch.cuda.max_memory_allocated does not count;
# 0.3-0.6 GB on current GPUs, more with many kernels loaded.
CUDA_CONTEXT = 0.5 * GB
# Bytes per frozen base parameter by how it is stored.
FROZEN_BYTES = {"fp32": FP32, "bf16": BF16}
# Bytes per weight of a quantized Linear of the frozen base (method.quantize, models/quantize.py; the
# embeddings, norms and head stay unquantized): nf4 packs two weights a byte with a 1-byte absmax per block
# of 64 and an fp32 scale per 256 of those (double quantization); int8 adds an fp32 scale per output row,
# counted in `quantized_linear_bytes`.
QUANTIZED_BYTES = {"nf4": 0.5 + 1 / 64 + FP32 / (64 * 256), "int8": 1.0}


# ---------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Setting:
    """How one process runs: the device kind and what the config and launch make of it."""

    device: str  # "cpu" or "cuda"
    autocast: bool  # bf16 autocast; else plain fp32
    frozen_bytes: float  # bytes per frozen base parameter
    attention: str  # "eager" or "sdpa"
    tokens: int  # tokens of one micro-batch
    row: int  # tokens of one row (packed) or example (unpacked)
    processes: int = 1
    strategy: str = "single"  # single | ddp | fsdp
    quantize: str = "none"  # method.quantize: the frozen base's linears stored as nf4 or int8
    target_share: float = 1.0  # share of tokens that carry loss (1: the upper bound, when the data is unknown)
    grad_accum: int = 1
    checkpointing: bool = False

    @property
    def compute(self) -> int:
        return BF16 if self.autocast else FP32

    @property
    def rows(self) -> int:
        return max(1, self.tokens // self.row)


def frozen_base_bytes(cfg: Config, autocast: bool, adapter: bool) -> float:
    """How an (unquantized) frozen base parameter is stored: session.prepare casts an adapter method's base
    to the compute dtype (train.frozen_base_dtype: auto), except a quantized base, whose other parts stay
    fp32; full and freeze keep fp32 masters."""
    if adapter and autocast and cfg.train.frozen_base_dtype == "auto" and _quantize(cfg) == "none":
        return FROZEN_BYTES["bf16"]
    return FROZEN_BYTES["fp32"]


def _quantize(cfg: Config) -> str:
    return getattr(cfg.method, "quantize", "none")


def quantized_linear_bytes(lin: Linear, kind: str) -> float:
    weights = lin.fan_in * lin.fan_out
    return weights * QUANTIZED_BYTES[kind] + (lin.fan_out * FP32 if kind == "int8" else 0)


def is_quantized_linear(layout: Layout, lin: Linear, s: Setting) -> bool:
    # bitsandbytes replaces the blocks' linears; transformers keeps the output head unquantized
    return s.quantize != "none" and lin.name != layout.head and lin.name.startswith(layout.blocks + ".")


def frozen_weight_bytes(layout: Layout, t: Training, s: Setting) -> float:
    """The frozen base in memory: quantized linears at their packed size, the rest at frozen_bytes."""
    total = t.frozen(layout) * s.frozen_bytes
    for lin in layout.linears:
        if is_quantized_linear(layout, lin, s) and f"{lin.name}.weight" not in t.trained:
            total += quantized_linear_bytes(lin, s.quantize) - lin.fan_in * lin.fan_out * s.frozen_bytes
    return total


def _site_tensors(linears, width: int, site_bytes: int, trained, adapted, s: Setting) -> list[float]:
    """Per token: the saved copies of one input that several linears read (q/k/v read the attention norm).

    In fp32 the linears that need their input for a weight gradient share one tensor. Under autocast each
    casts it to bf16 itself: a LoRA input goes through PEFT's cast to the adapter dtype and back, so every
    adapted linear keeps a private bf16 copy, and so does every trained linear whose input is fp32."""
    savers = [n for n in linears if n in trained or n in adapted]
    if not savers:
        return []
    if not s.autocast:
        return [width * site_bytes]
    copies = sum(1 for n in savers if n in adapted or site_bytes == FP32)
    shared = any(n not in adapted and site_bytes == BF16 for n in savers)
    return [width * BF16] * (copies + shared)


def stream_bytes(s: Setting) -> int:
    # The residual stream has the embeddings' dtype: bf16 once session.prepare stores the frozen base in it.
    return BF16 if s.autocast and s.frozen_bytes < FP32 else FP32


@dataclass(frozen=True)
class BlockGrads:
    """Which parts of one block keep tensors for a weight gradient, by block-relative name."""

    trained: frozenset[str]  # linears whose own weight trains
    lora: frozenset[str]  # linears with a LoRA/DoRA adapter
    ia3: dict  # IA3 linears -> scales its input
    norms: bool  # a norm weight trains


def block_grads(layout: Layout, t: Training, i: int) -> BlockGrads:
    prefix = layout.block_prefix(i)
    linears = (*layout.attn_in, layout.attn_out, *layout.ffn_in, layout.ffn_out)
    mine = {n[len(prefix):] for n in t.trained if n.startswith(prefix)}
    return BlockGrads(
        trained=frozenset(lin for lin in linears if f"{lin}.weight" in mine),
        lora=frozenset(n[len(prefix):] for n in t.lora if n.startswith(prefix)),
        ia3={n[len(prefix):]: v for n, v in t.ia3.items() if n.startswith(prefix)},
        norms=any(not n.startswith(tuple(f"{lin}." for lin in linears)) for n in mine),
    )


def block_tensors(layout: Layout, t: Training, s: Setting, g: BlockGrads) -> list[float]:
    """Bytes per token of each tensor autograd keeps for one decoder block until backward reaches it
    (Llama-style block: norm, q/k/v, rotary, attention, o, residual, norm, gate/up, SiLU, down, residual)."""
    st, c = stream_bytes(s), s.compute
    if s.checkpointing:  # only the block's input is kept; backward recomputes the rest one block at a time
        return [layout.hidden * st]
    H, Q, I = layout.hidden, layout.attn_width, layout.ffn_width
    kept = [H * st] * 2  # the two residual sums (attention, feed-forward), each kept by the next norm
    for _ in range(2):  # RMSNorm: the fp32 upcast of a bf16 input; the normalised value when its weight trains
        kept += ([H * FP32] if st == BF16 else []) + ([H * st] if g.norms else [])
    kept += _site_tensors(layout.attn_in, H, st, g.trained, g.lora, s)
    kept += _site_tensors((layout.attn_out,), Q, c, g.trained, g.lora, s)
    kept += _site_tensors(layout.ffn_in, H, st, g.trained, g.lora, s)
    kept += _site_tensors((layout.ffn_out,), I, c, g.trained, g.lora, s)
    kept += [Q * c] * 3  # q after rotary, k and v repeated to every head: the attention matmuls keep them
    keys = s.row + t.virtual_tokens
    if s.attention == "eager":  # the fp32 softmax of each row, heads x row x keys (+ its bf16 copy)
        kept += [layout.heads * keys * FP32] + ([layout.heads * keys * BF16] if s.autocast else [])
    else:  # fused SDPA keeps its output and a log-sum-exp per head, never the scores
        kept += [Q * c, layout.heads * FP32]
    kept += [I * c] * (3 if layout.gated else 2)  # gate and up outputs, the activation's output
    for name in g.lora:
        lin = layout.linear(layout.block_prefix(0) + name)
        kept.append(t.lora_r * c)  # lora_A's output, kept for lora_B's gradient
        if t.lora_dropout > 0:  # the dropped-out input and its mask
            kept += [lin.fan_in * c, lin.fan_in]
        if t.dora:  # DoRA scales the base and the LoRA output by the magnitude: both kept
            kept += [lin.fan_out * c] * 2
    for name, scales_input in g.ia3.items():
        lin = layout.linear(layout.block_prefix(0) + name)
        kept.append((lin.fan_in if scales_input else lin.fan_out) * c)
    sites, width = t.bottleneck
    kept += [H * FP32, width * c] * sites  # adapter input (cast to its fp32 weights), the activation output
    return kept


def block_bytes_per_token(layout: Layout, t: Training, s: Setting, g: BlockGrads) -> float:
    return sum(block_tensors(layout, t, s, g))


def first_recorded_block(layout: Layout, t: Training) -> int:
    """Autograd records blocks from the lowest one a gradient flows through: every block for adapters in
    all of them, virtual tokens or a trained embedding; only the top ones for `freeze`."""
    if t.prompt_learning or t.bottleneck[0]:
        return 0
    embeddings = tuple(name for name, _, _ in layout.embeddings)
    names = [*t.trained, *t.lora, *t.ia3]
    if any(n == e or n.startswith(e + ".") for n in names for e in embeddings):
        return 0
    inside = [int(n[len(layout.blocks) + 1:].split(".", 1)[0]) for n in names if n.startswith(layout.blocks + ".")]
    return min(inside, default=layout.layers)


# ---------------------------------------------------------------------------------------- the peak


@dataclass
class Estimate:
    """Bytes per process at the peak, by term, and the process overhead on top."""

    layout: Layout
    training: Training
    setting: Setting
    moments: dict[str, dict[str, float]]  # the live tensors at each candidate moment
    moment: str  # which moment is the peak
    overhead: dict[str, float]  # what is not a tensor of the run: the process, the CUDA context, allocator slack

    @property
    def terms(self) -> dict[str, float]:
        return {k: v for k, v in self.moments[self.moment].items() if v}

    @property
    def per_process(self) -> float:
        return sum(self.terms.values()) + sum(self.overhead.values())

    @property
    def machine(self) -> float:
        """All processes together (CPU: one machine holds them all; GPU: this is per GPU, times N GPUs)."""
        return self.per_process * self.setting.processes


def _loss_tensors(layout: Layout, t: Training, s: Setting, head_trains: bool) -> tuple[list[float], list[float]]:
    """(kept until backward, transient at their peak): the loss's tensors of one micro-batch, in bytes.

    Target-only fused loss (train/losses/fused_ce.py): the lm_head runs on target positions only, CE_CHUNK
    rows at a time, each chunk's fp32 logits living next to logsumexp's temporary of the same size; the
    input gradient (and the head's fp32 weight gradient when it trains) is computed in forward and kept.
    Without the data every token counts as a target, an upper bound (prompts carry no loss unless
    data.train_on_prompt). Prompt/prefix tuning goes through PEFT's forward instead: the full logits."""
    V, H, c = layout.vocab, layout.hidden, s.compute
    if t.prompt_learning:
        logits = s.rows * (s.row + (t.virtual_tokens if t.prompt_learning == "prompt" else 0)) * V
        # log_softmax's fp32 output is kept; the logits (and their fp32 copy under autocast), then the gradient
        return [logits * FP32], [logits * c] + ([logits * FP32] if s.autocast else []) + [logits * FP32]
    targets = max(1, math.ceil(s.tokens * s.target_share))
    chunk = min(targets, CE_CHUNK)
    weight_grad = [V * H * FP32] if head_trains else []
    kept = [targets * H * c] + weight_grad  # the hidden states' gradient; the head's weight gradient
    cast = [V * H * BF16] if s.autocast and (head_trains or s.frozen_bytes == FP32) else []  # w.to(bf16)
    chunks = max([[chunk * V * FP32] * 2, [chunk * V * FP32] + weight_grad], key=sum)
    return kept, [targets * H * c] + cast + chunks  # the selected hidden states, the head cast, a chunk


def _autocast_weight_copies(layout: Layout, t: Training, s: Setting, first: int) -> list[float]:
    """Under autocast every fp32 linear weight a recorded block uses is cast to bf16, and the copy is kept
    for backward: trained weights (fp32 masters) and a frozen base kept in fp32."""
    if not s.autocast:
        return []
    copies = []
    for lin in layout.linears:
        i = _block_of(layout, lin.name)
        if i is None or i < first:
            continue
        if f"{lin.name}.weight" in t.trained or (s.frozen_bytes == FP32 and not is_quantized_linear(layout, lin, s)):
            copies.append(lin.fan_in * lin.fan_out * BF16)
    return copies


def _block_of(layout: Layout, name: str) -> int | None:
    if not name.startswith(layout.blocks + "."):
        return None
    return int(name[len(layout.blocks) + 1:].split(".", 1)[0])


def _block_params(layout: Layout, i: int) -> int:
    return sum(v for n, v in layout.params.items() if n.startswith(layout.block_prefix(i)))


def estimate(layout: Layout, t: Training, s: Setting) -> Estimate:
    """The peak memory of one process running `t` on `layout` as `s` says. Every term is the list of its
    tensors' sizes in bytes, so a term can be read tensor by tensor."""
    n = s.processes if s.strategy == "fsdp" else 1  # FSDP shards parameters, gradients and optimizer state
    frozen_bytes = frozen_weight_bytes(layout, t, s)
    first = first_recorded_block(layout, t)
    queries = s.row + (t.virtual_tokens if t.prompt_learning == "prompt" else 0)  # prompt tokens run the body
    body_tokens = s.rows * queries
    activations = [x * body_tokens for i in range(first, layout.layers)
                   for x in block_tensors(layout, t, s, block_grads(layout, t, i))]
    # One attention mask per micro-batch (block-causal for packed rows), [rows x queries x keys], float
    activations.append(s.rows * queries * (s.row + t.virtual_tokens) * stream_bytes(s))
    head_trains = any(n.startswith(layout.head + ".") for n in t.trained) or (
        any("embed" in n for n in t.trained) and layout.config.get("tie_word_embeddings", False))
    loss_kept, loss_transient = _loss_tensors(layout, t, s, head_trains)
    # Backward of the top block holds gradients of its activations, about one block's worth (with
    # checkpointing, its recomputed activations as well).
    top = [x * body_tokens for x in block_tensors(layout, t, replace(s, checkpointing=False),
                                                   block_grads(layout, t, layout.layers - 1))]
    workspace = top * (2 if s.checkpointing else 1) if first < layout.layers else []
    transient = ("loss transients (logit chunks)", loss_transient) if sum(loss_transient) >= sum(workspace) \
        else ("backward workspace (top block)", workspace)
    gradients = [x * FP32 / n for x in t.tensors]

    fixed = {"weights": [(t.trainable * FP32 + frozen_bytes) / n],
             "optimizer state (AdamW)": [x * ADAM_STATES * FP32 / n for x in t.tensors]}
    if s.strategy == "ddp":  # DDP's reducer keeps flat gradient buckets next to the gradients
        fixed["DDP gradient buckets"] = [t.trainable * FP32]
    if s.strategy == "fsdp":  # the root (embeddings, head) and two blocks (one prefetched) gathered whole
        root = layout.total - sum(_block_params(layout, i) for i in range(layout.layers))
        fixed["FSDP gathered parameters"] = [(root + 2 * _block_params(layout, 0)) * s.frozen_bytes]
    start_of_backward = fixed | {
        "gradients": gradients if s.grad_accum > 1 else [],  # kept across the step's micro-batches
        "activations": activations,
        "autocast bf16 weight copies": _autocast_weight_copies(layout, t, s, first),
        "loss (kept for backward)": loss_kept,
        transient[0]: transient[1],
    }
    end_of_backward = fixed | {"gradients": gradients}
    # A checkpoint (train/checkpoint.py; always one at the last step) gathers whole trainable tensors and
    # optimizer state under FSDP, and safetensors' save() builds the file in memory: a copy of each tensor's
    # bytes, then the whole file's.
    gathered = [x * (1 + ADAM_STATES) * FP32 for x in t.tensors] if s.strategy == "fsdp" else []
    checkpoint = fixed | {"checkpoint being written": gathered + [x * FP32 for x in t.tensors] + [t.trainable * FP32]}
    moments = {"start of backward": start_of_backward, "end of backward (optimizer step)": end_of_backward,
               "checkpoint save": checkpoint}
    if s.strategy == "fsdp":  # after training every rank gathers the whole model next to its shards
        moments["FSDP hand-back after training"] = fixed | {"whole model gathered": [t.trainable * FP32 + frozen_bytes]}
    recomputed = sum(top) * (layout.layers - first) if s.checkpointing else 0.0  # every recorded block, again
    totals = {k: sum(map(sum, terms.values())) + sum(_overhead(s, terms, recomputed).values())
              for k, terms in moments.items()}
    moment = max(totals, key=totals.get)
    return Estimate(layout, t, s, {k: {name: sum(x) for name, x in terms.items()} for k, terms in moments.items()},
                    moment, _overhead(s, moments[moment], recomputed))


def _overhead(s: Setting, terms: dict[str, list[float]], recomputed: float = 0.0) -> dict[str, float]:
    """What the process holds beyond the live tensors: the CUDA context on a GPU; on CPU, Python and the
    libraries, and what glibc keeps of each step's allocations: activations and gradients (weights and
    optimizer state are allocated once; the loss's logit chunks and a checkpoint's buffers, tens of MB and
    more, are mmapped and given back), or with activation checkpointing part of every block recomputed."""
    if s.device == "cuda":
        return {"CUDA context": CUDA_CONTEXT}
    per_step = sum(x for name, sizes in terms.items() if name in HEAP_TERMS for x in sizes)
    kept = recomputed * CPU_CHECKPOINT_KEPT if s.checkpointing else per_step * (CPU_ALLOCATOR_FACTOR - 1)
    return {"process (Python, torch, libraries)": CPU_PROCESS_BASELINE, GLIBC_SLACK: kept}


# ---------------------------------------------------------------------------------------- from a config


def row_bound(cfg: Config) -> tuple[int, str]:
    """The longest a row can be, and the key that bounds it: loop.row_length packs rows up to the longest
    example (at most data.max_length), or pack_length when that is shorter; unpacked rows hold one example."""
    max_length = cfg.data.max_length if cfg.data is not None else DataConfig.model_fields["max_length"].default
    packing = cfg.train.packing and not METHODS[cfg.method.name].virtual_tokens  # as session.resolved_config
    if packing and cfg.train.pack_length and cfg.train.pack_length < max_length:
        return cfg.train.pack_length, "train.pack_length"
    return max_length, "data.max_length"


def uses_autocast(cfg: Config, device: str) -> bool:
    """train.precision as precision.resolve_precision reads it; on a GPU `auto` is taken as bf16 (every
    GPU from Ampere on), on CPU it is what this machine's CPU does."""
    if cfg.train.precision != "auto":
        return cfg.train.precision == "bf16"
    return device == "cuda" or cpu_has_fast_bf16()


def strategy_for(cfg: Config, processes: int) -> str:
    # An accelerate config can also pick FSDP under `auto`; the estimate reads only the tuneforge config.
    if processes == 1:
        return "single"
    return "fsdp" if cfg.train.distributed == "fsdp" else "ddp"


def setting_for(cfg: Config, device: str, processes: int = 1, row: int | None = None,
                autocast: bool | None = None) -> Setting:
    autocast = uses_autocast(cfg, device) if autocast is None else autocast
    tokens = None
    if cfg.recipe == "rl" and cfg.rl is not None:
        # A micro-batch is its share of the step's prompts x G sampled completions, each row a prompt
        # (at most max_prompt_length, or the data's longest) plus max_new_tokens; batch_tokens plays no part.
        row = (row or cfg.rl.max_prompt_length) + cfg.rl.max_new_tokens
        rows = -(-cfg.rl.prompts_per_step * cfg.rl.num_generations // cfg.train.grad_accum)
        tokens = rows * row
    row = row or row_bound(cfg)[0]
    return Setting(
        device=device, autocast=autocast,
        frozen_bytes=frozen_base_bytes(cfg, autocast, METHODS[cfg.method.name].adapter),
        attention=choose_attention(cfg.train.attention, torch.device(device), row),
        tokens=tokens or max(cfg.train.batch_tokens, row), row=row, processes=processes,
        strategy=strategy_for(cfg, processes), grad_accum=cfg.train.grad_accum,
        checkpointing=cfg.train.activation_checkpointing, quantize=_quantize(cfg),
    )


def estimate_config(cfg: Config, layout: Layout, devices=("cpu", "cuda"), processes: int = 1,
                    targets: float = 1.0) -> list[Estimate]:
    t = training_of(layout, cfg.method)
    return [estimate(layout, t, replace(setting_for(cfg, d, processes), target_share=targets)) for d in devices]


def target_share(encoded, sample: int = 512) -> float:
    """The share of tokens that carry loss, from up to `sample` examples spread over the data (1.0 for a
    stream, whose examples are not known yet)."""
    if is_online(encoded) or not len(encoded):
        return 1.0
    n = len(encoded)
    picked = [encoded[i] for i in range(0, n, max(1, n // sample))]
    tokens = sum(len(e.ids) for e in picked)
    return sum(int(sum(e.mask)) for e in picked) / tokens if tokens else 1.0


def memory_line(cfg: Config, model: nn.Module, device, autocast: bool, processes: int, strategy: str,
                longest: int, train=()) -> str:
    """One line for the start of `tuneforge train`: this run's estimate, with its real longest row and
    share of target tokens."""
    try:
        layout = layout_of(model)
        row = min(longest, cfg.train.pack_length or longest) if cfg.train.packing else longest
        s = replace(setting_for(cfg, device.type, processes, row, autocast), strategy=strategy,
                    target_share=target_share(train))
        e = estimate(layout, training_of(layout, cfg.method), s)
    except Exception as err:  # noqa: BLE001 - advisory: an estimate it cannot make must not stop the run
        return f"memory estimate: not available for this model ({type(err).__name__}: {err})"
    top = sorted(e.terms.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{name.split(' (')[0]} {_gb(v)}" for name, v in top)
    slack = e.overhead.get(GLIBC_SLACK, 0.0)
    heap = f"; {_gb(slack)} GB of it glibc heap slack" if slack else ""
    return (f"memory estimate: {_gb(e.per_process)} GB peak per process on {device.type} ({parts} GB{heap}); "
            f"`tuneforge estimate CONFIG` itemises it")


# ---------------------------------------------------------------------------------------- the report


def _gb(n: float) -> str:
    return f"{n / GB:.2f}"


def _size(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 2**20:.1f} MB"


def describe_method(m) -> str:
    if m.name in ("lora", "dora"):
        targets = m.target_modules if isinstance(m.target_modules, str) else ",".join(m.target_modules)
        return f"{m.name} r={m.r} on {targets}" + (f", dropout {m.dropout}" if m.dropout else "")
    if m.name == "freeze":
        return f"freeze: top {m.trainable_layers} blocks" + (f" + {m.trainable_modules}" if m.trainable_modules else "")
    if m.name in ("prefix", "prompt"):
        return f"{m.name}: {m.num_virtual_tokens} virtual tokens"
    if m.name == "bottleneck":
        return f"bottleneck ({m.placement}, width {m.size or f'hidden/{m.reduction_factor}'})"
    if m.name == "ia3":
        return f"ia3 on {m.target_modules if isinstance(m.target_modules, str) else ','.join(m.target_modules)}"
    return m.name


def report(cfg: Config, model_path: str, estimates: list[Estimate]) -> str:
    e0 = estimates[0]
    layout, t, s0 = e0.layout, e0.training, e0.setting
    row, row_key = row_bound(cfg)
    added = f", {t.added:,} of them added" if t.added else ""
    lines = [
        f"model: {model_path} ({layout.model_type}: {layout.layers} blocks, hidden {layout.hidden}, "
        f"{layout.heads} heads / {layout.kv_heads} key-value, vocab {layout.vocab:,})",
        f"parameters: {layout.total:,}; {describe_method(cfg.method)} trains {t.trainable:,} "
        f"({100 * t.trainable / (layout.total + t.added):.2f}% of {layout.total + t.added:,}{added})",
        f"micro-batch: {s0.tokens:,} tokens (train.batch_tokens) in rows of up to {row} ({row_key}), "
        f"grad_accum {s0.grad_accum}, {s0.processes} process{'es' if s0.processes > 1 else ''}"
        + (f" ({s0.strategy})" if s0.processes > 1 else ""),
        "",
    ]
    header = {e.setting.device: e for e in estimates}
    table = [("", list(header)),
             ("precision", ["bf16 autocast" if e.setting.autocast else "fp32" for e in estimates])]
    if t.frozen(layout):
        table.append(("frozen base stored as", [_frozen_text(e.setting) for e in estimates]))
    table.append(("attention", [e.setting.attention for e in estimates]))
    names = list(dict.fromkeys([k for e in estimates for k in e.terms] + [k for e in estimates for k in e.overhead]))
    for name in names:
        values = [e.terms.get(name, e.overhead.get(name)) for e in estimates]
        if any(values):
            table.append((name, [_size(v) if v is not None else "-" for v in values]))
    table.append(("peak per process", [_size(e.per_process) for e in estimates]))
    if s0.processes > 1:
        table.append((f"{s0.processes} processes", [f"{_size(e.machine)} on one machine" if e.setting.device == "cpu"
                                                    else "the above on each GPU" for e in estimates]))
    table.append(("peak at", [e.moment for e in estimates]))
    width = max(len(label) for label, _ in table) + 2
    cols = [max(len(row_[1][i]) for row_ in table) + 3 for i in range(len(estimates))]
    for label, values in table:
        lines.append(f"{label:<{width}}" + "".join(f"{v:>{w}}" for v, w in zip(values, cols)))
    lines += ["", *_notes(cfg, estimates, row_key)]
    return "\n".join(lines)


def _frozen_text(s: Setting) -> str:
    rest = {FP32: "fp32", BF16: "bf16"}.get(s.frozen_bytes, f"{s.frozen_bytes} bytes a parameter")
    return f"{s.quantize} linears, the rest {rest}" if s.quantize != "none" else rest


def _notes(cfg: Config, estimates: list[Estimate], row_key: str) -> list[str]:
    e0 = estimates[0]
    share = e0.setting.target_share
    targets = "every token a target (--targets: the share that carries loss)" if share == 1 else \
        f"{share:.0%} of tokens targets (--targets)"
    notes = [f"assumed: {targets} and rows as long as {row_key} allows (train.pack_length=N for shorter rows); "
             "`tuneforge train` logs its own estimate with the data's longest row and target share"]
    if any(e.setting.device == "cuda" for e in estimates) and cfg.train.precision == "auto":
        notes.append("cuda: train.precision auto taken as bf16 (GPUs from Ampere on); the peak is what the run's "
                     "report calls peak_memory_gb (torch's allocated peak) plus the CUDA context")
    if any(e.setting.device == "cpu" for e in estimates):
        notes.append(f"cpu: the peak is the process's resident memory (report: peak_memory_gb); "
                     f"{_gb(CPU_PROCESS_BASELINE)} GB of it is Python and libraries, measured on a 2-core AMD EPYC")
    if cfg.train.activation_checkpointing and any(e.setting.device == "cpu" for e in estimates):
        notes.append("cpu + train.activation_checkpointing: glibc keeps part of every block recomputed, so on CPU "
                     "checkpointing saves less than on a GPU (docs/training.md, 'Will it fit?')")
    if cfg.train.compile != "false" and e0.layout.total >= 50_000_000:
        notes.append("train.compile: compiled blocks (on by default for runs of 20+ steps) keep fewer activations "
                     "than counted here (docs/performance.md measured -1.8 GB of 4.8 GB): an upper bound then")
    if cfg.recipe != "sft":
        notes.append(f"recipe {cfg.recipe}: counted as SFT's target loss; pairs (preference) or extra passes keep "
                     "more per example")
    biggest = max(e0.terms, key=e0.terms.get)
    levers = {"activations": "lower train.batch_tokens (activations grow with it); on a GPU, "
                             "train.activation_checkpointing: true",
              "optimizer state (AdamW)": "train fewer parameters (an adapter method) or shard it: "
                                         "train.distributed: fsdp over several processes",
              "weights": "an adapter method stores the frozen base in bf16 where bf16 runs natively"}
    if biggest in levers:
        notes.append(f"largest term: {biggest}; to lower it, {levers[biggest]}")
    return notes


def estimate_command(cfg: Config, policy, devices=("cpu", "cuda"), processes: int = 1, targets: float = 1.0) -> str:
    """`tuneforge estimate CONFIG`: resolve the model, read its config.json only, and print the estimate."""
    path = resolve_model_path(cfg.model)
    layout = skeleton_layout(load_model_config(path, policy), policy.trust_remote_code)
    return report(cfg, path, estimate_config(cfg, layout, devices, processes, targets))
