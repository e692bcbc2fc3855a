"""The pieces of a ``torch.distributed`` run, for any trainer of this package.

Launch with ``torchrun --nproc_per_node N -m wavedensity.cli train ...`` (several machines: torchrun's
``--nnodes``/``--rdzv-*`` flags, see docs/distributed.md). Without torchrun's environment a run is one
process and every helper here reduces to the single-process behaviour.

A trainer calls, in order::

    runtime = start(config.device)                  # process group from RANK / WORLD_SIZE / LOCAL_RANK
    layout = BatchLayout(batch_size, grad_accum, runtime.world_size)
    wrapped = wrap_model(model, runtime, "ddp")     # or "fsdp2"; build the optimizer after this
    batches = ShardedBatches(sampler, layout, runtime)
    for step ...:
        for micro, (ids, labels) in enumerate(batches.get(step)):   # this rank's rows of the step
            with gradient_sync(wrapped, micro == last): forward + backward
        clip, optimizer step                        # gradients are whole and equal on every rank
    model_state = full_model_state(model)           # every rank calls (a collective under FSDP2)
    optimizer_state = full_optimizer_state(model, optimizer)
    if runtime.is_main: write files
    barrier(runtime); stop(runtime)

The global batch (``batch_size`` rows per optimizer step) is the same whatever the world size:
``batch_size = micro_batch x world_size x grad_accum``, and rank ``r`` reads its own contiguous
``batch_size / world_size`` rows of the step's rows of the sampler's stream (a pure function of
(seed, row)), so no two ranks read the same row and a run resumes on any number of ranks.
"""

import contextlib
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..data import DataError
from .config import DISTRIBUTED_STRATEGIES, ConfigError


@dataclass(frozen=True)
class Runtime:
    """Where this process stands in the run: its rank, the number of ranks, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the process group and destroys it in stop()

    @property
    def is_main(self) -> bool:
        """Rank 0, the only one that writes files and prints."""
        return self.rank == 0


def launched_rank() -> int:
    """The global rank torchrun gave this process (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def start(device: str = "auto") -> Runtime:
    """Join the run torchrun launched (nccl on CUDA, gloo on CPU), or describe a single process.

    ``device``: "auto" (this rank's GPU when CUDA is available, else the CPU), "cuda" (this rank's
    GPU), "cpu", or an explicit "cuda:K" for a single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():  # a caller set the group up (tests, notebooks)
        world_size, rank = dist.get_world_size(), dist.get_rank()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but this torch build sees no CUDA device")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
        elif world_size > 1:
            raise ConfigError(f"device {device!r} names one GPU, but {world_size} ranks each need their own: "
                              "use device 'cuda' or 'auto' (rank r takes GPU LOCAL_RANK)")
        torch.cuda.set_device(resolved)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        owns_group = True
    return Runtime(rank, world_size, local_rank, resolved, owns_group)


def stop(runtime: Runtime) -> None:
    """Leave the process group if ``start`` created it."""
    if runtime.owns_group:
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor; the input itself when there is one rank)."""
    if runtime.world_size == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def check_same_on_all_ranks(runtime: Runtime, value: str, what: str) -> None:
    """Refuse to train when ranks disagree on ``value`` (e.g. a tokenizer trained on data read differently)."""
    if runtime.world_size == 1:
        return
    digest = hashlib.blake2b(value.encode(), digest_size=16).hexdigest()
    digests = [None] * runtime.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise DataError(f"ranks disagree on {what} (one digest per rank: {digests}); every rank must read "
                           "the same data and settings")


# ---- the global batch and its rows per rank --------------------------------------------------


@dataclass(frozen=True)
class BatchLayout:
    """``batch_size`` rows per optimizer step = ``micro_batch`` x ``world_size`` x ``grad_accum``."""

    batch_size: int
    grad_accum: int
    world_size: int

    def __post_init__(self):
        if self.batch_size % (self.grad_accum * self.world_size):
            raise ConfigError(
                f"batch_size {self.batch_size} (rows per optimizer step) must be divisible by grad_accum "
                f"{self.grad_accum} x world size {self.world_size}; choose a batch_size that is, or change grad_accum")

    @property
    def micro_batch(self) -> int:
        """Rows one rank puts through one forward/backward pass."""
        return self.batch_size // (self.grad_accum * self.world_size)

    def rows(self, step: int, micro: int, rank: int) -> range:
        """Stream rows rank ``rank`` reads at micro-step ``micro`` of step ``step``.

        Step ``step`` owns rows ``step * batch_size ..`` of the stream; rank r takes the r-th contiguous
        ``batch_size / world_size`` of them, in ``grad_accum`` consecutive micro-batches. With one rank
        this is the single-process order: micro-batch m of step s is rows ``s * B + m * micro ..``.
        """
        if not (0 <= micro < self.grad_accum and 0 <= rank < self.world_size and step >= 0):
            raise ValueError(f"no micro-batch {micro} of rank {rank} at step {step} in {self}")
        first = step * self.batch_size + (rank * self.grad_accum + micro) * self.micro_batch
        return range(first, first + self.micro_batch)


class ShardedBatches:
    """This rank's micro-batches of each step, on its device.

    A background thread reads the next step while the current one trains; on CUDA the rows are
    pinned, so the copies to the GPU do not block. Only that thread touches the sampler.
    """

    def __init__(self, sampler, layout: BatchLayout, runtime: Runtime):
        self.sampler, self.layout, self.runtime = sampler, layout, runtime
        self.pin = runtime.device.type == "cuda"
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wda-batches")
        self.ahead: tuple[int, Future] | None = None

    def _read(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        parts = []
        for micro in range(self.layout.grad_accum):
            ids, labels = self.sampler.rows(self.layout.rows(step, micro, self.runtime.rank))
            parts.append((ids.pin_memory(), labels.pin_memory()) if self.pin else (ids, labels))
        return parts

    def get(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(input_ids, labels)] of this rank for ``step``, one pair per micro-step; starts reading step + 1."""
        if self.ahead is not None and self.ahead[0] == step:
            future = self.ahead[1]
        else:
            future = self.reader.submit(self._read, step)
        self.ahead = (step + 1, self.reader.submit(self._read, step + 1))
        device = self.runtime.device
        return [(ids.to(device, non_blocking=True), labels.to(device, non_blocking=True))
                for ids, labels in future.result()]

    def close(self) -> None:
        self.reader.shutdown(wait=True, cancel_futures=True)


# ---- wrapping, gradient synchronisation, whole state ------------------------------------------


def wrap_model(model: nn.Module, runtime: Runtime, strategy: str = "ddp", *, blocks=(),
               find_unused_parameters: bool = False) -> nn.Module:
    """The module to train: ``model`` itself (one rank), a DDP wrapper, or ``model`` sharded in place by FSDP2.

    ``blocks``: the repeated layers FSDP2 shards one by one (gathered just before each runs); the rest
    (embeddings, head) is sharded as one group. Parameters stay float32: bf16 comes from autocast,
    so the wave parameters and the float32 regions of WDA keep their precision.
    ``find_unused_parameters``: some parameters get no gradient by construction (DDP must be told).
    """
    if strategy not in DISTRIBUTED_STRATEGIES:
        raise ConfigError(f"distributed strategy must be one of {DISTRIBUTED_STRATEGIES}, got {strategy!r}")
    if runtime.world_size == 1:
        return model
    if strategy == "ddp":
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                   find_unused_parameters=find_unused_parameters)
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_sync(wrapped: nn.Module, enabled: bool):
    """Context for one micro-step's forward and backward: gradients are reduced across ranks only when
    ``enabled`` (the last micro-step); earlier ones accumulate locally."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel) and not enabled:
        return wrapped.no_sync()
    if is_sharded(wrapped):
        wrapped.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def unsharded(module: nn.Module):
    """Context in which ``module``'s own parameters are whole, to call its methods outside forward."""
    if not is_sharded(module):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def gathered():
        module.unshard()
        try:
            yield
        finally:
            module.reshard()

    return gathered()


def grad_norm_value(norm: torch.Tensor) -> float:
    """``clip_grad_norm_``'s result as a number (a replicated DTensor under FSDP2)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict | None:
    """The whole model state on rank 0 (a collective under FSDP2); None where ``model`` is already whole."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` of the whole, unsharded parameters (a collective under FSDP2; whole on
    rank 0), keyed by parameter index like a single process's, so any number of ranks can load it."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=_full_options())
    if not named:  # ranks other than 0 receive nothing
        return {}
    groups = optimizer.state_dict()["param_groups"]
    # both list the parameters of each group in the optimizer's order: names there, indices here
    index = {name: i for named_group, group in zip(named["param_groups"], groups)
             for name, i in zip(named_group["params"], group["params"])}
    return {"state": {index[name]: state for name, state in named["state"].items()},
            "param_groups": [{**named_group, "params": group["params"]}
                             for named_group, group in zip(named["param_groups"], groups)]}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a whole, index-keyed optimizer state (``full_optimizer_state``) into this rank's optimizer."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    name_by_id = {id(param): name for name, param in model.named_parameters()}
    name_of = {i: name_by_id[id(param)] for group, live in zip(optimizer.state_dict()["param_groups"],
                                                               optimizer.param_groups)
               for i, param in zip(group["params"], live["params"])}
    named = {"state": {name_of[int(i)]: value for i, value in state["state"].items()},
             "param_groups": [{**group, "params": [name_of[i] for i in group["params"]]}
                              for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
