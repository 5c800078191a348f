"""What the training loop needs from whoever launched it: report metrics, publish checkpoints.

Ray Train workers get `rqscale.launch.trainer.RaySession` (Ray's reporting uploads checkpoints);
an in-process run (tests, `train.num_workers=1` without Ray) gets `LocalSession`, which copies the
checkpoint into storage itself and prunes old ones. The loop never imports Ray.
"""
from __future__ import annotations

from typing import Optional, Protocol

from rqscale.train import checkpoint as ckpt


class Session(Protocol):
    def report(self, metrics: dict, checkpoint_dir: Optional[str], step: int) -> None: ...

    def after_complete(self) -> None: ...


class LocalSession:
    def __init__(self, run_uri: str, keep: int):
        self.run_uri, self.keep = run_uri, keep

    def report(self, metrics: dict, checkpoint_dir: Optional[str], step: int) -> None:
        if checkpoint_dir is not None:
            ckpt.publish(checkpoint_dir, self.run_uri, step)

    def after_complete(self) -> None:
        ckpt.prune(self.run_uri, self.keep)
