#!/usr/bin/env bash
# The test command of the README: fetches the real test model when absent, then runs every test:
# cargo's, then the Python HTTP clients against `ember serve` (openai, requests; installed into
# .cache/venv-clients by scripts/install-python-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-model.sh
cargo test "$@"
scripts/test-python-clients.sh
