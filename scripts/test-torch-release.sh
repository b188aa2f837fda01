#!/usr/bin/env bash
# The test suite against another torch release, in a virtual environment of its own, so that the
# floor pyproject.toml declares (torch >= 2.5) stays true:
#   bash scripts/test-torch-release.sh 2.5.1 [pytest args...]
#   C2F_TORCH_VENV=DIR bash scripts/test-torch-release.sh 2.11.0 tests/test_trainer.py
# torch and torchaudio are installed at that release from the package index (PyPI's CUDA builds
# work on a machine without a GPU: the CUDA tests then skip), then this checkout with its test
# extras and scipy. The environment is kept (default /tmp/c2f-torch-RELEASE): a rerun installs
# only the checkout again.
set -euo pipefail
release=${1:?usage: bash scripts/test-torch-release.sh TORCH_RELEASE [pytest args...]}
shift
if ! [[ $release =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
    echo "error: '$release' is not a torch release such as 2.5.1 (no local tag like +cpu:" \
         "PyPI serves the plain release)" >&2
    exit 2
fi
venv=$(realpath -m "${C2F_TORCH_VENV:-/tmp/c2f-torch-$release}")  # before the cd below
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
have=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$release" ]; then
    # torchaudio's release number follows torch's (2.5.1 with 2.5.1, 2.11.0 with 2.11.0)
    pip_install "torch==$release" "torchaudio==$release"
fi
"$venv/bin/python" -c "import tinysoundfont" 2>/dev/null || pip_install --no-deps tinysoundfont
# a plain (not editable) install: nothing is written into the checkout but pip's build files
pip_install ".[test]" scipy
"$venv/bin/python" -c "import torch; print(f'testing with torch {torch.__version__}')"
exec "$venv/bin/python" -m pytest -q ${@+"$@"}
