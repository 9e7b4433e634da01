#!/usr/bin/env bash
# Issue 15 item 4 on the device machine: train the byte-level model (Austen plus the Debian
# English mix) on the GPU, then evaluate it at 4k context with twl_accuracy's real-text section
# on the device's CPU cores.
#
#   Here first:   python3 bench/train/extract_english_mix.py   (~1 min: bench/train/data/mix/,
#                 ignored by git, ~11 MB of .xz)
#   Device call 1 (run tool, carry ["bench/train/data/mix"], ~7 min: 380 s of training, about
#                 25 s of loading, compiling's share and the final checks; limit 480 s):
#                 bash bench/train/device_run.sh train
#                 -> $OUT/byte_llama_austen.bin.part00, .part01 (+ .json, train.log); the .bin
#                 is rewritten at every new best validation, so a run cut short still leaves
#                 its best model, and split at the end: the device returns files of at most
#                 16 MiB (the 2026-12-03 model, 18.9 MB whole, did not come back)
#                 Here: cat <files_at>/byte_llama_austen.bin.part* > bench/train/data/byte_llama_austen.bin
#   Eval first:   scripts/gpu-check.sh build         (stages twl_accuracy into .device/gpu)
#   Here:         cp <files_at>/byte_llama_austen.bin* bench/train/data/   (~19 MB; commit)
#   Eval:         bash bench/train/device_run.sh eval, here or on the device: every (method,
#                 window or pass key) is one CPU job of ~45 s (twelfth session, after the
#                 host pruner's per-block estimate; ~90 s before), 11 methods. The device's 16
#                 cores did not finish 6 windows in 560 s (2026-12-03); this 2-core machine
#                 runs `EVAL_ARGS="--text-seqs 4 --passkeys 8"` in about an hour.
#                 -> $OUT/realtext/ (realtext.csv/json, goals.csv) and realtext.log
# Environment: TRAIN_ARGS (extra train_byte_llama.py flags), T_TRAIN (training seconds, 380),
# EVAL_ARGS (extra twl_accuracy flags), T_EVAL.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/device-run-out}
mkdir -p "$out"
model=${MODEL:-bench/train/data/byte_llama_austen.bin}
case "${1:-}" in
  train)
    if ! ls bench/train/data/mix/*.txt.xz > /dev/null 2>&1; then
      echo "no bench/train/data/mix/*.txt.xz: run bench/train/extract_english_mix.py and carry" \
           "bench/train/data/mix" >&2
      exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv || true
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    # shellcheck disable=SC2086
    python3 bench/train/train_byte_llama.py --device cuda --compile --time-budget "${T_TRAIN:-380}" \
      --out "$out/byte_llama_austen.bin" ${TRAIN_ARGS:-} 2>&1 | tee "$out/train.log"
    cp bench/train/data/mix/MANIFEST.tsv "$out/mix_manifest.tsv"
    if [ -f "$out/byte_llama_austen.bin" ]; then
      split -b 15M -d "$out/byte_llama_austen.bin" "$out/byte_llama_austen.bin.part"
      # Kept whole too for an `eval` in the same call (MODEL=$OUT/byte_llama_austen.bin); it
      # does not come back.
    fi
    ;;
  eval)
    [ -f "$model" ] || model="$out/byte_llama_austen.bin"
    bin=.device/gpu/bin/twl_accuracy
    [ -x "$bin" ] || bin=$(command -v twl_accuracy || echo build/bench/twl_accuracy)
    export LD_LIBRARY_PATH=$PWD/.device/gpu/lib:${LD_LIBRARY_PATH:-}
    # shellcheck disable=SC2086
    # Line-buffered: a run stopped by the timeout still leaves what it printed.
    timeout "${T_EVAL:-570}" stdbuf -oL -eL "$bin" --only realtext --text-model "$model" --text bench/train/data/austen_heldout.txt \
      --text-ctx 4096 --text-seqs 6 --passkeys 8 --out "$out/realtext" ${EVAL_ARGS:-} \
      2>&1 | tee "$out/realtext.log"
    ;;
  *)
    echo "usage: $0 train|eval" >&2
    exit 2
    ;;
esac
