"""Load a Config from YAML + key=value overrides, and validate it before any heavy work.

This is the only module that imports omegaconf. Every error is a ConfigError whose message
names the offending key and the fix, so the CLI can print one line instead of a traceback.
"""
from __future__ import annotations

import difflib
import os
from typing import Sequence

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from rqscale.config.schema import Config


class ConfigError(ValueError):
    """A config problem, phrased as `key: problem. Fix: ...`."""

    def __init__(self, key: str, problem: str, fix: str):
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"config key '{key}': {problem}. Fix: {fix}")


def load(path: str | None = None, overrides: Sequence[str] = (), check_files: bool = True) -> Config:
    """Schema defaults <- YAML file <- command-line overrides, then validate().

    `check_files=False` skips checks that weight files exist (for planning a config elsewhere)."""
    merged = OmegaConf.structured(Config)
    layers = []
    if path is not None:
        layers.append(_read_yaml(path))
    layers.append(_parse_overrides(overrides))
    for layer in layers:
        merged = _merge(merged, layer)
    return _checked(OmegaConf.to_object(merged), check_files)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml_text(text: str) -> Config:
    """Rebuild a Config from resolved YAML (e.g. stored in a checkpoint), without file checks."""
    return _checked(OmegaConf.to_object(_merge(OmegaConf.structured(Config), OmegaConf.create(text))), check_files=False)


def _checked(cfg: Config, check_files: bool) -> Config:
    """validate(), then write back data.kind as derived. train.grad_accum stays as written: it
    depends on the world size a run gets (rqscale/config/derive.py)."""
    from rqscale.config.derive import data_kind  # local: both import ConfigError from here
    from rqscale.config.validate import validate

    validate(cfg, check_files=check_files)
    cfg.data.kind = data_kind(cfg)
    return cfg


def save_resolved(cfg: Config, path: str) -> None:
    """Write the fully resolved config (defaults included) next to a run's outputs."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(to_yaml(cfg))


def _read_yaml(path: str):
    if not os.path.isfile(path):
        raise ConfigError("<config file>", f"file '{path}' does not exist", "pass the path of a YAML file, e.g. configs/debug/demo.yaml")
    try:
        return OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError("<config file>", f"'{path}' is not valid YAML ({exc})", "fix the YAML syntax") from None


def _parse_overrides(overrides: Sequence[str]):
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key=value", f"write e.g. {item}=VALUE")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(str(overrides), f"cannot parse overrides ({exc})", "use key=value pairs") from None


def _merge(base, layer):
    try:
        return OmegaConf.merge(base, layer)
    except ConfigKeyError as exc:
        raise _unknown_key(exc) from None
    except ValidationError as exc:
        raise _wrong_type(exc) from None


def _unknown_key(exc: ConfigKeyError) -> ConfigError:
    key = exc.full_key or str(exc.key)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.structured(Config)
    siblings = list(OmegaConf.select(node, parent).keys()) if parent else list(node.keys())
    close = difflib.get_close_matches(leaf, [str(s) for s in siblings], n=1)
    hint = f"did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else f"valid keys here: {', '.join(map(str, siblings))}"
    return ConfigError(key, "unknown key", f"remove it or rename it; {hint}")


def _wrong_type(exc: ValidationError) -> ConfigError:
    key = exc.full_key or str(exc.key)
    msg = str(exc).splitlines()[0]
    default = OmegaConf.select(OmegaConf.structured(Config), key)
    return ConfigError(key, f"wrong type: {msg}", f"give '{key}' a value like its default ({default!r})")
