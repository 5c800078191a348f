"""`python -m rqscale.convert official --stage1 DIR --stage2 DIR --out OUT [--weights auto|ema|raw] [--tokenizer DIR]`

Converts the authors' released checkpoints (kakaobrain/rq-vae-transformer; each stage a directory with model.pt
and config.yaml) into rqscale's RQ-VAE file, consolidated stage-2 checkpoint and config (rqscale/convert/official.py).
A key it does not understand, a shape that does not fit or a value rqscale cannot express is one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys

from rqscale.convert.official import WEIGHTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rqscale.convert", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    official = commands.add_parser("official", help="the authors' RQ-VAE + RQ-Transformer release")
    official.add_argument("--stage1", required=True, help="the RQ-VAE: its directory (model.pt, config.yaml) or model.pt")
    official.add_argument("--stage2", help="the RQ-Transformer, likewise (omit to convert the RQ-VAE alone)")
    official.add_argument("--out", required=True, help="directory for rqvae.pt, rqtransformer.pt, config.yaml")
    official.add_argument("--weights", choices=WEIGHTS, default="auto",
                          help="auto (default): the EMA weights where a file has them, else its raw state_dict")
    official.add_argument("--tokenizer", help="text models: the directory of the authors' bpe-16k-vocab.json and "
                          "bpe-16k-merges.txt")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from rqscale.convert.official import convert

    try:
        report = convert(args.stage1, args.stage2, args.out, args.weights, args.tokenizer)
    except (ValueError, FileNotFoundError) as exc:  # ConversionError, UnsafeCheckpointError, ConfigError, missing files
        print(f"rqscale.convert: {exc}", file=sys.stderr)
        return 2
    for stage, part in report.items():
        print(f"{stage}: {part['tensors_read']} tensors read from {part['file']} ({part['weights']}), "
              f"{part['parameters']:,} parameters, {len(part['dropped'])} dropped, {len(part.get('filled', {}))} filled "
              f"(reasons in {args.out}/conversion.json)")
    print(f"wrote {args.out}/rqvae.pt" + (f", {args.out}/rqtransformer.pt" if args.stage2 else "") + f", {args.out}/config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
