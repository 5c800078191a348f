#!/usr/bin/env bash
# Text-to-image on this machine's CPU, through the same distributed path as the demo (a separate script:
# with it the demo would run well past its ~6 minutes on 2 cores).
#   0. the bundled demo shards, whose `txt` fields caption every digit ("a handwritten digit seven")
#   1. the demo's RQ-VAE ($out/demo-stage1/rqvae.pt), trained here first if scripts/demo.sh has not run
#   2. the text-conditional debug RQ-Transformer (configs/debug/stage2_text.yaml), 2 Ray workers, ZeRO-3,
#      on those captions -> $out/demo-text/samples.png, one labelled row per caption
#   3. rqscale.sample from a caption file: one image per line -> $out/demo-text-captions/grid.png
# Outputs go under $RQSCALE_RUNS (default runs/). Extra key=value arguments go to the training runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo_data.sh  # py, out, shards; writes the demo shards on first use
if [ ! -f "$out/demo-stage1/rqvae.pt" ]; then
  $py -m rqscale.train configs/debug/stage1.yaml run.output_dir="$out" run.name=demo-stage1 "${shards[@]}" \
    train.num_workers=2 train.micro_batch=8 "$@"
fi
$py -m rqscale.train configs/debug/stage2_text.yaml run.output_dir="$out" run.name=demo-text "${shards[@]}" \
  train.num_workers=2 train.micro_batch=16 stage2.rqvae_checkpoint="$out/demo-stage1/rqvae.pt" "$@"
captions="$out/demo-text-captions.txt"
printf '%s\n' "a handwritten digit seven" "a handwritten digit two" "a handwritten digit zero" "a handwritten digit four" > "$captions"
$py -m rqscale.sample --checkpoint "$out/demo-text/rqtransformer.pt" --captions "$captions" --out "$out/demo-text-captions"
echo "demo_text: samples, one labelled row per caption, in $out/demo-text/samples.png (arrays and captions: samples.npz)"
echo "demo_text: one image per line of $captions in $out/demo-text-captions/ (grid.png, sample_*.png)"
