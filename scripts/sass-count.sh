#!/usr/bin/env bash
# SASS instruction counts of the GPU kernels' main loops, on a machine without a GPU or
# CUDA's disassemblers: for passes that are issue-bound, the count per unit of work is the
# figure to cut, and it can be measured here between device runs.
#
#   scripts/sass-count.sh [FILE.cu] [KERNEL ...]
#
# FILE.cu defaults to the pruner's kernels; KERNELs are substrings of mangled names
# (default: the score pass's instantiations). Prints, per kernel, the instructions of the
# loop that holds its MMAs per 8 HMMA (one 16-token page at d = 128), by opcode
# (scripts/sass_loop_count.py).
#
# The disassembler: CUDA 13's installer here ships no nvdisasm, so this takes the one in
# Debian's non-free nvidia-cuda-toolkit 11.8 (downloaded once into .tools/, from Debian's
# registry; nothing installed). It reads sm_90 code, but not CUDA 13's cubin header (ELF ABI
# version 8, the SM in bits 8-15 of e_flags), so a copy of the cubin gets the 11.8 header
# (ABI 7, e_flags = sm << 16 | 0x500 | sm) first. The instructions are sm_90's either way.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
NVDISASM=${NVDISASM:-$TOOLS/nvdisasm}
CU=${1:-pipeline/prune/twilight/cuda/prune.cu}
shift || true
KERNELS=("$@")
((${#KERNELS[@]})) || KERNELS=(ScorePage16KernelILi128ELi1ELb0ELb1E ScorePage16KernelILi128ELi1ELb1ELb1E
                               ScorePage16KernelILi128ELi2ELb0ELb1E ScorePage16KernelILi128ELi1ELb0ELb0E
                               ScorePage16KernelILi64ELi1ELb0ELb1E)

fetch_nvdisasm() {
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$TOOLS"
  printf 'deb http://deb.debian.org/debian bookworm non-free\n' >"$tmp/sources.list"
  local opts=(-o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o Dir::State::Lists="$tmp/lists" -o Dir::Cache::Archives="$tmp/archives"
              -o APT::Sandbox::User=root)
  echo "sass-count: fetching nvidia-cuda-toolkit (non-free, ~84 MB) for its nvdisasm" >&2
  apt-get "${opts[@]}" update -qq
  (cd "$tmp" && apt-get "${opts[@]}" download nvidia-cuda-toolkit >/dev/null)
  dpkg-deb -x "$tmp"/nvidia-cuda-toolkit_*.deb "$tmp/x"
  cp "$tmp/x/usr/bin/nvdisasm" "$NVDISASM"
  rm -rf "$tmp"
}
[ -x "$NVDISASM" ] || fetch_nvdisasm

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
# The library's flags for this file (CMakeLists.txt: Release, sm_90).
"$nvcc" -DTWL_HAVE_CUDA=1 -I"$ROOT" -O3 -DNDEBUG -arch=sm_90 --expt-relaxed-constexpr \
  -std=c++20 -cubin -o "$work/k.cubin" "$CU"
python3 - "$work/k.cubin" "$work/k11.cubin" <<'PY'
import struct, sys
d = bytearray(open(sys.argv[1], 'rb').read())
assert d[:4] == b'\x7fELF' and d[4] == 2, 'not a 64-bit ELF'
flags = struct.unpack_from('<I', d, 0x30)[0]
sm = (flags >> 8) & 0xff
d[8] = 7  # EI_ABIVERSION
struct.pack_into('<I', d, 0x30, (sm << 16) | 0x500 | sm)
open(sys.argv[2], 'wb').write(d)
PY
"$NVDISASM" -c -hex "$work/k11.cubin" >"$work/k.sass"
for k in "${KERNELS[@]}"; do
  python3 "$ROOT/scripts/sass_loop_count.py" "$work/k.sass" "$k"
done
