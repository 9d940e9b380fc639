#!/usr/bin/env bash
# The GPU benchmarks, one part per device call (each part fits the 10-minute limit by design;
# not yet run on a GPU). Usage on the device machine, from the repo root:
#   bash benchmarks/gpu.sh decode-omni7b   # or decode-omni30b, decode-qwen2audio, prefill, generate, recompiles
# Results go to benchmarks/results/*-cuda*.json and are copied to $OUT when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q --no-deps -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
R=benchmarks/results
decode() {  # $1 name, $2 "query heads, KV heads, head_dim"
  python -m benchmarks.decode --device cuda --shape "$2" --batch 1 8 --context 4096 16384 65536 \
    --ratios 0 0.4 0.7 0.9 --steps 200 --out "$R/decode-cuda-$1.json"
}
case "$1" in
  decode-omni7b) decode omni7b 28,4,128 ;;      # Qwen2.5-Omni-7B
  decode-omni30b) decode omni30b 32,4,128 ;;    # Qwen3-Omni-30B-A3B
  decode-qwen2audio) decode qwen2audio 32,32,128 ;;  # Qwen2-Audio-7B (no GQA)
  prefill) python -m benchmarks.prefill --device cuda --context 4096 16384 32768 65536 ;;
  generate) python -m benchmarks.generate --device cuda --context 16384 65536 ;;
  recompiles) python -m benchmarks.decode --device cuda --shape 28,4,128 --context 16384 --ratios 0.7 \
    --steps 2000 --reserve 16 --out "$R/decode-cuda-2000steps.json" ;;
  *) echo "unknown part: $1" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then cp "$R"/*cuda*.json "$OUT"/; fi
