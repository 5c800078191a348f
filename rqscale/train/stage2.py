"""Stage 2 in plain PyTorch: the reference step (AdamW on the RQ-Transformer, the RQ-VAE frozen; A.3)
that the DeepSpeed path (stage2_engine.py) is tested and benchmarked against, and shared helpers."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from rqscale.config import Config
from rqscale.models import RQVAE, build_stage1_model
from rqscale.sampling import SamplingParams, sample_stage2, schedule_of
from rqscale.tasks import Stage2Task
from rqscale.train.metrics import accumulate
from rqscale.train.optim import build_optimizer, build_scheduler
from rqscale.train.stage1 import load_init_weights
from rqscale.utils.images import save_grid, to_uint8


def decay_groups(model: nn.Module, weight_decay: float) -> list:
    """Weight decay on Linear weights only; biases, LayerNorms, embeddings and position tables
    are not decayed (the minGPT convention the ref's transformer follows)."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


class Stage2Trainer:
    def __init__(self, task: Stage2Task, cfg: Config):
        self.task, self.optim_cfg = task, cfg.stage2.optim
        self.optimizer = build_optimizer(decay_groups(task.model, self.optim_cfg.weight_decay), self.optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg, cfg.train.max_steps)

    def step(self, micro_batches: Sequence[dict], step: int) -> dict:
        self.task.train()
        n = len(micro_batches)
        metrics: dict = {}
        self.optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches:
            losses = self.task.losses(batch)
            (losses["total"] / n).backward()
            accumulate(metrics, losses, n)
        if self.optim_cfg.grad_clip > 0:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.task.trainable_parameters(), self.optim_cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics


# ---- the stage-2 run: frozen RQ-VAE, training, a consolidated checkpoint, samples --------------

def load_rqvae(cfg: Config) -> RQVAE:
    """The frozen stage-1 model of rqvae.kind (an RQ-VAE, or the DQ-VAE a DQ-Transformer reads)."""
    model = build_stage1_model(cfg.rqvae)
    load_init_weights(model, cfg.stage2.rqvae_checkpoint, "stage2.rqvae_checkpoint")
    return model


def load_init_transformer(model: nn.Module, path: str, key: str = "run.init_from") -> None:
    """Fine-tuning: the RQ-Transformer weights of a consolidated rqtransformer.pt (a stage-2 run's or
    python -m rqscale.convert's), refused naming `key` when they do not fit this config's model."""
    from rqscale.config import ConfigError
    from rqscale.sampling.checkpoint import read_state

    # Memory-mapped (every rank reads the file; a 3.9B model is 16 GB), an s3:// file from this node's cached copy.
    state = dict(read_state(path, map_location="cpu", mmap=True)["rqtransformer"])
    codebook = state.pop("codebook", None)  # the codes' embeddings: must be those of stage2.rqvae_checkpoint
    if codebook is not None and not torch.equal(codebook, model.codebook):
        raise ConfigError(key, f"'{path}' was trained on another RQ-VAE's codebook than stage2.rqvae_checkpoint's",
                          "point stage2.rqvae_checkpoint at the RQ-VAE that checkpoint was trained on")
    fix = "use a checkpoint of the same stage2.model.* and rqvae.* settings (its config.yaml has them)"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise ConfigError(key, f"'{path}' does not fit this model: {str(exc).splitlines()[-1].strip()}", fix) from None
    missing = [k for k in missing if k != "codebook"]
    if missing or unexpected:
        raise ConfigError(key, f"'{path}' does not match this model (missing {missing[:3]}, unexpected {unexpected[:3]})", fix)


@torch.no_grad()
def sample_picture(task: Stage2Task, path: str, seed: int, per_row: int = 8,
                   class_names: Optional[Sequence[str]] = None, params: Optional[SamplingParams] = None,
                   captions: Optional[Sequence[tuple[str, torch.Tensor]]] = None) -> str:
    """One labelled row of samples per class or caption (up to 10), or 4 rows for an unconditional model.

    Class rows are named `class_names[c]` when given (indexed by class label), else "class c". A
    text-conditional model needs `captions`: (text, token ids (L,)) pairs; the text names the row."""
    params = params or SamplingParams()
    labels, conds = _row_conditions(task.model.cfg, per_row, class_names, captions)
    model = task.model.eval()
    rows = [_sample_row(task, cond, per_row, params, seed + i) for i, cond in enumerate(conds)]
    model.train()
    rows_are = {"class": "one row per class", "text": "one row per caption"}.get(model.cfg.condition, "unconditional")
    family = "DQ-Transformer samples (coarse-to-fine, KV-cached)" if model.cfg.kind == "dq" else "RQ-Transformer samples"
    title = f"{family}, {rows_are}\n{_describe(params)}"
    if model.cfg.kind == "contextual":
        title = f"Contextual RQ-Transformer samples, {rows_are}\n{_describe_draft_revise(task.cfg.stage2.sampling, params)}"
    _save_arrays(rows, conds, labels, os.path.splitext(path)[0] + ".npz")
    return save_grid(rows, path, scale=max(1, 64 // rows[0].shape[-1]), labels=labels, title=title)


def _save_arrays(rows: list, conds: list, labels: list, path: str) -> None:
    """The picture's samples for programs: images (N, H, W, 3) uint8 row by row, each sample's row
    label, its class (-1 when the row is not a class) and, for caption rows, its caption."""
    per_row = rows[0].shape[0]
    classes = [int(c[0]) if c is not None and c.dim() == 1 else -1 for c in conds]
    text = {"captions": np.repeat(np.array(labels), per_row)} if any(c is not None and c.dim() == 2 for c in conds) else {}
    np.savez(path, images=np.concatenate([to_uint8(r) for r in rows]), labels=np.repeat(np.array(labels), per_row),
             classes=np.repeat(np.array(classes), per_row), **text)


def picture_sampling(cfg: Config) -> SamplingParams:
    """stage2.sampling as the sampler's parameters (0 and 1.0 mean off)."""
    sp = cfg.stage2.sampling
    return SamplingParams(temperature=sp.temperature, top_k=sp.top_k or None, top_p=sp.top_p if sp.top_p < 1.0 else None,
                          cfg_scale=sp.cfg_scale)


def run_picture(task: Stage2Task, cfg: Config, path: str) -> str:
    """The run's sample picture (and its .npz): rows named by the data's classes or captions, cfg's sampling."""
    from rqscale.data.pipeline import class_names_of, picture_captions
    from rqscale.data.text import tokenizer_of

    m = task.model.cfg
    names = class_names_of(cfg) if m.condition == "class" else None
    if names is not None and len(names) < min(10, m.num_classes):  # the data names fewer classes than the model has
        names = None
    captions = None
    if m.condition == "text":
        texts = picture_captions(cfg)
        captions = list(zip(texts, tokenizer_of(cfg).encode_batch(texts)))
    return sample_picture(task, path, seed=cfg.run.seed, class_names=names, params=picture_sampling(cfg), captions=captions)


def _row_conditions(cfg, n: int, class_names, captions) -> tuple[list[str], list]:
    """(row labels, per-row condition batches or None) for sample_picture."""
    if cfg.condition == "none":
        return ["unconditional"] * 4, [None] * 4
    if cfg.condition == "text":
        if not captions:
            raise ValueError("a text-conditional model needs captions=[(text, token ids), ...] to draw samples")
        return [text for text, _ in captions[:10]], [tokens.expand(n, -1) for _, tokens in captions[:10]]
    classes = range(min(10, cfg.num_classes))
    if class_names is not None and len(class_names) < len(classes):
        raise ValueError(f"sample_picture got {len(class_names)} class_names for {len(classes)} classes: "
                         "give one name per class label, in label order")
    labels = [class_names[c] if class_names is not None else f"class {c}" for c in classes]
    return labels, [torch.full((n,), c) for c in classes]


def _sample_row(task: Stage2Task, cond: Optional[torch.Tensor], n: int, params: SamplingParams, seed: int) -> torch.Tensor:
    device = next(task.model.parameters()).device
    cond = None if cond is None else cond.to(device)
    schedule = schedule_of(task.cfg.stage2.sampling, params)  # contextual models: Draft-and-Revise
    codes = sample_stage2(task.model, n, cond, params, torch.Generator(device=device).manual_seed(seed), schedule)
    return task.rqvae.decode_codes(codes.view(n, *task.cfg.rqvae.code_shape))


def _describe(params: SamplingParams) -> str:
    """The sampling settings in the title, so a grid is never judged without knowing how it was drawn."""
    top_k, top_p = params.top_k or "off", params.top_p if params.top_p not in (None, 1.0) else "off"
    text = f"temperature {params.temperature}, top-k {top_k}, top-p {top_p}"
    return text + (f", guidance scale {params.cfg_scale}" if params.cfg_scale != 1.0 else "")


def _describe_draft_revise(sampling_cfg, params: SamplingParams) -> str:
    """Draft-and-Revise's schedule in the title: the draft's steps, then the revisions and their sampling."""
    schedule = schedule_of(sampling_cfg, params)
    draft = f"draft in {schedule.draft_steps} {schedule.draft_strategy} steps"
    if _describe(schedule.draft) != _describe(SamplingParams()):  # the draft is not plain sampling (A.4's)
        draft += f" ({_describe(schedule.draft)})"
    return f"{draft}, then {schedule.revise_iterations} revisions of {schedule.revise_steps} steps at {_describe(params)}"
