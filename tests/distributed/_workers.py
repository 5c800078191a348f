"""Functions run inside spawned gloo ranks (module-level so spawn can import them)."""
import os

import torch
import torch.distributed as dist

from rqscale.quantizer import ResidualQuantizer
from rqscale.utils.collectives import DeviceCollectives


def make_quantizer(restart: bool, collective=None) -> ResidualQuantizer:
    torch.manual_seed(0)  # identical initial codebook on every rank and in the reference process
    return ResidualQuantizer(64, 8, 3, restart_unused=restart, collective=collective)


def data_for_step(step: int, rank: int, per_rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(per_rank, 8, generator=gen) * (1 + rank)  # ranks see differently scaled data


def ema_rank(rank: int, world: int, port: int, steps: int, per_rank: int, restart: bool, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(123 + rank)  # different local RNG: restarts must still agree via broadcast
        rq = make_quantizer(restart, DeviceCollectives(torch.device("cpu"))).train()
        for step in range(steps):
            rq(data_for_step(step, rank, per_rank))
        torch.save(rq.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
