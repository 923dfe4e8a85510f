#!/usr/bin/env bash
# The test command of the README: fetches the real test model when absent, then runs every test:
# cargo's, then the Python package's (scripts/python/python-test.sh: wheel, venv, pytest), then the
# Python HTTP clients against `ember serve` (openai, requests; scripts/python/test-python-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-model.sh
cargo test "$@"
scripts/python/python-test.sh
scripts/python/test-python-clients.sh
