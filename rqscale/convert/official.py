"""Convert the authors' released RQ-VAE and RQ-Transformer (kakaobrain/rq-vae-transformer) into rqscale's files.

Input: each stage's `model.pt` with its `config.yaml` beside it (R's release layout: <name>/stage1/, <name>/stage2/).
R's files are dicts of plain values (epoch, state_dict, optimizer, scheduler, discriminator, state_dict_ema),
so they are read with torch.load(weights_only=True) (rqscale.utils.safe_load.load_plain), memory-mapped; no
allow-list is needed, and a file that asks for any pickled class is refused. Output, in OUT:
  rqvae.pt            the RQ-VAE state dict stage2.rqvae_checkpoint reads, rqvae.pt.yaml its resolved config
  rqtransformer.pt    the consolidated checkpoint rqscale.sample and rqscale.evaluate read (with stage 2)
  tokenizer.json      the authors' caption BPE (text models; --tokenizer names their vocab and merges files)
  config.yaml         the rqscale keys of the pair (every model value of the authors' configs, spelt out), for
                      python -m rqscale.train OUT/config.yaml run.init_from=OUT/rqtransformer.pt
  conversion.json     what was read, which weights (EMA or raw), and every tensor dropped or filled, and why
"""
from __future__ import annotations

import json
import os

import torch
import yaml

from rqscale.convert.errors import ConversionError
from rqscale.convert.official_config import stage1_keys, stage2_keys
from rqscale.convert.official_weights import check_against, stage1_state, stage2_state
from rqscale.sampling.checkpoint import save_consolidated_state

WEIGHTS = ("auto", "ema", "raw")  # auto: R's EMA weights where the file has them, else its raw state_dict


def model_files(path: str) -> tuple[str, str]:
    """(model.pt, config.yaml) of a stage given as its directory or its model.pt."""
    model = os.path.join(path, "model.pt") if os.path.isdir(path) else path
    config = os.path.join(os.path.dirname(model), "config.yaml")
    for wanted in (model, config):
        if not os.path.isfile(wanted):
            raise FileNotFoundError(f"'{wanted}' not found (the authors' release has model.pt and config.yaml per stage)")
    return model, config


def read_stage(path: str, weights: str) -> tuple[dict, dict, str]:
    """(state dict, config dict, which weights) of one of R's stages."""
    from rqscale.utils.safe_load import load_plain

    model, config = model_files(path)
    with open(config) as f:
        cfg = yaml.safe_load(f)
    blob = load_plain(model, map_location="cpu", mmap=True)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ConversionError(model, "holds no 'state_dict' (the authors' checkpoints are dicts with one)")
    use_ema = weights == "ema" or (weights == "auto" and "state_dict_ema" in blob)
    if use_ema and "state_dict_ema" not in blob:
        raise ConversionError(model, "holds no 'state_dict_ema'; convert its raw weights with --weights raw")
    state = blob["state_dict_ema" if use_ema else "state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}, cfg, "state_dict_ema" if use_ema else "state_dict"


def nested(keys: dict) -> dict:
    """{"a.b.c": v} -> {"a": {"b": {"c": v}}}."""
    out: dict = {}
    for dotted, value in keys.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def build_config(keys: dict):
    from rqscale.config import from_yaml_text

    return from_yaml_text(yaml.safe_dump(nested(keys), sort_keys=False))


def _built_on_meta(builder, *args):
    with torch.device("meta"):
        return builder(*args)


def convert(stage1: str, stage2: str | None, out: str, weights: str = "auto", tokenizer: str | None = None) -> dict:
    """Write OUT's files (module docstring) and return the conversion report. Everything is converted and checked
    before anything is written, so a refusal leaves no partial output. `weights` picks stage 2's weights; R's
    stage-1 trainer keeps no EMA, so stage 1 takes its EMA weights only where a file has them."""
    from rqscale.models import build_stage1_model

    state1, cfg1, used1 = read_stage(stage1, "raw" if weights == "raw" else "auto")
    keys = {"stage": "stage1", "run.name": "official-stage1", **stage1_keys(cfg1)}
    stage1_cfg = build_config(keys)
    rq = stage1_state(state1, stage1_cfg.rqvae)
    rq_state = check_against(rq, _built_on_meta(build_stage1_model, stage1_cfg.rqvae), "RQ-VAE")
    report = {"stage1": {"file": model_files(stage1)[0], "weights": used1, "tensors_read": len(state1),
                         "dropped": rq.dropped, "parameters": _count(rq_state, buffers=False)}}
    stage2_out = None if stage2 is None else _convert_stage2(stage2, weights, tokenizer, keys, rq_state, out, report)
    os.makedirs(out, exist_ok=True)
    _save_stage1(out, stage1_cfg, rq_state)
    if stage2_out is not None:
        keys, cfg, state = stage2_out
        if cfg.stage2.model.condition == "text":
            write_tokenizer(tokenizer, cfg.stage2.tokenizer)
        save_consolidated_state(os.path.join(out, "rqtransformer.pt"), cfg, rq_state, state)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(nested(keys), f, sort_keys=False)
    with open(os.path.join(out, "conversion.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _save_stage1(out: str, cfg, state: dict) -> None:
    from rqscale.config import save_resolved

    path = os.path.join(out, "rqvae.pt")
    torch.save(state, path)
    save_resolved(cfg, path + ".yaml")


def _convert_stage2(stage2: str, weights: str, tokenizer, keys1: dict, rq_state: dict, out: str, report: dict) -> tuple:
    """(config keys, Config, checked state dict) of R's RQ-Transformer on the converted RQ-VAE."""
    from rqscale.models import build_stage2_model

    state2, cfg2, used2 = read_stage(stage2, weights)
    keys = {**keys1, "stage": "stage2", "run.name": "official-stage2", **stage2_keys(cfg2, keys1),
            "stage2.rqvae_checkpoint": os.path.abspath(os.path.join(out, "rqvae.pt"))}
    keys.pop("stage1.loss.beta", None)  # a stage-1 recipe value: kept in rqvae.pt.yaml, not in the stage-2 config
    if keys["stage2.model.condition"] == "text":
        keys["stage2.tokenizer"] = os.path.abspath(os.path.join(out, "tokenizer.json"))
        check_tokenizer_files(tokenizer)  # refused before anything is written
    cfg = build_config(keys)
    r = cfg.rqvae
    converted = stage2_state(state2, cfg.stage2.model, r.code_shape, rq_state["quantizer.codebooks.0.embed"])
    model = _built_on_meta(build_stage2_model, cfg.stage2.model, r.code_shape, r.num_codes, r.code_dim)
    state = check_against(converted, model, "RQ-Transformer")
    report["stage2"] = {"file": model_files(stage2)[0], "weights": used2, "tensors_read": len(state2),
                        "source_parameters": sum(v.numel() for v in state2.values()),
                        "dropped": converted.dropped, "filled": converted.filled,
                        "parameters": _count(state, buffers=False, skip=("codebook",))}
    return keys, cfg, state


def check_tokenizer_files(source: str | None) -> tuple[str, str]:
    """(vocab, merges) of R's caption BPE in `source`; refused naming --tokenizer when it is not given."""
    if source is None:
        raise ConversionError("--tokenizer", "is needed for a text-conditional model: the directory holding the authors' "
                              "bpe-16k-vocab.json and bpe-16k-merges.txt (rqvae/txtimg_datasets/tokenizers/pretrained)")
    vocab, merges = (os.path.join(source, f) for f in ("bpe-16k-vocab.json", "bpe-16k-merges.txt"))
    for wanted in (vocab, merges):
        if not os.path.isfile(wanted):
            raise FileNotFoundError(f"'{wanted}' not found (the authors' caption BPE files)")
    return vocab, merges


def write_tokenizer(source: str | None, path: str) -> str:
    """R's caption tokenizer (tokenizers.CharBPETokenizer over bpe-16k-vocab.json and bpe-16k-merges.txt, lowercased,
    [PAD] added; R rqvae/txtimg_datasets/tokenizers) saved as one tokenizers JSON file, as rqscale reads them."""
    from tokenizers import CharBPETokenizer

    vocab, merges = check_tokenizer_files(source)
    bpe = CharBPETokenizer.from_file(vocab, merges, unk_token="[UNK]", lowercase=True)
    bpe.add_special_tokens(["[PAD]"])
    bpe.save(path)
    return os.path.abspath(path)


def _count(state: dict, buffers: bool, skip=()) -> int:
    names = ("embed_ema", "cluster_size_ema", "quantizer.")  # the RQ-VAE's codebook lives in buffers (EMA)
    return sum(v.numel() for k, v in state.items() if k not in skip and (buffers or not k.startswith(names[2])))
