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
    s = sub.add_parser("sample", help="RQ-Transformer sampling: s/image by batch (Fig. 4), KV cache, scaling with T, bf16 vs fp32; "
                       "a contextual config: Draft-and-Revise at T_draft 8/32/64 vs AR (Table 4) at --batch only; "
                       "a dq config: KV-cached vs prefix-recomputing DQ-Transformer sampling at --batch")
    s.add_argument("--config", default="configs/debug/stage2_bench.yaml")
    s.add_argument("--batches", type=int, nargs="+", default=[100, 200, 500], help="batch sizes for s/image (paper Fig. 4)")
    s.add_argument("--batch", type=int, default=100, help="batch for the KV-cache, 16x16 and bf16/fp32 measurements")
    s.add_argument("--baseline-batch", type=int, default=0, help="batch for the no-cache baseline (0 = --batch)")
    s.add_argument("--device", default="cpu")
    b = sub.add_parser("dq-budget", help="DQ-VAE vs fixed-grain VQ at about its code budget (debug digits, three "
                       "stage-1 trainings in this process)")
    b.add_argument("--steps", type=int, default=300)
    e = sub.add_parser("dq-detail", help="a trained DQ-VAE: Spearman(region variance, fine) on held-out images, and "
                       "its error with fine regions chosen by the router vs by variance")
    e.add_argument("--config", required=True)
    e.add_argument("--weights", required=True)
    e.add_argument("--images", type=int, default=200)
    d = sub.add_parser("data", help="reader vs ImageFolder, S3 overhead, latent vs on-the-fly stage-2 inputs")
    d.add_argument("--images", type=int, default=400)
    t = sub.add_parser("train", help="stage-2 step: plain loop vs DeepSpeed engine overhead, CPU MFU; a dq config: "
                       "DQ-Transformer vs RQ-Transformer training tokens/s at the same width")
    t.add_argument("--config", default="configs/debug/stage2_bench.yaml")
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--allocators", default="default,retained", help="comma-separated: default, retained")
    t.add_argument("--no-autocast", action="store_true", help="skip the torch.autocast reference timing")
    t.add_argument("--recovery-s", type=float, default=None, help="a recovery time measured elsewhere, to print")
    t.add_argument("--recovery", action="store_true", help="also measure recovery from a killed Ray worker (~2 min)")
    t.add_argument("--official", metavar="DIR", default=None,
                   help="also time the authors' RQ-Transformer from DIR (its rqvae/ folder) in the same run")
    t.add_argument("--device", default="auto", help="auto (the GPU where PyTorch sees one, else the CPU), cpu or cuda")
    t.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    if args.name == "quantizer":
        from rqscale.bench import quantizer

        result = quantizer.run(args.num_codes, args.dim, args.depth, args.vectors, args.repeats, args.device)
        print(quantizer.report(result))
    elif args.name == "data":
        from rqscale.bench import data

        print(data.report(data.run(args.images)))
    elif args.name == "train":
        from rqscale.bench import train
        from rqscale.config import load

        if load(args.config, check_files=False).stage2.model.kind == "dq":  # DQ- vs RQ-Transformer tokens/s
            from rqscale.bench import dq_train

            if args.device not in ("auto", "cpu"):
                print(f"python -m rqscale.bench train: a dq config times the plain step on the CPU only; drop --device {args.device}",
                      file=sys.stderr)
                return 2

            print(dq_train.report(dq_train.run(args.config, repeats=args.repeats, warmup=args.warmup)))
            return 0
        try:
            result = train.run(args.config, args.warmup, args.repeats, args.overrides, args.allocators.split(","),
                               not args.no_autocast, args.official, args.device)
        except (train.baseline.BaselineError, train.DeviceError) as e:
            print(f"python -m rqscale.bench train: {e}", file=sys.stderr)
            return 2
        recovery_s = args.recovery_s
        if args.recovery:
            from rqscale.bench import recovery

            recovery_s = recovery.run("configs/debug/stage2.yaml")["recovery_s"]
        print(train.report(result, recovery_s))
    elif args.name == "dq-detail":
        from rqscale.bench import dq_detail

        print(dq_detail.report(dq_detail.run(args.config, args.weights, args.images)))
    elif args.name == "dq-budget":
        from rqscale.bench import dq_budget

        print(dq_budget.report(dq_budget.run(args.steps)))
    elif args.name == "sample":
        from rqscale.bench import sample
        from rqscale.config import load

        kind = load(args.config, check_files=False).stage2.model.kind
        if kind == "contextual":
            print(sample.report_contextual(sample.run_contextual(args.config, args.batch, args.device)))
        elif kind == "dq":
            from rqscale.bench import dq

            print(dq.report(dq.run(args.config, args.batch, args.device)))
        else:
            print(sample.report(sample.run(args.config, args.batch, args.device, args.baseline_batch, tuple(args.batches))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
