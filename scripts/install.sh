#!/usr/bin/env bash
# All of c2f's set-up on a fresh Linux machine; safe to re-run (installs only what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# torch first, so that nothing below pulls another build: where torch is already installed any
# release >= 2.5 is kept; otherwise 2.13.0 (on the CPU dev/CI machines a local CPU wheel).
if ! "$PY" -c "import torch" 2>/dev/null; then
    pip_install "torch==2.13.0"
fi
# The embedded demo dataset's synthesiser. --no-deps: its metadata asks for pyaudio (playback,
# unused here), which does not build without PortAudio's headers.
if ! "$PY" -c "import tinysoundfont" 2>/dev/null; then
    pip_install --no-deps tinysoundfont
fi
pip_install -e ".[test]"
"$PY" -c "import torch, c2fdata, c2ftrain; print(f'c2f ready: torch {torch.__version__}')"
