#!/usr/bin/env bash
# Stages the device check for a machine with an NVIDIA GPU that cannot build (no registry, no
# CUDA build: see docs/gpu.md): builds gpu-check and qat-overhead here with the `wgpu` feature
# (WGSL) and gpu-check with `vulkan` (SPIR-V), strips and gzips them into target/device/ with
# Debian's libvulkan.so.1 and
# scripts/device-vulkan-run.sh. Carry target/device to the machine and run
#   bash target/device/device-vulkan-run.sh        (with $OUT set to a writable folder)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p bitnet-qat-benches --features wgpu --bin gpu-check --bin qat-overhead
# gpu-check again with `vulkan` (SPIR-V, native dp4a), in its own target directory so that the
# two feature sets do not rebuild each other.
CARGO_TARGET_DIR=target/vulkan-build \
  cargo build --release -p bitnet-qat-benches --features vulkan --bin gpu-check
stage=target/device
rm -rf "$stage"
mkdir -p "$stage"
for bin in gpu-check qat-overhead; do
  strip -o "$stage/$bin" "target/release/$bin"
  gzip -9 "$stage/$bin"
done
strip -o "$stage/gpu-check-vulkan" target/vulkan-build/release/gpu-check
gzip -9 "$stage/gpu-check-vulkan"
loader=$(ldconfig -p | awk '/libvulkan.so.1 /{print $NF; exit}')
[ -n "$loader" ] || { echo "libvulkan.so.1 not found: apt install libvulkan1" >&2; exit 1; }
cp -L "$loader" "$stage/libvulkan.so.1"
cp scripts/device-vulkan-run.sh "$stage/"
du -sh "$stage"
