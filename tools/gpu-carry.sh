#!/usr/bin/env bash
# Prepare what a lent GPU machine needs (see DEVELOPERS.md). Nothing here is committed (.gitignore).
#   .whl/            Ray 2.60 for CPython 3.12 without its Java jars, and jsonschema with its dependencies
#                    (the GPU image lacks them), about 50 MB: `pytest -m gpu -k job` and bench/gpu.py's job rows
#   .fixtures-eeg/   ../shared/ned-fixtures with the EEG models only (< 64 MiB, the most one call carries)
#   .fixtures-fmri/  ../shared/ned-fixtures with the fMRI models only
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${NED_FIXTURES:-../shared/ned-fixtures}
PY=${PYTHON:-python3}

rm -rf .whl && mkdir -p .whl
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$@"
}
download ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py
# Ray's wheel holds 32 MB of Java jars no Python job uses: repack it without them (and their RECORD lines)
wheel=$(ls .whl/ray-2.60.0-*.whl)
work=$(mktemp -d)
(cd "$work" && unzip -q "$OLDPWD/$wheel" && rm -rf ray/jars && sed -i '/^ray\/jars\//d' ray-2.60.0.dist-info/RECORD \
   && rm "$OLDPWD/$wheel" && zip -qr -9 "$OLDPWD/$wheel" .)
rm -rf "$work"

for part in eeg fmri; do
  dest=.fixtures-$part
  rm -rf "$dest" && mkdir -p "$dest/expected"
  cp "$SRC"/README.md "$SRC"/make_vit_weights.py "$SRC"/images*.npy "$dest/"
  cp "$SRC"/expected/${part}_* "$SRC"/expected/metadata_${part}_* "$dest/expected/"
  (cd "$SRC" && find ned_dir -path "*modality-$part*" -type f ! -path "*pregenerated*") | while read -r f; do
    mkdir -p "$dest/$(dirname "$f")" && cp "$SRC/$f" "$dest/$f"
  done
done
du -sh .whl .fixtures-eeg .fixtures-fmri
