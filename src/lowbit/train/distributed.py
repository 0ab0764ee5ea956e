"""Data-parallel training on PyTorch's own engine: ``torchrun`` + ``torch.distributed`` + DDP.

Launch: ``torchrun --nproc-per-node N -m lowbit train ...`` (gloo on CPU, NCCL on CUDA;
multi-node through torchrun's usual rendezvous flags). torchrun sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`init_distributed` joins the process group from them (``env://``) and
:func:`lowbit.train.fit` switches to DistributedDataParallel whenever a group of more than one
process is initialized (see ``fit``'s docstring for what runs where).

Data: :class:`ShardedLoader` is a rank's view of an :class:`~lowbit.data.ArrayLoader` whose
``batch_size`` is the *global* batch B (it must be divisible by the world size W). Each epoch's
global order is the single-process one (``(seed, epoch)``); global batch j is split into W
contiguous slices and rank r serves slice r, so a rank's batch is B / W samples and the union
over ranks of step j is exactly the single-process batch j (augmentation is drawn for the whole
global batch from the epoch's generator, then sliced, so it matches too). The last partial batch
of m samples is split into slices of m // W or m // W + 1 samples; ``fit`` scales each rank's
summed cross-entropy by W / m, so DDP's gradient average is still the mean over the global
batch. Only when 0 < m < W (some rank would get nothing) is that last batch left out of the
epoch (it holds different samples every epoch). With ``drop_last`` the last partial batch is
dropped, as in a single process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lowbit.data import ArrayLoader
from lowbit.data.augment import augment_batch
from lowbit.errors import ConfigError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    created: bool = False  # True: init_distributed created the group, so cleanup() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set)."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def init_distributed(device: str = "cpu", timeout_s: float = 1800.0) -> DistInfo:
    """Join torchrun's process group: gloo for ``cpu``, NCCL for ``cuda`` (device ``cuda:LOCAL_RANK``).

    Without torchrun (or with ``WORLD_SIZE=1``) nothing is initialized and a single-process
    :class:`DistInfo` comes back. A group initialized by the caller is reused, never recreated.
    """
    if is_distributed():
        local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        return DistInfo(rank(), world_size(), local, _rank_device(device, local), created=False)
    if not launched_by_torchrun() or _env_int("WORLD_SIZE") <= 1:
        return DistInfo(device=device)
    rank_, world, local = (_env_int(name) for name in TORCHRUN_VARS)
    per_rank = _rank_device(device, local)
    timeout = datetime.timedelta(seconds=timeout_s)
    if per_rank.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for under torchrun, but CUDA is not available")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) here; "
                              "use --nproc-per-node <= the number of GPUs")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", init_method="env://", rank=rank_, world_size=world, timeout=timeout,
                                device_id=torch.device(per_rank))
    else:
        dist.init_process_group("gloo", init_method="env://", rank=rank_, world_size=world, timeout=timeout)
    return DistInfo(rank_, world, local, per_rank, created=True)


def _rank_device(device: str, local_rank: int) -> str:
    return f"cuda:{local_rank}" if device == "cuda" else device


def is_distributed() -> bool:
    """A process group of more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that writes run folders, checkpoints and metrics."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup(info: DistInfo | None = None) -> None:
    """Destroy the process group: always without ``info``, else only if ``info.created`` it."""
    if dist.is_available() and dist.is_initialized() and (info is None or info.created):
        dist.destroy_process_group()


# ---- what fit() calls ------------------------------------------------------------------------
def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` (parameters and buffers broadcast from rank 0).

    ``find_unused_parameters=True``: a parameter may get no gradient in some steps (WaveQ's β
    once frozen, a quantizer parameter a layer does not use); DDP then marks it ready instead of
    waiting for it (in a run where every parameter is always used, DDP prints a one-time warning
    about the extra graph traversal this costs; it is harmless). Buffers are broadcast from rank
    0 at every forward (DDP's default), which keeps batch-norm running statistics identical.
    """
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def agree_after_step(loss: torch.Tensor, received: int | None) -> tuple[float, int | None]:
    """One collective per step: (mean loss over ranks, the signal any rank received or None).

    Every rank stops at the same step, so the interrupt checkpoint is consistent.
    """
    flag = 1.0 if received is not None else 0.0
    packed = torch.stack([loss.detach().to(torch.float64),
                          torch.tensor(flag, dtype=torch.float64, device=loss.device),
                          torch.tensor(float(received or 0), dtype=torch.float64, device=loss.device)])
    dist.all_reduce(packed)
    total, count, signums = packed.tolist()
    if count == 0:
        return total / world_size(), None
    return total / world_size(), received if received is not None else int(round(signums / count))


def any_received(received: int | None, device: torch.device) -> int | None:
    """The signal some rank received (None: none), agreed on by all ranks."""
    if not is_distributed():
        return received
    packed = torch.tensor([1.0 if received is not None else 0.0, float(received or 0)], dtype=torch.float64,
                          device=device)
    dist.all_reduce(packed)
    count, signums = packed.tolist()
    return None if count == 0 else (received if received is not None else int(round(signums / count)))


def reduce_sums(sums: dict[str, torch.Tensor], correct: torch.Tensor,
                seen: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Epoch sums over ranks in one all_reduce: loss-like sums averaged (a rank's step losses are
    scaled so that their mean over ranks is the global batch's), ``correct`` and ``seen`` added."""
    names = list(sums)
    packed = torch.stack([*(sums[n].to(torch.float64) for n in names), correct.to(torch.float64),
                          torch.tensor(float(seen), dtype=torch.float64, device=correct.device)])
    dist.all_reduce(packed)
    w = world_size()
    out = {n: packed[i] / w for i, n in enumerate(names)}
    return out, packed[len(names)].round().to(torch.long), int(round(packed[len(names) + 1].item()))


class GlobalCount:
    """The sum over ranks of a per-rank count, all-reduced in the background (started before the
    forward pass, awaited before the loss needs it)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.total = torch.tensor(float(n), dtype=torch.float32, device=device)
        self._work = dist.all_reduce(self.total, async_op=True)

    def wait(self) -> torch.Tensor:
        self._work.wait()
        return self.total


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (same trailing shape; dim 0 may differ) concatenated along dim 0 in rank order."""
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


@torch.no_grad()
def first_batch_init(model: nn.Module, loader: Any, epoch: int, device: torch.device, use_amp: bool) -> None:
    """Show ``model`` the first *global* batch of ``epoch`` once, in training mode, without gradients.

    State a module initialises from the first batch it sees in training (LSQ's activation step)
    then equals a single-process run's and is the same on every rank; batch-norm running
    statistics and the RNG state are put back, so nothing else changes. Called before DDP wraps
    the model (DDP then broadcasts rank 0's parameters and buffers, making the ranks identical).
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    batch = next(iter(loader), None)
    have = torch.tensor([0.0 if batch is None else 1.0], device=device)
    dist.all_reduce(have)
    if have.item() < world_size():  # some rank has no batch: nothing to initialise from
        return
    x = all_gather_cat(batch[0].to(device))
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    saved = {(id(m), name): getattr(m, name).clone() for m in model.modules() for name in NORM_BUFFERS
             if isinstance(getattr(m, name, None), torch.Tensor)}
    was_training = model.training
    model.train()
    with torch.autocast(device.type, enabled=use_amp):
        model(x)
    model.train(was_training)
    for m in model.modules():
        for name in NORM_BUFFERS:
            if (id(m), name) in saved:
                getattr(m, name).copy_(saved[(id(m), name)])
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)


# ---- data ---------------------------------------------------------------------------------
class ShardedLoader:
    """Rank ``rank``'s share of ``loader``'s epochs (``loader.batch_size`` = the global batch).

    See the module docstring for the layout and the last partial batch. ``batch_size`` is the
    per-rank batch; ``set_epoch`` and ``len`` behave as the wrapped loader's.
    """

    def __init__(self, loader: ArrayLoader, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"ShardedLoader: rank {rank} is not in 0..{world_size - 1}")
        if loader.batch_size % world_size:
            raise ConfigError(f"the global batch size {loader.batch_size} is not divisible by the "
                              f"{world_size} processes; choose a batch size that is a multiple of {world_size}")
        self.loader, self.rank, self.world_size = loader, rank, world_size
        self.batch_size = loader.batch_size // world_size

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def _count(self) -> int:
        """Samples served (all ranks together) per epoch."""
        n, big = self.loader.num_samples, self.loader.batch_size
        tail = n % big
        return n - tail if self.loader.drop_last or tail < self.world_size else n

    def __len__(self) -> int:
        return -(-self._count() // self.loader.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        base, big = self.loader, self.loader.batch_size
        generator = base.epoch_generator()
        order = base.order(generator)[: self._count()]
        for start in range(0, len(order), big):
            idx = order[start:start + big]  # the global batch (the single-process batch)
            mine = slice(len(idx) * self.rank // self.world_size, len(idx) * (self.rank + 1) // self.world_size)
            if base.augment is not None:  # drawn for the whole global batch, as in one process
                x = augment_batch(base.data.x[idx], base.augment, generator)[mine]
            else:
                x = base.data.x[idx[mine]]
            yield base.normalise(x), base.data.y[idx[mine]]
