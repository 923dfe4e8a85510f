#!/usr/bin/env bash
# Regenerates fixtures/ (texts, pairs, the float64 reference for all-MiniLM-L6-v2 and the tiny
# random-weight models). Not run in CI: it downloads PyTorch and friends into a throwaway venv.
#
#   scripts/make-fixtures.sh            # venv in .cache/fixture-venv, model via fetch-test-model.sh
#   EMBER_TEST_MODEL=/path/to/all-MiniLM-L6-v2 scripts/make-fixtures.sh
#   FIXTURE_VENV=/tmp/venv scripts/make-fixtures.sh
#
# pip uses its usual configuration (PIP_INDEX_URL etc.). The pins are the versions the committed
# fixtures were made with; newer versions should give the same numbers to ~1e-15 (float64).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FIXTURE_VENV:-$root/.cache/fixture-venv}"
packages=(
  "torch==2.15.0"
  "transformers==5.24.0"
  "sentence-transformers==6.2.0"
  "tokenizers==0.23.3"
  "numpy"
  "safetensors"
)

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${packages[@]}"

bash "$root/scripts/fetch-test-model.sh"
model="${EMBER_TEST_MODEL:-$root/.cache/models/all-MiniLM-L6-v2}"

cd "$root"
"$venv/bin/python" scripts/make_fixtures.py --minilm "$model" --out fixtures
