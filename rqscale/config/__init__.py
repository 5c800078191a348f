"""Typed configs: schema dataclasses, load() from YAML + overrides, validation that names the fix."""
from rqscale.config.load import ConfigError, from_yaml_text, load, save_resolved, to_yaml
from rqscale.config.derive import batch_plan, data_kind
from rqscale.config.schema import (
    CheckpointConfig,
    Config,
    EngineConfig,
    DataConfig,
    OptimConfig,
    RQTransformerConfig,
    RQVAEConfig,
    RunConfig,
    Stage1Config,
    Stage1LossConfig,
    Stage2Config,
    Stage2LossConfig,
    TrainConfig,
)
from rqscale.config.validate import default_lpips_backbone, validate

__all__ = [
    "CheckpointConfig", "Config", "ConfigError", "EngineConfig", "DataConfig", "OptimConfig", "RQTransformerConfig", "RQVAEConfig", "RunConfig",
    "Stage1Config", "Stage1LossConfig", "Stage2Config", "Stage2LossConfig", "TrainConfig",
    "batch_plan", "data_kind", "default_lpips_backbone", "from_yaml_text", "load", "save_resolved", "to_yaml", "validate",
]
