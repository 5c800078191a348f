"""`python -m rqscale.export RUN_OR_CHECKPOINT --out model.pt`: consolidated fp32 weights + config.

RUN_OR_CHECKPOINT is a run (<output_dir>/<name>, local or s3://; its newest complete checkpoint is
used) or one checkpoint directory (checkpoint_<step>). DeepSpeed's per-rank shards, any ZeRO stage
and any number of ranks, are gathered into full fp32 tensors:
  stage 2 -> the consolidated file rqscale.sample reads ("rqscale-stage2/1": config, rqvae, rqtransformer)
  stage 1 -> the RQ-VAE state dict that stage 2's stage2.rqvae_checkpoint reads, with the resolved
             config written beside it as <out>.yaml
"""
from __future__ import annotations

import argparse
import os
import posixpath
import sys
import tempfile

from rqscale.config import from_yaml_text, save_resolved
from rqscale.data.storage import read_bytes


def resolve_checkpoint(target: str) -> str:
    """The checkpoint URL a run or checkpoint path names; a clear error when there is none."""
    from rqscale.train import checkpoint as ckpt

    if ckpt.is_complete(target) is not None:
        return target
    found = ckpt.latest_complete(target)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint at or under '{target}' (wanted {ckpt.MARKER} in a checkpoint_<step> directory)")
    return found[0]


def export(target: str, out: str) -> str:
    from rqscale.train import checkpoint as ckpt

    url = resolve_checkpoint(target)
    cfg = from_yaml_text(read_bytes(url.rstrip("/") + "/config.yaml").decode())
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rqscale-export-") as local:
        ckpt.download(url, local)
        if cfg.stage == "stage1":
            from rqscale.train.stage1_engine import export_stage1

            export_stage1(cfg, local, out)
            save_resolved(cfg, out + ".yaml")
            return out
        return export_stage2(cfg, local, out)


def export_stage2(cfg, local: str, out: str) -> str:
    from rqscale.engine import fp32_state_dict_from_checkpoint
    from rqscale.sampling.checkpoint import save_consolidated
    from rqscale.train.stage2 import load_rqvae
    from rqscale.train.stage2_engine import ENGINE_TAG, plain_model

    model = plain_model(cfg, fp32_state_dict_from_checkpoint(local, ENGINE_TAG))
    return save_consolidated(out, cfg, load_rqvae(cfg), model)


def main(argv=None) -> int:
    from rqscale.utils.safe_load import UnsafeCheckpointError

    parser = argparse.ArgumentParser(prog="python -m rqscale.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a run (<output_dir>/<name>) or a checkpoint_<step> directory; local or s3://")
    parser.add_argument("--out", required=True, help="where to write the consolidated .pt")
    args = parser.parse_args(argv)
    try:
        path = export(args.target.rstrip("/"), args.out)
    except (FileNotFoundError, UnsafeCheckpointError) as exc:  # a missing file, or one that would run code
        print(f"rqscale: {exc}", file=sys.stderr)
        return 2
    print(f"rqscale: exported {posixpath.basename(args.target.rstrip('/'))} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
