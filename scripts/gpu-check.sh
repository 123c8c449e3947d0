#!/usr/bin/env bash
# The prepared GPU check for a machine with an NVIDIA GPU: builds `gpu-check` with the `cuda`
# feature (and `wgpu` when the Vulkan loader is installed), checks the CubeCL ternary kernels
# against the CPU kernels (bit-exact int8 products, 1e-5 otherwise) and times ternary GEMV/GEMM
# against Burn's f16 and f32 `matmul` on the same device, then times a QAT training step against
# the full-precision step (`qat-overhead`). Prints tables; writes JSON to
# ${OUT:-.}/gpu-check-*.json and ${OUT:-.}/qat-overhead-*.json. Runs in a few minutes after the
# build (the build itself is long).
#
#   scripts/gpu-check.sh            # all shapes
#   scripts/gpu-check.sh --quick    # LLaMA FFN shapes, M = 1 and 512
#   GPU_CHECK_BIN=path/to/gpu-check GPU_CHECK_DEVICES=wgpu scripts/gpu-check.sh   # prebuilt
#   (qat-overhead is taken from the same folder as GPU_CHECK_BIN)
#
# Building `cuda` needs network access beyond crates.io: cubecl-cuda 0.11.3 depends on
# cubecl-llvm, whose build script downloads an LLVM bundle from github.com/tracel-ai. Without
# it, build with `--features wgpu` and run `--device wgpu` (Vulkan on the NVIDIA driver).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
bin="${GPU_CHECK_BIN:-}"
vulkan=0
if ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  vulkan=1
fi
if [ -z "$bin" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-qat-target}"
  features=cuda
  [ "$vulkan" = 1 ] && features=cuda,wgpu
  cargo build --release -p bitnet-qat-benches --features "$features" --bin gpu-check --bin qat-overhead
  bin="$CARGO_TARGET_DIR/release/gpu-check"
fi
overhead="$(dirname "$bin")/qat-overhead"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
devices="${GPU_CHECK_DEVICES:-cuda$([ "$vulkan" = 1 ] && echo ' wgpu')}"
status=0
for d in $devices; do
  echo "== $d"
  "$bin" --device "$d" --json "$out/gpu-check-$d.json" "$@" || status=1
  if [ -x "$overhead" ]; then
    echo "== $d: QAT step against the full-precision step"
    "$overhead" --device "$d" --json "$out/qat-overhead-$d.json" || status=1
  fi
done
exit "$status"
