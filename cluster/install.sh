#!/usr/bin/env bash
# Creates .venv, installs the project and prepares the example corpora (Debian fortunes, English-French pairs).
# Idempotent. `--runtime` leaves out what only the tests need (pytest, Playwright, Chromium): cluster nodes and images.
set -euo pipefail
source "$(dirname "$0")/env.sh"
RUNTIME=false
[ "${1:-}" = "--runtime" ] && RUNTIME=true

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# pip byte-compiles one file at a time (2 min on 2 cores); compileall below uses every core (1 min).
PIP=("$VENV/bin/pip" install -q --no-compile)
"${PIP[@]}" --upgrade pip
# The CPU build of torch first: a plain `torch` requirement would pull several GB of CUDA packages.
"${PIP[@]}" torch==2.13.0
if $RUNTIME; then "${PIP[@]}" -e "$ROOT"; else "${PIP[@]}" -e "$ROOT[dev]"; fi
# Some packages ship files that are not Python 3, which pip would skip too: their errors are not this script's.
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true

# Debian's example corpora; and Chromium, which the browser test drives (Playwright's own download needs the internet).
PACKAGES=(fortunes dict-freedict-eng-fra)
$RUNTIME || PACKAGES+=(chromium)
missing=()
for package in "${PACKAGES[@]}"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install Debian's packages first: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
# DeepSpeed's CPU communication op, built here once rather than by the first job (about 40 s): orchestrator/environment.py
"$VENV/bin/python" -c "from orchestrator.environment import build_ops; build_ops()"
"$VENV/bin/python" "$ROOT/cluster/prepare_data.py"

echo "installed into $VENV"
