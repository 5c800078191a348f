#!/usr/bin/env bash
# The demo: both stages through the real distributed path on this machine's CPU, a picture at the end.
#   0. the bundled real demo shards (scikit-learn's digits as webdataset tars)   -> $out/demo-data/
#   1. RQ-VAE (stage 1), 2 Ray workers, DeepSpeed ZeRO-1                           -> $out/demo-stage1/reconstructions.png
#   2. class-conditional RQ-Transformer (stage 2), 2 Ray workers, DeepSpeed ZeRO-3 -> $out/demo-stage2/samples.png
# The recipes are configs/debug/stage{1,2}.yaml (the suite trains the same ones and checks the samples with an
# independent classifier: tests/integration/test_demo_fidelity.py).
# Each stage starts a private local Ray cluster (2 CPU workers, gloo). Outputs go under $RQSCALE_RUNS
# (default runs/). Extra key=value arguments go to both stages, e.g. `bash scripts/demo.sh train.max_steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo_data.sh  # py, out, shards; writes the demo shards on first use
$py -m rqscale.train configs/debug/stage1.yaml run.output_dir="$out" run.name=demo-stage1 "${shards[@]}" \
  train.num_workers=2 train.micro_batch=8 "$@"
$py -m rqscale.train configs/debug/stage2.yaml run.output_dir="$out" run.name=demo-stage2 "${shards[@]}" \
  train.num_workers=2 train.micro_batch=16 stage2.rqvae_checkpoint="$out/demo-stage1/rqvae.pt" "$@"
echo "demo: reconstructions in $out/demo-stage1/reconstructions.png"
echo "demo: samples, one labelled row per digit class 0-9, in $out/demo-stage2/samples.png (arrays: samples.npz)"
