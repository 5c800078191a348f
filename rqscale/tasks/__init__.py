"""Tasks: model + losses -> named losses. The unit a training engine wraps."""
from rqscale.tasks.stage1 import Stage1Task

__all__ = ["Stage1Task"]
