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
# The Python package's tests (python/tests, ctest python_tests) and example use Debian's
# Python stack; apt installs it for /usr/bin/python3. Best effort: without it those tests skip
# and say so.
py_pkgs=(python3 python3-pytest python3-numpy python3-torch)
py_missing=()
for p in "${py_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || py_missing+=("$p")
done
if ((${#py_missing[@]})); then
  echo "setup: installing ${py_missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${py_missing[@]}"; } ||
    echo "setup: could not install ${py_missing[*]}: the Python tests will be skipped"
fi
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit found: the CUDA backend will be built"
else
  echo "setup: no nvcc: building the CPU backend only"
fi
