#!/usr/bin/env bash
# Installs the build dependencies from Debian packages (idempotent; skips what is present).
# The CUDA toolkit is optional: without nvcc only the CPU backend is built.
set -euo pipefail
pkgs=(cmake ninja-build g++ pkg-config libtbb-dev liburing-dev libabsl-dev libmimalloc-dev libgtest-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit found: the CUDA backend will be built"
else
  echo "setup: no nvcc: building the CPU backend only"
fi
