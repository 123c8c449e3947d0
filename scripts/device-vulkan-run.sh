#!/usr/bin/env bash
# The device check through Vulkan on an NVIDIA machine without a CUDA build: gpu-check and
# qat-overhead built on the development machine with
#   cargo build --release -p bitnet-qat-benches --features wgpu --bin gpu-check --bin qat-overhead
# (stripped, gzipped next to this script as gpu-check.gz and qat-overhead.gz, with Debian's
# libvulkan.so.1), the NVIDIA EGL library as the Vulkan ICD. Writes JSON to $OUT.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
bin=/tmp/bitnet-gpu; mkdir -p $bin
for f in gpu-check qat-overhead; do gunzip -c "$here/$f.gz" > "$bin/$f"; chmod +x "$bin/$f"; done
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
echo "== gpu-check (wgpu)"
timeout 300 "$bin/gpu-check" --device wgpu --samples 11 --json "$OUT/gpu-check-wgpu.json" 2>&1 | tail -60
echo "exit ${PIPESTATUS[0]}"
# The QAT step against the full-precision step: BitLinear as BitNet has it, its two quantizers
# alone, and the clipped and LSQ weight STEs.
for v in "full standard" "weights standard" "activations standard" "full clipped" "full lsq"; do
  set -- $v
  echo "== qat-overhead (wgpu) --bitlinear $1 --weight-ste $2"
  timeout 40 "$bin/qat-overhead" --device wgpu --samples 21 --bitlinear "$1" --weight-ste "$2" \
    --json "$OUT/qat-overhead-wgpu-$1-$2.json" 2>&1 | tail -6
  echo "exit ${PIPESTATUS[0]}"
done
