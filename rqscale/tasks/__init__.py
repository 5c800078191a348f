"""Tasks: model + losses -> named losses. The unit a training engine wraps."""
from rqscale.tasks.contextual import ContextualTask
from rqscale.tasks.stage1 import Stage1Task
from rqscale.tasks.stage2 import Stage2Task, soft_cross_entropy


def stage2_task(cfg, rqvae) -> Stage2Task:
    """The stage-2 task of cfg.stage2.model.kind: autoregressive, or contextual (masked stacks)."""
    return (ContextualTask if cfg.stage2.model.kind == "contextual" else Stage2Task)(cfg, rqvae)


__all__ = ["ContextualTask", "Stage1Task", "Stage2Task", "soft_cross_entropy", "stage2_task"]
