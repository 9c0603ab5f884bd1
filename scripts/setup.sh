#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine (idempotent): system libraries for Qt under Xvfb,
# a virtual environment in .venv, pinned torch/torchvision, and this project with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 \
libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1 libdbus-1-3"
if command -v apt-get >/dev/null 2>&1; then
  missing=$(dpkg-query -W -f='${Status} ${Package}\n' $APT_PACKAGES 2>/dev/null | grep -vc "install ok installed" || true)
  if [ "$missing" != "0" ] || ! command -v xvfb-run >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[testing]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import napari_gradcam, torch, torchvision, napari; print('napari-gradcam ready: torch', torch.__version__, '| napari', napari.__version__)"
