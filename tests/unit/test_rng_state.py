"""The RNG states in rank_<r>.pt: plain values (they load with weights_only=True) that restore every
stream bit-identically, which the kill-and-resume tests rely on for identical weights."""
import random

import numpy as np
import torch

from rqscale.train import checkpoint as ckpt


def draws() -> tuple:
    """Numbers from every stream a training step uses, including numpy's cached Gaussian and python's
    gauss_next, which only a complete state carries over."""
    return (torch.rand(5).tolist(), torch.randn(3).tolist(), np.random.rand(4).tolist(), np.random.standard_normal(),
            random.random(), random.gauss(0, 1), random.getrandbits(64))


def test_saved_rng_state_restores_every_stream_exactly(tmp_path):
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    draws()  # mid-stream, with a cached Gaussian in numpy and in python (each drew one normal)
    assert np.random.get_state()[3] == 1 and random.getstate()[2] is not None
    ckpt.save_rank_state(str(tmp_path), 0, {"step": 7, "rng": ckpt.rng_state()})
    first = draws()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # anything: the restore must undo it
    state = ckpt.load_rank_state(str(tmp_path), 0)  # weights_only=True: no pickled numpy objects in it
    ckpt.set_rng_state(state["rng"])
    assert draws() == first and state["step"] == 7


def test_rng_state_needs_no_pickled_globals(tmp_path):
    ckpt.save_rank_state(str(tmp_path), 1, {"rng": ckpt.rng_state()})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "rank_1.pt")) == []
