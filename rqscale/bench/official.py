"""`python -m rqscale.bench train --official DIR`: rqscale's stage-2 step against the authors' RQ-Transformer
(kakaobrain/rq-vae-transformer) at the same size, in the same process, the steps interleaved.

The baseline is the authors' model as they ship it, trained the way the project's shared
official_bench.py does: forward under torch.autocast bf16 (fp32 weights), hard-label cross-entropy in
fp32, torch AdamW (betas 0.9/0.95, wd 1e-4). On a GPU (`--device cuda`) their forward runs under its
own fp16 autocast with a GradScaler instead (`_official_forward` says why). Its size comes from the bench config: code shape, K, n_z,
width, heads, spatial / depth layers, classes. Its codebook is random: only shapes matter for speed.

rqscale's side is the training step itself: the DeepSpeed engine step (what training runs) and the plain
loop, with soft labels and stochastic codes computed from latents inside each step (Eq. 15; the
baseline gets its codes for free), grad clipping (A.3), bf16 weights + fp32 masters. Each setting runs at the config's dropout (A.3: 0.1) and with all dropout off, set
in place on both models (every nn.Dropout's p, and rqscale's attention-weight dropout).

Prepare DIR once: export the repository's rqvae/ folder into it (`git archive HEAD rqvae | tar -x -C
DIR`); on Python 3.11+ change the three dataclass defaults that are instances in
DIR/rqvae/models/rqtransformer/configs.py to `field(default_factory=...)`. Their code stays out of
rqscale's tree: DIR is outside it, or the checkout's `.official/`, which git ignores (a device machine
gets that folder with the working tree when it is carried).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

import torch
from torch import nn

from rqscale.bench.common import interleaved, ms, rate_of
from rqscale.config import Config

CPU_RECIPE = "torch.autocast bf16"
GPU_RECIPE = "their forward's fp16 autocast + GradScaler"
MODEL_FILE = os.path.join("rqvae", "models", "rqtransformer", "transformers.py")
PATCH = ("in rqvae/models/rqtransformer/configs.py make the instance defaults (= AttentionBlockConfig(), "
         "= AttentionStackConfig() twice) field(default_factory=...) and import field (Python 3.11+)")


class BaselineError(ValueError):
    """The --official directory cannot give the authors' model; the message is one line naming the fix."""


def check_dir(path: str) -> str:
    """The absolute path of DIR if it holds the authors' rqvae/ package; BaselineError otherwise."""
    want = f"a directory holding the authors' rqvae/ package (kakaobrain/rq-vae-transformer, with {MODEL_FILE})"
    if not path or not os.path.isdir(path):
        raise BaselineError(f"--official {path!r} is not a directory: want {want}")
    if not os.path.isfile(os.path.join(path, MODEL_FILE)):
        raise BaselineError(f"--official {path!r} has no {MODEL_FILE}: want {want}")
    return os.path.abspath(path)


def import_official(path: str) -> tuple:
    """(RQTransformer, RQTransformerConfig) imported from DIR/rqvae, as official_bench.py does."""
    path = check_dir(path)
    loaded = sys.modules.get("rqvae")
    if loaded is not None and not os.path.abspath(getattr(loaded, "__file__", "") or "").startswith(path + os.sep):
        raise BaselineError(f"a different 'rqvae' package is already imported ({loaded.__file__}); run without it")
    sys.path.insert(0, path)
    try:
        from rqvae.models.rqtransformer import RQTransformer
        from rqvae.models.rqtransformer.configs import RQTransformerConfig
    except ValueError as e:
        if "default_factory" in str(e) or "mutable default" in str(e):
            raise BaselineError(f"--official {path!r} needs the dataclass patch: {PATCH}") from e
        raise BaselineError(f"cannot import the authors' RQ-Transformer from {path!r}: {e}") from e
    except ImportError as e:
        raise BaselineError(f"cannot import the authors' RQ-Transformer from {path!r}: {e}") from e
    finally:
        sys.path.remove(path)
    return RQTransformer, RQTransformerConfig


def official_config(cfg: Config) -> dict:
    """The authors' config for the bench model's size (fields as in official_bench.py)."""
    m, r = cfg.stage2.model, cfg.rqvae
    if m.condition != "class" or m.mlp_ratio != 4:
        raise BaselineError(f"the comparison needs a class-conditional model with MLP ratio 4 (the authors' block); "
                            f"got condition={m.condition}, mlp_ratio={m.mlp_ratio}")
    block = lambda: dict(n_head=m.num_heads, resid_pdrop=m.resid_dropout, attn_pdrop=m.attn_dropout)  # noqa: E731
    return dict(type="rq-transformer", block_size=list(r.code_shape), vocab_size=r.num_codes, embed_dim=m.embed_dim,
                input_embed_dim=r.code_dim, shared_tok_emb=True, shared_cls_emb=True, input_emb_vqvae=True,
                head_emb_vqvae=True, cumsum_depth_ctx=True, vocab_size_cond=m.num_classes, block_size_cond=1,
                embd_pdrop=m.embd_dropout, body=dict(n_layer=m.spatial_layers, block=block()),
                head=dict(n_layer=m.depth_layers, block=block()))


def official_trainer(cfg: Config, path: str, device: torch.device = torch.device("cpu")) -> tuple:
    """(the authors' model on `device`, its step function(batch, i)): one optimizer step as official_bench.py
    takes it on CPU; on a GPU, as their code runs there (`_official_forward`)."""
    from omegaconf import OmegaConf  # the authors' config API takes a DictConfig: the one importer outside config/

    model_cls, config_cls = import_official(path)
    torch.manual_seed(cfg.run.seed)
    model = model_cls(config_cls.create(OmegaConf.create(official_config(cfg)))).to(device)
    codebook = (torch.randn(cfg.rqvae.num_codes, cfg.rqvae.code_dim) * 0.1).to(device)

    class Aux:  # stands in for their RQ-VAE: code embeddings with the depth axis kept
        def get_code_emb_with_depth(self, code):
            return codebook[code], None

    aux, k = Aux(), cfg.rqvae.num_codes
    # their forward enters torch.cuda.amp.autocast(enabled=False) each step: a FutureWarning, not ours to print
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"rqvae\.")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")  # their fp16 recipe on GPU; off on CPU
    model.train()

    def step(batch: dict, i: int):
        codes = batch["codes"]
        logits = _official_forward(model, aux, codes, batch["cond"], device)
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, k), codes.reshape(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return model, step


def _official_forward(model: nn.Module, aux, codes: torch.Tensor, cond: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The authors' logits. On CPU under torch.autocast bf16, as official_bench.py (their forward's own
    `torch.cuda.amp.autocast(enabled=amp)` does nothing there). On a GPU that inner autocast decides: amp=False
    would switch an outer bf16 autocast off and run fp32, so they get amp=True, the fp16 autocast (with a
    GradScaler) that their released trainer uses (rqvae/trainers/trainer.py); fp16 and bf16 products run at
    the same tensor-core rate."""
    if device.type == "cuda":
        return model(codes, aux, cond=cond, amp=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        return model(codes, aux, cond=cond)


def official_batches(cfg: Config, batches: list, seed: int = 0) -> list:
    """The baseline's inputs for each bench batch: codes (B, H, W, D) and the same class labels, (B, 1),
    on the bench batches' device."""
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg.train.micro_batch, *cfg.rqvae.code_shape)
    return [{"codes": torch.randint(0, cfg.rqvae.num_codes, shape, generator=gen).to(b["cond"].device),
             "cond": b["cond"].view(-1, 1)} for b in batches]


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of `model` to p, in place: nn.Dropout modules (rqscale's Dropout is one) and
    rqscale's attention-weight dropout (a float on its attention modules)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attn_dropout", None), float):
            module.attn_dropout = p


def _settings(cfg: Config) -> list:
    """[(label, dropout to set or None to keep the config's)]: the config's dropout, then all off."""
    m = cfg.stage2.model
    values = sorted({m.embd_dropout, m.resid_dropout, m.attn_dropout})
    if values == [0.0]:
        return [("dropout 0", None)]
    return [("dropout " + "/".join(f"{v:g}" for v in values), None), ("dropout 0", 0.0)]


def compare(cfg: Config, rqscale: dict, models: list, path: str, batches: list, warmup: int, repeats: int,
            device: torch.device = torch.device("cpu")) -> dict:
    """Interleaved rates of rqscale's steps ({name: step}) and the authors' at the config's dropout and
    with dropout off, all on `device`. `models`: rqscale's modules whose dropout is set with the baseline's."""
    official_model, official_step = official_trainer(cfg, path, device)
    steps: dict[str, Callable] = {**rqscale, "official": official_step}
    feeds = {name: batches for name in rqscale} | {"official": official_batches(cfg, batches)}
    out = {"dir": path, "recipe": GPU_RECIPE if device.type == "cuda" else CPU_RECIPE, "params": {"official": sum(p.numel() for p in official_model.parameters()),
                                   "rqscale": sum(p.numel() for p in models[0].parameters())}}
    for label, p in _settings(cfg):
        if p is not None:
            for model in (*models, official_model):
                set_dropout(model, p)
        times = interleaved(steps, feeds, warmup, repeats, device)
        rates = {name: rate_of(t, cfg.train.micro_batch) for name, t in times.items()}
        base = rates["official"]["images_per_s"]
        out[label] = {"rates": rates, "vs_official": {n: r["images_per_s"] / base for n, r in rates.items() if n != "official"}}
    return out


def gemm_floor(c: dict, flops_per_step: float, peak: float) -> None:
    """Add to the comparison `c` what the same-run matmul peak allows: the step's model FLOPs at that peak
    (the time of its matrix products alone, which both sides must do), each contender's time beyond it,
    and the ratio over the authors that a step of matrix products only would reach (the ceiling)."""
    c["gemm_floor_s"] = flops_per_step / peak
    for key, x in c.items():
        if key.startswith("dropout"):
            x["beyond_floor_s"] = {n: r["step_s"] - c["gemm_floor_s"] for n, r in x["rates"].items()}
            x["ceiling_vs_official"] = x["rates"]["official"]["step_s"] / c["gemm_floor_s"]


def report_lines(c: dict, labels: dict) -> list:
    """Lines for `train.report`; labels: {contender name: what it is}."""
    lines = [f"  vs the authors' RQ-Transformer ({c['dir']}; {c.get('recipe', CPU_RECIPE)}, hard-label CE, torch AdamW):"
             f" params rqscale {c['params']['rqscale'] / 1e6:.1f}M, authors {c['params']['official'] / 1e6:.1f}M;"
             f" same process, steps interleaved"]
    for key, x in c.items():
        if not key.startswith("dropout"):
            continue
        rates, ratio = x["rates"], x["vs_official"]
        parts = [f"{labels.get(n, n)} {r['images_per_s']:.2f} img/s" + (f" ({ratio[n]:.2f}x)" if n in ratio else "")
                 for n, r in rates.items()]
        lines.append(f"    [{key}] " + ";  ".join(parts))
        if "beyond_floor_s" in x:
            beyond = ", ".join(f"{labels.get(n, n)} {ms(t)}" for n, t in x["beyond_floor_s"].items())
            lines.append(f"      ms a step beyond the matrix products at the same-run peak ({ms(c['gemm_floor_s'])} ms): "
                         f"{beyond};  a step of matrix products alone would be {x['ceiling_vs_official']:.2f}x the authors'")
    return lines
