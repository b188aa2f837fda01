#!/usr/bin/env bash
# One command that proves every GPU path of c2f works (docs/GPU.md): CUDA tests, the DALI GPU
# loader against the CPU reference, bench throughput on CUDA, a bf16 training run through every
# method, eval, torchrun (NCCL) and SIGKILL + resume. A pass/fail table; JSON in gpu-check.json.
#   bash scripts/gpu-check.sh [--json PATH] [--workdir DIR] [--only b,e] [--timeout-scale X] [--dry-run]
# Exit 0: all steps passed; 1: some failed; 2: no CUDA here (nothing run).
# Relative paths are taken from where it is called; the steps themselves run in the repository.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's bench/, even if another is installed
exec "${PYTHON:-python3}" -m bench.gpu_check run "$@"
