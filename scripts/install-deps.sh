#!/usr/bin/env bash
# Installs the Debian packages the workspace needs beyond the Rust toolchain:
#   libopenblas-dev        the BLAS baseline that benches/kernel-bench links against;
#   dataset-fashion-mnist  Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist) for the
#                          examples and the real-data tests;
#   fonts-dejavu-core      the font of the accuracy_table plot;
#   mesa-vulkan-drivers, libvulkan1
#                          Mesa's software Vulkan (lavapipe): the GPU kernel tests run on it
#                          through wgpu on a machine without a GPU.
# Safe to run repeatedly: it installs only what is missing.
set -euo pipefail
need=()
for pkg in libopenblas-dev dataset-fashion-mnist fonts-dejavu-core mesa-vulkan-drivers libvulkan1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
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
