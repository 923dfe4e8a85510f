#!/usr/bin/env bash
# The Python package's tests (run by scripts/test.sh, the README's test command): builds the
# wheel of python/ with maturin, installs it into a virtual environment and runs pytest on
# python/tests. What it needs (scripts/python/requirements-test.txt) comes from the package index
# into that environment, created when absent and reused; nothing is installed outside it.
#
# The wheel is the release build a user makes (README). It cannot share `cargo test`'s build:
# maturin builds with `cargo rustc`, for which `--profile test` means a test harness, not a
# library, so ember is compiled once more, optimized (a few minutes on two cores).
#
# Environment: EMBER_PYTHON_VENV (default .cache/python-venv); arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${EMBER_PYTHON_VENV:-.cache/python-venv}
requirements=scripts/python/requirements-test.txt

# The stamp holds the requirements the venv was made with: a changed file remakes it.
stamp=$venv/.ember-requirements
if [[ ! -x $venv/bin/python ]] || ! cmp -s "$requirements" "$stamp"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi

wheels=target/python-wheels
rm -rf "$wheels"
"$venv/bin/maturin" build --quiet --manifest-path python/Cargo.toml --release \
  --interpreter "$venv/bin/python" --out "$wheels"
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/ember-*.whl
# Run from python/tests, not the repository root, so that `import ember` is the installed wheel
# and not the source folder python/ember (which lacks the compiled module).
cd python/tests
"../../$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
