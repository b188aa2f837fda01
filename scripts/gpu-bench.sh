#!/usr/bin/env bash
# The GPU benchmark of docs/GPU.md: AST base (patch stride 10, 1,024 frames) on the phases of the
# audioset_balanced recipe (fshift C=4 -> C=2 -> full), loader alone, model alone and end to end,
# data-loading share and GPU busy, with each loader backend, on a stand-in store of AudioSet's
# shape (noisy tones; built once, AudioSet itself being out of reach offline).
#   bash scripts/gpu-bench.sh [--loader dali|torch|both] [--out DIR] [--store DIR] [--repeats N] [--batches N]
#                             [--batch-size N] [--phase N] [--tag NAME] [-- BENCH-THROUGHPUT-OPTIONS...]
# Writes DIR/throughput-asb-gpu-<loader><suffixes>.json and .png (default DIR: results), the
# suffixes -b<N> (--batch-size, first), -p<N> (--phase) and -<NAME> (--tag) as the options add
# them, e.g. throughput-asb-gpu-dali-b48-p1.json. The JSON is rewritten after every
# timed round, so a run stopped early keeps its rounds ("finished": false). --phase N (repeatable)
# measures phase N and the full-resolution phase, not every phase.
# Options after -- go to `bench throughput` as they are, e.g.
#   bash scripts/gpu-bench.sh --loader torch --tag graphs -- --compile reduce-overhead --set optim.fused=true
# Each part of the run is a line on stderr, and a part silent for 90 s (a compile, a stall) prints
# every thread's stack there (--stall-dump; pass another after --).
# On one H200 the torch loader's run took about 60 s (store already built; building it, 20 s).
# Exit 0: every loader's run ended well; 1: one failed (the others still ran); 2: bad use or no CUDA.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's bench/, even if another is installed
PY="${PYTHON:-python3}"
loader=both out=results store=stores/audioset-stand-in repeats=3 batches=50 batch=() tag="" extra=() phases=()
usage() { echo "gpu-bench.sh: $1 (see the header of $0)" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --loader|--out|--store|--repeats|--batches|--batch-size|--phase|--tag) [[ $# -ge 2 ]] || usage "$1 needs a value" ;;&
    --loader) loader=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --batch-size) batch=(--batch-size "$2"); tag="-b$2$tag"; shift 2 ;;
    --phase) phases+=(--phase "$2"); tag="$tag-p$2"; shift 2 ;;
    --tag) tag="$tag-$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) usage "unknown argument $1" ;;
  esac
done
case $loader in dali|torch) loaders=("$loader") ;; both) loaders=(dali torch) ;;
  *) usage "--loader must be dali, torch or both, got $loader" ;; esac
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu-bench.sh: CUDA is not available here; this benchmark needs a GPU" >&2; exit 2; }
cores=$(nproc)
if [[ ! -d $store ]]; then  # audioset_balanced's splits; 2,000 clips = 166 batches of 12
  # built aside and moved into place whole: a build stopped half-way is never benchmarked
  rm -rf "$store.partial"
  "$PY" -m bench.cli stand-in-store "$store.partial" --split balanced_train=2000 --split eval=64 --classes 527 \
    --workers $(( cores > 3 ? cores - 2 : 1 ))
  mv "$store.partial" "$store"
fi
mkdir -p "$out"
rc=0
[[ ${#phases[@]} -gt 0 ]] || phases=(--all)
for l in "${loaders[@]}"; do  # one loader failing (DALI missing, say) still lets the other run
  "$PY" -m bench.cli throughput --recipe audioset_balanced --store "$store" "${phases[@]}" --device cuda --loader "$l" \
    --repeats "$repeats" --warmup 1 --batches "$batches" --loader-batches 50 --stall-dump 90 "${batch[@]}" "${extra[@]}" \
    --json "$out/throughput-asb-gpu-$l$tag.json" --plot "$out/throughput-asb-gpu-$l$tag.png" || rc=1
done
exit $rc
