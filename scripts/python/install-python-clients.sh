#!/usr/bin/env bash
# A virtual environment with the HTTP clients that scripts/python/test-python-clients.sh drives
# `ember serve` with (scripts/python/requirements-clients.txt: the openai package, requests, and
# numpy to read ember's .npy and to apply sentence-transformers' quantization rule). Prints the
# venv's python.
# Folder: .cache/venv-clients under the repository. Does nothing when it is already complete.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/.cache/venv-clients
python=$venv/bin/python
if ! "$python" -c "import openai, requests, numpy" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  nice -n 15 "$python" -m pip install --quiet --disable-pip-version-check \
    -r "$root/scripts/python/requirements-clients.txt" >&2
fi
echo "$python"
