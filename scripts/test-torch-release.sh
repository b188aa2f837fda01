#!/usr/bin/env bash
# The test suite against another torch release, in a virtual environment of its own, so that the
# floor pyproject.toml declares (torch >= 2.5) stays true:
#   bash scripts/test-torch-release.sh 2.5.1 [VENV_DIR] [pytest args...]
# torch and torchaudio are installed at that release from the package index (a CUDA build from
# PyPI is fine on a machine without a GPU: the CUDA tests skip), then this checkout with its test
# extras. The environment is kept (default /tmp/c2f-torch-RELEASE), so a rerun installs nothing.
set -euo pipefail
release=${1:?usage: bash scripts/test-torch-release.sh TORCH_RELEASE [VENV_DIR] [pytest args...]}
venv=${2:-/tmp/c2f-torch-$release}
shift $(( $# >= 2 ? 2 : 1 ))
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
# --no-build-isolation would need setuptools in the venv; a normal build is quick.
# Installed, not editable, so that the checkout's own editable install elsewhere is left alone.
pip_install ".[test]" scipy
"$venv/bin/python" -c "import torch; print(f'testing with torch {torch.__version__}')"
exec "$venv/bin/python" -m pytest -q "$@"
