"""Two gloo ranks on CPU: the EMA codebook agrees across ranks and with one process fed the union."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rqscale.quantizer import LocalCollective
from tests.distributed._workers import data_for_step, ema_rank, make_quantizer

STEPS, PER_RANK, WORLD = 6, 96, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, restart: bool) -> list:
    mp.spawn(ema_rank, args=(WORLD, free_port(), STEPS, PER_RANK, restart, str(tmp_path)), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def test_two_ranks_equal_single_process_on_union(tmp_path):
    states = run_ranks(tmp_path, restart=False)
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    single = make_quantizer(False, LocalCollective()).train()
    for step in range(STEPS):
        single(torch.cat([data_for_step(step, r, PER_RANK) for r in range(WORLD)]))
    reference = single.state_dict()
    for key in reference:
        assert torch.allclose(states[0][key], reference[key], atol=1e-5), key
    initial = make_quantizer(False, LocalCollective()).state_dict()
    assert not torch.allclose(states[0]["codebooks.0.embed"], initial["codebooks.0.embed"])  # it did move


def test_two_ranks_agree_with_dead_code_restarts(tmp_path):
    # Ranks seed their local RNGs differently, so restarts agree only through rank 0's broadcast.
    states = run_ranks(tmp_path, restart=True)
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    initial = make_quantizer(True, LocalCollective()).state_dict()["codebooks.0.embed"]
    assert not torch.allclose(states[0]["codebooks.0.embed"], initial)
