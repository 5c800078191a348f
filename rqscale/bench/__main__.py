"""`python -m rqscale.bench NAME [options]`: benchmarks that print what they measured, with the machine
and the baseline measured in the same run."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rqscale.bench")
    sub = parser.add_subparsers(dest="name", required=True)
    q = sub.add_parser("quantizer", help="residual-quantizer encode throughput vs matmul peak")
    q.add_argument("--num-codes", type=int, default=16384)
    q.add_argument("--dim", type=int, default=256)
    q.add_argument("--depth", type=int, default=4)
    q.add_argument("--vectors", type=int, default=8192)
    q.add_argument("--repeats", type=int, default=5)
    q.add_argument("--device", default="cpu")
    s = sub.add_parser("sample", help="RQ-Transformer sampling: KV cache, scaling with T, absolute speed")
    s.add_argument("--config", default="configs/debug/stage2_bench.yaml")
    s.add_argument("--batch", type=int, default=100)
    s.add_argument("--baseline-batch", type=int, default=0, help="batch for the no-cache baseline (0 = --batch)")
    s.add_argument("--device", default="cpu")
    d = sub.add_parser("data", help="reader vs ImageFolder, S3 overhead, latent vs on-the-fly stage-2 inputs")
    d.add_argument("--images", type=int, default=400)
    args = parser.parse_args(argv)
    if args.name == "quantizer":
        from rqscale.bench import quantizer

        result = quantizer.run(args.num_codes, args.dim, args.depth, args.vectors, args.repeats, args.device)
        print(quantizer.report(result))
    elif args.name == "data":
        from rqscale.bench import data

        print(data.report(data.run(args.images)))
    elif args.name == "sample":
        from rqscale.bench import sample

        print(sample.report(sample.run(args.config, args.batch, args.device, args.baseline_batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
