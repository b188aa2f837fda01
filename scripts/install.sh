#!/usr/bin/env bash
# All of c2f's set-up on a fresh Linux machine; safe to re-run (installs only what is missing).
#   bash scripts/install.sh              install, then check the GPU set-up
#   bash scripts/install.sh --check-gpu  only the GPU check (nothing installed)
# The GPU check never fails the script (CI machines have no GPU): it warns, loudly, where a GPU is
# present but would go unused, because then every GPU path and test silently skips.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMI=${NVIDIA_SMI:-nvidia-smi}  # overridable, so that tests can stand in a fake GPU
# nvidia-dali-cuda130 (and a cu130 torch) run on CUDA 13.0-capable drivers, "580.x or later"
# (DALI's installation guide, docs.nvidia.com/deeplearning/dali/user-guide/docs/installation.html).
MIN_DRIVER=580
CUDA_INDEX=https://download.pytorch.org/whl/cu130
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

warn() {
    printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    printf '!! %s\n' "$@" >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}

check_gpu() {
    command -v "$SMI" >/dev/null 2>&1 || return 0  # no NVIDIA driver: a CPU machine, nothing to say
    local gpus name driver
    gpus=$("$SMI" --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true)
    if [ -z "$gpus" ]; then
        warn "nvidia-smi is installed but lists no GPU (driver not loaded, or no device visible here)." \
             "GPU paths will be skipped."
        return 0
    fi
    name=$(printf '%s\n' "$gpus" | head -n1 | cut -d, -f1 | sed 's/^ *//; s/ *$//')
    driver=$(printf '%s\n' "$gpus" | head -n1 | cut -d, -f2 | tr -d ' ')
    if [ "${driver%%.*}" -lt "$MIN_DRIVER" ] 2>/dev/null; then
        warn "NVIDIA driver $driver ($name) is too old: nvidia-dali-cuda130 needs a CUDA 13 driver," \
             "$MIN_DRIVER or later. DALI's GPU loader (and a cu130 torch) will not run until the driver is upgraded."
    fi
    # torch's view: its version, the CUDA it was built for (None: a CPU build), whether it sees a GPU
    local state version built available
    state=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' 2>/dev/null) \
        || { warn "torch does not import with $PY; run bash scripts/install.sh"; return 0; }
    read -r version built available <<<"$state"
    [ "$available" = "True" ] && return 0
    if [ "$built" = "None" ]; then
        # the +cu130 local version is what makes pip replace an installed 2.x+cpu: a bare
        # torch==2.x is already satisfied by it, and pip would do nothing
        warn "GPU found: $name, driver $driver; but torch $version is a CPU-only build, so" \
             "torch.cuda.is_available() is False and every GPU path and test will be SKIPPED." \
             "Install the CUDA build of the same release:" \
             "    $PY -m pip install \"torch==${version%%+*}+cu130\" --index-url $CUDA_INDEX" \
             "then check again: bash scripts/install.sh --check-gpu"
    else
        warn "GPU found: $name, driver $driver; torch $version is built for CUDA $built but" \
             "torch.cuda.is_available() is False, so every GPU path and test will be SKIPPED." \
             "Check that the driver supports CUDA $built (CUDA 13: driver $MIN_DRIVER or later) and" \
             "that CUDA_VISIBLE_DEVICES does not hide the GPU."
    fi
}

if [ "${1:-}" = "--check-gpu" ]; then
    check_gpu
    exit 0
fi

# torch first, so that nothing below pulls another build: where torch is already installed any
# release >= 2.5 is kept (check_gpu below says so when it is a CPU build on a GPU machine);
# otherwise 2.13.0 (on the CPU dev/CI machines a local CPU wheel). An older torch is replaced
# here, by name: left in place, `pip install -e .` (torch>=2.5) would pull the newest release.
torch_ok='import sys, torch; v = torch.__version__.split("+")[0].split("."); sys.exit((int(v[0]), int(v[1])) < (2, 5))'
if ! "$PY" -c "import torch" 2>/dev/null; then
    pip_install "torch==2.13.0"
elif ! "$PY" -c "$torch_ok" 2>/dev/null; then
    echo "torch $("$PY" -c 'import torch; print(torch.__version__)') is older than 2.5, which c2f needs: installing 2.13.0" >&2
    pip_install "torch==2.13.0"
fi
# The embedded demo dataset's synthesiser. --no-deps: its metadata asks for pyaudio (playback,
# unused here), which does not build without PortAudio's headers.
if ! "$PY" -c "import tinysoundfont" 2>/dev/null; then
    pip_install --no-deps tinysoundfont
fi
# s3fs (tests: S3 stores) needs aiobotocore, whose releases each pin a narrow botocore range: keep
# the botocore already installed (boto3 and awscli pin it) and let pip pick the aiobotocore that
# fits it; with no botocore yet, or none that fits, pip resolves freely.
constraints=$(mktemp)
"$PY" -c "import botocore; print('botocore==' + botocore.__version__)" >"$constraints" 2>/dev/null || : >"$constraints"
pip_install -e ".[test]" -c "$constraints" || pip_install -e ".[test]"
rm -f "$constraints"
check_gpu
"$PY" -c "import torch, c2fdata, c2ftrain; print(f'c2f ready: torch {torch.__version__}, CUDA {\"yes\" if torch.cuda.is_available() else \"no\"}')"
