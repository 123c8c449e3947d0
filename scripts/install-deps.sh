#!/usr/bin/env bash
# Installs the Debian packages the workspace needs beyond the Rust toolchain:
#   libopenblas-dev  the BLAS baseline that benches/kernel-bench links against.
# Safe to run repeatedly: it installs only what is missing.
set -euo pipefail
need=()
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
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
