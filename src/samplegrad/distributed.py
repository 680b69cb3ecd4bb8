"""Data parallelism with ``torch.distributed``: the small layer samplegrad's loops use under
``torchrun`` (one node or several), with ``gloo`` on CPU and ``nccl`` on GPU.

Every function here is a no-op (or the identity) in a single process that never called
:func:`init_from_env`, so the same script runs with ``python`` and with ``torchrun``.

Same math on any number of ranks. samplegrad's data-parallel loops keep the *global* random
stream identical on every rank: each rank draws the global minibatch (indices, noise,
timesteps, masks) from the shared seed, exactly as one process would, and computes only its
:func:`shard` of the items. Each rank's loss is its share of the global batch mean (the
per-item terms of its slice divided by the *global* batch size), so summing the gradients
over ranks (:func:`all_reduce_grads` with ``op="sum"``) gives the one-process gradient up to
the order of the floating-point additions. Quantities that are genuinely per rank (e.g.
evaluation draws) use :func:`rank_generator`, derived from the seed and the rank.

::

    w = init_from_env()                      # reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*
    model = Model().to(w.device)
    sl = shard(batch_size)                   # this rank's items of the global batch
    loss = per_item_loss(model, x[sl]).sum() / batch_size
    loss.backward(); all_reduce_grads(model.parameters(), op="sum"); opt.step()
    if is_main(): save(...)
    barrier()
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["CollectiveError", "World", "all_reduce", "all_reduce_grads", "barrier",
           "broadcast_module", "comm_seconds", "destroy", "embed_shard", "gather",
           "gather_object", "init_from_env", "is_main", "rank_generator",
           "reset_comm_seconds", "set_timeout", "shard", "sharded_map", "world"]

DEFAULT_TIMEOUT_S = 300.0
_COMM = [0.0]  # seconds spent inside collectives since the last reset_comm_seconds()


class CollectiveError(RuntimeError):
    """A collective failed or timed out: another rank most likely crashed or stopped."""


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node,
    the ``device`` its model should live on (``cuda:LOCAL_RANK`` under ``nccl``) and the
    ``backend`` (``None`` when ``torch.distributed`` is not initialized)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when collectives actually communicate (initialized, more than one rank)."""
        return self.backend is not None and self.world_size > 1


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _default_device(local_rank: int, backend: str | None) -> torch.device:
    if backend == "nccl" or (backend is None and torch.cuda.is_available()):
        return torch.device("cuda", local_rank if backend == "nccl" else 0)
    return torch.device("cpu")


def world() -> World:
    """The current :class:`World`; a single process (rank 0 of 1) without initialization."""
    if dist.is_available() and dist.is_initialized():
        backend = str(dist.get_backend())
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return World(dist.get_rank(), dist.get_world_size(), local,
                     _default_device(local, backend), backend)
    return World(0, 1, 0, _default_device(0, None), None)


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> World:
    """Join the process group described by torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and return the
    :class:`World`. Without those variables: nothing to join, a one-process :class:`World`.

    ``backend``: default ``"nccl"`` when CUDA is available (each rank then uses
    ``cuda:LOCAL_RANK``), else ``"gloo"``. ``timeout_s``: how long any collective waits for
    the other ranks before failing (default ``SAMPLEGRAD_DIST_TIMEOUT`` or 300 s), so a
    crashed rank makes the others exit instead of hanging. Calling it again is harmless.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return world()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl", "mpi", "ucc"):
        raise ValueError(f"backend: must be 'gloo', 'nccl', 'mpi' or 'ucc', got {backend!r}")
    if timeout_s is None:
        timeout_s = float(os.environ.get("SAMPLEGRAD_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def set_timeout(timeout_s: float) -> None:
    """Change how long collectives wait for the other ranks (e.g. a generous timeout for
    start-up, then a short one for the training steps); no-op when not initialized."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
    if dist.is_available() and dist.is_initialized():
        from torch.distributed import distributed_c10d

        distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=timeout_s))


def destroy() -> None:
    """Leave the process group (no-op when not initialized)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return world().rank == 0


def _collective(fn: Any, *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as e:  # type: ignore[attr-defined]
        raise CollectiveError(
            f"rank {dist.get_rank()}/{dist.get_world_size()}: {getattr(fn, '__name__', fn)} "
            f"failed; another rank probably crashed or timed out ({e})") from e
    finally:
        _COMM[0] += time.perf_counter() - t0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _active():
        _collective(dist.barrier)


def comm_seconds() -> float:
    """Wall-clock seconds spent in this module's collectives since the last reset."""
    return _COMM[0]


def reset_comm_seconds() -> None:
    _COMM[0] = 0.0


def rank_generator(seed: int, device: torch.device | str | None = None, *,
                   rank: int | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default CPU) seeded from ``(seed, rank)``: an
    independent stream per rank, reproducible whatever the scheduling. ``rank`` defaults to
    this process's."""
    if int(seed) != seed:
        raise ValueError(f"seed: must be an int, got {seed!r}")
    r = world().rank if rank is None else int(rank)
    if r < 0:
        raise ValueError(f"rank: must be >= 0, got {rank}")
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + (r + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    dev = torch.device("cpu") if device is None else torch.device(device)
    return torch.Generator(device=dev).manual_seed(mixed)


def shard(n: int, rank: int | None = None, world_size: int | None = None) -> slice:
    """This rank's contiguous block of ``n`` items: ``slice(n*r//W, n*(r+1)//W)`` (sizes
    differ by at most one; ``slice(0, n)`` in one process)."""
    if int(n) != n or n < 0:
        raise ValueError(f"n: must be an int >= 0, got {n!r}")
    w = world()
    r = w.rank if rank is None else int(rank)
    ws = w.world_size if world_size is None else int(world_size)
    if ws < 1 or not 0 <= r < ws:
        raise ValueError(f"rank: must be in [0, world_size={ws}), got {r}")
    return slice(n * r // ws, n * (r + 1) // ws)


def embed_shard(local: torch.Tensor, sl: slice, n: int, dim: int = 0) -> torch.Tensor:
    """``local`` (this rank's :func:`shard` ``sl`` of ``n`` items along ``dim``) placed in a
    tensor of the global size, zeros elsewhere (differentiable w.r.t. ``local``).

    Lets a sampler draw its noise for the *global* batch, exactly as one process would, so
    the rank's slice of the result gets the same random numbers whatever the world size
    (valid for samplers whose number of random draws depends on shapes only, as every
    registered estimator's does)."""
    dim = dim % local.dim()
    before, after = list(local.shape), list(local.shape)
    before[dim], after[dim] = sl.start, n - sl.stop
    if local.shape[dim] != sl.stop - sl.start:
        raise ValueError(f"local: size {local.shape[dim]} along dim {dim} does not match "
                         f"the shard {sl.start}:{sl.stop}")
    if before[dim] == 0 and after[dim] == 0:
        return local
    return torch.cat([local.new_zeros(before), local, local.new_zeros(after)], dim)


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum (``op="sum"``), mean, max or min of ``tensor`` over ranks; returns it."""
    if op not in ("sum", "mean", "max", "min"):
        raise ValueError(f"op: must be 'sum', 'mean', 'max' or 'min', got {op!r}")
    if not _active():
        return tensor
    red = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
           "min": dist.ReduceOp.MIN}[op]
    _collective(dist.all_reduce, tensor, op=red)
    if op == "mean":
        tensor.div_(dist.get_world_size())
    return tensor


def all_reduce_grads(params: Iterable[torch.Tensor] | torch.nn.Module,
                     op: str = "mean") -> None:
    """Sum (``op="sum"``) or average the ``.grad`` of ``params`` over ranks, in one
    flattened collective per dtype and device. A missing gradient counts as zeros (and is
    materialized), so every rank takes part with the same shapes."""
    if op not in ("sum", "mean"):
        raise ValueError(f"op: must be 'sum' or 'mean', got {op!r}")
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    params = [p for p in params if p.requires_grad]
    if not _active() or not params:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for ps in groups.values():
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        all_reduce(flat, op)
        offset = 0
        for p in ps:
            k = p.grad.numel()
            p.grad.copy_(flat[offset:offset + k].view_as(p.grad))
            offset += k


def broadcast_module(module: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Copy rank ``src``'s parameters and buffers to every rank (in place); returns it."""
    if _active():
        for t in [*module.parameters(), *module.buffers()]:
            _collective(dist.broadcast, t.data, src=src)
    return module


def gather(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order, on every rank
    (sizes along ``dim`` may differ between ranks; the other dimensions must agree)."""
    if not _active():
        return tensor
    ws = dist.get_world_size()
    moved = tensor.movedim(dim, 0).contiguous()
    size = torch.tensor([moved.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(ws)]
    _collective(dist.all_gather, sizes, size)
    counts = [int(s) for s in sizes]
    m = max(counts)
    pad = moved.new_zeros((m - moved.shape[0], *moved.shape[1:]))
    padded = torch.cat([moved, pad]) if pad.shape[0] else moved
    bufs = [torch.empty_like(padded) for _ in range(ws)]
    _collective(dist.all_gather, bufs, padded)
    return torch.cat([b[:c] for b, c in zip(bufs, counts)]).movedim(0, dim)


def sharded_map(fn: Any, n: int) -> Any:
    """Split ``n`` items over the ranks: ``fn(sl)`` runs on this rank's :func:`shard` ``sl``
    and returns a tensor (or a tuple of tensors) with ``sl.stop - sl.start`` rows; the rows
    of every rank are gathered in order, so every rank gets the ``n`` rows (one process:
    ``fn(slice(0, n))``). For sampling, draw each rank's noise from :func:`rank_generator`:
    the result is then reproducible for a given seed and world size.

    ::

        x = sharded_map(lambda sl: sample(model, 64, batch_size=sl.stop - sl.start,
                                          guide=guide, generator=rank_generator(0)), 1024)
    """
    sl = shard(n)
    out = fn(sl)
    if isinstance(out, tuple):
        return tuple(gather(o) for o in out)
    return gather(out)


def gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` alone)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, out, obj)
    return out
