#!/usr/bin/env bash
# The demo: both stages on real bundled images, on this machine's CPU, a picture at the end.
#   1. RQ-VAE (stage 1) on scikit-learn's handwritten digits -> runs/demo-stage1/reconstructions.png
#   2. class-conditional RQ-Transformer (stage 2) on its codes  -> runs/demo-stage2/samples.png
# Outputs go under $RQSCALE_RUNS (default runs/). Extra key=value arguments go to both stages,
# e.g. `bash scripts/demo.sh train.max_steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
out=${RQSCALE_RUNS:-runs}
$py -m rqscale.train configs/debug/stage1.yaml run.output_dir="$out" run.name=demo-stage1 data.bundled_set=digits "$@"
$py -m rqscale.train configs/debug/stage2.yaml run.output_dir="$out" run.name=demo-stage2 \
  stage2.rqvae_checkpoint="$out/demo-stage1/rqvae.pt" "$@"
echo "demo: samples, one row per digit class 0-9, in $out/demo-stage2/samples.png"
