# Sourced by scripts/demo.sh and scripts/demo_text.sh (run from the repository root): sets py, out and
# shards (the overrides that train on the bundled demo shards), writing the shards on first use.
py=.venv/bin/python
out=${RQSCALE_RUNS:-runs}
data="$out/demo-data"
if [ ! -f "$data/digits/manifest.json" ]; then
  $py -m data_prep.demo --out "$data"
fi
shards=("data.shards=$data/digits/manifest.json" data.hflip=false)  # a mirrored digit is another shape
