#!/usr/bin/env bash
# The CUDA check on a lent NVIDIA machine (staged by scripts/device-stage-cuda.sh): QAT with
# burn-train's `ddp` (NCCL, loaded at run time), `MultiDevice` main and sharded over every GPU,
# each against one GPU accumulating one micro-batch per GPU. Writes $OUT/multi-device-*.txt.
# A few minutes in all (the digits classifier, 2 epochs per run).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
bin=/tmp/bitnet-cuda; mkdir -p $bin
gunzip -c "$here/multi_device.gz" > "$bin/multi_device" && chmod +x "$bin/multi_device"
echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -8
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "${gpus:-0}" -ge 1 ] || gpus=1
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/lib:${LD_LIBRARY_PATH:-}"
status=0
for strategy in ddp main sharded; do
  echo "== QAT with $strategy over $gpus GPU(s) against one GPU"
  timeout 180 "$bin/multi_device" --device cuda --devices "$gpus" --strategy "$strategy" \
    2>&1 | tail -8 | tee "$OUT/multi-device-$strategy.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
exit "$status"
