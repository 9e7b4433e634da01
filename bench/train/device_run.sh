#!/usr/bin/env bash
# Issue 15 item 4 on the device machine: train the byte-level Austen model on the GPU, then
# evaluate it at 4k context with twl_accuracy's real-text section on the device's CPU cores.
#
#   Here first:   scripts/gpu-check.sh build         (stages twl_accuracy into .device/gpu)
#   Device call 1 (run tool, carry [".device/gpu"], ~5 min):
#                 bash bench/train/device_run.sh train
#                 -> $OUT/byte_llama_austen.bin (+ .json, train.log)
#   Here:         cp <files_at>/byte_llama_austen.bin* bench/train/data/   (a few MB; commit)
#   Device call 2 (same carry, ~5-8 min on 16 cores: 6 methods x (6 windows + 8 keys) runs of
#                 4096 tokens, ~1 min each; or run `eval` here, much slower):
#                 bash bench/train/device_run.sh eval
#                 -> $OUT/realtext/ (realtext.csv/json, goals.csv) and realtext.log
# Environment: TRAIN_ARGS (extra train_byte_llama.py flags), EVAL_ARGS (extra twl_accuracy flags).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/device-run-out}
mkdir -p "$out"
model=bench/train/data/byte_llama_austen.bin
case "${1:-}" in
  train)
    nvidia-smi --query-gpu=name,memory.total --format=csv || true
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    # shellcheck disable=SC2086
    python3 bench/train/train_byte_llama.py --device cuda --time-budget 270 \
      --out "$out/byte_llama_austen.bin" ${TRAIN_ARGS:-} 2>&1 | tee "$out/train.log"
    ;;
  eval)
    [ -f "$model" ] || model="$out/byte_llama_austen.bin"
    bin=.device/gpu/bin/twl_accuracy
    [ -x "$bin" ] || bin=$(command -v twl_accuracy || echo build/bench/twl_accuracy)
    export LD_LIBRARY_PATH=$PWD/.device/gpu/lib:${LD_LIBRARY_PATH:-}
    # shellcheck disable=SC2086
    timeout "${T_EVAL:-570}" "$bin" --only realtext --text-model "$model" --text bench/train/data/austen_heldout.txt \
      --text-ctx 4096 --text-seqs 6 --passkeys 8 --out "$out/realtext" ${EVAL_ARGS:-} \
      2>&1 | tee "$out/realtext.log"
    ;;
  *)
    echo "usage: $0 train|eval" >&2
    exit 2
    ;;
esac
