"""Process set-up DeepSpeed needs before it is first imported. Nothing here runs at import time.

DeepSpeed picks its accelerator once, during `import deepspeed` (deepspeed.accelerator.get_accelerator
reads DS_ACCELERATOR or probes the machine), so the choice has to be in place before that import.
`deepspeed.accelerator.set_accelerator` is no substitute: it can only be reached through `import
deepspeed`, which has already picked one. The environment variable also carries the choice to child
processes: the universal-checkpoint converter (`rqscale.engine.to_universal`) runs DeepSpeed in one.

Called by the Ray Train worker at start-up (rqscale/launch/trainer.py) and, lazily and idempotently,
by every rqscale.engine function before it imports deepspeed, so in-process users (tests, evaluation,
export) need no entry point.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings


def accelerator_name() -> str:
    """"cuda" with a GPU; otherwise "cpu", whose collectives run on gloo (DESIGN.md)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_process() -> None:
    """Tell DeepSpeed which accelerator to use, unless the environment already says, or DeepSpeed is
    already imported (its choice is then made; changing the variable would only mislead)."""
    if "deepspeed" in sys.modules:
        return
    os.environ.setdefault("DS_ACCELERATOR", accelerator_name())


def import_deepspeed():
    """The deepspeed module, configured first (see the module docstring)."""
    configure_process()
    import deepspeed

    return deepspeed


def quiet_framework_output() -> None:
    """Keep out of a terminal what nobody running rqscale can act on: the deprecation warnings DeepSpeed's
    ZeRO collectives trigger in torch.distributed (one per process), and torch's notice that a CUDA_HOME
    exists without a GPU when DeepSpeed builds its CPU communication op. For processes that show rqscale's
    own lines: Ray Train workers and the in-process benchmarks."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed.*")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@contextlib.contextmanager
def printed_to_log(name: str):
    """What the block prints to stdout goes to the `name` logger at INFO instead: DeepSpeed prints
    ("... built successfully") where a library should log."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            logging.getLogger(name).info(line)
