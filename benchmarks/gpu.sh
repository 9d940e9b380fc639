#!/usr/bin/env bash
# The GPU checks and benchmarks. decode, generate, decode-b8 and prefill fit one device lease (about 5 minutes);
# profile and compiled about 5 more; tests has not yet run on a GPU (written without one), allow it 5 minutes.
# On the device machine, from the repo root:  bash benchmarks/gpu.sh [PART ...]   (default: all, in this order)
#   tests      tests/test_cuda.py: CUDA keeps the CPU's tokens, flex attends over exactly them, Whisper on the GPU
#              (needs soundfile and soxr there: carry their wheels)
#   decode     one layer's decode step at Qwen2.5-Omni-7B's shape (28 query, 4 KV heads, dim 128), batch 1
#   generate   end-to-end generate() of a 4-layer Qwen2.5-Omni-7B-shaped model: dense, audiokv, kvpress-style mask
#   decode-b8  the decode step at batch 8 and 64k context
#   prefill    the compression step against the layer's prefill attention
#   profile    one decode step's host time, device time and launches (benchmarks.decode_profile)
#   compiled   decode tokens/s, eager against torch.compile(model.forward), dense and audiokv
#   compiled-ro  the same with torch.compile(mode="reduce-overhead") (CUDA graphs)
# Each part runs under its own time limit and copies its JSON and log to $OUT as soon as it ends, so a part
# that runs over loses only itself. Set AUDIOKV_COMMIT: the copied tree's .git may not be the commit run.
# The committed speech clips (about 75 MB) put the tree over a 64 MiB copy limit: untrack them for the call
# (git rm -r -q --cached benchmarks/data/speech/{tune,test,holdout}, with those folders in .git/info/exclude),
# then git reset -q -- benchmarks/data/speech.
set -uo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
: "${AUDIOKV_COMMIT:?set AUDIOKV_COMMIT to the commit of this tree}"
OUT=${OUT:-$(mktemp -d)}  # the device machine's results folder; elsewhere the logs go to a temporary one
pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers',
  transformers.__version__, 'triton', triton.__version__)"

part() {  # $1 name, $2 seconds, rest: the benchmark's module and arguments
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s) $(date +%T)"
  timeout "$limit" python3 -m "$@" --out "$R/$name.json" 2>&1 | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} $(date +%T)"
  [ -f "$R/$name.json" ] && cp "$R/$name.json" "$OUT/"
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests decode generate decode-b8 prefill profile compiled compiled-ro)
for p in "${parts[@]}"; do
  case "$p" in
    tests) echo "== tests $(date +%T)"; timeout 300 python3 -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py 2>&1 \
      | tee "$OUT/test_cuda.log"; echo "== tests: exit ${PIPESTATUS[0]} $(date +%T)" ;;
    decode) part decode-cuda-omni7b 150 benchmarks.decode --device cuda --shape 28,4,128 --batch 1 \
      --context 16384 65536 --ratios 0 0.4 0.7 0.9 --steps 100 ;;
    generate) part generate-cuda 150 benchmarks.generate --device cuda --context 16384 --ratios 0.4 0.7 ;;
    decode-b8) part decode-cuda-omni7b-b8 120 benchmarks.decode --device cuda --shape 28,4,128 --batch 8 \
      --context 65536 --ratios 0 0.7 0.9 --steps 100 ;;
    prefill) part prefill-cuda 60 benchmarks.prefill --device cuda --context 16384 65536 ;;
    profile) part decode-profile-cuda 90 benchmarks.decode_profile --device cuda --context 16384 --ratio 0.7 ;;
    compiled) part compiled-cuda 180 benchmarks.compiled --device cuda --shape qwen2.5-omni-7b --context 16384 \
      --ratios 0.7 --steps 64 ;;
    compiled-ro) part compiled-cuda-reduce-overhead 200 benchmarks.compiled --device cuda --shape qwen2.5-omni-7b \
      --context 16384 --ratios 0.7 --steps 64 --compile-mode reduce-overhead ;;
    *) echo "unknown part: $p" >&2; exit 2 ;;
  esac
done
