"""Typed configs: schema dataclasses, load() from YAML + overrides, validation that names the fix."""
from rqscale.config.load import ConfigError, load, save_resolved, to_yaml
from rqscale.config.schema import (
    Config,
    DataConfig,
    OptimConfig,
    RQVAEConfig,
    RunConfig,
    Stage1Config,
    Stage1LossConfig,
    TrainConfig,
)
from rqscale.config.validate import default_lpips_backbone, validate

__all__ = [
    "Config", "ConfigError", "DataConfig", "OptimConfig", "RQVAEConfig", "RunConfig", "Stage1Config",
    "Stage1LossConfig", "TrainConfig", "default_lpips_backbone", "load", "save_resolved",
    "to_yaml", "validate",
]
