#!/usr/bin/env bash
# DQ-VAE + DQ-Transformer (dynamic code lengths, Huang et al., CVPR 2023) on this machine's CPU, through the
# same distributed path as the demo (Ray, 2 workers, DeepSpeed), on the bundled digit shards:
#   1. the debug DQ-VAE (configs/debug/dq_stage1_digits.yaml): each 16 x 16-pixel region of a 32 x 32 digit
#      coded once or as 2 x 2 codes -> $out/demo-dq-stage1/reconstructions.png, the fine regions outlined
#   2. the debug class-conditional DQ-Transformer (configs/debug/dq_stage2.yaml) on its codes, coarse segment
#      then fine segment -> $out/demo-dq/samples.png, one labelled row per digit
# Outputs go under $RQSCALE_RUNS (default runs/). Extra key=value arguments go to both training runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo_data.sh  # py, out, shards; writes the demo shards on first use
$py -m rqscale.train configs/debug/dq_stage1_digits.yaml run.output_dir="$out" run.name=demo-dq-stage1 "${shards[@]}" \
  train.num_workers=2 train.micro_batch=8 "$@"
$py -m rqscale.train configs/debug/dq_stage2.yaml run.output_dir="$out" run.name=demo-dq "${shards[@]}" \
  train.num_workers=2 train.micro_batch=16 stage2.rqvae_checkpoint="$out/demo-dq-stage1/rqvae.pt" "$@"
echo "demo_dq: where the DQ-VAE spent its codes, in $out/demo-dq-stage1/reconstructions.png"
echo "demo_dq: DQ-Transformer samples, one labelled row per digit, in $out/demo-dq/samples.png (arrays: samples.npz)"
