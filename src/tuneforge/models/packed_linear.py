"""Linear layers with their bf16 weights laid out once for oneDNN, for CPU generation.

A decode step multiplies a few rows by every weight of the model. Packing each weight once into
oneDNN's preferred blocked layout (what torch.compile's CPU backend does when it freezes weights)
makes those products faster than `F.linear` on the plain weight. Measured on SmolLM2-135M in bf16 on a
2-core AMX Xeon, 1,000 cached positions: a decode step took 55.6 -> 41.7 ms at 1 row, 96.6 -> 86.9 ms
at 16 and 238.0 -> 228.7 ms at 64 (bench/bench_agent_generate.py --decode-steps; docs/agent.md). Reading long prompts gains
nothing (within 5%), so only generation is worth it.

Only for models that generate and never train again: the packed weight is not a parameter, has no
gradient and is not saved. Outputs equal `F.linear`'s bit for bit on contiguous inputs (tested), so
greedy replies do not change; a strided input is copied first (F.linear's own bf16 rounding differs
between a strided input and its contiguous copy).
"""

from __future__ import annotations

import torch

# oneDNN picks its weight layout for an expected number of rows; decode batches hold about this many.
_ROWS_HINT = 16


def can_pack(model: torch.nn.Module) -> bool:
    """bf16 weights on a CPU whose oneDNN runs bf16 natively (AMX / AVX512-BF16); elsewhere `F.linear`."""
    try:
        first = next(model.parameters())
    except StopIteration:
        return False
    return (first.device.type == "cpu" and first.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(torch.nn.Module):
    """`nn.Linear`'s forward from a weight packed once (inference only)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), _ROWS_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise RuntimeError("PackedLinear is for generation only: its weight has no gradient")
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every plain `nn.Linear` of an inference-only bf16 CPU model by a `PackedLinear`; returns
    how many. A model this cannot help (fp32, GPU, a CPU without native bf16) is left as it is (0).
    Adapter layers (PEFT's LoRA and the like) are not plain linears and stay: merge adapters first."""
    if not can_pack(model):
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.bfloat16:
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count
