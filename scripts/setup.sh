#!/usr/bin/env bash
# Create .venv and install rqscale with its test extras. Idempotent: re-installs only when
# pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.rqscale-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "rqscale setup: installing into .venv (torch, deepspeed, ray, ...; a few minutes the first time)" >&2
python3 -m venv .venv
# pip's and the build backend's own warnings go to the log, not the terminal; a failure shows its tail.
log=.venv/install.log
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "rqscale setup: pip install failed (above: the end of $log, which holds all of it); fix what it names and rerun" >&2
  exit 1
fi
echo "$want" > "$stamp"
