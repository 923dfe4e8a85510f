#!/usr/bin/env bash
# The test command of the README: fetches the real test model when absent, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-model.sh
cargo test "$@"
