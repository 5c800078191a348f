"""Tasks: model + losses -> named losses. The unit a training engine wraps."""
from rqscale.tasks.stage1 import Stage1Task
from rqscale.tasks.stage2 import Stage2Task, soft_cross_entropy

__all__ = ["Stage1Task", "Stage2Task", "soft_cross_entropy"]
