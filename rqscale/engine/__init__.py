"""DeepSpeed, behind a small API: the config dict from the schema, engines, checkpoint files.

This package is the only importer of deepspeed (DESIGN.md, "Layout")."""
from rqscale.engine.ds_config import deepspeed_config
from rqscale.engine.engine import (
    EngineModule,
    build_engine,
    consolidated_state_dict,
    fp32_state_dict_from_checkpoint,
    init_distributed,
    load_engine_checkpoint,
    save_engine_checkpoint,
    to_universal,
)

__all__ = [
    "EngineModule", "build_engine", "consolidated_state_dict", "deepspeed_config", "fp32_state_dict_from_checkpoint",
    "init_distributed", "load_engine_checkpoint", "save_engine_checkpoint", "to_universal",
]
