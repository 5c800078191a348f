"""Consolidated stage-2 checkpoint: everything `python -m rqscale.sample` needs in one file.

Layout (torch.save of a dict):
  format         "rqscale-stage2/1"
  config         the resolved config as YAML text
  rqvae          RQ-VAE state dict (encoder, decoder, 1x1 convs, codebook buffers)
  rqtransformer  RQ-Transformer state dict
"""
from __future__ import annotations

import os

import torch

from rqscale.config import Config, from_yaml_text, to_yaml
from rqscale.data.file_cache import local_copy, unreadable
from rqscale.data.storage import is_s3
from rqscale.models import RQVAE, build_stage1_model, build_stage2_model
from rqscale.utils.safe_load import load_plain

FORMAT = "rqscale-stage2/1"


def save_consolidated(path: str, cfg: Config, rqvae: RQVAE, model: RQTransformer) -> str:
    return save_consolidated_state(path, cfg, rqvae.state_dict(), model.state_dict())


def save_consolidated_state(path: str, cfg: Config, rqvae_state: dict, model_state: dict) -> str:
    """The consolidated file from the two state dicts (e.g. converted ones, rqscale.convert)."""
    state = {"format": FORMAT, "config": to_yaml(cfg), "rqvae": rqvae_state, "rqtransformer": model_state}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name
    return path


def read_state(path: str, **load_args) -> dict:
    """The checkpoint's dict (an s3:// one from this node's cache); a missing or foreign file is a clear error."""
    if is_s3(path):
        problem = unreadable(path)
        if problem:
            raise FileNotFoundError(f"checkpoint not readable: {problem} (expected the rqtransformer.pt a stage-2 run writes)")
        path = local_copy(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: '{path}' (expected the rqtransformer.pt a stage-2 run writes)")
    state = load_plain(path, **load_args)  # strings, dicts and tensors only: nothing in it runs
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not an rqscale stage-2 checkpoint (format {FORMAT})")
    return state


def read_config(path: str) -> Config:
    """Only the config of a consolidated checkpoint (memory-mapped: the weights are not read)."""
    return from_yaml_text(read_state(path, map_location="cpu", mmap=True)["config"])


def load_consolidated(path: str, device: str = "cpu"):
    """-> (cfg, rqvae, model), both in eval mode. A missing or foreign file is a clear error."""
    state = read_state(path, map_location=device)
    cfg = from_yaml_text(state["config"])
    rqvae = build_stage1_model(cfg.rqvae)
    rqvae.load_state_dict(state["rqvae"])
    r = cfg.rqvae
    model = build_stage2_model(cfg.stage2.model, r.code_shape, r.num_codes, r.code_dim)
    model.load_state_dict(state["rqtransformer"])
    return cfg, rqvae.to(device).eval(), model.to(device).eval()
