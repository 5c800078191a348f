#!/usr/bin/env bash
# The one-GPU proof (DESIGN.md): on one CUDA GPU, from a bare machine with this repo, in at most 8 minutes.
#   bash scripts/gpu_smoke.sh [--wheels DIR] [--out DIR] [driver options, see python -m rqscale.bench.gpu_smoke -h]
#   bash scripts/gpu_smoke.sh [--wheels DIR] --vs-official DIR [key=value ...]   (steps 1-2, then the stage-2 step
#        against the authors' code in DIR on this GPU instead of the driver: python -m rqscale.bench train --device
#        cuda --official DIR [overrides of its config]; DIR prepared as rqscale/bench/official.py says, e.g. the
#        checkout's ignored .official/)
# 1. Refuses at once, before installing anything, where there is no CUDA GPU (exit 2).
# 2. Install: uses the machine's own torch; wheels from --wheels DIR (or $RQSCALE_WHEELS) go into
#    <out>/site with pip --no-index --no-deps (no network needed); the repo itself goes on PYTHONPATH.
#    Missing packages are named in one line (exit 3). Wheels for an offline GPU machine are made on a
#    machine with PyPI by scripts/gpu_smoke_wheels.sh (-> .whl/).
# 3. Runs rqscale.bench.gpu_smoke (SDPA kernel, 480M stage-2 training through `python -m rqscale.train`
#    with ZeRO-3 + bf16 + activation checkpointing, planner vs measured memory, sampling speed, stage-1
#    steps) and prints its ONE JSON line last; exit 0 only if every part passed. With --vs-official, the
#    training benchmark's report instead (its JSON line last too), within the same budget.
# Python: $RQSCALE_PYTHON, else .venv/bin/python when present, else python3 (the device machine's, with torch).
set -uo pipefail
cd "$(dirname "$0")/.."
budget_s=480  # the issue's 8 minutes, install included
wheels=${RQSCALE_WHEELS:-}
out=/tmp/rqscale-gpu-smoke
driver_args=()
official=
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --vs-official) official=${2:?--vs-official needs the folder holding the authors\' rqvae/}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) driver_args+=("$1"); shift ;;
  esac
done
fail() { echo "gpu_smoke: $*" >&2; exit "${code:-1}"; }

# 1. A GPU, or stop now (nothing installed, nothing written).
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  code=2 fail "no CUDA GPU found (nvidia-smi is missing or lists no GPU): run this on a machine with an NVIDIA GPU"
fi
py=${RQSCALE_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! timeout 120 "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  code=2 fail "no CUDA GPU visible to PyTorch ($py: torch missing or torch.cuda.is_available() is False): use a CUDA build of torch (RQSCALE_PYTHON=...)"
fi

# 2. Install what the machine lacks, offline.
mkdir -p "$out" || fail "cannot create --out $out"
out=$(cd "$out" && pwd -P)  # absolute: Ray's workers run in their own folders and read PYTHONPATH from there
if [ -n "$wheels" ]; then
  ls "$wheels"/*.whl >/dev/null 2>&1 || code=3 fail "no *.whl in --wheels $wheels: make them with bash scripts/gpu_smoke_wheels.sh"
  timeout 180 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$out/site" "$wheels"/*.whl \
    || code=3 fail "pip could not install the wheels in $wheels into $out/site (wrong Python version or platform?)"
  export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the repo itself: nothing to build, so no pip install -e
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0  # no network there: Ray must not try to report usage
# The device machine's RAM grows as it is used and MemTotal starts far lower (device H200.md): Ray's memory
# monitor would read that as pressure and kill the worker while it loads the 480M model's checkpoint.
export RAY_memory_monitor_refresh_ms=0
missing=$(timeout 180 "$py" -m rqscale.bench.gpu_smoke --check-deps 2>"$out/check-deps.log")
grep -h "version warnings" "$out/check-deps.log" >&2
[ "$missing" = ok ] || code=3 fail "missing Python packages: ${missing:-(the check itself failed: $(tail -n 1 "$out/check-deps.log"))}. Make wheels on a machine with PyPI (bash scripts/gpu_smoke_wheels.sh -> .whl) and rerun with --wheels .whl (or RQSCALE_WHEELS=.whl)"

left=$((budget_s - SECONDS))
[ "$left" -gt 60 ] || fail "the install left ${left} s of the ${budget_s} s budget: too little to run anything"
if [ -n "$official" ]; then  # the stage-2 step against the authors' on this GPU (issue 12), not the driver
  timeout $((left - 5)) "$py" -m rqscale.bench train --device cuda --official "$official" --warmup 5 --repeats 20 \
    --allocators default "${driver_args[@]}" 2>"$out/bench-train.log"
  rc=$?
  [ "$rc" -eq 0 ] || fail "the training benchmark failed (exit $rc): $(tail -n 1 "$out/bench-train.log"); log: $out/bench-train.log"
  exit 0
fi

# 3. The driver: its JSON line is the last thing printed; its progress and the logs' paths go to stderr.
json=$(timeout $((left - 5)) "$py" -m rqscale.bench.gpu_smoke --out "$out" --deadline-s $((left - 25)) "${driver_args[@]}")
rc=$?
[ "$rc" -eq 124 ] && fail "the driver ran past the ${budget_s} s budget and was stopped; partial logs under $out"
[ -n "$json" ] || fail "the driver printed no result (exit $rc); logs under $out"
echo "$json"
exit "$rc"
