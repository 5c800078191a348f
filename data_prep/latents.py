"""`python -m data_prep.latents --rqvae rqvae.pt --config CONFIG --shards IN/manifest.json --out DIR_OR_S3`

Encode image shards with a trained RQ-VAE into latent shards, one Ray task per shard. Each sample
keeps its key and label/caption fields and gains `latent.bf16`: the encoder features Z = E(X) at
H x W x n_z (8 x 8 x 256 for the paper's models) in bfloat16, raw little-endian, shape in the
manifest. A DQ-VAE (rqvae.kind=dq) writes its hard codes instead, which is what the DQ-Transformer
trains on (R): `dqcodes.u16`, the variable-length code sequence, and `grain.u8`, the grain map
(rqscale/data/latents.py), with the map's shape as the manifest's `dq_grain_shape`. Images get the deterministic evaluation transform (resize + centre crop, no flip), so
stage 2 can compute soft labels and stochastic codes (Eq. 15) without running the encoder.
Finished shards are skipped on a re-run; the manifest is written when all shards are done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch

from data_prep.shards import MANIFEST, run_converter, tar_bytes
from rqscale.data.latents import DQ_CODES_FIELD, GRAIN_FIELD, LATENT_FIELD, dq_code_bytes, latent_bytes
from rqscale.data.reader import load_shards, read_run
from rqscale.data.transforms import decode_image
from rqscale.data.storage import exists, join, read_bytes, write_bytes_atomic

def encode_shard(config_yaml: str, rqvae_path: str, shard, out: str, index: int, batch: int = 64) -> dict:
    """One Ray task: read a shard, encode its images, write the latent shard and its .done entry."""
    from rqscale.config import from_yaml_text
    from rqscale.models import build_stage1_model
    from rqscale.train.stage1 import load_init_weights

    cfg = from_yaml_text(config_yaml)
    model = build_stage1_model(cfg.rqvae).eval()  # eval: a DQ-VAE's router takes its argmax
    load_init_weights(model, rqvae_path, "--rqvae")  # the other family or router: a ConfigError, not retried
    item_of = _dq_item if cfg.rqvae.kind == "dq" else _latent_item
    raws = read_run(shard, 0, shard.samples)
    items, bad = [], 0
    for start in range(0, len(raws), batch):
        chunk, images = [], []
        for raw in raws[start : start + batch]:
            try:
                images.append(decode_image(raw["jpg"], cfg.rqvae.resolution, None))
                chunk.append(raw)
            except Exception:  # corrupt image: skipped and counted, as the reader does
                bad += 1
        if images:
            with torch.no_grad():
                encoded = model.encode_with_grain(torch.stack(images)) if cfg.rqvae.kind == "dq" else (model.latents(torch.stack(images)),)
            items += [item_of(raw, *parts) for raw, *parts in zip(chunk, *encoded)]
    return _write(out, index, items, bad)


def _latent_item(raw: dict, latent: torch.Tensor) -> dict:
    item = {k: v for k, v in raw.items() if k not in ("jpg", "png")}
    item[LATENT_FIELD] = latent_bytes(latent)
    return item


def _dq_item(raw: dict, codes: torch.Tensor, grain: torch.Tensor) -> dict:
    item = {k: v for k, v in raw.items() if k not in ("jpg", "png")}
    item[DQ_CODES_FIELD], item[GRAIN_FIELD] = dq_code_bytes(codes, grain)
    return item


def _write(out: str, index: int, items: list, bad: int) -> dict:
    name = f"latents-{index:06d}.tar"
    data, offsets = tar_bytes(items)
    write_bytes_atomic(join(out, name), data)
    entry = {"name": name, "samples": len(items), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "offsets": offsets, "bad": bad}
    write_bytes_atomic(join(out, name + ".done.json"), json.dumps(entry).encode())
    return entry


def extract(config_path: str, rqvae: str, shards_manifest: str, out: str, overrides=(), local_cpus: int | None = None) -> dict:
    from rqscale.config import load, to_yaml
    from rqscale.launch.pool import map_tasks

    cfg = load(config_path, list(overrides), check_files=False)
    shards = load_shards(shards_manifest)
    done = {i: json.loads(read_bytes(join(out, f"latents-{i:06d}.tar.done.json"))) for i in range(len(shards))
            if exists(join(out, f"latents-{i:06d}.tar.done.json"))}
    jobs = [(to_yaml(cfg), rqvae, shards[i], out, i) for i in range(len(shards)) if i not in done]
    for entry, (_, _, _, _, i) in zip(map_tasks(encode_shard, jobs, local_cpus=local_cpus), jobs):
        done[i] = entry
    h, w, _ = cfg.rqvae.code_shape
    shape = ({"dq_grain_shape": [h // 2, w // 2], "dq_num_codes": cfg.rqvae.num_codes} if cfg.rqvae.kind == "dq"
             else {"latent_shape": [h, w, cfg.rqvae.code_dim]})
    manifest = {"dataset": "latents", **shape, "source": shards_manifest,
                "samples": sum(e["samples"] for e in done.values()), "bad": sum(e["bad"] for e in done.values()),
                "shards": [done[i] for i in sorted(done)], "complete": True}
    write_bytes_atomic(join(out, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.latents", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rqvae", required=True, help="rqvae.pt from a stage-1 run")
    p.add_argument("--config", required=True, help="the config whose rqvae section built that RQ-VAE")
    p.add_argument("--shards", required=True, help="image shards' manifest.json")
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    return run_converter("data_prep.latents", lambda: convert(args))


def convert(args) -> str:
    for path, what in ((args.rqvae, "RQ-VAE weights"), (args.shards, "shard manifest")):
        if not exists(path):
            raise FileNotFoundError(f"{what} not found: '{path}'")
    m = extract(args.config, args.rqvae, args.shards, args.out, args.overrides)
    return f"latents: {m['samples']} samples in {len(m['shards'])} shards, {m['bad']} skipped"

if __name__ == "__main__":
    sys.exit(main())
