#!/usr/bin/env bash
# The device check through Vulkan on an NVIDIA machine without a CUDA build: gpu-check and
# qat-overhead built on the development machine by scripts/device-stage.sh (`wgpu`: WGSL; and
# gpu-check-vulkan: SPIR-V), stripped and gzipped next to this script with Debian's
# libvulkan.so.1, the NVIDIA EGL library as the Vulkan ICD. Writes JSON to $OUT; one call of
# at most ~9.5 minutes: the correctness checks first (kernels against the CPU, the quantizers
# against Flex at layer sizes: 60 s), then five QAT steps (36 s each) and one with a 4096-wide
# model (45 s), then gpu-check's timings (180 s) and the SPIR-V check (90 s).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
bin=/tmp/bitnet-gpu; mkdir -p $bin
for f in gpu-check gpu-check-vulkan qat-overhead; do
  [ -f "$here/$f.gz" ] && { gunzip -c "$here/$f.gz" > "$bin/$f"; chmod +x "$bin/$f"; }
done
echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3
ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 | head
# Headless: the GLX ICD cannot create an instance here; the EGL one can.
glx=$(ls /usr/local/nvidia/lib64/libEGL_nvidia.so.0 /usr/lib/x86_64-linux-gnu/libEGL_nvidia.so.0 /usr/lib/libEGL_nvidia.so.0 2>/dev/null | head -1)
echo "libGLX_nvidia: ${glx:-none}"
if [ -n "$glx" ]; then
  printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3.0"}}\n' "$glx" > "$OUT/nvidia_icd.json"
  export VK_ICD_FILENAMES="$OUT/nvidia_icd.json"
  echo "using a generated ICD for $glx"
fi
export LD_LIBRARY_PATH="$here:/usr/local/nvidia/lib64:/usr/lib:${LD_LIBRARY_PATH:-}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
echo "== gpu-check --check-only (wgpu: WGSL): kernels against the CPU, quantizers against Flex"
timeout 60 "$bin/gpu-check" --device wgpu --check-only --json "$OUT/gpu-check-wgpu-checks.json" \
  2>&1 | tail -22
echo "exit ${PIPESTATUS[0]}"
# The QAT step against the full-precision step: BitLinear as BitNet has it, its two quantizers
# alone, and the clipped and LSQ weight STEs.
for v in "full standard" "weights standard" "activations standard" "full clipped" "full lsq"; do
  set -- $v
  echo "== qat-overhead (wgpu) --bitlinear $1 --weight-ste $2"
  timeout 36 "$bin/qat-overhead" --device wgpu --samples 21 --bitlinear "$1" --weight-ste "$2" \
    --json "$OUT/qat-overhead-wgpu-$1-$2.json" 2>&1 | tail -6
  echo "exit ${PIPESTATUS[0]}"
done
# The same step where the matmuls, not the launches, set the time: MLP 784-4096-4096-10.
echo "== qat-overhead (wgpu) --hidden 4096 --batch 2048"
timeout 45 "$bin/qat-overhead" --device wgpu --samples 21 --hidden 4096 --batch 2048 \
  --json "$OUT/qat-overhead-wgpu-hidden4096.json" 2>&1 | tail -6
echo "exit ${PIPESTATUS[0]}"
echo "== gpu-check (wgpu: WGSL)"
timeout 180 "$bin/gpu-check" --device wgpu --skip-checks --samples 11 \
  --json "$OUT/gpu-check-wgpu.json" 2>&1 | tail -60
echo "exit ${PIPESTATUS[0]}"
# SPIR-V (native dp4a where the driver has it): the kernel checks and the LLaMA FFN GEMVs.
if [ -x "$bin/gpu-check-vulkan" ]; then
  echo "== gpu-check (vulkan: SPIR-V)"
  timeout 90 "$bin/gpu-check-vulkan" --device vulkan --samples 11 --shape 4096x11008 \
    --shape 11008x4096 --m 1 --m 8 --json "$OUT/gpu-check-vulkan.json" 2>&1 | tail -12
  echo "exit ${PIPESTATUS[0]}"
fi
