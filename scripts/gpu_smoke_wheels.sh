#!/usr/bin/env bash
# Prepare, HERE (a machine with PyPI and the project's .venv), the wheels that scripts/gpu_smoke.sh needs on a
# GPU machine that reaches no registry (the device tool's nvidia-h200: Python 3.12, torch 2.11 preinstalled):
#   bash scripts/gpu_smoke_wheels.sh            # -> .whl/ (git-ignored), about 55 MB, under the tool's 64 MiB
#   bash scripts/gpu_smoke_wheels.sh --list     # only print the name==version list
# Then, on the GPU machine: bash scripts/gpu_smoke.sh --wheels .whl   (device tool: carry [".whl"]).
# What is fetched and why: scripts/gpu_wheels.py. Packages the GPU machine already has are listed in
# scripts/gpu_machine_packages.txt; refresh it when that machine's image changes.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${RQSCALE_PYTHON:-.venv/bin/python}
if [ ! -x "$py" ] && ! command -v "$py" >/dev/null; then
  echo "gpu_smoke_wheels: no Python at '$py': run scripts/setup.sh first or set RQSCALE_PYTHON" >&2
  exit 2
fi
exec "$py" scripts/gpu_wheels.py "$@"
