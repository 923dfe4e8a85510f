#!/usr/bin/env bash
# The Python package's tests (run by scripts/test.sh, the README's test command): builds the
# wheel of python/ with maturin, installs it into a virtual environment and runs pytest on
# python/tests. maturin, numpy, pytest and langchain-core (so that the LangChain adapter is
# checked against the real interface) come from PyPI into that environment, created when absent
# and reused; nothing is installed outside it.
#
# The wheel is the release build a user makes (README). It cannot share `cargo test`'s build:
# maturin builds with `cargo rustc`, for which `--profile test` means a test harness, not a
# library, so ember is compiled once more, optimized (a few minutes on two cores).
#
# Environment: EMBER_PYTHON_VENV (default .cache/python-venv); arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EMBER_PYTHON_VENV:-.cache/python-venv}
requirements=("maturin>=1.9,<2" "numpy>=1.21,<3" "pytest>=8,<10" "langchain-core>=0.3,<2")

stamp=$venv/.ember-requirements
if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
  echo "${requirements[*]}" >"$stamp"
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
