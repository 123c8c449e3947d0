#!/usr/bin/env bash
# Stages the CUDA check for a lent NVIDIA machine, which reaches no registry and cannot build.
#
# The check trains QAT with burn-train's `ddp`, `MultiDevice` (main) and `MultiDevice`
# (sharded) over every GPU, each against one GPU accumulating one micro-batch per GPU. It is the
# `multi_device` example, built here with the `cuda` feature against the PyPI LLVM
# (`scripts/install-deps.sh --cuda`), then stripped and gzipped into target/device-cuda/ next to
# scripts/device-cuda-run.sh (about 48 MB: the static LLVM is most of it; the Vulkan stage of
# scripts/device-stage.sh is carried in another run).
#
# Carry target/device-cuda to the machine and run (with $OUT set to a writable folder):
#   bash target/device-cuda/device-cuda-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-qat-target}"
# The same invocation as .ci/run's, so the build is shared.
cargo build -p bitnet-qat-benches -p bitnet-qat-examples --features cuda --bin gpu-check \
  --example multi_device
stage=target/device-cuda
rm -rf "$stage"
mkdir -p "$stage"
strip -o "$stage/multi_device" "$CARGO_TARGET_DIR/debug/examples/multi_device"
gzip -9 "$stage/multi_device"
cp scripts/device-cuda-run.sh "$stage/"
du -sh "$stage"
