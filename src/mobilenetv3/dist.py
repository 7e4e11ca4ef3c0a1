"""The torchrun environment: rank helpers and reductions. One process is a world of size 1."""
from __future__ import annotations

import io
import logging
import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


ONE_PROCESS = DistInfo()  # a world of one process (frozen: safe as a shared default)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        timeout = timedelta(minutes=30)
        dist.init_process_group(backend, store=_attempt_store(info, timeout), rank=info.rank,
                                world_size=world_size, timeout=timeout)
    return info


def _attempt_store(info: DistInfo, timeout: timedelta) -> dist.Store:
    """The rendezvous store torchrun describes, seen through a prefix of its own for each restart attempt.

    After ``--max-restarts`` restarts a worker group, the new workers share the elastic agent's store with
    the failed attempt, whose keys (each rank's listening address) are still there: without a prefix the
    new ranks read the dead ranks' addresses and fail to connect (gloo: ``Connection refused``).
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, info.world_size, is_master=not agent_serves and info.rank == 0,
                          timeout=timeout, wait_for_workers=False)
    return dist.PrefixStore(f"mobilenetv3/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over all processes (in place, returned); a no-op in a single process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(value) -> list:
    """Every process's ``value`` (plain types and tensors), in rank order; ``[value]`` in a single process.

    The value travels as ``torch.save`` bytes: tensors pickled by ``dist.all_gather_object`` itself fail to
    unpickle on the receiving side (``UntypedStorage has no attribute 'dtype'``, torch 2.14).
    """
    if not dist.is_initialized():
        return [value]
    buffer = io.BytesIO()
    torch.save(value, buffer)
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, buffer.getvalue())
    return [torch.load(io.BytesIO(data), weights_only=True) for data in values]


def broadcast_object(value, src: int = 0):
    """Rank ``src``'s value on every process."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class StopSignal:
    """SIGTERM/SIGINT: stop at the next step boundary and save; a second signal ends the process at once."""

    def __init__(self):
        self.received: Optional[int] = None
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, signal.SIG_DFL)  # the second one acts at once
        log.warning("%s received: saving at the end of this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def requested(self, info: DistInfo) -> bool:
        """Every process stops at the same step: the flag is summed over all of them."""
        flag = torch.tensor([1.0 if self.received else 0.0])
        if info.enabled:
            all_reduce_sum(flag)
        return bool(flag.item())
