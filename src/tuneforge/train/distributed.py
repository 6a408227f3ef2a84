"""Several processes, one loop: DDP or FSDP, chosen by `train.distributed`, launched by torchrun or
`accelerate launch` (docs/distributed.md).

DDP: accelerate wraps the loss model; every rank holds the whole model and gradients are averaged.
FSDP: parameters, gradients and optimizer state are split across the ranks with torch's
`fully_shard` (one unit per decoder block, the root holding embeddings, final norm and head). The
split is applied to a *twin* of the loss model that shares the recipe's tensors, so after training
the recipe's own model is handed back whole: a normal module rank 0 evaluates and saves as an
ordinary PEFT/HF folder. Checkpoints always hold whole tensors, so a run saved with N processes
resumes with M.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn

from tuneforge.config import TrainConfig
from tuneforge.errors import UserError
from tuneforge.models.anatomy import find_blocks


def make_accelerator(cfg: TrainConfig):
    """The Accelerator for a run. tuneforge shards FSDP itself (below), so an `accelerate launch` FSDP
    config must not make accelerate wrap the model a second time: its switch is hidden while the
    Accelerator is built (it still selects FSDP, see `parallel_strategy`). DeepSpeed configs pass through."""
    from accelerate import Accelerator

    saved = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        return Accelerator(cpu=not torch.cuda.is_available())
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def parallel_strategy(cfg: TrainConfig, accelerator) -> str:
    """'single', 'ddp', 'fsdp' or 'deepspeed'."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if cfg.distributed != "auto":
            raise UserError(f"train.distributed: {cfg.distributed}, but the accelerate config selects DeepSpeed; "
                            "set train.distributed: auto or launch without the DeepSpeed config")
        if getattr(plugin, "zero_stage", 0) == 3:
            raise UserError("DeepSpeed ZeRO-3 is not supported (checkpoints would hold empty partitions); "
                            "use train.distributed: fsdp, which shards the same way")
        if cfg.grad_accum > 1:
            raise UserError("with DeepSpeed set train.grad_accum: 1 (DeepSpeed steps at every backward); "
                            "raise train.batch_tokens instead")
        return "deepspeed"
    if accelerator.num_processes == 1:
        return "single"
    from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if cfg.distributed == "fsdp" or (cfg.distributed == "auto" and from_launcher):
        return "fsdp"
    return "ddp"


def launcher_rank() -> int:
    """This process's rank as torchrun or `accelerate launch` set it (0 when not launched by them), known
    before any process group exists: the run-folder check runs on rank 0 only, because a slower rank would
    otherwise find the folder rank 0 has just created and refuse it."""
    return int(os.environ.get("RANK", "0"))


def shard(loss_model: nn.Module, model: nn.Module) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """The FSDP twin of `loss_model` and its parameters by `model`'s own names.

    `model`'s tensors are emptied (that is the memory FSDP saves) until `unshard_into` fills them again.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    tensors = [*loss_model.parameters(), *loss_model.buffers()]
    with torch.no_grad():
        for t in tensors:  # like DDP: every rank starts from rank 0's weights
            dist.broadcast(t.data, src=0)
    # deepcopy with every tensor mapped to itself: new modules, the same tensors.
    twin = copy.deepcopy(loss_model, memo={id(t): t for t in tensors})
    for m in twin.modules():
        m._compiled_call_impl = None  # a compiled block's copy would still call the original block
    module_names = {id(m): n for n, m in loss_model.named_modules()}
    own_names = {id(p): n for n, p in model.named_parameters()}
    twin_to_own = {n: own_names[id(p)] for n, p in loss_model.named_parameters() if id(p) in own_names}
    for block in find_blocks(model):
        fully_shard(twin.get_submodule(module_names[id(block)]))
    fully_shard(twin)
    with torch.no_grad():
        for p in model.parameters():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    params = {twin_to_own[n]: p for n, p in twin.named_parameters() if n in twin_to_own}
    return twin, {n: params[n] for n in own_names.values() if n in params}  # in model order


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor. A sharded one is gathered: a collective, so every rank must call it."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def local_numel(params) -> int:
    """Elements this rank holds: the whole model under DDP, about 1/N of it under FSDP."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)


def copy_full_into(dst: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into `dst`, which may be this rank's shard of it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    value = value.to(device=dst.device, dtype=dst.dtype)
    if isinstance(dst, DTensor):  # every rank holds the same whole value: each keeps its own slice
        value = distribute_tensor(value, dst.device_mesh, dst.placements, src_data_rank=None)
    with torch.no_grad():
        dst.copy_(value)


def unshard_into(model: nn.Module, params: dict[str, nn.Parameter]) -> None:
    """Give `model` its tensors back, whole, on every rank (gathers every parameter of the twin)."""
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            own[name].data = full(p.detach()).clone()


def full_optimizer_state(optimizer) -> dict:
    """optimizer.state_dict() with whole tensors: the same file whatever the number of processes."""
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: full(v) for k, v in s.items()} for i, s in sd["state"].items()}
    return sd


def load_optimizer_state(optimizer, sd: dict) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, state in sd["state"].items():
        p = params[int(i)]
        if isinstance(p, DTensor):  # exp_avg and friends have the parameter's shape: shard them alike
            for k, v in state.items():
                if k != "step" and v.shape == p.shape:
                    state[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
    optimizer.load_state_dict(sd)


@contextlib.contextmanager
def no_sync(accelerator, module, last: bool):
    """Gradients are averaged across ranks once per step, at its last micro-batch."""
    from torch.distributed.fsdp import FSDPModule

    if last:
        yield
    elif isinstance(module, FSDPModule):  # keep whole local gradients; reduce-scatter them at the last one
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        with accelerator.no_sync(module):
            yield


def broadcast_object(obj, accelerator):
    """Rank 0's `obj` on every rank."""
    if accelerator.num_processes == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj, accelerator) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * accelerator.num_processes
    dist.all_gather_object(out, obj)
    return out
