"""Tasks: model + losses -> named losses. The unit a training engine wraps."""
from rqscale.tasks.contextual import ContextualTask
from rqscale.tasks.dq_stage2 import DQStage2Task
from rqscale.tasks.stage1 import Stage1Task
from rqscale.tasks.stage2 import Stage2Task, soft_cross_entropy


def stage2_task(cfg, rqvae) -> Stage2Task:
    """The stage-2 task of cfg.stage2.model.kind: autoregressive, contextual (masked stacks) or dq (the
    DQ-Transformer on DQ-VAE codes)."""
    return {"contextual": ContextualTask, "dq": DQStage2Task}.get(cfg.stage2.model.kind, Stage2Task)(cfg, rqvae)


__all__ = ["ContextualTask", "DQStage2Task", "Stage1Task", "Stage2Task", "soft_cross_entropy", "stage2_task"]
