"""More than one process, on torch's own engine: `torchrun --nproc_per_node=N -m edgekd distill RECIPE`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; `World.from_environment()`
joins the process group (gloo on CPU, NCCL on CUDA). Without torchrun there is one process and every
helper here is a no-op, so the training loop reads the same either way. Rank 0 alone logs, writes
checkpoints and the summary; the others wait for it where the run directory is concerned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls, device_type: str = "cpu") -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's `value`, on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, rows: torch.Tensor, count: int) -> torch.Tensor:
        """Each rank computed `rows` for positions rank, rank + size, …: put them back in order (first
        `count`). Used to share the teacher cache that every rank computed a slice of."""
        if not self.distributed:
            return rows
        per_rank = -(-count // self.size)
        padded = torch.zeros((per_rank, *rows.shape[1:]), dtype=rows.dtype)
        padded[: len(rows)] = rows
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(gathered, padded)
        return torch.stack(gathered, dim=1).reshape(per_rank * self.size, *rows.shape[1:])[:count]

    def all_equal(self, value: float) -> bool:
        """Whether every rank holds the same number (a checksum of weights, say)."""
        if not self.distributed:
            return True
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return all(v == values[0] for v in values)

    def average_gradients(self, parameters) -> None:
        """For trainable state outside DDP (ProKT's moving teacher): the mean gradient over ranks."""
        if not self.distributed:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                parameter.grad /= self.size
