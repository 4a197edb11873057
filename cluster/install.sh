#!/usr/bin/env bash
# Creates .venv, installs the project and prepares the example corpus (Debian fortunes). Idempotent.
set -euo pipefail
source "$(dirname "$0")/env.sh"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# The CPU build of torch first: a plain `torch` requirement would pull several GB of CUDA packages.
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e "$ROOT[dev]"

if [ ! -d /usr/share/games/fortunes ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null
  else
    echo "install Debian's 'fortunes' package (sudo apt-get install fortunes) for the example corpus" >&2
  fi
fi
[ -d /usr/share/games/fortunes ] && "$VENV/bin/python" "$ROOT/cluster/prepare_fortunes.py"

echo "installed into $VENV"
