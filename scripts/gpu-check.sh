#!/usr/bin/env bash
# The prepared GPU check for a machine with an NVIDIA GPU: builds `gpu-check` with the `cuda`
# feature (and `wgpu` when the Vulkan loader is installed), checks the CubeCL ternary kernels
# against the CPU kernels (bit-exact int8 products, 1e-5 otherwise) and times ternary GEMV/GEMM
# against Burn's f16 and f32 `matmul` on the same device. Prints tables; writes JSON to
# ${OUT:-.}/gpu-check-*.json. Runs in a few minutes after the build (the build itself is long).
#
#   scripts/gpu-check.sh            # all shapes
#   scripts/gpu-check.sh --quick    # LLaMA FFN shapes, M = 1 and 512
#   GPU_CHECK_BIN=path/to/gpu-check scripts/gpu-check.sh --quick   # a binary built elsewhere
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
  cargo build --release -p bitnet-qat-benches --features "$features" --bin gpu-check
  bin="$CARGO_TARGET_DIR/release/gpu-check"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
echo "== CUDA"
"$bin" --device cuda --json "$out/gpu-check-cuda.json" "$@"
if [ "$vulkan" = 1 ]; then
  echo "== wgpu (Vulkan)"
  "$bin" --device wgpu --quick --json "$out/gpu-check-wgpu.json" || echo "wgpu run failed"
fi
