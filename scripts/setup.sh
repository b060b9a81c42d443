#!/usr/bin/env bash
# Installs everything meshpose needs on a fresh Debian/Ubuntu machine: the system libraries (Mesa EGL for the
# CPU renderer, libusb for Open3D) and a virtual environment .venv with the package and its test tools.
# Idempotent: re-running it only installs what is missing. Used by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev}

# --- system packages ------------------------------------------------------------------------------------------
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if command -v dpkg-query >/dev/null 2>&1; then
  for p in libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libusb-1.0-0 libgomp1; do
    have_pkg "$p" || need+=("$p")
  done
  # Mitsuba's fast llvm_ad_rgb variant (photoreal synthetic images) needs LLVM 19; optional, where apt has it.
  if ! have_pkg libllvm19 && apt-cache show libllvm19 >/dev/null 2>&1; then need+=(libllvm19); fi
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "[setup] installing system packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
else
  echo "[setup] not a Debian system: make sure EGL (Mesa), libusb-1.0 and OpenMP are installed" >&2
fi

# --- python -------------------------------------------------------------------------------------------------------
# torch==2.13.0 (pinned in pyproject.toml) is available as a CPU wheel for Python 3.11; prefer that interpreter.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# torch first and alone, so that nothing else can pull a CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import meshpose, torch, moderngl, open3d" || { echo "[setup] install check failed" >&2; exit 1; }
echo "[setup] ok: $("$VENV/bin/python" -c 'import torch, meshpose; print("meshpose", meshpose.__version__, "torch", torch.__version__)')"
