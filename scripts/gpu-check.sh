#!/usr/bin/env bash
# The prepared GPU check for a machine with an NVIDIA GPU: builds `gpu-check` with the `cuda`
# feature (and `wgpu` when the Vulkan loader is installed), checks the CubeCL ternary kernels
# against the CPU kernels (bit-exact int8 products, 1e-5 otherwise) and times ternary GEMV/GEMM
# against Burn's f16 and f32 `matmul` on the same device, then times a QAT training step against
# the full-precision step (`qat-overhead`), and, with the `cuda` build, trains QAT with
# burn-train's `ddp` and `MultiDevice` over every GPU present against single-device training
# (the `multi_device` example). Prints tables; writes JSON to
# ${OUT:-.}/gpu-check-*.json and ${OUT:-.}/qat-overhead-*.json. Runs in a few minutes after the
# build (the build itself is long).
#
#   scripts/gpu-check.sh            # all shapes
#   scripts/gpu-check.sh --quick    # LLaMA FFN shapes, M = 1 and 512
#   GPU_CHECK_BIN=path/to/gpu-check GPU_CHECK_DEVICES=wgpu scripts/gpu-check.sh   # prebuilt
#   (qat-overhead is taken from the same folder as GPU_CHECK_BIN)
#
# Building `cuda` needs the static LLVM that cubecl-llvm links: `scripts/install-deps.sh
# --cuda` installs it from PyPI (docs/scale-out.md); without it the build script downloads one
# from github.com/tracel-ai (docs/gpu.md, "CUDA offline"). When the build fails and the Vulkan
# loader is installed, the script goes on with `wgpu` alone (Vulkan on the NVIDIA driver).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
bin="${GPU_CHECK_BIN:-}"
vulkan=0
if ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  vulkan=1
fi
default_devices=cuda
if [ "$vulkan" = 1 ]; then
  default_devices="cuda wgpu"
fi
multi=""
if [ -z "$bin" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-qat-target}"
  build() {
    cargo build --release -p bitnet-qat-benches --features "$1" --bin gpu-check --bin qat-overhead
  }
  features=cuda
  [ "$vulkan" = 1 ] && features=cuda,wgpu
  if ! build "$features"; then
    # Usually cubecl-llvm's download of its LLVM bundle (see docs/gpu.md, "CUDA offline").
    [ "$vulkan" = 1 ] || { echo "the cuda build failed and there is no Vulkan loader" >&2; exit 1; }
    echo "== the cuda build failed: checking through Vulkan (wgpu) only" >&2
    build wgpu
    default_devices=wgpu
  fi
  bin="$CARGO_TARGET_DIR/release/gpu-check"
  if [ "$default_devices" != wgpu ]; then
    if cargo build --release -p bitnet-qat-examples --features cuda --example multi_device; then
      multi="$CARGO_TARGET_DIR/release/examples/multi_device"
    else
      echo "== the multi_device example did not build: no ddp check" >&2
    fi
  fi
fi
overhead="$(dirname "$bin")/qat-overhead"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
devices="${GPU_CHECK_DEVICES:-$default_devices}"
status=0
for d in $devices; do
  echo "== $d"
  "$bin" --device "$d" --json "$out/gpu-check-$d.json" "$@" || status=1
  if [ -x "$overhead" ]; then
    echo "== $d: QAT step against the full-precision step"
    "$overhead" --device "$d" --json "$out/qat-overhead-$d.json" || status=1
  fi
done
# QAT under burn-train's strategies over every GPU (ddp's all-reduce exists on CUDA only).
if [ -n "$multi" ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  if [ "${gpus:-0}" -ge 1 ]; then
    for strategy in ddp main sharded; do
      echo "== QAT with $strategy over $gpus GPU(s) against one GPU"
      "$multi" --device cuda --devices "$gpus" --strategy "$strategy" | tee "$out/multi-device-$strategy.txt" || status=1
    done
  fi
fi
exit "$status"
