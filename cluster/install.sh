#!/usr/bin/env bash
# Creates .venv, installs the project and prepares the example corpus (Debian fortunes). Idempotent.
set -euo pipefail
source "$(dirname "$0")/env.sh"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# The CPU build of torch first: a plain `torch` requirement would pull several GB of CUDA packages.
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e "$ROOT[dev]"

# The example corpora: Debian's fortunes (language modelling, classification) and English-French dictionary pairs.
if [ ! -d /usr/share/games/fortunes ] || [ ! -f /usr/share/dictd/freedict-eng-fra.index ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes dict-freedict-eng-fra >/dev/null
  else
    echo "install Debian's example data: sudo apt-get install fortunes dict-freedict-eng-fra" >&2
  fi
fi
"$VENV/bin/python" "$ROOT/cluster/prepare_data.py"

echo "installed into $VENV"
