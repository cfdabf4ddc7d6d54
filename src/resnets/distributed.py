"""Process-group setup for `torchrun`: one process per device, rank 0 writes everything."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistEnv:
    """Join the process group torchrun describes in the environment; a plain run is world size 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(env.local_rank)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend=backend)
        else:
            # Under torchrun, the processes of a restart (--max-restarts) meet in the store of the
            # ones they replace, which still holds the old processes' addresses: without a
            # namespace of its own, a restart's process group connects to dead processes and
            # fails or hangs (measured: every restart of a 2-process gloo run, torch 2.14).
            store, rank, size = next(dist.rendezvous("env://"))
            dist.init_process_group(backend=backend, store=dist.PrefixStore(f"resnets/attempt_{attempt}", store),
                                    rank=rank, world_size=size)
    return env


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_object(env: DistEnv, value):
    """Rank 0's value on every rank (e.g. the run directory it created)."""
    if not env.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class Agreement:
    """Flags each process raises on its own (a stop signal, a checkpoint falling due by its clock)
    that every process acts on at the same iteration, so none is left waiting in a collective.

    Every `every` iterations each process casts its flags into an all_reduce(MAX) and reads the
    result of the previous cast, `every` iterations later: every process reads the same values at
    the same iteration, and the collective has long completed by then, so reading it never stalls
    the step loop. On CUDA the result comes to the host by an asynchronous copy into pinned memory
    behind an event, so casting costs no device synchronisation either (an all_reduce whose result
    were read at once would drain the device queue: a stall per read). No new collective order is
    introduced: every process casts at the same iterations. A process without a process group
    reads its own flags at once.
    """

    def __init__(self, env: DistEnv, device: torch.device, every: int, size: int = 2):
        self.env, self.device, self.every, self.size = env, device, max(int(every), 1), size
        self._pending = None  # (work, device tensor, host tensor, event) of the last cast

    def collect(self, iteration: int, local) -> tuple[bool, ...] | None:
        """The agreed flags at `iteration` (`local()` itself without a process group); None at an
        iteration where no cast is read."""
        if not self.env.enabled:
            return tuple(bool(v) for v in local())
        if iteration % self.every or self._pending is None:
            return None
        work, values, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # recorded `every` iterations ago: long done
            return tuple(bool(v) for v in host.tolist())
        work.wait()
        return tuple(bool(v) for v in values.tolist())

    def cast(self, iteration: int, local) -> None:
        """Put this process's `local()` flags into the all_reduce read at `iteration + every`."""
        if not self.env.enabled or iteration % self.every:
            return
        flags = [int(bool(v)) for v in local()]
        if self.device.type == "cuda":
            values = torch.empty(self.size, dtype=torch.int32, device=self.device)
            for index, flag in enumerate(flags):
                values[index].fill_(flag)  # a scalar fill: no host-to-device copy, no sync
            work = dist.all_reduce(values, op=dist.ReduceOp.MAX, async_op=True)
            work.wait()  # orders the current stream after the collective; the host does not wait
            host = torch.empty(self.size, dtype=torch.int32, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (work, values, host, event)
        else:
            values = torch.tensor(flags, dtype=torch.int32)
            work = dist.all_reduce(values, op=dist.ReduceOp.MAX, async_op=True)
            self._pending = (work, values, None, None)

    def close(self) -> None:
        """Complete the cast in flight (every process has one at the same iteration)."""
        if self._pending is not None:
            work, _, _, event = self._pending
            self._pending = None
            if event is not None:
                event.synchronize()
            else:
                work.wait()


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
